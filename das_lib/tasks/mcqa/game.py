"""Multiple-choice question answering after MIB's MCQA task: the items, their causal model, the
counterfactual pairs, and the text of a question.

The design is the MCQA task of the MIB benchmark's causal variable localisation track (Mueller et al.
2025, "MIB: A Mechanistic Interpretability Benchmark", ICML 2025): a context states an object's colour,
the question asks for it, and options labelled by letters follow; the answer is the letter of the option
that holds the colour. Its causal model has two variables: the *answer pointer* (which option holds the
colour) and the *answer letter* (the letter at that option). MIB's data sit on a model hub these machines
cannot reach, so everything is generated here: the vocabulary is written below, the items and pairs are
drawn from it.

An item is plain, hashable data: {"object": "banana", "colour": "yellow", "options": ("red", "yellow",
"green", "blue"), "letters": ("C", "A", "D", "B")}. As in MIB, an item's letters are an arrangement of
letters drawn from an alphabet (here the task's `letters`, default "ABCD": the letters A-D in a random
order), so that which letter names the right option is not fixed by its place.

Counterfactual families (a source made from its base, as MIB makes them):
- "order": two options trade places, each keeping its letter (MIB's same symbol, different position):
  the pointer moves, the answer's letter stays;
- "letters": the letters change, the options stay (different symbol, same position): every option gets
  another letter, so the pointer stays and the answer's letter changes;
- "both": two options trade places, the letters staying in place, and every option gets another letter
  (different symbol, different position): the pointer moves and the answer's letter changes, to a letter
  other than the base's answer and other than the letter the pointer alone would give;
- "random": an independent item (MIB's random counterfactual; not in the default mix).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from das_lib.method.causal import CausalModel, Variable
from das_lib.method.programs import Hypothesis

# ---------------------------------------------------------------------------------------------
# Vocabulary: common objects of a typical colour, each colour one word (one token in SmolLM2's tokenizer)

OBJECTS_BY_COLOUR = {
    "red": ("strawberry", "tomato", "cherry", "ruby"),
    "yellow": ("banana", "lemon", "corn", "sunflower"),
    "green": ("grass", "lime", "cucumber", "broccoli"),
    "blue": ("sky", "blueberry", "sapphire", "ocean"),
    "brown": ("chocolate", "coconut", "coffee", "walnut"),
    "purple": ("eggplant", "grape", "plum", "lavender"),
    "orange": ("carrot", "pumpkin", "tangerine", "apricot"),
    "black": ("coal", "crow", "ink", "tar"),
    "white": ("snow", "milk", "salt", "cotton"),
    "pink": ("flamingo", "bubblegum", "pig", "ham"),
}
COLOURS = tuple(OBJECTS_BY_COLOUR)
COLOUR_OF = {obj: colour for colour, objects in OBJECTS_BY_COLOUR.items() for obj in objects}
# Held out of training (a fine-tune's generalisation test): two colours with their objects, and the last
# object of every other colour.
HELD_OUT_COLOURS = ("purple", "pink")
HELD_OUT_OBJECTS = tuple(o for c, objects in OBJECTS_BY_COLOUR.items()
                         for o in (objects if c in HELD_OUT_COLOURS else objects[-1:]))
SPLITS = ("all", "train", "held_out")
FAMILIES = ("order", "letters", "both", "random")
DEFAULT_FAMILIES = ("order", "letters", "both")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def vocabulary(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(objects asked about, colours the options are drawn from) of a split: "train" holds out HELD_OUT_OBJECTS
    and HELD_OUT_COLOURS entirely; "held_out" asks only about held-out objects, with options of every colour."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if split == "train":
        objects = tuple(o for o in COLOUR_OF if o not in HELD_OUT_OBJECTS)
        return objects, tuple(c for c in COLOURS if c not in HELD_OUT_COLOURS)
    return (HELD_OUT_OBJECTS if split == "held_out" else tuple(COLOUR_OF)), COLOURS


# ---------------------------------------------------------------------------------------------
# The causal model: the pointer finds the stated colour among the options, the letter is the pointer's

INPUTS = ("object", "colour", "options", "letters")


def pointer_of(colour: str, options: Sequence[str]) -> int:
    """The index of the option that holds `colour`."""
    if colour not in options:
        raise ValueError(f"the colour {colour!r} is not among the options {list(options)}: the item has no answer")
    return list(options).index(colour)


MCQA = CausalModel(
    "mcqa",
    INPUTS,
    [
        Variable("pointer", ("colour", "options"), pointer_of),
        Variable("letter", ("pointer", "letters"), lambda pointer, letters: letters[pointer]),
    ],
    output="letter",
)
HYPOTHESES: dict[str, Hypothesis] = {
    "pointer": Hypothesis("pointer", "Answer pointer", MCQA, ("pointer",)),
    "letter": Hypothesis("letter", "Answer letter", MCQA, ("letter",)),
}

# A control task (as das_lib.tasks.pricetag.game.CONTROLS): a variable of the inputs that no mechanism of the task
# needs (the letter written first), read out through a fixed random table (with the object) as one of the
# item's letters, so that its counterfactual labels are learnable from the inputs but mean nothing.
CONTROL_SEED = 20_261_207
_CONTROL_TABLE = {(obj, letter): random.Random(CONTROL_SEED + 100 * i + j).random()
                  for i, obj in enumerate(COLOUR_OF) for j, letter in enumerate(ALPHABET)}
CONTROL_TASK = CausalModel(
    "control_task",
    INPUTS,
    [
        Variable("first_letter", ("letters",), lambda letters: letters[0]),
        Variable("letter", ("object", "first_letter", "letters"),
                 lambda obj, first, letters: letters[int(_CONTROL_TABLE[(obj, first)] * len(letters))]),
    ],
    output="letter",
)
CONTROLS: dict[str, Hypothesis] = {
    "control": Hypothesis("control", "Control task (random readout of the first letter)", CONTROL_TASK,
                          ("first_letter",)),
}


def answer(item: Mapping[str, Any]) -> str:
    """The factual answer: the letter of the option that holds the stated colour."""
    return MCQA.predict(item)


# ---------------------------------------------------------------------------------------------
# Items and pairs


@dataclass(frozen=True)
class Items:
    """The items and (base, source) pairs of one setting: options per item, the letters' alphabet, the
    counterfactual families pairs are drawn from (uniformly), and the vocabulary split."""

    n_options: int = 4
    letters: str = "ABCD"
    families: tuple[str, ...] = DEFAULT_FAMILIES
    split: str = "all"

    def __post_init__(self) -> None:
        colours = vocabulary(self.split)[1]
        letters = self.letters
        if not isinstance(letters, str) or any(c not in ALPHABET for c in letters) or len(set(letters)) != len(letters):
            raise ValueError(f"letters must be a string of distinct capital letters A-Z (e.g. 'ABCD'), got {letters!r}")
        most = min(len(letters), len(colours))
        if not isinstance(self.n_options, int) or not 2 <= self.n_options <= most:
            raise ValueError(f"n_options must be an int from 2 to {most} (no more than "
                             f"the {len(letters)} letters {letters!r} and the {len(colours)} colours of split "
                             f"{self.split!r}), got {self.n_options!r}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if not self.families or unknown or len(set(self.families)) != len(self.families):
            raise ValueError(f"families must be distinct names from {list(FAMILIES)}, at least one; "
                             f"got {list(self.families)}")
        if "both" in self.families and len(self.letters) < 3:
            raise ValueError("family 'both' needs at least 3 letters: with 2, the letter the moved answer gets is "
                             f"always the base's answer; got letters {self.letters!r}")

    def sample_item(self, rng: random.Random) -> dict[str, Any]:
        """An item: an object of the split, its colour at a uniform place among distinct colours, letters in a
        random arrangement."""
        objects, colours = vocabulary(self.split)
        obj = rng.choice(objects)
        colour = COLOUR_OF[obj]
        others = rng.sample([c for c in colours if c != colour], self.n_options - 1)
        at = rng.randrange(self.n_options)
        options = tuple(others[:at] + [colour] + others[at:])
        letters = tuple(rng.sample(self.letters, self.n_options))
        return {"object": obj, "colour": colour, "options": options, "letters": letters}

    def counterfactual(self, family: str, base: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
        """A source made from `base` by `family` (see the module docstring)."""
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")
        if family == "random":
            return self.sample_item(rng)
        options, letters = list(base["options"]), list(base["letters"])
        at = pointer_of(base["colour"], options)
        to = at
        if family in ("order", "both"):
            to = rng.choice([i for i in range(len(options)) if i != at])
            options[at], options[to] = options[to], options[at]
            if family == "order":
                letters[at], letters[to] = letters[to], letters[at]
        if family in ("letters", "both"):
            letters = self._new_letters(rng, letters, to, base["letters"][at])
        return {**base, "options": tuple(options), "letters": tuple(letters)}

    def _new_letters(self, rng: random.Random, old: Sequence[str], at: int, old_answer: str) -> list[str]:
        """An arrangement of letters in which no option keeps its letter and the option at `at` does not get
        `old_answer`, drawn until one fits (for 3 letters and 3 options, one draw in six does)."""
        for _ in range(1000):
            new = rng.sample(self.letters, len(old))
            if all(a != b for a, b in zip(new, old)) and new[at] != old_answer:
                return new
        raise RuntimeError(f"no new arrangement of {self.letters!r} for {list(old)} found in 1000 draws")

    def sample_pair(self, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
        """A (base, source) pair: a fresh base, and a source made from it by a family drawn uniformly."""
        family = rng.choice(self.families)
        base = self.sample_item(rng)
        return base, self.counterfactual(family, base, rng)


# ---------------------------------------------------------------------------------------------
# Text


def render(item: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
    """The question as the model reads it (context, question, one option a line, 'Answer:') and the character
    where each role starts: object, colour (the stated one), question (its '?'), opt{i}_letter, opt{i}_colour,
    answer_marker."""
    obj, starts = item["object"], {"object": 4}
    text = f"The {obj} is "
    starts["colour"] = len(text)
    text += f"{item['colour']}. What color is the {obj}"
    starts["question"] = len(text)
    text += "?"
    for i, (letter, colour) in enumerate(zip(item["letters"], item["options"])):
        text += "\n"
        starts[f"opt{i}_letter"] = len(text)
        text += f"{letter}. "
        starts[f"opt{i}_colour"] = len(text)
        text += colour
    text += "\n"
    starts["answer_marker"] = len(text)
    return text + "Answer:", starts
