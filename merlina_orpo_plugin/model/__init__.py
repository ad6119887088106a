"""The model: preparing it for training (`setup`: dtype, PEFT / QLoRA, dropout, 4-bit checks), finding its
parts and final hidden states (`adapter`), and keeping the LM head whole under FSDP2 / ZeRO-3 while the
chunked loss calls it (`head_sharding`)."""
