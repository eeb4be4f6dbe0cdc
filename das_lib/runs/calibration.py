"""A training budget calibrated on the positive control, for the model it vouches for.

A search that misses a planted mechanism at some budget vouches for nothing it finds (or misses) at that
budget in another model. So the budget is chosen on the planted stand-in, with the same readout, pair
design, grid and code as the model's search: the smallest budget of a ladder (steps x batch, training
pairs) at which the control passes (`controls.control_passes`: the planted program first on validation,
at the planted site, each planted variable realised; and the planted program first in the search over
programs). The model is then searched at that budget or above, and the gain against the budget at its
chosen site shows whether its training has converged (`budget_curve`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import pandas as pd

from das_lib.runs import controls, findings
from das_lib.runs.grid import Grid, GridSpec
from das_lib.runs.program_search import ProgramSearch, SearchSpec, run_search

BUDGETS = ((40, 16, 128), (80, 32, 256), (150, 32, 512), (300, 32, 1024))  # (steps, batch size, training pairs)


def with_budget(spec: GridSpec, budget: Sequence[int]) -> GridSpec:
    """`spec` trained at `budget` (steps, batch size, training pairs)."""
    steps, batch, n_train = budget
    return replace(spec, train=replace(spec.train, steps=steps, batch_size=batch), n_train=n_train)


def calibrate(spec: GridSpec, control: str, store: str, budgets: Sequence[Sequence[int]] = BUDGETS,
              search_layers: Sequence[int] = (), search_positions: Sequence[str] = (), device: str = "cpu"
              ) -> pd.DataFrame:
    """One row per budget: `spec`, the control's grid (`controls.control_spec` of the model's), run at that budget,
    and the search over programs on the control (scanning `search_layers` x `search_positions`, default the grid's),
    and whether each check of `controls.control_passes` passed, the search's among them."""
    rows = []
    for budget in budgets:
        grid = Grid(with_budget(spec, budget), store, device, progress=False)
        grid.run()
        found = findings.finding(grid)
        passed = controls.control_passes(found, spec.model)
        planted = found.table.loc[passed["planted"]]
        search_spec = SearchSpec(spec.model, grid.spec.train, n_train=grid.spec.n_train, n_val=spec.n_val, n_test=spec.n_test,
                                 data_seed=spec.data_seed, seeds=spec.seeds, rank=spec.rank)
        search = ProgramSearch(search_spec, f"{store}/search", device, progress=False)
        _, found_search = run_search(search, (search_layers or spec.layers, search_positions or spec.positions), 1)
        first = found_search.first
        rows.append({"steps": budget[0], "batch": budget[1], "n_train": budget[2], **passed,
                     **{k: float(planted[k]) for k in ("score", "score low", "score high")},
                     "search first": search.title(first), "search": first == search.planted_group(),
                     "passed": passed["passed"] and first == search.planted_group()})
    return pd.DataFrame(rows)


def calibrated(table: pd.DataFrame) -> tuple[int, int, int] | None:
    """The smallest budget of a `calibrate` table at which the control passed (and passes at every larger one
    tried), or None."""
    ok = table["passed"].tolist()
    for i in range(len(ok)):
        if all(ok[i:]):
            row = table.iloc[i]
            return int(row["steps"]), int(row["batch"]), int(row["n_train"])
    return None


def budget_curve(spec: GridSpec, sites: dict, store: str, budgets: Sequence[Sequence[int]] = BUDGETS,
                 device: str = "cpu") -> pd.DataFrame:
    """One row per (budget, candidate): the test score and raw score with intervals of each candidate of `spec`
    trained at its site in `sites` at each budget (grid seeds, grid data seed): has training converged?"""
    rows = []
    for budget in budgets:
        for candidate, site in sites.items():
            one = replace(with_budget(spec, budget), candidates=(candidate,), layers=(site.layer,), positions=(site.position,),
                          extra_seeds=(), extra_data_seeds=())
            grid = Grid(one, store, device, progress=False)
            grid.run()
            table = findings.finding(grid, [candidate]).table.loc[candidate]
            rows.append({"model": spec.model, "steps": budget[0], "batch": budget[1], "n_train": budget[2], "candidate": candidate,
                         "site": table["site"], **{k: table[k] for k in ("score", "score low", "score high", "raw",
                                                                        "raw low", "raw high")}})
    return pd.DataFrame(rows)
