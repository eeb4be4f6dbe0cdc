"""The checks that rule out a broken or an over-eager search, run with the same calls as the search itself.

(The nulls that could produce a finding if it were an artefact are at the end: `artefacts`, `whole_swap`.)

A positive control is a model with a planted mechanism, searched with the same grid, readout, pairs and
budget (`positive_control`): a search that cannot find what was planted proves nothing when it finds
nothing elsewhere, and `control_passes` says whether it found it. The nulls, each of which a finding must
beat on the same test pairs, and each able to fail:

- the same grid on the same architecture with random weights (`random_weights`): what the search finds
  in a network that computes nothing. Read over the answer tokens, a random network answers near its
  majority rate (das_lib.method.readout), so its IIA of doing nothing is no artefact of the reading;
- random subspaces of the learned size at the finding's site (`random_subspaces`): the finding's
  alignment with its learned rotation replaced by random ones, its boundaries kept, as a distribution;
- the control task (the task's `controls()`), trained and tested like a hypothesis in the same grid.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import pandas as pd
import torch

from das_lib.method.outcome import Outcome, candidate_score
from das_lib.method.subspaces import random_rotation_like
from das_lib.models.load import random_weights_name
from das_lib.models.standin import planted_for
from das_lib.runs import findings
from das_lib.runs.grid import Cell, Grid, GridSpec
from das_lib.runs.sweep import task_settings


def planted(model: str) -> dict[str, Any] | None:
    """What was planted in `model`: {"candidate", "variables", "layer", "position"}, or None (nothing was)."""
    found = planted_for(model)
    if found is None:
        return None
    meta = found[1]
    return {"candidate": meta["hypothesis"], "variables": list(meta["variables"]), "layer": meta["site"]["layer"],
            "position": meta["site"]["position"]}


def control_spec(spec: GridSpec, model: str, layers: Sequence[int] = (), positions: Sequence[str] = ()) -> GridSpec:
    """`spec`'s grid (candidates, seeds, budget, pairs) on `model`, a model with a planted mechanism, at `layers`
    ([]: every layer of it) and `positions` (its own token roles; []: `spec`'s), in float32 with its own prompts."""
    from das_lib.models.load import load_config

    layers = tuple(layers) or tuple(range(load_config(model).num_hidden_layers))
    return replace(spec, model=model, task_settings=task_settings(model, spec.task), layers=layers,
                   positions=tuple(positions) or spec.positions, dtype="float32")


def control_passes(finding: findings.Finding, model: str) -> dict[str, Any]:
    """Did the search find the planted mechanism: the planted program first on validation (`first`), at the
    planted site chosen on validation (`site`), each planted variable realised on the test pairs (`variables`);
    `passed` when all three hold."""
    truth = planted(model)
    if truth is None:
        raise ValueError(f"{model!r} has no planted mechanism to check the search against")
    key = truth["candidate"]
    site = finding.sites.get(key)
    realised = finding.realised(key) if key in finding.sites else {}
    checks = {"first": finding.first == key,
              "site": site is not None and (site.layer, site.position) == (truth["layer"], truth["position"]),
              "variables": bool(realised) and all(realised.values())}
    return {**checks, "passed": all(checks.values()), "planted": key, "planted_site": f"L{truth['layer']} {truth['position']}",
            "found_site": "" if site is None else f"L{site.layer} {site.position}"}


def random_weights(spec: GridSpec, store: str, device: str = "cpu", seed: int = 0) -> Grid:
    """`spec`'s grid (same candidates, sites, seeds, budget and pairs) on the same architecture with its weights
    drawn at random (`models.load.random_weights_name`), run into `store`."""
    grid = Grid(replace(spec, model=random_weights_name(spec.model, seed)), store, device, progress=False)
    grid.run()
    return grid


def random_subspaces(grid: Grid, finding: findings.Finding, candidate: str, draws: int = 20) -> pd.DataFrame:
    """One row per draw: the test score of `candidate`'s alignment (`reuse.chosen_cell`) with its learned rotation
    replaced by a random one, its boundaries kept (subspaces of the learned size that were not learned), beside the
    learned alignment's own score on the same pairs."""
    from das_lib.runs.reuse import chosen_cell

    learned, record = grid.load_alignment(chosen_cell(grid, finding, candidate))
    config, runner = record["config"], grid.runner
    labels = grid.labels(candidate, "test")
    learned_outcome = Outcome.from_dict(record["results"]["outcomes"]["test"])
    rows = []
    for draw in range(draws):
        tokens = runner.predictions(config, random_rotation_like(learned.to(runner.device), draw).eval())
        outcome = replace(learned_outcome, correct=(tokens.numpy() == labels))
        rows.append({"draw": draw, "score": float(candidate_score(outcome.correct, outcome.none, outcome.changed)),
                     "iia": float(outcome.correct.mean())})
    return pd.DataFrame(rows).assign(learned=float(candidate_score(learned_outcome.correct, learned_outcome.none,
                                                                   learned_outcome.changed)))


def null_table(finding: findings.Finding, nulls: dict[str, findings.Finding]) -> pd.DataFrame:
    """The finding's winner beside each null's winner (each chosen on its own validation pairs): site, score and
    raw score on the test pairs with their intervals, and the IIA of doing nothing beside the majority rate."""
    rows = {"finding": finding.table.loc[finding.first]}
    for name, null in nulls.items():
        rows[name] = null.table.loc[null.first]
    return pd.DataFrame(rows).T[["site", "score", "score low", "score high", "raw", "raw low", "raw high", "majority"]]



ARTEFACTS = ("left_shifted", "right_shifted", "amount_copy")  # false-but-correlated hypotheses and an input copy


def artefacts(grid: Grid, finding: findings.Finding, store: str) -> tuple[Grid, findings.Finding]:
    """The nulls that could produce the finding if it were an artefact, trained like a hypothesis at the first
    hypothesis's chosen site (its seeds and pools too): the boundaries shifted by a dollar (false, but agreeing with
    the truth on most games), the amount itself (does the site merely carry an input?), and a control task on the
    first hypothesis's scale (its doing-nothing rate and ceiling: the task's `control_<first>`), run into `store`."""
    site = finding.sites[finding.first]
    matched = f"control_{finding.first}"
    candidates = tuple(c for c in (*ARTEFACTS, matched) if c in grid.task.controls())
    spec = replace(grid.spec, candidates=candidates, layers=(site.layer,), positions=(site.position,))
    nulls = Grid(spec, store, grid.device, grid.loaded, progress=False)
    nulls.run()
    return nulls, findings.finding(nulls, list(candidates))


def whole_swap(grid: Grid, finding: findings.Finding, candidate: str) -> Outcome:
    """The test `Outcome` of swapping the whole state at `candidate`'s chosen site (every dimension, no rotation),
    for its labels: the most any subspace there can do."""
    from das_lib.method.interventions import NeuronIntervention

    site = finding.sites[candidate]
    cell = Cell(candidate, site.layer, site.position, grid.spec.seeds[0], grid.spec.data_seed)
    record = grid.record(cell)
    d = grid.runner.model.config.hidden_size
    tokens = grid.runner.predictions(record["config"], NeuronIntervention(d, list(range(d))).to(grid.runner.device))
    learned = Outcome.from_dict(record["results"]["outcomes"]["test"])
    return replace(learned, correct=tokens.numpy() == grid.labels(candidate, "test"), vocab_correct=None, vocab_none=None)


def planted_subspaces(model: str) -> dict[str, torch.Tensor]:
    """The planted model's planted subspace per variable (d x k bases), the illusion check's reference."""
    from das_lib.method.illusion import learned_subspace

    found = planted_for(model)
    if found is None:
        raise ValueError(f"{model!r} has no planted subspace")
    subspace, meta = found
    return {v: learned_subspace(subspace, i) for i, v in enumerate(meta["variables"])}
