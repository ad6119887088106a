"""Write the demo's preference pairs: the bare correct answer preferred over wordy, wrong or rude replies.

    python examples/demo/build_pairs.py [--out-dir examples/demo] [--seed 0]

Writes ``pairs_train.jsonl`` (160 pairs) and ``pairs_eval.jsonl`` (40 held-out pairs) in the
conversational layout, one JSON object a line::

    {"prompt": [{"role": "system", ...}?, {"role": "user", "content": "What is the capital of Japan?"}],
     "chosen": [{"role": "assistant", "content": "Tokyo"}],
     "rejected": [{"role": "assistant", "content": "The capital of Japan is Tokyo."}]}

Six kinds of short question (arithmetic, unit conversions, capitals, antonyms, spelling, general
facts). The chosen reply is always the correct answer alone. The rejected reply takes one of four
styles, in fixed shares within every kind: the correct answer restated as a full sentence (2/5),
the same sentence with a wrong answer (1/5), a wrong bare answer (1/5), or filler and hedging or
rudeness around a wrong or restated answer (1/5).

Why bare answers: SmolLM2-135M-Instruct already scores a correct sentence far above filler or
rudeness (about 1.6 nats/token of margin), so those pairs would show nothing; it also prefers
restating the question ("The capital of Japan is Tokyo.") to the bare answer, which is a habit a
few dozen ORPO steps can change and a held-out set can measure. The wrong bare answers keep the
preference honest: shortness alone does not win them.

Every question appears once in the whole set, so no held-out question is in the training file.
Deterministic: the same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

TRAIN_FILE, EVAL_FILE = "pairs_train.jsonl", "pairs_eval.jsonl"
# (pairs, of which held out) per kind: a stratified 80/20 split.
COUNTS = {
    "arithmetic": (50, 10),
    "conversion": (30, 6),
    "capital": (40, 8),
    "antonym": (25, 5),
    "spelling": (25, 5),
    "fact": (30, 6),
}
# Rejected styles in these shares within each kind (cycled, then shuffled).
STYLE_CYCLE = ("sentence", "wrong_sentence", "sentence", "wrong", "filler_or_rude")
STYLES = tuple(dict.fromkeys(STYLE_CYCLE))
SYSTEM_SHARE = 0.3  # pairs with a system message; the others get SmolLM2's default one from its template

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "Answer the user's question accurately.",
    "You are a patient tutor.",
    "Reply with just the answer.",
)
FILLER = (
    "Great question! I think it is probably {x}, but I am not sure.",
    "Well, there are many ways to look at this. Maybe {x}?",
    "Thank you for asking! As far as I remember, it might be {x}.",
    "Hmm, let me think. This is something many people wonder about. I would guess {x}.",
)
RUDE = (
    "Seriously? Look it up yourself. {s}",
    "Ugh, what a silly question. {s}",
    "Do I have to do everything for you? {s}",
    "Everyone knows this. {s}",
)


@dataclass(frozen=True)
class Question:
    """A question, its bare answer and a wrong one, and both as the sentence a wordy reply would use."""

    kind: str
    text: str
    answer: str
    wrong_answer: str
    sentence: str
    wrong_sentence: str


def _question(kind: str, text: str, answer: str, wrong: str, template: str) -> Question:
    return Question(kind, text, answer, wrong, template.format(x=answer), template.format(x=wrong))


def arithmetic(rng: random.Random) -> Question:
    op = rng.choice("+-×")
    if op == "×":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        result = a * b
    else:
        a, b = rng.randint(10, 99), rng.randint(2, 49)
        result = a + b if op == "+" else a - b
    wrong = result + rng.choice((-10, -2, -1, 1, 2, 10))
    text = rng.choice(("What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "How much is {a} {op} {b}?"))
    template = f"{a} {op} {b} = {{x}}."
    return _question("arithmetic", text.format(a=a, op=op, b=b), str(result), str(wrong), template)


# (from unit, to unit, factor, a wrong factor people confuse it with): exact conversions only.
CONVERSIONS = (
    ("kilometres", "metres", 1000, 100),
    ("metres", "centimetres", 100, 10),
    ("kilograms", "grams", 1000, 100),
    ("litres", "millilitres", 1000, 100),
    ("hours", "minutes", 60, 100),
    ("minutes", "seconds", 60, 100),
    ("days", "hours", 24, 12),
    ("weeks", "days", 7, 5),
    ("centimetres", "millimetres", 10, 100),
    ("years", "months", 12, 10),
)


def conversion(rng: random.Random) -> Question:
    source, target, factor, wrong_factor = rng.choice(CONVERSIONS)
    n = rng.randint(2, 15)
    text = rng.choice(("How many {t} are in {n} {s}?", "Convert {n} {s} to {t}."))
    return _question(
        "conversion", text.format(n=n, s=source, t=target), f"{n * factor} {target}", f"{n * wrong_factor} {target}",
        f"{n} {source} is {{x}}.",
    )


# (country, capital, a plausible wrong answer: its largest or best-known other city).
CAPITALS = (
    ("France", "Paris", "Lyon"), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Japan", "Tokyo", "Osaka"), ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"), ("Egypt", "Cairo", "Alexandria"), ("Kenya", "Nairobi", "Mombasa"),
    ("Norway", "Oslo", "Bergen"), ("Sweden", "Stockholm", "Gothenburg"), ("Finland", "Helsinki", "Tampere"),
    ("Denmark", "Copenhagen", "Aarhus"), ("Poland", "Warsaw", "Krakow"), ("Portugal", "Lisbon", "Porto"),
    ("Greece", "Athens", "Thessaloniki"), ("Ireland", "Dublin", "Cork"), ("Austria", "Vienna", "Salzburg"),
    ("Hungary", "Budapest", "Debrecen"), ("the Czech Republic", "Prague", "Brno"),
    ("Russia", "Moscow", "Saint Petersburg"), ("China", "Beijing", "Shanghai"), ("India", "New Delhi", "Mumbai"),
    ("Thailand", "Bangkok", "Chiang Mai"), ("Vietnam", "Hanoi", "Ho Chi Minh City"), ("South Korea", "Seoul", "Busan"),
    ("Indonesia", "Jakarta", "Surabaya"), ("Argentina", "Buenos Aires", "Cordoba"), ("Peru", "Lima", "Cusco"),
    ("Chile", "Santiago", "Valparaiso"), ("Mexico", "Mexico City", "Guadalajara"),
    ("Cuba", "Havana", "Santiago de Cuba"),
    ("Brazil", "Brasilia", "Rio de Janeiro"), ("Turkey", "Ankara", "Istanbul"), ("Belgium", "Brussels", "Antwerp"),
    ("Switzerland", "Bern", "Zurich"), ("Morocco", "Rabat", "Casablanca"), ("Nigeria", "Abuja", "Lagos"),
    ("New Zealand", "Wellington", "Auckland"), ("Pakistan", "Islamabad", "Karachi"),
    ("Saudi Arabia", "Riyadh", "Jeddah"),
    ("Scotland", "Edinburgh", "Glasgow"), ("Iceland", "Reykjavik", "Akureyri"),
    ("the United States", "Washington, D.C.", "New York City"),
)


def capital(rng: random.Random, entry: tuple[str, str, str]) -> Question:
    country, city, wrong = entry
    text = rng.choice(("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."))
    return _question("capital", text.format(c=country), city, wrong, f"The capital of {country} is {{x}}.")


# (word, antonym, a wrong answer: a synonym or near-synonym of the word).
ANTONYMS = (
    ("hot", "cold", "warm"), ("big", "small", "large"), ("early", "late", "soon"), ("happy", "sad", "glad"),
    ("fast", "slow", "quick"), ("full", "empty", "filled"), ("strong", "weak", "powerful"), ("rich", "poor", "wealthy"),
    ("loud", "quiet", "noisy"), ("begin", "end", "start"), ("buy", "sell", "purchase"), ("push", "pull", "press"),
    ("true", "false", "correct"), ("above", "below", "over"), ("inside", "outside", "within"),
    ("always", "never", "forever"), ("before", "after", "earlier"), ("friend", "enemy", "companion"),
    ("accept", "reject", "receive"), ("increase", "decrease", "grow"), ("arrive", "depart", "come"),
    ("ancient", "modern", "old"), ("wet", "dry", "damp"), ("thick", "thin", "wide"), ("hard", "soft", "firm"),
    ("clean", "dirty", "tidy"), ("cheap", "expensive", "inexpensive"), ("brave", "cowardly", "bold"),
    ("win", "lose", "triumph"), ("heavy", "light", "weighty"),
)


def antonym(rng: random.Random, entry: tuple[str, str, str]) -> Question:
    word, opposite, wrong = entry
    text = rng.choice(
        ('What is the opposite of "{w}"?', 'Give an antonym of "{w}".', 'Which word means the opposite of "{w}"?')
    )
    return _question("antonym", text.format(w=word), opposite, wrong, f'The opposite of "{word}" is "{{x}}".')


# (correct spelling, common misspelling).
SPELLINGS = (
    ("receive", "recieve"), ("necessary", "neccessary"), ("separate", "seperate"), ("definitely", "definately"),
    ("occurrence", "occurence"), ("accommodate", "accomodate"), ("believe", "beleive"), ("calendar", "calender"),
    ("embarrass", "embarass"), ("tomorrow", "tommorow"), ("beginning", "begining"), ("weird", "wierd"),
    ("library", "libary"), ("government", "goverment"), ("environment", "enviroment"), ("restaurant", "restaraunt"),
    ("rhythm", "rythm"), ("address", "adress"), ("argument", "arguement"), ("committee", "commitee"),
    ("existence", "existance"), ("foreign", "foriegn"), ("friend", "freind"), ("guarantee", "gaurantee"),
    ("immediately", "immediatly"), ("independent", "independant"), ("knowledge", "knowlege"), ("occasion", "ocassion"),
    ("until", "untill"), ("truly", "truely"), ("success", "sucess"), ("piece", "peice"), ("achieve", "acheive"),
    ("business", "buisness"),
)


def spelling(rng: random.Random, entry: tuple[str, str]) -> Question:
    right, wrong = entry
    first, second = (right, wrong) if rng.random() < 0.5 else (wrong, right)
    text = rng.choice(('Which spelling is correct: "{a}" or "{b}"?', 'Is it spelled "{a}" or "{b}"?'))
    return _question("spelling", text.format(a=first, b=second), right, wrong, 'The correct spelling is "{x}".')


# (question, answer, wrong answer, the reply as a sentence with {x} for the answer); answers are written as they
# read inside a sentence, and capitalised where the sentence starts with them.
FACTS = (
    ("How many legs does a spider have?", "8", "6", "A spider has {x} legs."),
    ("How many legs does an insect have?", "6", "8", "An insect has {x} legs."),
    ("How many days are in a week?", "7", "5", "A week has {x} days."),
    ("How many months are in a year?", "12", "10", "A year has {x} months."),
    ("At what temperature does water boil at sea level, in Celsius?", "100 °C", "90 °C",
     "Water boils at {x} at sea level."),
    ("At what temperature does water freeze, in Celsius?", "0 °C", "10 °C", "Water freezes at {x}."),
    ("Which planet is known as the Red Planet?", "Mars", "Venus", "{x} is known as the Red Planet."),
    ("What is the largest planet in the solar system?", "Jupiter", "Saturn",
     "{x} is the largest planet in the solar system."),
    ("Which planet is closest to the Sun?", "Mercury", "Venus", "{x} is the planet closest to the Sun."),
    ("Which gas do plants take in from the air for photosynthesis?", "carbon dioxide", "nitrogen",
     "Plants take in {x}."),
    ("How many sides does a hexagon have?", "6", "8", "A hexagon has {x} sides."),
    ("How many sides does a triangle have?", "3", "4", "A triangle has {x} sides."),
    ("How many sides does an octagon have?", "8", "6", "An octagon has {x} sides."),
    ("What is the chemical symbol for gold?", "Au", "Ag", "The chemical symbol for gold is {x}."),
    ("What is the chemical symbol for iron?", "Fe", "Ir", "The chemical symbol for iron is {x}."),
    ("What is the chemical symbol for sodium?", "Na", "So", "The chemical symbol for sodium is {x}."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", "Charles Dickens", "{x} wrote Romeo and Juliet."),
    ("What is the largest ocean on Earth?", "the Pacific", "the Atlantic", "{x} is the largest ocean on Earth."),
    ("How many hours are in a day?", "24", "12", "A day has {x} hours."),
    ("How many degrees are in a right angle?", "90", "180", "A right angle has {x} degrees."),
    ("What do the angles of a triangle add up to?", "180 degrees", "360 degrees",
     "The angles of a triangle add up to {x}."),
    ("What is the tallest mountain above sea level?", "Mount Everest", "Mont Blanc",
     "{x} is the tallest mountain above sea level."),
    ("What language is mainly spoken in Brazil?", "Portuguese", "Spanish", "The main language of Brazil is {x}."),
    ("What is the currency of Japan?", "the yen", "the won", "{x} is the currency of Japan."),
    ("What is the largest mammal?", "the blue whale", "the elephant", "{x} is the largest mammal."),
    ("What do bees make?", "honey", "milk", "Bees make {x}."),
    ("How many players does a football (soccer) team have on the field?", "11", "9",
     "A football team has {x} players on the field."),
    ("How many strings does a standard guitar have?", "6", "5", "A standard guitar has {x} strings."),
    ("What colour do you get by mixing blue and yellow paint?", "green", "purple", "Blue and yellow paint make {x}."),
    ("On which continent is Egypt?", "Africa", "Asia", "Egypt is in {x}."),
    ("What is the hardest natural material?", "diamond", "granite", "{x} is the hardest natural material."),
    ("How many planets are in the solar system?", "8", "10", "There are {x} planets in the solar system."),
    ("What is the closest star to Earth?", "the Sun", "the Moon", "{x} is the closest star to Earth."),
    ("How many minutes are in an hour?", "60", "100", "An hour has {x} minutes."),
)


def fact(rng: random.Random, entry: tuple[str, str, str, str]) -> Question:
    text, answer, wrong, template = entry
    capitalise = template.startswith("{x}")  # "the Sun" alone, "The Sun is ..." at a sentence start

    def sentence(x: str) -> str:
        return template.format(x=x[:1].upper() + x[1:] if capitalise else x)

    return Question("fact", text, answer, wrong, sentence(answer), sentence(wrong))


def rejected_reply(rng: random.Random, question: Question, style: str) -> str:
    if style == "sentence":
        return question.sentence
    if style == "wrong_sentence":
        return question.wrong_sentence
    if style == "wrong":
        return question.wrong_answer
    if style == "filler_or_rude":
        if rng.random() < 0.5:
            return rng.choice(FILLER).format(x=question.wrong_answer)
        return rng.choice(RUDE).format(s=rng.choice((question.sentence, question.wrong_sentence)))
    raise ValueError(f"unknown rejected style {style!r}; valid: {STYLES}")


def questions(rng: random.Random, kind: str, count: int) -> list[Question]:
    """``count`` questions of one kind, all with different text."""
    if kind in ("arithmetic", "conversion"):
        make = arithmetic if kind == "arithmetic" else conversion
        seen: dict[str, Question] = {}
        while len(seen) < count:
            q = make(rng)
            seen.setdefault(q.text, q)
        return list(seen.values())
    pools = {
        "capital": (CAPITALS, capital),
        "antonym": (ANTONYMS, antonym),
        "spelling": (SPELLINGS, spelling),
        "fact": (FACTS, fact),
    }
    if kind not in pools:
        raise ValueError(f"unknown question kind {kind!r}; valid: {sorted([*pools, 'arithmetic', 'conversion'])}")
    pool, make = pools[kind]
    if count > len(pool):
        raise ValueError(f"{kind}: {count} questions asked, the pool has {len(pool)}")
    return [make(rng, entry) for entry in rng.sample(pool, count)]


def to_row(rng: random.Random, question: Question, style: str) -> dict:
    prompt = [{"role": "user", "content": question.text}]
    if rng.random() < SYSTEM_SHARE:
        prompt.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": question.answer}],
        "rejected": [{"role": "assistant", "content": rejected_reply(rng, question, style)}],
    }


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows), each shuffled; every kind split 80/20."""
    rng = random.Random(seed)
    train, held_out = [], []
    for kind, (total, n_eval) in COUNTS.items():
        styles = [STYLE_CYCLE[i % len(STYLE_CYCLE)] for i in range(total)]
        rng.shuffle(styles)
        rows = [to_row(rng, q, style) for q, style in zip(questions(rng, kind, total), styles, strict=True)]
        held_out += rows[:n_eval]
        train += rows[n_eval:]
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, held_out = build(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / TRAIN_FILE, train)
    write_jsonl(args.out_dir / EVAL_FILE, held_out)
    print(f"wrote {len(train)} pairs to {args.out_dir / TRAIN_FILE} and {len(held_out)} to {args.out_dir / EVAL_FILE}")


if __name__ == "__main__":
    main()
