"""What a grid found, as a reviewer would accept it: chosen on validation, reported on test, per variable, with
nested candidates tested rather than ranked as rivals.

`finding(grid)` reads a finished grid through das_lib.runs.protocol:

- each candidate's site, chosen on validation pairs, and its validation score there;
- which candidates *contain* others: every variable of the smaller one has, on every pair of the pool, the
  label function of a variable of the larger one (Left Boundary is Left and Right Boundary's left variable).
  Such candidates are not rivals. A candidate each of whose variables is realised on the validation pairs
  (its gain's 95% interval lies above 0) *subsumes* the candidates it contains: the finer program holds
  all they hold and more, with its own evidence for the rest. It takes the best validation score of itself
  and those it subsumes, and they are listed with it rather than against it. Where a variable of the finer
  one is not realised, it subsumes nothing and every candidate stands on its own score;
- the candidates ordered by that validation score (the winner, the runner-up and the whole ranking are
  chosen on validation), with the plain and the raw orders beside it;
- the test report of each at its site (score and raw score with intervals over pairs and seeds), and of
  each of its variables (IIA, gain over doing nothing, normalised gain, recall of predicted changes);
- the set of rivals (candidates the winner does not subsume) the test pairs do not separate from the winner
  (a max-statistic bootstrap), and `named`: the winner when that set is the winner alone, else None (a page
  then gives the set, not a name).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd

from das_lib.method.sites import Site
from das_lib.runs import protocol
from das_lib.runs.grid import Grid
from das_lib.runs.pools import SPLITS


@dataclass
class Finding:
    """A finished grid read by the protocol (see the module docstring)."""

    sites: dict[str, Site]
    order: list[str]  # by validation score, subsumed candidates taking their place after the one subsuming them
    plain_order: list[str]  # by each candidate's own validation score
    raw_order: list[str]  # by each candidate's own raw validation score (summed gains)
    table: pd.DataFrame  # protocol.report on the test pairs, by candidate, in `order`
    variables: pd.DataFrame  # protocol.variables on the test pairs, by (candidate, variable)
    validation: pd.DataFrame  # protocol.variables on the validation pairs
    contains: dict[str, list[str]]
    subsumes: dict[str, list[str]]
    top: list[str]
    named: str | None
    margin: tuple[float, float, float] | None  # the winner's score minus the runner-up's on the test pairs
    runs: pd.DataFrame  # the runs it was read from (for further paired comparisons: `compare`)

    @property
    def first(self) -> str:
        return self.order[0]

    @property
    def second(self) -> str | None:
        """The runner-up: the best candidate the winner does not subsume."""
        rivals = [c for c in self.order[1:] if c not in self.subsumes[self.first]]
        return rivals[0] if rivals else None

    def realised(self, candidate: str, split: str = "test") -> dict[str, bool]:
        """Per variable of `candidate`: does its gain's 95% interval on `split` lie above 0?"""
        rows = (self.variables if split == "test" else self.validation).loc[candidate]
        return {str(v): bool(rows.loc[v, "gain low"] > 0) for v in rows.index}

    def compare(self, a: str, b: str) -> tuple[float, float, float]:
        """`a`'s test score minus `b`'s on the same pairs, at their chosen sites: (mean, low, high)."""
        return protocol.margin(self.runs, self.sites, a, b)


def contains(grid: Grid, candidates: Sequence[str], functions: Mapping[str, Sequence[Hashable]] | None = None
             ) -> dict[str, list[str]]:
    """candidate -> the candidates with fewer variables whose every variable has the label function of one of its
    own on every pair of the pool (all three splits); `functions`: each candidate's label functions (any hashable
    per variable), where the caller has them already."""
    functions = functions or {c: [tuple(row) for row in np.concatenate([grid.labels(c, s) for s in SPLITS], axis=1)]
                              for c in candidates}
    return {a: [b for b in candidates if len(functions[b]) < len(functions[a]) and set(functions[b]) <= set(functions[a])]
            for a in candidates}


def refined_order(plain: list[str], scores: dict[str, float], subsumes: dict[str, list[str]]) -> list[str]:
    """`plain` reordered: a candidate that subsumes others takes the best score of itself and them, and those it
    subsumes follow it; the rest keep their own scores."""
    owner = {a: c for c in plain for a in subsumes[c] if subsumes[c]}
    effective = {c: max([scores[c]] + [scores[a] for a in subsumes[c]]) for c in plain}
    heads = sorted((c for c in plain if c not in owner or owner[c] == c),
                   key=lambda c: (-np.nan_to_num(effective[c], nan=-np.inf), plain.index(c)))
    out: list[str] = []
    for c in heads:
        out += [c] + [a for a in plain if owner.get(a) == c and a not in out]
    return out + [c for c in plain if c not in out]


def finding(grid: Grid, candidates: Sequence[str] | None = None, runs: pd.DataFrame | None = None,
            functions: Mapping[str, Sequence[Hashable]] | None = None) -> Finding:
    """The finding of a finished grid over `candidates` (default: all of the grid's but its control tasks; `runs`:
    the grid's runs, where the caller has them; `functions`: see `contains`)."""
    runs = grid.runs() if runs is None else runs
    candidates = list(candidates or [c for c in grid.spec.candidates if c not in grid.task.controls()])
    runs = runs[runs["candidate"].isin(candidates)]
    grid_runs = runs[runs["seed"].isin(grid.spec.seeds) & (runs["data_seed"] == grid.spec.data_seed)]
    chosen = protocol.choose_sites(grid_runs)
    sites = {c: chosen[c] for c in candidates}
    names = {c: grid.candidate(c).variables for c in candidates}
    validation = protocol.variables(runs, sites, names, split="val")
    contained = contains(grid, candidates, functions)
    realised_val = {c: bool((validation.loc[c]["gain low"] > 0).all()) for c in candidates}
    subsumes = {c: [a for a in contained[c] if realised_val[c]] for c in candidates}
    val_scores = protocol.report(runs, sites, candidates, split="val")
    plain = protocol.order(runs, sites)
    order = refined_order(plain, val_scores["score"].astype(float).to_dict(), subsumes)
    rivals = [c for c in order[1:] if c not in subsumes[order[0]]]
    top = protocol.top_set(runs, sites, order[0], rivals)
    margin = protocol.margin(runs, sites, order[0], rivals[0]) if rivals else None
    return Finding(sites, order, plain, protocol.order(runs, sites, "raw"), protocol.report(runs, sites, order),
                   protocol.variables(runs, sites, names), validation, contained, subsumes, top,
                   order[0] if top == [order[0]] else None, margin, runs)
