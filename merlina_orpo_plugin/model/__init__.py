"""The model: preparing it for training (`setup`: dtype, PEFT / QLoRA, dropout, 4-bit checks), its facts
found once per run (`adapter`: the base module, the head, the decoder, logit post-processing), and how
the LM head is sharded under FSDP2 / ZeRO-3 (`head_sharding`; `compute.head` calls it whole)."""
