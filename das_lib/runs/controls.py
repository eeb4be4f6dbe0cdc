"""The checks that rule out a broken search, run with the same calls as the search itself.

A positive control is a model with a planted mechanism searched the same way: a search that cannot find
what was planted proves nothing when it finds nothing elsewhere. A negative control trains one cell on
pairs whose counterfactual labels are permuted among them: no variable explains those labels, so an
alignment that scores well on them shows that the intervention can fit anything.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import pandas as pd

from das_lib.method.training import TrainConfig
from das_lib.runs.spec import SweepSpec
from das_lib.runs.sweep import Sweep

def positive_control(spec: SweepSpec, model: str, layers: Sequence[int], positions: Sequence[str],
                     budget: Mapping[str, int], store: str, device: str = "cpu", fresh: bool = False) -> Sweep:
    """`spec`'s sweep (same hypotheses and seeds) on `model` at `layers` ([]: every layer) and `positions`
    ([]: `spec`'s), in float32, with its own training `budget` (steps, batch_size, n_train, n_test); run into `store` (emptied
    first if `fresh`)."""
    control = replace(spec, model=model, layers=tuple(layers) or None, positions=tuple(positions) or spec.positions,
                      dtype="float32",
                      train=TrainConfig(steps=budget["steps"], batch_size=budget["batch_size"]),
                      n_train=budget["n_train"], n_test=budget["n_test"])
    sweep = Sweep(control, store, device)
    if fresh:
        sweep.store.clear()
    sweep.run(progress=False)
    return sweep


def shuffled_labels(spec: SweepSpec, hypothesis: str, layer: int, position: str, store: str,
                    device: str = "cpu") -> pd.Series:
    """One cell of `spec` at (hypothesis, layer, position), first seed, trained and measured on pairs whose
    counterfactual labels are shuffled; its row of the sweep frame (iia, dummy, unintervened, ...)."""
    shuffled = replace(spec, hypotheses=(hypothesis,), layers=(int(layer),), positions=(position,),
                       best_site_seeds=(), shuffle_labels=True)
    sweep = Sweep(shuffled, store, device)
    sweep.run(progress=False)
    return sweep.frame().iloc[0]
