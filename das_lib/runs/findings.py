"""What a sweep found, as a reviewer would accept it: chosen on validation pairs, reported on test pairs.

A sweep records, for every cell, which of its validation and test pairs the alignment got right and which
doing nothing got right (das_lib.runs.jobs). From a sweep's frame (`Sweep.frame`):

- `chosen`: per hypothesis, the site of highest validation IIA over the first seed's grid, then among the
  seeds trained there the one of highest validation IIA: nothing is chosen on the test pairs.
- `summary`: that choice reported on the test pairs, each number with its 95% interval: the IIA (exact
  binomial), the gain over doing nothing on the same pairs (paired bootstrap), the IIA on the pairs whose
  label differs from the base's own answer (where doing nothing cannot be right), the IIA of each
  variable of a two-variable hypothesis, and the spread over the seeds at the chosen site.
- `ranking`: the hypotheses by gain, and the interval of the difference between the first two, pair by
  pair on the same test pairs (every hypothesis of a sweep labels the same pool).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from das_lib import paper
from das_lib.method.metrics import normalised_or_nan
from das_lib.method.stats import binomial_interval, bootstrap_interval, paired_difference
from das_lib.pricetag.game import CONTROLS, get_hypothesis

LEVEL = 0.95  # every interval the book reports


def flags(bits: str) -> np.ndarray:
    """A record's per-pair string ("0110...") as an int array (signed: differences of two are -1, 0 or 1)."""
    return np.frombuffer(bits.encode(), dtype=np.uint8).astype(np.int64) - ord("0")


def chosen(frame: pd.DataFrame) -> pd.DataFrame:
    """Per hypothesis (index: its key), the frame's row chosen on validation: the site of highest validation IIA
    over the first seed's grid (first of equals in grid order), then the seed of highest validation IIA there."""
    rows = {}
    first_seed = frame["seed"].min()
    for h in frame["hypothesis"].unique():
        grid = frame[(frame["hypothesis"] == h) & (frame["seed"] == first_seed)]
        site = grid.loc[grid["val_iia"].idxmax()]
        here = frame[(frame["hypothesis"] == h) & (frame["layer"] == site["layer"]) & (frame["position"] == site["position"])]
        rows[h] = here.loc[here["val_iia"].idxmax()]
    return pd.DataFrame(rows).T


def _iia_interval(correct: np.ndarray) -> tuple[float, float]:
    return binomial_interval(int(correct.sum()), len(correct), LEVEL)


def cell_numbers(row: pd.Series) -> dict[str, float]:
    """One cell's test numbers with intervals (`iia_and_gain`), and its IIA on the pairs whose label differs
    from the base's own answer (where doing nothing is never right)."""
    correct, changed = flags(row["correct"]), flags(row["changed"]).astype(bool)
    return {**iia_and_gain(correct, flags(row["none_correct"])), "pairs": len(correct), "changed pairs": int(changed.sum()),
            "IIA on changed": correct[changed].mean() if changed.any() else float("nan")}


def summary(frame: pd.DataFrame, task_acc: float) -> pd.DataFrame:
    """Per hypothesis (index: its key): the site and seed chosen on validation, their validation IIA, and on
    the test pairs the numbers of `cell_numbers`, the IIA of each variable, the normalised IIA, the seeds'
    spread at that site, the majority rate and the paper's max IIA for Alpaca 7B."""
    rows = {}
    for h, row in chosen(frame).iterrows():
        at_site = frame[(frame["hypothesis"] == h) & (frame["layer"] == row["layer"]) & (frame["position"] == row["position"])]
        numbers = cell_numbers(row)
        variables = flags(row["variable"])
        by_variable = {f"IIA {name}": flags(row["correct"])[variables == v].mean()
                       for v, name in enumerate(get_hypothesis(h).variables) if len(get_hypothesis(h).variables) > 1}
        rows[h] = {"best site": f"L{int(row['layer'])} {row['position']}", "layer": int(row["layer"]),
                   "position": row["position"], "seed": int(row["seed"]), "validation IIA": row["val_iia"], **numbers,
                   **by_variable, "normalised": normalised_or_nan(numbers["IIA"], task_acc, row["dummy"]),
                   "mean over seeds": at_site["iia"].mean(), "min over seeds": at_site["iia"].min(),
                   "max over seeds": at_site["iia"].max(), "seeds": len(at_site), "dummy": row["dummy"],
                   "paper (Alpaca 7B)": paper.MAX_IIA.get(h)}
    return pd.DataFrame(rows).T.infer_objects()


def ranking(frame: pd.DataFrame) -> dict[str, float | str]:
    """The hypothesis of largest test gain at its chosen site (control tasks aside), the runner-up, and the
    difference of their gains with its interval, pair by pair on the same test pairs (`margin`, `margin_low`,
    `margin_high`)."""
    picks = chosen(frame)
    by = {h: gains(r) for h, r in picks.iterrows() if h not in CONTROLS}
    order = sorted(by, key=lambda h: -by[h].mean())
    out: dict[str, float | str] = {"first": order[0]}
    if len(order) > 1:
        first, second = by[order[0]], by[order[1]]
        if len(first) != len(second):
            raise ValueError("the hypotheses were not scored on the same test pairs; rerun the sweep (it shares one pool)")
        low, high = bootstrap_interval(first - second, level=LEVEL)
        out |= {"second": order[1], "margin": float((first - second).mean()), "margin_low": low, "margin_high": high}
    return out


def gains(row: pd.Series) -> np.ndarray:
    """Per test pair: did the alignment get the label where doing nothing did not (+1), the reverse (-1), or neither (0)."""
    return (flags(row["correct"]) - flags(row["none_correct"])).astype(float)


def versus(row: pd.Series, null_gains: np.ndarray) -> dict[str, float]:
    """How far the gain of `row` (a chosen cell) lies above a null's on the same test pairs (`null_gains`, per
    pair as `gains` gives them): the mean difference and its 95% interval (paired bootstrap)."""
    ours = gains(row)
    if len(ours) != len(null_gains):
        raise ValueError(f"the null was scored on {len(null_gains)} pairs, the finding on {len(ours)}: not the same pairs")
    low, high = bootstrap_interval(ours - null_gains, level=LEVEL)
    return {"difference": float((ours - null_gains).mean()), "difference low": low, "difference high": high}


def iia_and_gain(correct: np.ndarray, none: np.ndarray) -> dict[str, float]:
    """A null's test numbers with their intervals, as `cell_numbers` gives a cell's: IIA and gain over doing nothing."""
    low, high = _iia_interval(correct)
    gain, gain_low, gain_high = paired_difference(correct, none, level=LEVEL)
    return {"IIA": correct.mean(), "IIA low": low, "IIA high": high, "unintervened": none.mean(), "gain": gain,
            "gain low": gain_low, "gain high": gain_high}
