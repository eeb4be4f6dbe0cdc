"""The search over candidate programs: each group's representative trained at a site, then ranked.

All candidates are trained and tested on the same (base, source) pairs; only their labels differ. So
the model's runs are shared (one fast-path cache per layer serves every candidate), and two candidates'
results can be compared pair by pair.

A candidate with k variables is tested on every pair once per variable (each variable swapped alone,
in its own subspace). Its *gain* on a pair is, summed over its variables, 1 if the intervened answer is
the label and the model's own answer is not, -1 for the reverse, 0 otherwise: its mean is the IIA
minus the IIA of doing nothing, summed over the variables. So a program that correctly names two
variables (the left and the right boundary) gains more than one that names either alone, or only
their conjunction (the answer itself, which a swap of both subspaces together would carry), and an
unused variable gains about 0.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from das_lib.method.data import InterchangeData
from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.stats import binomial_interval, bootstrap_interval
from das_lib.method.training import (
    InterventionForward, TrainConfig, answer_tokens_under, set_seed, train_intervention,
)


def candidate_data(pool: InterchangeData, label_ids: Sequence[Sequence[int]]) -> InterchangeData:
    """The pool's examples once per variable of a candidate (all of variable 0, then 1, ...), each with the
    variable's index and the token id of its counterfactual label on that pair."""
    n, k = len(pool), len(label_ids)
    if any(len(ids) != n for ids in label_ids):
        raise ValueError(f"every variable needs one label per pool example ({n}); got {[len(i) for i in label_ids]}")
    data = pool.select(torch.arange(n, device=pool.labels.device).repeat(k))
    device = pool.labels.device
    return replace(data, variable=torch.arange(k, device=device).repeat_interleave(n),
                   labels=torch.tensor([i for ids in label_ids for i in ids], dtype=torch.long, device=device))


@dataclass
class Outcome:
    """One candidate at one site on one set of pairs: for each variable (rows) and pair (columns), whether
    the intervened answer was the label and whether the model's own answer was."""

    correct: np.ndarray  # (V, P) bool
    unintervened: np.ndarray  # (V, P) bool

    def gains(self) -> np.ndarray:
        """(P,) per pair: counterfactual answers right beyond doing nothing, summed over the variables."""
        return (self.correct.astype(int) - self.unintervened.astype(int)).sum(0)

    def as_dict(self) -> dict[str, list[list[int]]]:
        return {"correct": self.correct.astype(int).tolist(), "unintervened": self.unintervened.astype(int).tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, list[list[int]]]) -> "Outcome":
        return cls(np.array(d["correct"], dtype=bool), np.array(d["unintervened"], dtype=bool))


def outcome(forward: InterventionForward, data: InterchangeData, base: torch.Tensor, n_variables: int) -> Outcome:
    """The `Outcome` of `forward` on `candidate_data` with `n_variables` variables, given the model's own
    answers on the pool (`training.answer_tokens`)."""
    labels = data.labels.cpu().view(n_variables, -1)
    return Outcome((answer_tokens_under(forward, data).view(n_variables, -1) == labels).numpy(), (base[None, :] == labels).numpy())


def train_candidate(forward_for: Callable[[nn.Module], InterventionForward], d: int, n_variables: int, train: InterchangeData,
                    evaluate_on: Mapping[str, tuple[InterchangeData, torch.Tensor]], config: TrainConfig,
                    rank: int | None = None) -> dict:
    """Train a Boundless DAS intervention (`n_variables` subspaces of a width-`d` site) on `train`, with the
    forward that `forward_for(intervention)` gives, and return its `Outcome` on each named evaluation set
    ((candidate_data, training.answer_tokens)), the learned boundary and the training seconds."""
    set_seed(config.seed)  # the rotation's initialisation depends on the seed too
    intervention = BoundlessDASIntervention(d, rank, n_variables).to(train.labels.device)
    forward = forward_for(intervention)
    start = time.perf_counter()
    result = train_intervention(forward, intervention, train, config, progress=False)
    out = {name: outcome(forward, data, base, n_variables) for name, (data, base) in evaluate_on.items()}
    return {"outcomes": out, "boundary_dims": intervention.boundary_dims(), "seconds": time.perf_counter() - start,
            "train_iia": result.curves[-1]["batch_iia"] if result.curves else float("nan")}


def iia_interval(correct: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Interval of an IIA over (V, P) interventions: exact binomial for one variable; for several, a bootstrap
    over pairs of the per-pair share (a pair's variables are not independent trials)."""
    if correct.shape[0] == 1:
        return binomial_interval(int(correct.sum()), correct.shape[1], level)
    return bootstrap_interval(correct.mean(0), level)


def ranking(outcomes: Mapping[str, Outcome], level: float = 0.95) -> pd.DataFrame:
    """One row per candidate (index: its key), largest gain first: variables, pairs, IIA (over every pair and
    variable) with its interval, the IIA of doing nothing, and the gain (summed over the variables) with its
    interval."""
    rows = []
    for key, o in outcomes.items():
        lo, hi = iia_interval(o.correct, level)
        slo, shi = bootstrap_interval(o.gains(), level)
        rows.append({"candidate": key, "variables": o.correct.shape[0], "pairs": o.correct.shape[1],
                     "iia": float(o.correct.mean()), "iia_low": lo, "iia_high": hi,
                     "unintervened": float(o.unintervened.mean()),
                     "gain": float(o.gains().mean()), "gain_low": slo, "gain_high": shi})
    table = pd.DataFrame(rows).sort_values(["gain", "candidate"], ascending=[False, True], kind="stable")
    return table.set_index("candidate").assign(rank=range(1, len(rows) + 1))


def majority_rate(functions: Sequence[Sequence]) -> float:
    """Share of the most common label over all of a candidate's label functions: the IIA of always giving it."""
    labels = [label for f in functions for label in f]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def margin(a: Outcome, b: Outcome, level: float = 0.95) -> tuple[float, float, float]:
    """How much a's gain beats b's on the same pairs: (mean difference, low, high), a paired bootstrap."""
    if a.correct.shape[1] != b.correct.shape[1]:
        raise ValueError(f"the two outcomes score different pairs ({a.correct.shape[1]} and {b.correct.shape[1]})")
    difference = a.gains() - b.gains()
    low, high = bootstrap_interval(difference, level)
    return float(difference.mean()), low, high
