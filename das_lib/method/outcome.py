"""What one trained alignment did, pair by pair, and the scores read from it.

An alignment of a candidate causal model with V variables is tested on every held-out pair once per
variable (that variable swapped alone, in its own subspace). Its `Outcome` on a split keeps, for each
variable (rows) and pair (columns):

- `correct`: the intervened answer is the variable's counterfactual label;
- `none`: the model's own answer on the base (no intervention) is that label already;
- `changed`: the label differs from the causal model's own answer on the base: the swap is predicted to
  change the output (a property of the candidate and the pair, not of the network);
- optionally the same two answers read over the whole vocabulary (the paper's reading, beside ours).

The scores, per variable (each a function of arrays whose last axis is the pairs, so that a bootstrap can
apply it to resampled pairs, and whose leading axes are kept):

- `iia`, and `gain` = IIA - IIA of doing nothing on the same pairs;
- `ceiling` = 1 - IIA of doing nothing: the largest gain possible on these pairs, and
  `normalised` = gain / ceiling (1: every pair right, 0: no better than doing nothing; undefined where fewer than
  MIN_CHANGEABLE pairs could gain). A candidate that predicts many changes has a high ceiling; dividing by it
  keeps that from counting as evidence;
- `recall`: IIA on the pairs whose label changes (predicted changes the swap produced), and
  `false_change`: the share of the other pairs whose intervened answer is not their (unchanged) label.
A candidate's `score` is the mean over its variables of the normalised gain; `raw` is the sum of gains.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

SCORES = ("iia", "none", "gain", "ceiling", "normalised", "recall", "false_change")
# A variable whose ceiling rests on fewer pairs than this (pairs where doing nothing is wrong) has no normalised gain:
# divided by a few pairs, a gain would swing on one of them, and an almost inert candidate could lead a ranking by noise.
MIN_CHANGEABLE = 10


@dataclass
class Outcome:
    """One alignment on one split: (V, P) bool arrays, variables by pairs."""

    correct: np.ndarray
    none: np.ndarray
    changed: np.ndarray
    vocab_correct: np.ndarray | None = None  # the paper's whole-vocabulary reading, where it was recorded
    vocab_none: np.ndarray | None = None

    def __post_init__(self) -> None:
        shapes = {a.shape for a in (self.correct, self.none, self.changed)}
        if len(shapes) != 1 or self.correct.ndim != 2:
            raise ValueError(f"an Outcome needs (variables, pairs) arrays of one shape, got {sorted(shapes)}")

    @property
    def variables(self) -> int:
        return self.correct.shape[0]

    @property
    def pairs(self) -> int:
        return self.correct.shape[1]

    def as_dict(self) -> dict[str, list[str]]:
        """Each array as one string of 0/1 per variable (compact in a JSON record)."""
        fields = {"correct": self.correct, "none": self.none, "changed": self.changed,
                  "vocab_correct": self.vocab_correct, "vocab_none": self.vocab_none}
        return {k: [bits(row) for row in v] for k, v in fields.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, list[str]]) -> "Outcome":
        """The Outcome of `as_dict`'s form; a missing or malformed field raises a KeyError/ValueError naming it."""
        arrays = {}
        for name in ("correct", "none", "changed", "vocab_correct", "vocab_none"):
            if name in data:
                arrays[name] = np.stack([flags(row) for row in data[name]]).astype(bool)
            elif name in ("correct", "none", "changed"):
                raise KeyError(f"an outcome record lacks {name!r}; it has {sorted(data)}")
        return cls(**arrays)

    def scores(self) -> dict[str, np.ndarray]:
        """Every score of `SCORES` per variable, (V,)."""
        return variable_scores(self.correct, self.none, self.changed)


def bits(flags_: np.ndarray) -> str:
    """A 0/1 vector as a string ("0110...")."""
    return "".join("1" if v else "0" for v in np.asarray(flags_).tolist())


def flags(text: str) -> np.ndarray:
    """A "0110..." string as an int array; anything but 0 and 1 is refused."""
    array = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) - ord("0")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"not a string of 0s and 1s: {text[:20]!r}...")
    return array


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def variable_scores(correct: np.ndarray, none: np.ndarray, changed: np.ndarray,
                    weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The scores of the module docstring over the last axis (pairs) of (..., V, P) arrays: (..., V) each. With
    `weights` (B, P), e.g. how often a bootstrap resample drew each pair, each score of each resample: (B, ..., V),
    from weighted sums (one matrix product per quantity, not one pass over the pairs per resample)."""
    correct, none, changed = (np.asarray(a, dtype=bool) for a in (correct, none, changed))
    w = np.ones((1, correct.shape[-1])) if weights is None else np.asarray(weights, dtype=float)

    def total(a: np.ndarray) -> np.ndarray:  # (B, ..., V): the weighted count of a over the pairs
        return np.moveaxis(a.astype(float) @ w.T, -1, 0)

    n = w.sum(1).reshape((-1,) + (1,) * (correct.ndim - 1))
    iia, none_rate = total(correct) / n, total(none) / n
    gain, ceiling = iia - none_rate, 1.0 - none_rate
    normalised = np.where(total(~none) >= MIN_CHANGEABLE, _ratio(gain, ceiling), np.nan)
    out = {"iia": iia, "none": none_rate, "gain": gain, "ceiling": ceiling, "normalised": normalised,
           "recall": _ratio(total(correct & changed), total(changed)),
           "false_change": _ratio(total(~correct & ~changed), total(~changed))}
    return out if weights is not None else {k: v[0] for k, v in out.items()}


def candidate_score(correct: np.ndarray, none: np.ndarray, changed: np.ndarray, kind: str = "score",
                    weights: np.ndarray | None = None) -> np.ndarray:
    """A candidate's one number over (..., V, P) arrays (with `weights`, per resample: see `variable_scores`):
    "score" (the mean over its variables of the normalised gain) or "raw" (the sum over its variables of the gain)."""
    if kind not in ("score", "raw"):
        raise ValueError(f"kind must be 'score' or 'raw', got {kind!r}")
    correct, none = np.asarray(correct, dtype=bool), np.asarray(none, dtype=bool)
    w = np.ones((1, correct.shape[-1])) if weights is None else np.asarray(weights, dtype=float)
    n = w.sum(1).reshape((-1,) + (1,) * (correct.ndim - 1))
    iia, none_rate = np.moveaxis(correct.astype(float) @ w.T, -1, 0) / n, np.moveaxis(none.astype(float) @ w.T, -1, 0) / n
    changeable = np.moveaxis((~none).astype(float) @ w.T, -1, 0)
    gain = iia - none_rate
    if kind == "raw":
        out = gain.sum(-1)
    else:
        with warnings.catch_warnings():  # a candidate whose every variable has no room to gain scores NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            out = np.nanmean(np.where(changeable >= MIN_CHANGEABLE, _ratio(gain, 1.0 - none_rate), np.nan), axis=-1)
    return out if weights is not None else out[0]
