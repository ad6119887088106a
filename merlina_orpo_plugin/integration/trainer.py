"""The ORPO trainer as Axolotl builds it: `ORPOTrainerMixin` on Axolotl's own trainer base.

On `AxolotlTrainer` the run keeps Axolotl's optimizers, LR groups, schedulers, RNG restore on
resume and FSDP checkpointing; the ORPO logic is the same mixin `MerlinaORPOTrainer` uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from axolotl.core.trainers.base import AxolotlTrainer

from ..model_setup import disable_dropout_in_model
from ..trainer import ORPOTrainerMixin


@dataclass
class MerlinaTrainingArgsMixin:
    """ORPO fields merged into Axolotl's training arguments (filled from the YAML by the plugin).

    Named apart from `orpo_alpha`: Axolotl's trainer switches to its legacy ORPO loss when a
    training argument of that name is set.
    """

    merlina_beta: float = field(default=0.1, metadata={"help": "ORPO lambda (`orpo_alpha`/`rl_beta`)."})
    merlina_nll_include_prompt: bool = field(default=True, metadata={"help": "NLL over prompt + chosen."})
    merlina_disable_dropout: bool = field(default=True, metadata={"help": "Zero all dropout."})
    merlina_prefix_sharing: bool = field(default=True, metadata={"help": "Compute each prompt once."})
    merlina_padding_free: bool = field(default=True, metadata={"help": "Pack pairs, no padding compute."})
    merlina_loss_chunk_size: int = field(default=512, metadata={"help": "Tokens per chunk of the loss; 0: off."})
    merlina_max_length: int | None = field(default=None, metadata={"help": "`sequence_len`."})


class AxolotlMerlinaORPOTrainer(ORPOTrainerMixin, AxolotlTrainer):
    """`rl: orpo_standalone`'s trainer: Axolotl passes the model (LoRA already applied), datasets and collator."""

    tag_names = ["axolotl", "orpo", "merlina-orpo"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.merlina_disable_dropout:
            disable_dropout_in_model(self.model)
        self._setup_orpo(
            beta=self.args.merlina_beta,
            nll_include_prompt=self.args.merlina_nll_include_prompt,
            prefix_sharing=self.args.merlina_prefix_sharing,
            padding_free=self.args.merlina_padding_free,
            loss_chunk_size=self.args.merlina_loss_chunk_size,
            max_length=self.args.merlina_max_length,
        )

    def store_metrics(self, metrics, train_eval="train", reduction="mean"):
        """ORPO metrics are averaged; other reductions go to Axolotl's own store."""
        if reduction != "mean":
            return AxolotlTrainer.store_metrics(self, metrics, train_eval=train_eval, reduction=reduction)
        return super().store_metrics(metrics, train_eval=train_eval)
