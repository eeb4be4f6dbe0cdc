"""The price-tagging game's space of programs: generated formulas for "lb <= amount <= ub", every
sub-expression of each a candidate variable.

A formula is assembled from parts, each a way to compute a piece of the answer:
- the lower-bound test `amount >= lb` written directly, as a distance (`amount-lb >= 0`), on the
  integer dollars first (compare `amount//100` with `lb//100`, the cents only on a tie), or through a
  fixed threshold t (the amount is above lb when amount >= t >= lb); the upper-bound test likewise;
- combined by `and`, or by a split at the mid-point (above it only the upper bound can fail, below it
  only the lower one), or by a split at a fixed threshold;
- or centred: the distance to the mid-point against the half-width, the distance to lb against the
  width, the product of the two distances, the bracket as one value (the paper's Bracket Identity);
- and one formula that computes a comparison with a fixed threshold and never uses it (an irrelevant
  variable: the control that must rank last).
Some of these shortcuts are wrong on some games (the dollars alone, a split at a fixed threshold):
every formula is run on the verification games (`verification_games`) and one that errs on any is no
candidate. Each remaining formula gives one candidate per sub-expression and per pair of arguments of
one operation (two variables, like the paper's Left and Right Boundary); the paper's four hypotheses are
among them (`paper_members`). Labels come from running each candidate's causal model.
"""
from __future__ import annotations

import functools
import operator
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from das_lib.method.programs import Expr, constant, failures, leaf, node, program, sibling_pairs, variable_nodes
from das_lib.method.separation import label_functions
from das_lib.tasks.pricetag.game import HYPOTHESES, Hypothesis, price, sample_bracket, task_label

if TYPE_CHECKING:
    import pandas as pd

AMOUNT, LB, UB = leaf("amount"), leaf("lb"), leaf("ub")
THRESHOLDS = (500,)  # cents: the fixed thresholds the space compares with (5.00)
SEP = " | "  # between a formula's name and its variables in a candidate key


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _cmp(a: Expr, symbol: str, b: Expr) -> Expr:
    ops = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "==": operator.eq}
    return node(f"{a.text}{symbol}{b.text}", ops[symbol], a, b)


def _minus(a: Expr, b: Expr) -> Expr:
    return node(f"{a.text}-{b.text}", operator.sub, a, b)


def _dollars(x: Expr) -> Expr:
    return node(f"{x.text}//100", lambda v: v // 100, x)


def _cents(x: Expr) -> Expr:
    return node(f"{x.text}%100", lambda v: v % 100, x)


MID = node("(lb+ub)/2", lambda lb, ub: (lb + ub) / 2, LB, UB)  # exact: halves of integers
HALF = node("(ub-lb)/2", lambda lb, ub: (ub - lb) / 2, LB, UB)
ZERO = constant("0", 0)


# ---- ways to test one side: each returns an expression equal (or, for the wrong ones, close) to big >= small


def _direct(big: Expr, small: Expr) -> Expr:
    return _cmp(big, ">=", small)


def _distance(big: Expr, small: Expr) -> Expr:
    return _cmp(_minus(big, small), ">=", ZERO)


def _dollars_first(big: Expr, small: Expr) -> Expr:
    whole = node(f"sign({big.text}//100-{small.text}//100)", lambda b, s: _sign(b - s), _dollars(big), _dollars(small))
    cents = _cmp(_cents(big), ">=", _cents(small))
    return node(f"dollars-first {big.text}>={small.text}", lambda w, c: w > 0 or (w == 0 and c), whole, cents)


def _dollars_only(big: Expr, small: Expr) -> Expr:  # wrong when both lie in the same dollar
    return _cmp(_dollars(big), ">=", _dollars(small))


def _through(t: int) -> Callable[[Expr, Expr], Expr]:
    """big >= small, shortcut when big >= t >= small."""
    c = constant(price(t), t)

    def test(big: Expr, small: Expr) -> Expr:
        sure = node(f"{big.text}>={c.text}>={small.text}", operator.and_, _cmp(big, ">=", c), _cmp(c, ">=", small))
        return node(f"{big.text}>={small.text} via {c.text}", operator.or_, sure, _cmp(big, ">=", small))

    return test


def side_tests(thresholds: Sequence[int] = THRESHOLDS) -> dict[str, Callable[[Expr, Expr], Expr]]:
    """The ways to test one bound, by name (the dollars alone is wrong on some games: verification drops it)."""
    return {"direct": _direct, "distance": _distance, "dollars": _dollars_first, "dollars_only": _dollars_only,
            **{f"via_{price(t)}": _through(t) for t in thresholds}}


# ---- ways to combine the two tests into the answer


def _and(left: Expr, right: Expr) -> Expr:
    return node(f"({left.text}) and ({right.text})", operator.and_, left, right)


def _split_mid(left: Expr, right: Expr) -> Expr:
    upper = _cmp(AMOUNT, ">=", MID)
    return node(f"({right.text}) if {upper.text} else ({left.text})", lambda u, l, r: r if u else l, upper, left, right)


def _split_at(t: int) -> Callable[[Expr, Expr], Expr]:  # wrong when the bracket lies on one side of t
    c = constant(price(t), t)

    def combine(left: Expr, right: Expr) -> Expr:
        upper = _cmp(AMOUNT, ">=", c)
        return node(f"({right.text}) if {upper.text} else ({left.text})", lambda u, l, r: r if u else l, upper, left, right)

    return combine


def combiners(thresholds: Sequence[int] = THRESHOLDS) -> dict[str, Callable[[Expr, Expr], Expr]]:
    """The ways to combine the lower- and upper-bound tests, by name."""
    return {"and": _and, "split_mid": _split_mid, **{f"split_{price(t)}": _split_at(t) for t in thresholds}}


def centred_formulas(thresholds: Sequence[int] = THRESHOLDS) -> dict[str, Expr]:
    """Formulas that do not test the two bounds one by one, and the one with an unused variable."""
    to_mid = node("|amount-(lb+ub)/2|", lambda a, m: abs(a - m), AMOUNT, MID)
    to_lb, width = _minus(AMOUNT, LB), _minus(UB, LB)
    bracket = node("(lb,ub)", lambda lb, ub: (lb, ub), LB, UB)
    formulas = {
        "midpoint": _cmp(to_mid, "<=", HALF),
        "width": node("0<=amount-lb<=ub-lb", lambda d, w: 0 <= d <= w, to_lb, width),
        "product": _cmp(node("(amount-lb)*(ub-amount)", operator.mul, to_lb, _minus(UB, AMOUNT)), ">=", ZERO),
        "bracket": node("lb<=amount<=ub as (lb,ub)", lambda a, b: b[0] <= a <= b[1], AMOUNT, bracket),
    }
    for t in thresholds:
        c = constant(price(t), t)
        answer = _and(_direct(AMOUNT, LB), _direct(UB, AMOUNT))
        formulas[f"unused_{price(t)}"] = node(f"{answer.text}, ignoring amount>={c.text}", lambda a, _: a,
                                              answer, _cmp(AMOUNT, ">=", c))
    return formulas


def formulas(thresholds: Sequence[int] = THRESHOLDS) -> dict[str, Expr]:
    """Every generated formula by name: `and` with each test of the lower bound (the upper one direct) and of
    the upper bound (the lower one direct), each other combiner with direct tests, then the centred ones.
    Not all compute the task: see `space`."""
    tests, out = side_tests(thresholds), {}
    for name, test in tests.items():
        out[f"and({name},direct)"] = _and(test(AMOUNT, LB), _direct(UB, AMOUNT))
        if name != "direct":
            out[f"and(direct,{name})"] = _and(_direct(AMOUNT, LB), test(UB, AMOUNT))
    for name, combine in combiners(thresholds).items():
        if name != "and":
            out[f"{name}(direct,direct)"] = combine(_direct(AMOUNT, LB), _direct(UB, AMOUNT))
    return out | centred_formulas(thresholds)


# ---- verification and the candidates


def verification_games(n_brackets: int, seed: int, thresholds: Sequence[int] = THRESHOLDS) -> list[dict[str, int]]:
    """Games that exercise every edge a formula could get wrong: for `n_brackets` brackets (the extreme ones,
    ones with a bound on a whole dollar or at a threshold, the rest sampled as the game samples them) every
    amount within two cents of a bound, the mid-point, a threshold or a whole dollar of a bound, and for
    the first brackets every amount from 0.01 to 9.99."""
    rng = random.Random(seed)
    fixed = [(5, 255), (245, 995), (5, 755), (100, 350), (199, 700), (500, 900), (100, 500), (499, 999), (501, 800)]
    brackets = fixed + [(t - d, t + w) for t in thresholds for d in (0, 1, 100) for w in (250, 301)]
    brackets += [sample_bracket(rng) for _ in range(max(0, n_brackets - len(brackets)))]
    games = []
    for k, (lb, ub) in enumerate(brackets[:max(n_brackets, 1)]):
        marks = {lb, ub, (lb + ub) // 2, (lb + ub + 1) // 2, *thresholds, lb // 100 * 100, ub // 100 * 100,
                 lb // 100 * 100 + 99, ub // 100 * 100 + 99}
        amounts = range(1, 1000) if k < 3 else sorted({m + d for m in marks for d in (-2, -1, 0, 1, 2)} | {rng.randint(1, 999)})
        games += [{"lb": lb, "ub": ub, "amount": a} for a in amounts if 1 <= a <= 999]
    return games


@dataclass(frozen=True)
class Space:
    """The candidates (correct formulas' sub-expressions), and the formulas verification dropped."""

    candidates: tuple[Hypothesis, ...]
    thresholds: tuple[int, ...]
    formulas: Mapping[str, Expr]  # the formulas that compute the task on every verification game
    rejected: Mapping[str, float]  # wrong formulas: share of verification games they get wrong
    n_verified: int  # verification games


def _candidates(name: str, formula: Expr) -> list[Hypothesis]:
    chosen = [(n.text,) for n in variable_nodes(formula)] + [(a.text, b.text) for a, b in sibling_pairs(formula)]
    out = []
    for variables in chosen:
        key = name + SEP + " & ".join(variables)
        out.append(Hypothesis(key, " & ".join(variables), program(key, formula, variables), variables))
    return out


@functools.lru_cache(maxsize=8)
def space(n_brackets: int = 60, seed: int = 0, thresholds: tuple[int, ...] = THRESHOLDS) -> Space:
    """Generate the formulas, keep those that answer every verification game right, and list their candidates."""
    games = verification_games(n_brackets, seed, thresholds)
    kept, rejected, candidates = {}, {}, []
    for name, formula in formulas(thresholds).items():
        wrong = failures(program(name, formula, ()), task_label, games)
        if wrong:
            rejected[name] = len(wrong) / len(games)
            continue
        kept[name] = formula
        candidates += _candidates(name, formula)
    return Space(tuple(candidates), tuple(thresholds), kept, rejected, len(games))


def paper_members(candidates: Sequence[Hypothesis], pairs: Sequence[tuple[Mapping, Mapping]]) -> dict[str, str]:
    """For each of the paper's four hypotheses, the first candidate with its label functions on `pairs`."""
    wanted = {key: sorted(label_functions(h, pairs)) for key, h in HYPOTHESES.items()}
    found = {}
    for c in candidates:
        functions = sorted(label_functions(c, pairs))
        for key, target in wanted.items():
            if key not in found and functions == target:
                found[key] = c.key
    return found


def formulas_frame(space: Space) -> pd.DataFrame:
    """One row per generated formula: its expression, and how many candidates it gives or on what share
    of the verification games it answers wrong."""
    import pandas as pd

    every = formulas(space.thresholds)
    rows = []
    for name, formula in every.items():
        n = sum(c.key.startswith(name + SEP) for c in space.candidates)
        rows.append({"formula": name, "computes": formula.text, "candidates": n if name in space.formulas else 0,
                     "wrong on": space.rejected.get(name, 0.0)})
    return pd.DataFrame(rows).set_index("formula")


def space_values(space: Space) -> dict[str, int]:
    """The counts a chapter states: formulas generated, kept and dropped, candidates, verification games."""
    return {"formulas": len(space.formulas) + len(space.rejected), "formulas_kept": len(space.formulas),
            "formulas_wrong": len(space.rejected), "candidates": len(space.candidates), "verified_games": space.n_verified,
            "two_variable": sum(len(c.variables) == 2 for c in space.candidates)}


def label(key: str) -> str:
    """A candidate's variables and, in brackets, its formula: 'amount>=lb [and(direct,direct)]'."""
    formula, _, variables = key.partition(SEP)
    return f"{variables} [{formula}]"


def unused_keys(space: Space) -> list[str]:
    """The candidates whose one variable is the comparison with a threshold that the output never uses (the
    control that must rank last)."""
    return [f"unused_{price(t)}{SEP}amount>={price(t)}" for t in space.thresholds]
