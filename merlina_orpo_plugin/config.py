"""`ORPOConfig`: the training arguments of the standalone ORPO trainer.

Field names follow TRL's `trl.experimental.orpo.ORPOConfig` so a TRL script keeps working; the
fields TRL lacks (`max_prompt_length`, `nll_include_prompt`) are documented where they are declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments


@dataclass
class ORPOConfig(TrainingArguments):
    """Arguments of `MerlinaORPOTrainer`, on top of `transformers.TrainingArguments`.

    Defaults that differ from `TrainingArguments`, as in TRL: `learning_rate` 1e-6 (ORPO is
    usually run with 5e-6 to 8e-6 on 7B models; tune it), `logging_steps` 10,
    `remove_unused_columns` False (the collator needs the token columns).
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: the ORPO collator reads the `*_input_ids` columns itself."},
    )

    beta: float = field(
        default=0.1,
        metadata={
            "help": "Weight of the odds-ratio term, lambda in the paper (`alpha` in its code, `orpo_alpha` "
            "in Axolotl): loss = nll - beta * mean(logsigmoid(log_odds))."
        },
    )
    max_length: int | None = field(
        default=1024,
        metadata={
            "help": "Longest prompt + completion sequence, in tokens. Longer pairs are truncated (prompt "
            "from the left down to `max_prompt_length` first, then completions from the right), never "
            "dropped. None: no limit."
        },
    )
    max_prompt_length: int | None = field(
        default=512,
        metadata={
            "help": "Shortest the prompt is cut to when a pair is over `max_length` (TRL never cuts the "
            "prompt). None: prompts are never cut."
        },
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest completion, in tokens. None: derived per pair as whatever room the prompt "
            "leaves under `max_length`."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Set every dropout probability in the model to 0, as TRL does."},
    )
    nll_include_prompt: bool = field(
        default=True,
        metadata={
            "help": "True: the SFT term is the token mean NLL over prompt + chosen (the paper's code and "
            "TRL). False: over the chosen completion only."
        },
    )
    prefix_sharing: bool = field(
        default=True,
        metadata={
            "help": "Compute each prompt once: one sequence [prompt, chosen, rejected] per pair with a mask "
            "that hides the chosen tokens from the rejected ones. Needs attention `sdpa`, `eager` or "
            "`flex_attention`; off (with a logged reason) for flash-attention, sliding windows shorter than "
            "`max_length` and MoE router losses."
        },
    )
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "Pack several sequences per row (positions restart per sequence) so almost no padding is "
            "computed; same conditions as `prefix_sharing`."
        },
    )
    loss_chunk_size: int = field(
        default=512,
        metadata={
            "help": "Compute log-probs from the hidden states this many tokens at a time (recomputed in "
            "backward), so the [tokens, vocab] logits never exist at once. 0: the model's full logits."
        },
    )
    padding_value: int | None = field(
        default=None,
        metadata={"help": "Token id used to pad `input_ids`. None: the tokenizer's pad token (else EOS)."},
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata={"help": "Processes used to validate and tokenise the datasets."},
    )
    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` is a string."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"`beta` must be >= 0, got {self.beta}")
        if self.loss_chunk_size < 0:
            raise ValueError(f"`loss_chunk_size` must be >= 0 (0 turns chunking off), got {self.loss_chunk_size}")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be a positive number of tokens or None, got {value}")
        if (
            self.max_length is not None
            and self.max_prompt_length is not None
            and self.max_prompt_length >= self.max_length
        ):
            raise ValueError(
                f"`max_prompt_length` ({self.max_prompt_length}) must be smaller than `max_length` "
                f"({self.max_length}): the completion needs room"
            )
