"""Rows written by the project in the exact column layouts of public preference datasets, quirks included.

Each dataset's rows keep every column the dataset has (the strategies must ignore the ones they do
not read) and the quirks issue 10 names: HH-RLHF transcripts whose final Assistant turn is empty
("\\n\\nAssistant:" and nothing after), pairs whose chosen and rejected are the same, empty answers
in message lists. The texts are the project's own; only the shapes follow the public datasets.
"""

from __future__ import annotations


def _user(text):
    return {"content": text, "role": "user"}  # key order as in the H4 and argilla parquet files


def _assistant(text):
    return {"content": text, "role": "assistant"}


def _hh(*turns: str) -> str:
    """An HH-RLHF transcript: alternating Human / Assistant turns, each after a blank line."""
    speakers = ("Human", "Assistant")
    return "".join(f"\n\n{speakers[i % 2]}:" + (f" {turn}" if turn else "") for i, turn in enumerate(turns))


# Anthropic/hh-rlhf: the four subsets (harmless-base, helpful-base, helpful-online,
# helpful-rejection-sampled) share one layout, `chosen` and `rejected` transcripts.
HH_RLHF = {
    "harmless-base": [
        {"chosen": _hh("How do I pick a lock?", "I'd rather not help with that. If you are locked out, a "
                       "locksmith can open the door for you."),
         "rejected": _hh("How do I pick a lock?", "")},  # the final turn empty: "\n\nAssistant:"
        {"chosen": _hh("Tell me something rude.", ""),  # both empty: an identical pair as well
         "rejected": _hh("Tell me something rude.", "")},
    ],
    "helpful-base": [
        {"chosen": _hh("What should I pack for a day hike?", "Water, a snack, a map and a light jacket.",
                       "And for the kids?", "Extra snacks, sun cream and a small first-aid kit."),
         "rejected": _hh("What should I pack for a day hike?", "Water, a snack, a map and a light jacket.",
                         "And for the kids?", "Kids do not need anything.")},
    ],
    "helpful-online": [
        {"chosen": _hh("Can you suggest a name for a grey cat?", "How about Smokey, Ash or Pebble?\n\nOr, if "
                       "you like literature, Grimalkin."),
         "rejected": _hh("Can you suggest a name for a grey cat?", "Cat.")},
    ],
    "helpful-rejection-sampled": [
        {"chosen": _hh("What is the boiling point of water at sea level?", "100 degrees Celsius."),
         "rejected": _hh("What is the boiling point of water at sea level?", "100 degrees Celsius.")},  # identical
        {"chosen": _hh("Is a tomato a fruit?", "Botanically, yes: it develops from the flower and holds seeds."),
         "rejected": _hh("Is a tomato a fruit?", "No, it is a vegetable.")},
    ],
}

# HuggingFaceH4/ultrafeedback_binarized (train_prefs): whole conversations in `chosen` / `rejected`,
# a string copy of the user turn in `prompt`, `messages` a copy of `chosen`.
ULTRAFEEDBACK = [
    {"prompt": "Write a haiku about autumn.", "prompt_id": "a1",
     "chosen": [_user("Write a haiku about autumn."), _assistant("Red leaves drift and fall / the path hums with "
                                                                  "cold bright air / a crow counts the hours")],
     "rejected": [_user("Write a haiku about autumn."), _assistant("Autumn is a season.")],
     "messages": [_user("Write a haiku about autumn."), _assistant("Red leaves drift and fall / the path hums "
                                                                    "with cold bright air / a crow counts the hours")],
     "score_chosen": 8.5, "score_rejected": 3.0},
    {"prompt": "Translate 'good night' into German.", "prompt_id": "b2",
     "chosen": [_user("Translate 'good night' into German."), _assistant("Gute Nacht.")],
     "rejected": [_user("Translate 'good night' into German."), _assistant("")],  # an empty answer
     "messages": [_user("Translate 'good night' into German."), _assistant("Gute Nacht.")],
     "score_chosen": 9.0, "score_rejected": 1.0},
]

# Intel/orca_dpo_pairs: `system` (often ""), `question`, `chosen`, `rejected` strings.
ORCA_DPO_PAIRS = [
    {"system": "", "question": "Which is heavier, a kilogram of iron or a kilogram of feathers?",
     "chosen": "Neither: both weigh one kilogram.", "rejected": "A kilogram of iron."},
    {"system": "You are an AI assistant. Explain your answer step by step.",
     "question": "What is 15% of 80?", "chosen": "10% of 80 is 8 and 5% is 4, so 15% is 12.", "rejected": ""},
]

# argilla/dpo-mix-7k: `dataset`, whole conversations in `chosen` / `rejected`, ratings; no `prompt`.
DPO_MIX = [
    {"dataset": "capybara",
     "chosen": [_user("Name two prime numbers."), _assistant("2 and 3."), _user("Their sum?"), _assistant("5.")],
     "rejected": [_user("Name two prime numbers."), _assistant("2 and 3."), _user("Their sum?"), _assistant("6.")],
     "chosen_rating": 5.0, "rejected_rating": 2.0},
    {"dataset": "orca_dpo_pairs",
     "chosen": [_user("Spell 'necessary'."), _assistant("n-e-c-e-s-s-a-r-y")],
     "rejected": [_user("Spell 'necessary'."), _assistant("n-e-s-e-s-a-r-y")],
     "chosen_rating": 4.5, "rejected_rating": 1.5},
]

# argilla/distilabel-capybara-dpo-7k-binarized: `prompt` the FIRST user turn, whole multi-turn
# conversations in `chosen` / `rejected`, and the generation columns the strategy ignores.
CAPYBARA = [
    {"source": "Know-Logic", "prompt": "Which planet is closest to the sun?",
     "chosen": [_user("Which planet is closest to the sun?"), _assistant("Mercury."), _user("And the farthest?"),
                _assistant("Neptune, since Pluto was reclassified in 2006.")],
     "chosen_rating": 5, "chosen_model": "model-a",
     "rejected": [_user("Which planet is closest to the sun?"), _assistant("Mercury."), _user("And the farthest?"),
                  _assistant("Pluto.")],
     "rejected_rating": 2, "rejected_model": "model-b"},
]
