"""TRL's `ORPOTrainer.__init__` arguments that `transformers.Trainer` does not handle by itself.

`MerlinaORPOTrainer.__init__` runs these before tokenising: `resolve_args` (``args``),
`resolve_model` (``model`` as a name or path, or None with ``model_init``), `default_tokenizer`
(``processing_class`` omitted), and `prediction_step` uses `eval_predictions` (what
``compute_metrics`` and ``preprocess_logits_for_metrics`` receive). Each function names the
behaviour of TRL 1.9 to 1.16 (`trl.experimental.orpo.ORPOTrainer`) it follows, and where it does
more than TRL, why; tests/test_trl_contract.py runs TRL and ours side by side on each.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .batch.collator import ORPODataCollator
from .config import ORPOConfig
from .data import prepare_preference_dataset
from .model.setup import prepare_model

logger = logging.getLogger("merlina_orpo_plugin.trl_contract")

#: The ``(predictions, label_ids)`` TRL hands ``compute_metrics``: these two eval metrics per batch.
PREDICTION_METRICS = ("logits/chosen", "logits/rejected")


class ArgsTypeError(TypeError, AttributeError):
    """``args`` is not an `ORPOConfig`.

    TRL reads ``args.model_init_kwargs`` first, so any other ``args`` fails there with an
    AttributeError; this error is also a TypeError (what it is), so either ``except`` catches it.
    """


def resolve_args(args: Any) -> ORPOConfig:
    """``args``, checked. None gives ``ORPOConfig(output_dir="orpo_output")``, as `transformers.Trainer`
    gives default arguments (TRL's signature allows None but then fails on ``None.model_init_kwargs``)."""
    if args is None:
        return ORPOConfig(output_dir="orpo_output")
    if not isinstance(args, ORPOConfig):
        raise ArgsTypeError(f"`args` must be a merlina_orpo_plugin.ORPOConfig, got {type(args).__name__}")
    return args


def set_init_seed(seed: int, full_determinism: bool = False) -> None:
    """The seeding `transformers.Trainer` does before it calls ``model_init`` (and TRL 1.15+ before PEFT):
    `set_seed` (Python, NumPy, torch), or `enable_full_determinism` (also deterministic torch kernels)."""
    from transformers.trainer_utils import enable_full_determinism, set_seed

    enable_full_determinism(seed) if full_determinism else set_seed(seed)


class PreparedModelInit:
    """``model_init`` whose every model goes through `model.setup.prepare_model` (dropout off, PEFT).

    Passed to `transformers.Trainer` as its ``model_init``: the first call returns the model already
    built to tokenise the datasets (whether it is an encoder-decoder decides the layout), every later
    one (``train()``, a hyperparameter search trial) a fresh model, prepared the same way.
    """

    def __init__(self, model_init, args: ORPOConfig, peft_config=None):
        self.model_init, self.args, self.peft_config = model_init, args, peft_config
        self.built = None

    def first(self):
        set_init_seed(self.args.seed, self.args.full_determinism)
        self.built = self(None)
        return self.built

    def __call__(self, trial=None):
        if self.built is not None:
            model, self.built = self.built, None
            return model
        from transformers.trainer_utils import number_of_arguments

        model = self.model_init() if number_of_arguments(self.model_init) == 0 else self.model_init(trial)
        return prepare_model(model, self.args, self.peft_config)


def resolve_model(model, model_init, args: ORPOConfig, peft_config=None):
    """``(model, model_init)`` for the trainer: ``model`` loaded and prepared (`prepare_model`).

    ``model=None`` with a ``model_init``: its first model, and ``model_init`` wrapped in
    `PreparedModelInit`. TRL fails there (``is_encoder_decoder`` required, then ``None.modules()``);
    `transformers.Trainer` supports it, so ours does. Both given: `transformers.Trainer` raises the
    ValueError it raises under TRL ("either a `model` or `model_init` argument, but not both").
    """
    if model is None and model_init is not None:
        wrapped = PreparedModelInit(model_init, args, peft_config)
        return wrapped.first(), wrapped
    return prepare_model(model, args, peft_config), model_init


def default_tokenizer(model, args: ORPOConfig, revision: str | None = None):
    """TRL's tokenizer when ``processing_class`` is omitted: ``AutoTokenizer.from_pretrained`` of the
    model's name or path (``model.config._name_or_path``), with ``trust_remote_code`` and, as TRL 1.15+,
    the ``revision`` of ``model_init_kwargs`` when ``model`` was a string. A model built in memory
    has no name: the loader's own error (an OSError) then says so, as under TRL."""
    from transformers import AutoTokenizer

    name = getattr(getattr(model, "config", None), "_name_or_path", "")
    return AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=args.trust_remote_code)


def default_collator(data_collator, tokenizer, args: ORPOConfig):
    """``data_collator``, or the ORPO collator when None. That one reads the ``*_input_ids`` columns,
    so ``remove_unused_columns`` is turned off for it (with a warning), as TRL does for its own."""
    if data_collator is not None:
        return data_collator
    if args.remove_unused_columns:
        args.remove_unused_columns = False
        logger.warning("`remove_unused_columns=True` would drop the columns the ORPO collator reads: set to False")
    return ORPODataCollator(tokenizer, pad_token_id=args.padding_value)


def model_revision(model, args: ORPOConfig) -> str | None:
    """The ``revision`` a string ``model`` is loaded at (TRL 1.15+ loads the tokenizer at it too)."""
    return (args.model_init_kwargs or {}).get("revision") if isinstance(model, str) else None


def eval_predictions(outputs: dict, model, ignore_keys: list[str] | None, device):
    """TRL's ``(logits, labels)`` of one eval batch: ``[logits/chosen, logits/rejected]`` batch means
    (float32, less those whose ``eval_`` name is in ``ignore_keys``) and as many zeros as labels.

    ``ignore_keys`` None: the model config's ``keys_to_ignore_at_inference``, as TRL. The evaluation
    loop concatenates them over batches; ``compute_metrics`` gets ``predictions`` of ``2 * batches``.
    """
    missing = [name for name in PREDICTION_METRICS if name not in outputs]
    if missing:  # a subclass's own `compute_loss` outputs: say what `compute_metrics` needs from them
        raise KeyError(f"`compute_metrics` gets TRL's predictions, the batch's {' and '.join(PREDICTION_METRICS)}: "
                       f"`compute_loss(..., return_outputs=True)` must return them in its outputs (missing {missing})")
    if ignore_keys is None:
        ignore_keys = getattr(getattr(model, "config", None), "keys_to_ignore_at_inference", None) or []
    values = [outputs[name] for name in PREDICTION_METRICS if f"eval_{name}" not in ignore_keys]
    if values:
        logits = torch.stack([torch.as_tensor(v, device=device).float().reshape(()) for v in values])
    else:
        logits = torch.zeros(0, device=device)
    return logits, torch.zeros(logits.shape[0], device=device)


def tokenise_datasets(train_dataset, eval_dataset, tokenizer, args: ORPOConfig, model):
    """``(train, eval)`` validated and tokenised (`prepare_preference_dataset`), in any layout TRL takes.

    ``eval_dataset`` may be a dict (a `datasets.DatasetDict` too) of datasets: Trainer evaluates each
    under ``eval_<name>_``. TRL takes only a DatasetDict (it calls ``.map`` on it). ``train_dataset``
    may be None (TRL: ValueError): ``evaluate()`` works, ``train()`` raises Trainer's ValueError.
    """
    seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    train = _tokenise(train_dataset, tokenizer, args, "train_dataset", seq2seq)
    if isinstance(eval_dataset, dict):
        evaluation = {name: _tokenise(ds, tokenizer, args, f"eval_dataset[{name!r}]", seq2seq)
                      for name, ds in eval_dataset.items()}
    else:
        evaluation = _tokenise(eval_dataset, tokenizer, args, "eval_dataset", seq2seq)
    return train, evaluation


def _tokenise(dataset, tokenizer, args: ORPOConfig, source: str, encoder_decoder: bool):
    if dataset is None:
        return None
    from accelerate import PartialState

    # The main process tokenises first and fills the datasets cache; the others read it.
    with PartialState().main_process_first():
        tokenised, _stats = prepare_preference_dataset(
            dataset, tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length, num_proc=args.dataset_num_proc,
            source=source, encoder_decoder=encoder_decoder,
        )
    return tokenised
