"""The checks that rule out a broken or an over-eager search, run with the same calls as the search itself.

A positive control is a model with a planted mechanism, searched the same way and at the same budget: a
search that cannot find what was planted proves nothing when it finds nothing elsewhere. Three nulls,
each of which the finding must beat on the same test pairs (`findings.versus`), and each able to fail:

- the control task (das_lib.pricetag.game.CONTROLS): labels from a random readout of an input variable no
  hypothesis names, trained and tested like a hypothesis, in the same sweep: how well an alignment fits
  labels that no mechanism explains;
- a random subspace of the learned size at the finding's site (`random_subspace`): what swapping that many
  dimensions does when they are not the learned ones;
- the same search on the same architecture with random weights (`random_weights_search`): what the
  search finds in a network that computes nothing.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd

from das_lib.method.subspaces import random_rotation_like
from das_lib.models.load import random_weights_copy
from das_lib.pricetag.game import CONTROLS
from das_lib.runs import findings
from das_lib.runs.spec import Cell, SweepSpec
from das_lib.runs.sweep import Sweep


def control_spec(spec: SweepSpec, model: str, layers: Sequence[int], positions: Sequence[str]) -> SweepSpec:
    """`spec`'s sweep (same hypotheses, seeds, training budget and pairs) on `model`, a model with a planted
    mechanism, at `layers` ([]: every layer) and `positions` (its own token roles; []: `spec`'s), in float32."""
    return replace(spec, model=model, layers=tuple(layers) or None, positions=tuple(positions) or spec.positions,
                   dtype="float32")


def positive_control(spec: SweepSpec, model: str, layers: Sequence[int], positions: Sequence[str], store: str,
                     device: str = "cpu", fresh: bool = False) -> Sweep:
    """The sweep of `control_spec`, run into `store` (emptied first if `fresh`)."""
    sweep = Sweep(control_spec(spec, model, layers, positions), store, device)
    if fresh:
        sweep.store.clear()
    sweep.run(progress=False)
    return sweep


def random_subspace(sweep: Sweep, row: pd.Series, seed: int = 0) -> np.ndarray:
    """Per test pair (0/1): is the model's answer the label of `row`'s hypothesis when `row`'s alignment (a
    row of `findings.chosen`) has its learned rotation replaced by a random one, keeping its boundaries: a
    random subspace of the learned size at the same site."""
    cell = Cell(row["hypothesis"], int(row["layer"]), str(row["position"]), int(row["seed"]))
    learned, record = sweep.load_alignment(cell)
    reference = random_rotation_like(learned.to(sweep.runner.device), seed)
    runner = sweep.runner
    tokens = runner.predictions(record["config"], reference.eval())
    return (tokens == runner.hypothesis_data(record["config"]).data["test"].labels.cpu()).numpy().astype(int)


def random_weights_search(spec: SweepSpec, hypotheses: Sequence[str], store: str, device: str = "cpu",
                          seed: int = 0) -> Sweep:
    """`spec`'s search for `hypotheses` (same grid, seeds, budget and pairs) on the same architecture with its
    weights drawn at random (`models.load.random_weights_copy`), run into `store`."""
    null = replace(spec, model=random_weights_copy(spec.model, seed), hypotheses=tuple(hypotheses))
    sweep = Sweep(null, store, device)
    sweep.run(progress=False)
    return sweep


def nulls(sweep: Sweep, finding: str, store: str, null_grid: bool = False, seed: int = 0) -> pd.DataFrame:
    """The chosen cell of the hypothesis `finding` beside the three nulls, on the same test pairs: per row the
    site, the test IIA and the gain over doing nothing with their 95% intervals, and how far the finding's
    gain lies above the null's (paired). The control task and (unless `null_grid`: over the sweep's whole
    grid) the random-weights search run at the finding's site, with the sweep's seeds and budget; the
    random-weights search goes to `store`."""
    spec = sweep.spec
    row = findings.chosen(sweep.frame()).loc[finding]
    here = dict(layers=(int(row["layer"]),), positions=(str(row["position"]),),
                seeds=tuple(dict.fromkeys((*spec.seeds, *spec.best_site_seeds))), best_site_seeds=())
    control = Sweep(replace(spec, hypotheses=tuple(CONTROLS), **here), sweep.store, sweep.device, sweep.loaded)
    control.run(progress=False)
    none = findings.flags(row["none_correct"])
    random = random_subspace(sweep, row, seed)  # before the random-weights model takes the model's place in memory
    random_model = random_weights_search(spec if null_grid else replace(spec, **here), [finding], store, sweep.device, seed)
    with warnings.catch_warnings():  # a random network answers at chance: its normalised IIA is undefined, as expected
        warnings.simplefilter("ignore")
        found = {"control task": findings.chosen(control.frame()).iloc[0],
                 "random weights": findings.chosen(random_model.frame()).loc[finding]}
    rows = {"finding": {**findings.cell_numbers(row), "site": f"L{int(row['layer'])} {row['position']}"}}
    for name, null in found.items():
        rows[name] = {**findings.cell_numbers(null), "site": f"L{int(null['layer'])} {null['position']}",
                      **findings.versus(row, findings.gains(null))}
    rows["random subspace"] = {**findings.iia_and_gain(random, none), "site": rows["finding"]["site"],
                               **findings.versus(row, (random - none).astype(float))}
    return pd.DataFrame(rows).T
