"""`create_orpo_trainer`: the one-call way to build a trainer from a model, a tokenizer and data."""

from __future__ import annotations

from typing import Any

from .config import ORPOConfig
from .trainer import MerlinaORPOTrainer


def create_orpo_trainer(
    model,
    tokenizer,
    train_dataset,
    eval_dataset=None,
    orpo_config: ORPOConfig | None = None,
    peft_config=None,
    **trainer_kwargs: Any,
) -> MerlinaORPOTrainer:
    """Build a `MerlinaORPOTrainer`.

    Args:
        model: a causal LM (`PreTrainedModel` or `PeftModel`), or a name/path to load.
        tokenizer: its tokenizer; needs a pad or EOS token and, for conversational data, a chat template.
        train_dataset: preference pairs in any accepted layout (see `prepare_preference_dataset`).
        eval_dataset: the same, a dict of them, or None.
        orpo_config: training arguments; None gives the trainer's defaults (`trl_contract.resolve_args`).
        peft_config: a `peft.PeftConfig` to train adapters instead of the whole model.
        **trainer_kwargs: passed on to the trainer (callbacks, optimizers, data_collator, ...).
    """
    return MerlinaORPOTrainer(model=model, args=orpo_config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              processing_class=tokenizer, peft_config=peft_config, **trainer_kwargs)
