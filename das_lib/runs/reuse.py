"""Reusing a grid's alignments without retraining: which cell stands for a hypothesis, and the robustness study.

The alignments are a finished grid's cells (das_lib.runs.grid), loaded from its store; nothing is chosen
on test pairs:

- `chosen_cell`: a candidate's cell is at its site chosen on validation (the `Finding`'s) and, of the runs
  there on the grid's own data seed (its seeds and extra seeds), the one of highest validation score (the
  first in the grid's order on a tie), as the paper kept the best of three seeds, but chosen on validation;
- `site_cells`: every run at that site (training seeds x data seeds): the spread a reported number is read
  beside;
- `alignments`: the `robustness.Alignments` of some hypotheses, loaded (and, with `whole_grid`, every cell of
  their grid, for the heatmaps);
- `robustness_of`: a grid's alignments on the robustness settings (das_lib.runs.robustness), kept as a record in
  the grid's store under a config naming the alignments (their cells' hashes), the settings and the budget, so
  that a rerun (or a build reading a committed store, das_lib.runs.committed) reads it back instead of
  evaluating again; the result says which (`stored`).

Nothing is read from a grid that is not complete: `Grid.runs` raises IncompleteGrid naming the cells that
have no record, and an alignment file that cannot be read is named and set aside with its record, so that
the next `Grid.run` trains it again (`Grid.load_alignment`).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import numpy as np
import pandas as pd
from torch import nn

from das_lib.method.outcome import candidate_score
from das_lib.method.task import Variant
from das_lib.runs import robustness
from das_lib.runs.findings import Finding
from das_lib.runs.grid import Cell, Grid


def _cell(row: pd.Series) -> Cell:
    return Cell(str(row["candidate"]), int(row["layer"]), str(row["position"]), int(row["seed"]), int(row["data_seed"]))


def site_cells(grid: Grid, finding: Finding, candidate: str) -> list[Cell]:
    """Every cell of the grid at `candidate`'s site chosen on validation: its seeds and extra seeds, on the grid's
    data seed and on each extra data seed."""
    if candidate not in finding.sites:
        raise KeyError(f"the finding has no site for {candidate!r}; it chose sites for {sorted(finding.sites)}")
    site = finding.sites[candidate]
    return [c for c in grid.cells() if c.candidate == candidate and c.site() == site]


def chosen_cell(grid: Grid, finding: Finding, candidate: str, runs: pd.DataFrame | None = None) -> Cell:
    """`candidate`'s cell: at its site chosen on validation, the run on the grid's data seed of highest validation
    score (`runs`: the grid's runs, read when not given; IncompleteGrid if cells there have no record)."""
    here = [c for c in site_cells(grid, finding, candidate) if c.data_seed == grid.spec.data_seed]
    runs = grid.runs(here) if runs is None else runs
    cells = [_cell(r) for _, r in runs.iterrows()]
    scores = {c: float(candidate_score(o.correct, o.none, o.changed)) for c, o in zip(cells, runs["val"])}
    missing = [c for c in here if c not in scores]
    if missing:
        raise ValueError(f"the runs given lack the cells {missing} at {candidate!r}'s chosen site")
    return max(here, key=lambda c: (np.nan_to_num(scores[c], nan=-np.inf), -here.index(c)))


def alignments(grid: Grid, finding: Finding, hypotheses: Sequence[str], whole_grid: bool = False) -> robustness.Alignments:
    """The alignments of `hypotheses` a robustness study reuses, loaded on the grid's model's device: the cell
    chosen on validation and every run at its site, and with `whole_grid` every cell of their grid (the grid's
    seeds on its data seed), with the grid's own test IIA of each."""
    grid.runs(grid.grid_cells(tuple(hypotheses)))  # IncompleteGrid, naming them, if cells of their grid have no record
    chosen, at_site, cells = {}, {}, {}
    for h in hypotheses:
        at_site[h] = site_cells(grid, finding, h)
        chosen[h] = chosen_cell(grid, finding, h, grid.runs([c for c in at_site[h] if c.data_seed == grid.spec.data_seed]))
        cells[h] = grid.grid_cells((h,)) if whole_grid else []
    needed = list(dict.fromkeys([c for h in hypotheses for c in (chosen[h], *at_site[h], *cells[h])]))
    runs = grid.runs(needed)  # IncompleteGrid, naming them, if cells have no record
    in_grid = {c for h in hypotheses for c in cells[h]}
    trained = runs.assign(iia=[float(o.correct.mean()) for o in runs["test"]])
    trained = trained[[_cell(r) in in_grid for _, r in runs.iterrows()]]
    loaded: dict[Cell, nn.Module] = {c: grid.load_alignment(c)[0].eval() for c in needed}
    return robustness.Alignments(chosen, at_site, cells, loaded,
                                 trained[["candidate", "layer", "position", "seed", "iia"]].reset_index(drop=True))


def robustness_of(grid: Grid, finding: Finding, settings: Sequence[Variant], n_pairs: int, n_games: int,
                  max_screened: int, whole_grid: bool = False) -> robustness.RobustnessResult:
    """The grid's alignments of every hypothesis the `settings` (variants of the grid's task) reuse, without
    retraining, on those settings: `n_pairs` pairs and `n_games` inputs per setting, drawn from the grid's data
    seed; with `whole_grid`, every cell of their grid too (heatmaps, the paper's statistics). Read back from the grid's
    store where this study was recorded (see the module docstring)."""
    hypotheses = list(dict.fromkeys(s.hypothesis for s in settings))
    absent = [h for h in hypotheses if h not in grid.spec.candidates]
    if absent:
        raise KeyError(f"the settings {[s.key for s in settings]} reuse the alignments of {absent}, which the grid does "
                       f"not search (its candidates: {list(grid.spec.candidates)}): add them to its hypotheses")
    reused = alignments(grid, finding, hypotheses, whole_grid)
    cells = [grid.record(c)["hash"] for c in reused.interventions]  # the alignments, by the configs that made them
    config = grid.study_config("robustness", alignments=cells, settings=[asdict(s) for s in settings], n_pairs=n_pairs,
                               n_games=n_games, max_screened=max_screened, seed=grid.spec.data_seed)
    result, _ = grid.study(
        config, lambda: robustness.evaluate_settings(grid.runner.model, grid.runner.tokenizer, grid.spec.task, grid.task.settings(),
                                                     settings, reused, n_pairs, n_games, grid.spec.data_seed, max_screened),
        robustness.as_record, lambda results: robustness.from_record(results, settings, reused, grid.task.hypotheses()))
    return result


def summary(grid: Grid, finding: Finding, hypotheses: Sequence[str]) -> pd.DataFrame:
    """Per hypothesis: the site chosen on validation, the seed of its chosen cell, its validation score and its
    test IIA as the grid recorded them, and the runs at the site (training seeds x data seeds) beside it."""
    rows = {}
    for h in hypotheses:
        cell = chosen_cell(grid, finding, h)
        here = grid.runs(site_cells(grid, finding, h))
        record = here[[_cell(r) == cell for _, r in here.iterrows()]].iloc[0]
        test_iia = [float(o.correct.mean()) for o in here["test"]]
        rows[h] = {"site (validation)": f"L{cell.layer} {cell.position}", "seed": cell.seed,
                   "validation score": float(candidate_score(record["val"].correct, record["val"].none, record["val"].changed)),
                   "test IIA": float(record["test"].correct.mean()), "runs at the site": len(here),
                   "their test IIA min": min(test_iia), "max": max(test_iia)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("hypothesis")
