"""TRL's `ORPOTrainer.__init__` contract, argument by argument: a script runs unchanged after
`from trl.experimental.orpo import ORPOTrainer, ORPOConfig` becomes
`from merlina_orpo_plugin import MerlinaORPOTrainer as ORPOTrainer, ORPOConfig`.

Checked against the installed TRL (1.9 in the main environment, 1.14.1 / 1.16 in the compat legs),
run side by side with ours on the same tiny Llama (copied weights) and pairs: the signature and every
`ORPOConfig` field with its default; for each argument the observable result (the tokenizer and model
loaded, the metric keys and values logged, what `compute_metrics` and `preprocess_logits_for_metrics`
receive, the callbacks called, the optimizer used, the PEFT wrapping) or, where TRL raises, the same
exception class. Where ours deliberately accepts what TRL refuses, the test pins TRL's error and
checks what ours does instead (`merlina_orpo_plugin/trl_contract.py` says why for each).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import warnings

import pytest
import torch
import trl
from datasets import Dataset, DatasetDict
from packaging.version import Version
from testkit import conversational_rows, single_turn_pairs, tiny_llama, tiny_model_dir
from transformers import TrainerCallback, TrainingArguments

from merlina_orpo_plugin import MerlinaORPOTrainer, ORPOConfig

with warnings.catch_warnings():  # "importing from trl.experimental" is the point here
    warnings.simplefilter("ignore")
    from trl.experimental import orpo as trl_orpo  # the oracle, imported only by the tests

COMMON = dict(
    per_device_train_batch_size=2, per_device_eval_batch_size=2, learning_rate=1e-3, lr_scheduler_type="constant",
    max_steps=2, logging_steps=1, seed=0, report_to="none", bf16=False, gradient_checkpointing=False,
    use_cpu=True, save_strategy="no", dataloader_num_workers=0, max_length=1024,
)
METRICS = ("loss", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
           "logps/rejected", "log_odds_ratio", "log_odds_chosen")


@pytest.fixture(scope="module")
def pairs():
    return Dataset.from_list(single_turn_pairs(5))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """A saved tiny Llama with SmolLM2's tokenizer files: a model "name" without a hub."""
    return str(tiny_model_dir(tmp_path_factory.mktemp("model")))


def both(tmp_path, model, pairs, config=None, **kwargs):
    """(ours, TRL's) built from the same arguments; a module ``model`` is copied for each."""
    made = []
    for name, trainer_cls, config_cls in (("ours", MerlinaORPOTrainer, ORPOConfig),
                                          ("trl", trl_orpo.ORPOTrainer, trl_orpo.ORPOConfig)):
        args = config_cls(output_dir=str(tmp_path / name), **{**COMMON, **(config or {})})
        own = model if isinstance(model, str) else copy.deepcopy(model)
        made.append(trainer_cls(model=own, args=args, train_dataset=pairs, **kwargs))
    return made


def raises_in_both(error, tmp_path, model_factory, config=None, **kwargs):
    """Both trainers raise ``error`` (an exception class) for the same arguments."""
    for name, trainer_cls, config_cls in (("ours", MerlinaORPOTrainer, ORPOConfig),
                                          ("trl", trl_orpo.ORPOTrainer, trl_orpo.ORPOConfig)):
        args = config_cls(output_dir=str(tmp_path / name), **{**COMMON, **(config or {})})
        with pytest.raises(error):
            trainer_cls(model=model_factory(), args=args, **kwargs)


def assert_same_metrics(mine: dict, reference: dict, prefix: str = "eval_"):
    for name in METRICS:
        key = prefix + name
        assert mine[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key


def test_signature_and_config_fields_are_trls(tmp_path):
    """Every TRL `__init__` parameter with its default, every TRL `ORPOConfig` field with its default.

    Exceptions: ours also takes ``**kwargs``, passed on to `transformers.Trainer` (its
    ``optimizer_cls_and_kwargs``; an unknown name is still a TypeError, next test).
    ``remove_unused_columns`` defaults to False in ours: TRL keeps Trainer's True and sets it to False
    in `__init__` whenever it uses its own collator (the only way its batches keep their columns);
    both trainers end with False (next test).
    """
    theirs = inspect.signature(trl_orpo.ORPOTrainer.__init__).parameters
    ours = inspect.signature(MerlinaORPOTrainer.__init__).parameters
    for name, parameter in theirs.items():
        assert name in ours and ours[name].default == parameter.default, name
    assert [p.kind for p in ours.values() if p.name not in theirs] == [inspect.Parameter.VAR_KEYWORD]

    def default(f):
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    our_fields = {f.name: f for f in dataclasses.fields(ORPOConfig)}
    for field in dataclasses.fields(trl_orpo.ORPOConfig):
        assert field.name in our_fields, field.name
        if field.name != "remove_unused_columns":
            assert default(our_fields[field.name]) == default(field), field.name
    assert default(our_fields["remove_unused_columns"]) is False
    for config_cls in (ORPOConfig, trl_orpo.ORPOConfig):  # both end with bf16 on unless fp16, on a CPU
        assert config_cls(output_dir=str(tmp_path), use_cpu=True).bf16 is True


def test_data_collator_and_remove_unused_columns_as_in_trl(tmp_path, tokenizer, pairs):
    """No ``data_collator``: each trainer's own, with ``remove_unused_columns=True`` turned off for it
    (TRL warns and sets it to False). A given collator is the one every batch comes from, with the same
    losses as TRL's own padding collator given the same way."""
    from trl.experimental.utils import DPODataCollatorWithPadding

    from merlina_orpo_plugin import ORPODataCollator

    ours, theirs = both(tmp_path, tiny_llama(), pairs, config=dict(remove_unused_columns=True),
                        processing_class=tokenizer)
    assert ours.args.remove_unused_columns is False and theirs.args.remove_unused_columns is False
    runs = []
    for trainer_cls, config_cls, collator in (
        (MerlinaORPOTrainer, ORPOConfig, ORPODataCollator(tokenizer)),
        (trl_orpo.ORPOTrainer, trl_orpo.ORPOConfig, DPODataCollatorWithPadding(pad_token_id=tokenizer.pad_token_id)),
    ):
        batches = []

        def counting(features, collator=collator, batches=batches):
            batches.append(len(features))
            return collator(features)

        args = config_cls(output_dir=str(tmp_path), remove_unused_columns=False, **COMMON)
        trainer = trainer_cls(model=tiny_llama(), args=args, train_dataset=pairs, processing_class=tokenizer,
                              data_collator=counting)
        assert trainer.data_collator is counting
        trainer.train()
        runs.append((batches, [log["loss"] for log in trainer.state.log_history if "loss" in log]))
    (my_batches, my_losses), (their_batches, their_losses) = runs
    assert my_batches == their_batches and my_batches[:2] == [2, 2]  # then the loader's look-ahead batch
    assert my_losses == pytest.approx(their_losses, rel=1e-4)


def test_unknown_keyword_raises_type_error_as_in_trl(tmp_path, tokenizer, pairs):
    for unknown in ({"tokenizer": tokenizer}, {"compute_loss_func": lambda *a, **k: 0}):
        raises_in_both(TypeError, tmp_path, tiny_llama, train_dataset=pairs, processing_class=tokenizer, **unknown)


def test_args_not_an_orpo_config_raise_attribute_error_as_in_trl(tmp_path, tokenizer, pairs, monkeypatch):
    """TRL reads ``args.model_init_kwargs`` first: any other object is an AttributeError. Ours raises
    one that is also a TypeError. ``args=None``: TRL fails the same way; ours, as `transformers.Trainer`,
    uses default arguments."""
    for args in (TrainingArguments(output_dir=str(tmp_path / "t")), {"beta": 0.1}):
        for trainer_cls in (MerlinaORPOTrainer, trl_orpo.ORPOTrainer):
            with pytest.raises(AttributeError):
                trainer_cls(model=tiny_llama(), args=args, train_dataset=pairs, processing_class=tokenizer)
        with pytest.raises(TypeError, match="must be a merlina_orpo_plugin.ORPOConfig"):
            MerlinaORPOTrainer(model=tiny_llama(), args=args, train_dataset=pairs, processing_class=tokenizer)
    with pytest.raises(AttributeError):
        trl_orpo.ORPOTrainer(model=tiny_llama(), args=None, train_dataset=pairs, processing_class=tokenizer)
    monkeypatch.chdir(tmp_path)
    ours = MerlinaORPOTrainer(model=tiny_llama(), train_dataset=pairs, processing_class=tokenizer)
    assert isinstance(ours.args, ORPOConfig) and ours.args.output_dir == "orpo_output"


def test_train_dataset_none(tmp_path, tokenizer, pairs):
    """TRL requires it (ValueError). Ours builds, evaluates as TRL does, and refuses to ``train()``."""
    with pytest.raises(ValueError, match="train_dataset"):
        trl_orpo.ORPOTrainer(model=tiny_llama(), args=trl_orpo.ORPOConfig(output_dir=str(tmp_path), **COMMON),
                             processing_class=tokenizer)
    theirs = trl_orpo.ORPOTrainer(model=tiny_llama(), args=trl_orpo.ORPOConfig(output_dir=str(tmp_path), **COMMON),
                                  train_dataset=pairs, eval_dataset=pairs, processing_class=tokenizer)
    only_eval = MerlinaORPOTrainer(model=tiny_llama(), args=ORPOConfig(output_dir=str(tmp_path / "e"), **COMMON),
                                   eval_dataset=pairs, processing_class=tokenizer)
    assert_same_metrics(only_eval.evaluate(), theirs.evaluate())
    with pytest.raises(ValueError, match="train_dataset"):
        only_eval.train()


@pytest.mark.parametrize("given", ["path string", "loaded from the path"])
def test_model_by_name_and_processing_class_omitted_load_what_trl_loads(tmp_path, pairs, model_path, given):
    """``model`` a path (a hub name resolves the same way) or a model loaded from one, no
    ``processing_class``: both load the tokenizer from ``config._name_or_path`` and get the same
    model, tokenizer and evaluation."""
    from transformers import AutoModelForCausalLM

    path = model_path
    model = path if given == "path string" else AutoModelForCausalLM.from_pretrained(path)
    ours, theirs = both(tmp_path, model, pairs, eval_dataset=pairs)
    assert type(ours.processing_class) is type(theirs.processing_class)
    assert ours.processing_class.name_or_path == theirs.processing_class.name_or_path == path
    assert ours.processing_class.get_vocab() == theirs.processing_class.get_vocab()
    assert ours.processing_class.chat_template == theirs.processing_class.chat_template
    assert type(ours.model) is type(theirs.model) and ours.model.dtype == theirs.model.dtype
    mine, reference = ours.model.state_dict(), theirs.model.state_dict()
    assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine)
    assert_same_metrics(ours.evaluate(), theirs.evaluate())


def test_processing_class_omitted_for_a_model_without_a_name_raises_oserror_as_in_trl(tmp_path, pairs):
    raises_in_both(OSError, tmp_path, tiny_llama, train_dataset=pairs)  # config._name_or_path is ""


def test_model_init_kwargs_as_in_trl(tmp_path, tokenizer, pairs, model_path):
    """A dtype name is loaded as that dtype; a dtype of another type is a ValueError, an unknown name an
    AttributeError; any ``model_init_kwargs`` (even empty) with a loaded model is a ValueError."""
    path = model_path
    ours, theirs = both(tmp_path, path, pairs, config=dict(model_init_kwargs={"dtype": "bfloat16"}))
    assert ours.model.dtype == theirs.model.dtype == torch.bfloat16
    assert getattr(ours.model, "hf_device_map", None) == getattr(theirs.model, "hf_device_map", None)
    for kwargs, error in (({"dtype": 5}, ValueError), ({"dtype": "floatx"}, AttributeError)):
        raises_in_both(error, tmp_path, lambda: path, config=dict(model_init_kwargs=kwargs), train_dataset=pairs)
    raises_in_both(ValueError, tmp_path, tiny_llama, config=dict(model_init_kwargs={}), train_dataset=pairs,
                   processing_class=tokenizer)


def _prediction_recorders():
    seen = {"preprocess": [], "compute": []}

    def preprocess(logits, labels):
        seen["preprocess"].append((tuple(logits.shape), tuple(labels.shape)))
        return logits * 2

    def compute_metrics(prediction):
        seen["compute"].append(prediction)
        return {"chosen_mean": float(prediction.predictions[0::2].mean()), "count": len(prediction.predictions)}

    return seen, preprocess, compute_metrics


@pytest.mark.parametrize("preprocess_logits", [False, True])
def test_compute_metrics_and_preprocess_logits_get_what_trl_gives(tmp_path, tokenizer, pairs, preprocess_logits):
    """``compute_metrics`` gets per eval batch ``[logits/chosen, logits/rejected]`` means (after
    ``preprocess_logits_for_metrics``, called once per batch) and zero labels; its keys are logged as
    ``eval_<key>``. The two means are each trainer's own ``logits/*`` metric: ours averages the logits
    of the positions that predict the completions, TRL's every position of its padded rows, so only
    their shapes and their relation to the logged metric are compared, not their values. Five pairs in
    batches of two: three batches, six values, of which accelerate keeps five (it cuts the last batch's
    output to the pairs left in the dataset), in both."""
    runs = []
    for trainer_cls, config_cls in ((MerlinaORPOTrainer, ORPOConfig), (trl_orpo.ORPOTrainer, trl_orpo.ORPOConfig)):
        seen, preprocess, compute_metrics = _prediction_recorders()
        trainer = trainer_cls(model=tiny_llama(), args=config_cls(output_dir=str(tmp_path), **COMMON),
                              train_dataset=pairs, eval_dataset=pairs, processing_class=tokenizer,
                              compute_metrics=compute_metrics,
                              preprocess_logits_for_metrics=preprocess if preprocess_logits else None)
        runs.append((trainer.evaluate(), trainer.predict(trainer.eval_dataset), seen))
    (mine, my_prediction, my_seen), (reference, their_prediction, their_seen) = runs
    assert set(reference) <= set(mine) and {"eval_chosen_mean", "eval_count"} <= set(reference)
    assert mine["eval_count"] == reference["eval_count"] == 5
    assert my_seen["preprocess"] == their_seen["preprocess"]  # [((2,), (2,))] * 3 per call when given
    assert len(my_seen["preprocess"]) == (6 if preprocess_logits else 0)  # evaluate() and predict()
    for metrics, seen, prediction in ((mine, my_seen, my_prediction), (reference, their_seen, their_prediction)):
        factor = 2 if preprocess_logits else 1
        assert metrics["eval_chosen_mean"] == pytest.approx(factor * metrics["eval_logits/chosen"], rel=1e-5)
        assert prediction.predictions.shape == prediction.label_ids.shape == (5,)
        assert set(prediction.metrics) >= {"test_loss", "test_chosen_mean", "test_count"}
    for mine_seen, their in zip(my_seen["compute"], their_seen["compute"], strict=True):
        assert mine_seen.predictions.shape == their.predictions.shape == (5,)
        assert mine_seen.predictions.dtype == their.predictions.dtype
        assert (mine_seen.label_ids == their.label_ids).all() and not their.label_ids.any()
    assert_same_metrics(mine, reference)


def test_compute_metrics_with_a_subclass_loss_lacking_trls_predictions_says_what_is_missing(tmp_path, tokenizer, pairs):
    """Ours evaluates through ``compute_loss`` (TRL through ``get_batch_loss_metrics``): a subclass whose
    outputs lack ``logits/chosen`` / ``logits/rejected`` gets a KeyError naming them, not empty metrics."""

    class OwnOutputs(MerlinaORPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs)
            return (loss, {"loss_copy": loss.detach()}) if return_outputs else loss

    args = ORPOConfig(output_dir=str(tmp_path), **COMMON)
    trainer = OwnOutputs(model=tiny_llama(), args=args, train_dataset=pairs, eval_dataset=pairs,
                         processing_class=tokenizer, compute_metrics=lambda prediction: {})
    assert "eval_loss" in OwnOutputs(model=tiny_llama(), args=args, train_dataset=pairs, eval_dataset=pairs,
                                     processing_class=tokenizer).evaluate()  # loss only: no predictions needed
    with pytest.raises(KeyError, match=r"logits/chosen and logits/rejected.*missing"):
        trainer.evaluate()


class Recorder(TrainerCallback):
    """Every callback event, in order, and a copy of each ``logs`` dict."""

    def __init__(self):
        self.events, self.logs = [], []


def _recording(event: str):
    def record(self, args, state, control, logs=None, **kwargs):
        self.events.append(event)
        if logs is not None:
            self.logs.append(dict(logs))
    return record


for _event in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
    setattr(Recorder, _event, _recording(_event))


def test_callbacks_are_called_as_in_trl(tmp_path, tokenizer, pairs):
    """``callbacks=``: the same events in the same order (from ``on_init_end``), every key TRL logs
    logged by ours, with the same losses."""
    recorders = []
    for trainer_cls, config_cls in ((MerlinaORPOTrainer, ORPOConfig), (trl_orpo.ORPOTrainer, trl_orpo.ORPOConfig)):
        recorder = Recorder()
        config = config_cls(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=2, **COMMON)
        trainer_cls(model=tiny_llama(), args=config, train_dataset=pairs, eval_dataset=pairs,
                    processing_class=tokenizer, callbacks=[recorder]).train()
        recorders.append(recorder)
    mine, theirs = recorders
    assert mine.events == theirs.events and {"on_init_end", "on_evaluate", "on_log"} <= set(mine.events)
    assert len(mine.logs) == len(theirs.logs)
    for a, b in zip(mine.logs, theirs.logs, strict=True):
        assert set(b) <= set(a)
        for key in ("loss", "eval_loss", "nll_loss", "eval_rewards/chosen"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_optimizers_are_used_as_in_trl(tmp_path, tokenizer, pairs):
    """A given (optimizer, scheduler): the optimizer steps the model (its state fills), the scheduler sets
    the logged learning rate, and the losses follow TRL's."""
    runs = []
    for trainer_cls, config_cls in ((MerlinaORPOTrainer, ORPOConfig), (trl_orpo.ORPOTrainer, trl_orpo.ORPOConfig)):
        model = tiny_llama()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
        trainer = trainer_cls(model=model, args=config_cls(output_dir=str(tmp_path), **COMMON), train_dataset=pairs,
                              processing_class=tokenizer, optimizers=(optimizer, scheduler))
        trainer.train()
        assert trainer.lr_scheduler is scheduler and len(optimizer.state) > 0
        runs.append([log for log in trainer.state.log_history if "loss" in log])
    mine, reference = runs
    assert [log["learning_rate"] for log in mine] == [log["learning_rate"] for log in reference] == [0.05, 0.025]
    for a, b in zip(mine, reference, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_model_init(tmp_path, tokenizer, pairs):
    """``model`` and ``model_init`` together: Trainer's ValueError in both. ``model_init`` alone: TRL
    fails (ValueError without ``is_encoder_decoder``, then AttributeError on ``None.modules()``); ours
    builds the model from it (dropout off), evaluates as TRL does on that model, and ``train()`` builds
    a fresh one, as `transformers.Trainer` does."""
    calls = []

    def model_init():
        calls.append(1)
        return tiny_llama(seed=0, attention_dropout=0.5)

    raises_in_both(ValueError, tmp_path, tiny_llama, model_init=model_init, train_dataset=pairs,
                   processing_class=tokenizer)
    for config, error in (({}, ValueError), ({"is_encoder_decoder": False}, AttributeError)):
        with pytest.raises(error):
            trl_orpo.ORPOTrainer(model_init=model_init, args=trl_orpo.ORPOConfig(output_dir=str(tmp_path), **COMMON,
                                 **config), train_dataset=pairs, processing_class=tokenizer)
    calls.clear()
    ours = MerlinaORPOTrainer(model_init=model_init, args=ORPOConfig(output_dir=str(tmp_path / "o"), **COMMON),
                              train_dataset=pairs, eval_dataset=pairs, processing_class=tokenizer)
    assert len(calls) == 1 and ours.model.model.layers[0].self_attn.attention_dropout == 0.0
    theirs = trl_orpo.ORPOTrainer(model=tiny_llama(seed=0, attention_dropout=0.5), train_dataset=pairs,
                                  args=trl_orpo.ORPOConfig(output_dir=str(tmp_path / "t"), **COMMON),
                                  eval_dataset=pairs, processing_class=tokenizer)
    assert_same_metrics(ours.evaluate(), theirs.evaluate())
    first = ours.model
    ours.train()
    assert len(calls) == 2 and ours.model is not first
    assert ours.model.model.layers[0].self_attn.attention_dropout == 0.0


def test_peft_config_as_in_trl(tmp_path, tokenizer, pairs):
    """The same adapters trained (names and sizes), the same evaluation; a ``peft_config`` that is not a
    PeftConfig is a TypeError, one with a model that is already a PeftModel a ValueError."""
    from peft import LoraConfig, get_peft_model

    def lora():
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    ours, theirs = both(tmp_path, tiny_llama(), pairs, eval_dataset=pairs, processing_class=tokenizer,
                        peft_config=lora())
    trainable = [{n: p.shape for n, p in t.model.named_parameters() if p.requires_grad} for t in (ours, theirs)]
    assert trainable[0] == trainable[1] and trainable[0]
    assert_same_metrics(ours.evaluate(), theirs.evaluate())
    raises_in_both(TypeError, tmp_path, tiny_llama, train_dataset=pairs, processing_class=tokenizer,
                   peft_config={"r": 4})
    raises_in_both(ValueError, tmp_path, lambda: get_peft_model(tiny_llama(), lora()), train_dataset=pairs,
                   processing_class=tokenizer, peft_config=lora())


def test_eval_dataset_dict_metrics_per_name(tmp_path, tokenizer, pairs):
    """A DatasetDict: every key TRL logs per name (``eval_<name>_loss`` ...) and, per name, ORPO metrics
    equal to TRL's on that dataset alone. TRL logs its ORPO metrics without the name (``eval_<metric>``:
    the last dataset's); ours under ``eval_<name>_<metric>``. A plain dict: TRL fails (it calls
    ``.map`` on it, AttributeError); ours evaluates it as the DatasetDict."""
    parts = {"a": pairs, "b": pairs.select(range(3))}
    ours, theirs = both(tmp_path, tiny_llama(), pairs, eval_dataset=DatasetDict(parts), processing_class=tokenizer)
    mine, reference = ours.evaluate(), theirs.evaluate()
    assert {k for k in reference if k.startswith(("eval_a_", "eval_b_"))} <= set(mine)
    for name in parts:
        assert_same_metrics({k.replace(f"eval_{name}_", "eval_"): v for k, v in mine.items()},
                            theirs.evaluate(eval_dataset=name))
    with pytest.raises(AttributeError):
        both(tmp_path, tiny_llama(), pairs, eval_dataset=dict(parts), processing_class=tokenizer)
    plain = MerlinaORPOTrainer(model=copy.deepcopy(ours.model), args=ours.args, train_dataset=pairs,
                               eval_dataset=dict(parts), processing_class=tokenizer)
    assert plain.evaluate().keys() == mine.keys()


def _layouts():
    def implicit(rows):
        return [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]

    standard, conversation = single_turn_pairs(3), conversational_rows()[:3]
    return {"standard": standard, "implicit prompt": implicit(standard), "conversational": conversation,
            "conversational implicit prompt": implicit(conversation)}


@pytest.mark.parametrize("layout", list(_layouts()))
def test_trl_dataset_layouts_give_trls_sequences(tmp_path, tokenizer, layout):
    """Each of TRL's preference layouts: prompt + completion ids are TRL's full sequences. In a
    conversation TRL appends an EOS after the template's ``<|im_end|>\\n`` (tests/test_data_tokenize.py
    pins that defect), so there its last token is left out."""
    rows = Dataset.from_list(_layouts()[layout])
    ours, theirs = both(tmp_path, tiny_llama(), rows, processing_class=tokenizer)
    extra = 1 if layout.startswith("conversational") else 0
    for mine, reference in zip(ours.train_dataset, theirs.train_dataset, strict=True):
        for side in ("chosen", "rejected"):
            expected = reference[f"{side}_input_ids"]
            assert mine["prompt_input_ids"] + mine[f"{side}_input_ids"] == expected[: len(expected) - extra]


def test_gradient_accumulation_scaling_is_declared_as_in_trl():
    """TRL 1.15+ declares ``loss_is_scaled_for_ga = False`` (transformers 5.19+ then divides the loss by
    the accumulation steps), TRL 1.9 sets ``model_accepts_loss_kwargs = False`` for the same effect; ours
    does both (tests/test_trainer.py checks the accumulated gradient itself)."""
    assert MerlinaORPOTrainer.loss_is_scaled_for_ga is False
    # By TRL's version, not hasattr: under transformers 5.19+ every Trainer has the attribute (None,
    # "decide by model_accepts_loss_kwargs"), which TRL 1.14 inherits without setting it.
    if Version(trl.__version__) >= Version("1.15"):
        assert trl_orpo.ORPOTrainer.loss_is_scaled_for_ga is MerlinaORPOTrainer.loss_is_scaled_for_ga
