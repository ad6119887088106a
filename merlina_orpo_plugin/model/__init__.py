"""The model: preparing it for training (`setup`: dtype, PEFT / QLoRA, dropout, 4-bit checks), its facts
found once per run (`adapter`: the base module, the head, the decoder, logit post-processing), and keeping
the LM head whole under FSDP2 / ZeRO-3 while the chunked loss calls it (`head_sharding`)."""
