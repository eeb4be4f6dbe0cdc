"""The price-tagging game of the paper: sampling, prompts, and the four hypotheses as causal models.

Prices are kept as integer cents so that every comparison is exact; prompts print them with two
decimals. A game is a dict {"lb": cents, "ub": cents, "amount": cents}.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Mapping, Sequence

from das_lib.method.causal import CausalModel, Variable
from das_lib.method.counterfactual import CounterfactualPair, make_pair
from das_lib.method.programs import Hypothesis

# ---------------------------------------------------------------------------------------------
# Sampling (paper: width ~ U(2.50, 7.50); lb ~ U(0.05, 9.95 - width); ub = lb + width;
# amount ~ U(0.01, 9.99); all rounded to 2 decimals)

REGIONS = (1, 2, 3)  # 1: amount below lb, 2: inside [lb, ub], 3: above ub


def _cents(x: float) -> int:
    return int(round(x * 100))


def sample_bracket(rng: random.Random) -> tuple[int, int]:
    """A bracket (lb, ub) in cents, sampled as in the paper."""
    width = round(rng.uniform(2.50, 7.50), 2)
    lb = round(rng.uniform(0.05, 9.95 - width), 2)
    return _cents(lb), _cents(lb) + _cents(width)


def sample_game(rng: random.Random, bracket: tuple[int, int] | None = None) -> dict[str, int]:
    """A game with the amount uniform over 0.01..9.99 (the factual task distribution)."""
    lb, ub = bracket if bracket is not None else sample_bracket(rng)
    return {"lb": lb, "ub": ub, "amount": _cents(round(rng.uniform(0.01, 9.99), 2))}


def sample_games(n: int, seed: int, bracket: tuple[int, int] | None = None) -> list[dict[str, int]]:
    """`n` games drawn one after another from random.Random(seed), as `sample_game` draws them."""
    rng = random.Random(seed)
    return [sample_game(rng, bracket) for _ in range(n)]


def region_of(game: Mapping[str, int]) -> int:
    """1 if the amount is below the bracket, 2 if inside (bounds included), 3 if above."""
    if game["amount"] < game["lb"]:
        return 1
    return 2 if game["amount"] <= game["ub"] else 3


def sample_in_region(rng: random.Random, region: int, bracket: tuple[int, int] | None = None) -> dict[str, int]:
    """A game whose amount lies in `region` of its bracket (amount uniform there, in cents)."""
    if region not in REGIONS:
        raise ValueError(f"region must be 1 (below), 2 (inside) or 3 (above), got {region!r}")
    lb, ub = bracket if bracket is not None else sample_bracket(rng)
    low, high = {1: (1, lb - 1), 2: (lb, ub), 3: (ub + 1, 999)}[region]
    if low > high:
        raise ValueError(f"bracket {lb / 100:.2f}-{ub / 100:.2f} leaves no amount in region {region}")
    return {"lb": lb, "ub": ub, "amount": rng.randint(low, high)}


def parse_bracket(text: str) -> tuple[int, int]:
    """'5.49-8.49' -> (549, 849), refusing malformed or empty brackets."""
    try:
        lo, hi = (float(x) for x in text.split("-"))
    except ValueError:
        raise ValueError(f"bracket {text!r} must look like '5.49-8.49'") from None
    return check_bracket((_cents(lo), _cents(hi)))


def check_bracket(bracket: Sequence[int]) -> tuple[int, int]:
    """(lower, upper) in cents as a tuple, refusing brackets that leave a region empty."""
    lb, ub = (int(x) for x in bracket)
    if not 1 < lb < ub < 999:
        raise ValueError(f"bracket {lb / 100:.2f}-{ub / 100:.2f} must satisfy 0.01 < lower < upper < 9.99")
    return lb, ub


# ---------------------------------------------------------------------------------------------
# The four hypotheses. Each outputs True for "Yes" (the amount is in the bracket) and False for "No".

_INPUTS = ("lb", "ub", "amount")


def _left_right(name: str) -> CausalModel:
    return CausalModel(
        name,
        _INPUTS,
        [
            Variable("left", ("amount", "lb"), lambda amount, lb: amount >= lb),
            Variable("right", ("amount", "ub"), lambda amount, ub: amount <= ub),
            Variable("answer", ("left", "right"), lambda left, right: bool(left and right)),
        ],
        output="answer",
    )


LEFT_BOUNDARY = _left_right("left_boundary")
LEFT_RIGHT_BOUNDARY = _left_right("left_right_boundary")
MIDPOINT_DISTANCE = CausalModel(
    "midpoint_distance",
    _INPUTS,
    [
        Variable("mid", ("lb", "ub"), lambda lb, ub: (lb + ub) / 2),  # exact: halves of integers
        Variable("half_width", ("lb", "ub"), lambda lb, ub: (ub - lb) / 2),
        Variable("answer", ("amount", "mid", "half_width"), lambda amount, mid, hw: abs(amount - mid) <= hw),
    ],
    output="answer",
)
BRACKET_IDENTITY = CausalModel(
    "bracket_identity",
    _INPUTS,
    [
        Variable("bracket", ("lb", "ub"), lambda lb, ub: (lb, ub)),
        Variable("answer", ("amount", "bracket"), lambda amount, b: b[0] <= amount <= b[1]),
    ],
    output="answer",
)


HYPOTHESES: dict[str, Hypothesis] = {
    h.key: h
    for h in (
        Hypothesis("left", "Left Boundary", LEFT_BOUNDARY, ("left",)),
        Hypothesis("left_right", "Left and Right Boundary", LEFT_RIGHT_BOUNDARY, ("left", "right")),
        Hypothesis("midpoint", "Mid-point Distance", MIDPOINT_DISTANCE, ("mid",)),
        Hypothesis("bracket", "Bracket Identity", BRACKET_IDENTITY, ("bracket",)),
    )
}


# Nulls as hypotheses: causal models that no mechanism should realise better than the truth, each trained and
# tested like a hypothesis on the same pairs (das_lib.runs.controls). A finding must beat every one of them.
#
# A control task in the spirit of Hewitt and Liang's (2019): a variable of the inputs that no hypothesis names (the
# amount's whole dollars), read out through a fixed random table (with the lower bound's whole dollars), so that its
# counterfactual labels are learnable from the inputs but mean nothing.
CONTROL_SEED = 20_231_229
_CONTROL_TABLE = [[random.Random(CONTROL_SEED + 10 * i + j).random() < 0.5 for j in range(10)] for i in range(10)]
CONTROL_TASK = CausalModel(
    "control_task",
    _INPUTS,
    [
        Variable("dollars", ("amount",), lambda amount: amount // 100),
        Variable("answer", ("lb", "dollars"), lambda lb, dollars: _CONTROL_TABLE[lb // 100][dollars]),
    ],
    output="answer",
)


def matched_control(key: str, rate: float, bit_rate: float | None = None) -> CausalModel:
    """A control task on a hypothesis's scale: the game's answer, flipped when the swapped whole dollars of the amount
    differ from the amount's own and a fixed random table T[lb dollars][swapped dollars][own dollars] says so. On the
    factual games nothing is flipped, so doing nothing is right wherever a swap flips nothing; the table's bits are
    set at `bit_rate` (default `rate`), which `matched` tunes so that a swap flips the answer on `rate` of the pool's
    pairs, the share on which hypothesis `key` predicts a change: its IIA of doing nothing and its ceiling are then
    the hypothesis's."""
    if not 0 < rate < 0.9:
        raise ValueError(f"a matched control flips under 0.9 of the answers, got rate {rate}")
    rng = random.Random(CONTROL_SEED + 1000)
    table = [[[rng.random() < (bit_rate or rate) for _ in range(10)] for _ in range(10)] for _ in range(10)]
    return CausalModel(
        f"control_{key}", _INPUTS,
        [Variable("dollars", ("amount",), lambda amount: amount // 100),
         Variable("answer", ("lb", "ub", "amount", "dollars"), lambda lb, ub, amount, dollars:
                  (lb <= amount <= ub) != (dollars != amount // 100 and table[lb // 100][dollars][amount // 100]))],
        output="answer")


def changed_rate(key: str | Hypothesis, n: int = 20_000, seed: int = CONTROL_SEED) -> float:
    """The share of pool pairs (`sample_pair`) on which hypothesis `key` (or a Hypothesis) predicts a change of the
    answer, over its variables: what a matched control's flips follow (computed from a fixed seed)."""
    h, rng = (HYPOTHESES[key] if isinstance(key, str) else key), random.Random(seed)
    pairs = [sample_pair(rng) for _ in range(n)]
    return sum(h.model.interchange(b, s, (v,)) != h.model.predict(b) for b, s in pairs for v in h.variables) / (n * len(h.variables))


def _shifted(name: str, side: str, cents: int) -> CausalModel:
    """Left and Right Boundary with one bound moved by `cents`: false, but agreeing with the truth on most games."""
    left = Variable("left", ("amount", "lb"), (lambda amount, lb: amount >= lb + cents) if side == "left" else
                    (lambda amount, lb: amount >= lb))
    right = Variable("right", ("amount", "ub"), (lambda amount, ub: amount <= ub - cents) if side == "right" else
                     (lambda amount, ub: amount <= ub))
    return CausalModel(name, _INPUTS, [left, right, Variable("answer", ("left", "right"), lambda l, r: bool(l and r))],
                       output="answer")


INPUT_COPY = CausalModel(
    "amount_copy", _INPUTS,
    [Variable("price", ("amount",), lambda amount: amount),
     Variable("answer", ("lb", "ub", "price"), lambda lb, ub, price: lb <= price <= ub)],
    output="answer")
SHIFT = 100  # cents: the shifted bounds' offset
CONTROLS: dict[str, Hypothesis] = {
    "control": Hypothesis("control", "Control task (random readout of the whole dollars)", CONTROL_TASK, ("dollars",)),
    "left_shifted": Hypothesis("left_shifted", f"Left Boundary shifted by {SHIFT / 100:.2f}",
                               _shifted("left_shifted", "left", SHIFT), ("left",)),
    "right_shifted": Hypothesis("right_shifted", f"Right Boundary shifted by {SHIFT / 100:.2f}",
                                _shifted("right_shifted", "right", SHIFT), ("right",)),
    "amount_copy": Hypothesis("amount_copy", "Input copy (the amount itself)", INPUT_COPY, ("price",)),
}
MATCHED_RATES = {}  # hypothesis -> the rate its matched control flips at (computed on first use, then kept)
_MATCHED: dict[str, Hypothesis] = {}


def matched(key: str) -> Hypothesis:
    """The control task matched to hypothesis `key`'s IIA of doing nothing and ceiling (`matched_control`), named
    "control_" + key (made on first use: tuning it takes seconds)."""
    name = f"control_{key}"
    if name not in _MATCHED:
        rate = MATCHED_RATES[key] = round(changed_rate(key), 3)
        bit_rate = rate
        for _ in range(3):  # the realised share of flips follows the bits' rate closely but not exactly: tune it
            made = Hypothesis(name, f"Control task matched to {HYPOTHESES[key].title}",
                              matched_control(key, rate, bit_rate), ("dollars",))
            bit_rate = min(0.99, bit_rate * rate / changed_rate(made, n=5_000))
        _MATCHED[name] = made
    return _MATCHED[name]


class Controls(Mapping[str, Hypothesis]):
    """CONTROLS and the matched control of every hypothesis ("control_left", ...), each matched one made only when
    it is looked up."""

    def __getitem__(self, key: str) -> Hypothesis:
        if key in CONTROLS:
            return CONTROLS[key]
        if key.startswith("control_") and key[len("control_"):] in HYPOTHESES:
            return matched(key[len("control_"):])
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter([*CONTROLS, *(f"control_{k}" for k in HYPOTHESES)])

    def __len__(self) -> int:
        return len(CONTROLS) + len(HYPOTHESES)


def get_hypothesis(key: str) -> Hypothesis:
    """The hypothesis (or control task) named `key`, with the valid names in the error."""
    if key in HYPOTHESES:
        return HYPOTHESES[key]
    if key in Controls():
        return Controls()[key]
    raise KeyError(f"unknown hypothesis {key!r}; choose one of {list(HYPOTHESES)} (or the control tasks {list(Controls())})")


def sample_pool(n: int, seed: int, bracket: tuple[int, int] | None = None) -> list[tuple[dict[str, int], dict[str, int]]]:
    """`n` (base, source) pairs of games, each game's amount region (below, inside, above) drawn uniformly as
    the paper's sampler draws them, but with no label kept or dropped: one pool that every hypothesis labels
    (`label_pool`), so that hypotheses are trained and scored on the same pairs."""
    if n < 1:
        raise ValueError(f"a pool needs at least one pair, got n={n}")
    rng = random.Random(seed)
    return [sample_pair(rng, bracket) for _ in range(n)]


def sample_pair(rng: random.Random, bracket: tuple[int, int] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """A (base, source) pair of games, each game's amount region (below, inside, above) drawn uniformly, as
    the paper's pairs are drawn before their labels are balanced."""
    rb, rs = rng.choice(REGIONS), rng.choice(REGIONS)
    return sample_in_region(rng, rb, bracket), sample_in_region(rng, rs, bracket)


def label_pool(hypothesis: str, pool: Sequence[tuple[Mapping[str, int], Mapping[str, int]]],
               variable: int | None = None) -> list[CounterfactualPair]:
    """The pool's pairs labelled by running `hypothesis`'s causal model, pair i intervening on its variable
    i mod (number of variables) (as `sample_pairs` alternates them), or every pair on `variable`."""
    h = get_hypothesis(hypothesis)
    if variable is not None and not 0 <= variable < len(h.variables):
        raise ValueError(f"{hypothesis!r} has variables {list(h.variables)}: variable must be in 0..{len(h.variables) - 1}")
    index = (lambda i: variable) if variable is not None else (lambda i: i % len(h.variables))  # noqa: E731
    return [make_pair(h.model, base, source, (h.variables[index(i)],), regions=(region_of(base), region_of(source)),
                      variable_index=index(i)) for i, (base, source) in enumerate(pool)]


def sample_pairs(
    hypothesis: str | Hypothesis,
    n: int,
    seed: int,
    bracket: tuple[int, int] | None = None,
    balance: bool = True,
) -> list[CounterfactualPair]:
    """`n` counterfactual pairs for `hypothesis` (a key, or a Hypothesis), labels from running its causal model.

    As in the paper, base and source each get an amount region (below / inside / above); pairs are
    drawn over all region pairs and kept so that Yes and No labels are balanced. For a hypothesis
    with two variables, pairs alternate between intervening on the first and on the second.
    Each pair's meta holds its regions and the index of the intervened variable.
    """
    if n < 2 or (balance and n % 2):
        raise ValueError(f"n must be an even number >= 2 for balanced Yes/No pairs, got {n}")
    h = hypothesis if isinstance(hypothesis, Hypothesis) else get_hypothesis(hypothesis)
    rng = random.Random(seed)
    quota = {(v, label): 0 for v in range(len(h.variables)) for label in (True, False)}
    per_cell = n / len(quota)
    pairs: list[CounterfactualPair] = []
    for attempt in range(1000 * n):
        v = len(pairs) % len(h.variables)
        rb, rs = rng.choice(REGIONS), rng.choice(REGIONS)
        base, source = sample_in_region(rng, rb, bracket), sample_in_region(rng, rs, bracket)
        pair = make_pair(h.model, base, source, (h.variables[v],), regions=(rb, rs), variable_index=v)
        if balance and quota[(v, pair.label)] >= per_cell:
            continue
        quota[(v, pair.label)] += 1
        pairs.append(pair)
        if len(pairs) == n:
            return pairs
    raise RuntimeError(f"could not draw {n} balanced pairs for {h.key!r} with bracket {bracket}")


# ---------------------------------------------------------------------------------------------
# Prompts

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
STANDIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
TEMPLATES = {"alpaca": ALPACA_TEMPLATE, "standin": STANDIN_TEMPLATE}

INSTRUCTIONS = {
    "yesno": "Please say yes only if it costs between {lb} and {ub} dollars, otherwise no.",
    "truefalse": "Please say True only if it costs between {lb} and {ub} dollars, otherwise False.",
}
ANSWERS = {"yesno": ("Yes", "No"), "truefalse": ("True", "False")}


def price(cents: int) -> str:
    """Cents as the paper prints them: 2 decimals."""
    return f"{cents / 100:.2f}"


def render_instruction(game: Mapping[str, int], variant: str = "yesno", context: str | None = None) -> str:
    """The instruction text, with an optional irrelevant context sentence in front."""
    if variant not in INSTRUCTIONS:
        raise KeyError(f"unknown instruction variant {variant!r}; choose one of {list(INSTRUCTIONS)}")
    text = INSTRUCTIONS[variant].format(lb=price(game["lb"]), ub=price(game["ub"]))
    return f"{context.strip()} {text}" if context else text


def render_input(game: Mapping[str, int]) -> str:
    """The input text: '{amount} dollars'."""
    return f"{price(game['amount'])} dollars"


def render_prompt(game: Mapping[str, int], template: str = "alpaca", variant: str = "yesno", context: str | None = None) -> str:
    """The full prompt; the answer is the first token after it."""
    if template not in TEMPLATES:
        raise KeyError(f"unknown template {template!r}; choose one of {list(TEMPLATES)}")
    return TEMPLATES[template].format(instruction=render_instruction(game, variant, context), input=render_input(game))


def answer_word(label: bool, variant: str = "yesno") -> str:
    """'Yes'/'No' (or 'True'/'False' for the sibling instruction) for a boolean label."""
    yes, no = ANSWERS[variant]
    return yes if label else no


def task_label(game: Mapping[str, Any]) -> bool:
    """The factual answer: is lb <= amount <= ub?"""
    return LEFT_BOUNDARY.predict(game)


def majority_rate_of_games(games: Sequence[Mapping[str, Any]]) -> float:
    """Share of the more common factual answer over `games`: the accuracy of always giving it."""
    yes_rate = sum(map(task_label, games)) / len(games)
    return max(yes_rate, 1 - yes_rate)
