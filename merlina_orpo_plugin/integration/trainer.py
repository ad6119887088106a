"""The ORPO trainer as Axolotl builds it: `ORPOTrainerMixin` on Axolotl's own trainer base.

On `AxolotlTrainer` the run keeps Axolotl's optimizers, LR groups, schedulers, RNG restore on
resume and FSDP checkpointing; the ORPO logic is the same mixin `MerlinaORPOTrainer` uses. The
options arrive as `merlina_<name>` training arguments (`MerlinaTrainingArgsMixin`, built from
`options.TRAINER_OPTIONS`; the plugin fills them from the YAML).
"""

from __future__ import annotations

from dataclasses import field, make_dataclass

from axolotl.core.trainers.base import AxolotlTrainer

from ..model.setup import disable_dropout_in_model
from ..options import TRAINER_OPTIONS, settings_from
from ..trainer import ORPOTrainerMixin

# Named apart from `orpo_alpha`: Axolotl's trainer switches to its legacy ORPO loss when a training
# argument of that name is set.
MerlinaTrainingArgsMixin = make_dataclass(
    "MerlinaTrainingArgsMixin",
    [
        (f"merlina_{o.name}", o.annotation, field(default=o.default, metadata={"help": o.help}))
        for o in TRAINER_OPTIONS
    ],
)
MerlinaTrainingArgsMixin.__module__ = __name__
MerlinaTrainingArgsMixin.__doc__ = "ORPO fields merged into Axolotl's training arguments (see `options.OPTIONS`)."


class AxolotlMerlinaORPOTrainer(ORPOTrainerMixin, AxolotlTrainer):
    """`rl: orpo_standalone`'s trainer: Axolotl passes the model (LoRA already applied), datasets and collator.

    Axolotl builds the collators before any trainer knows the model's speed plan; `_setup_orpo`
    replaces them with collators built from the plan (nothing is mutated).
    """

    tag_names = ["axolotl", "orpo", "merlina-orpo"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = settings_from(self.args, prefix="merlina_")
        if settings.disable_dropout:
            disable_dropout_in_model(self.model)
        self._setup_orpo(settings)

    def store_metrics(self, metrics, train_eval="train", reduction="mean"):
        """ORPO metrics are averaged; other reductions go to Axolotl's own store."""
        if reduction != "mean":
            return AxolotlTrainer.store_metrics(self, metrics, train_eval=train_eval, reduction=reduction)
        return super().store_metrics(metrics, train_eval=train_eval)
