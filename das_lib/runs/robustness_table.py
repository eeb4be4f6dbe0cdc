"""Reading a robustness study (robustness.evaluate_settings): numbers, no words.

- `chosen_table`: the headline. Per setting and variable of its hypothesis, the cell chosen on validation: its
  IIA with the exact (Clopper-Pearson) 95% interval over the setting's pairs, the IIA of doing nothing on the
  same pairs, the gain over it with a paired-bootstrap 95% interval, and the range of the IIA over every run
  at the chosen site (training seeds x data seeds). Beside them, what the setting's pairs can mean: the
  model's accuracy on the setting's games with its interval, the rate of always giving their more common
  answer, and `answers`: does the model answer the games better than that? Where it does not, there is no
  behaviour for an alignment to move, and the setting's IIAs mean nothing (`page_table` leaves them out).
- `grid_table`: the paper's statistics of a setting's whole grid (max IIA over the cells, Pearson r with the
  grid the alignments were trained on, variance over the grid), beside the paper's rows. A maximum over many
  cells on the same pairs is biased upwards and has no interval; it is here to compare with the paper.
- `headline_numbers`: every number a chapter states, by name.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from das_lib import paper
from das_lib.method.stats import binomial_interval, paired_difference
from das_lib.method.task import Variant
from das_lib.runs.grids import COLUMNS, grid_stats
from das_lib.runs.robustness import RobustnessResult

CHECK_COLUMNS = ("pairs", "screened", "task acc", "task acc low", "task acc high", "majority", "answers")
NUMBERS = ("iia", "iia low", "iia high", "none", "gain", "gain low", "gain high", "runs", "runs min", "runs max",
           "label majority")


def _majority(labels: np.ndarray) -> float:
    """The share of the more common label in one variable's labels."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / labels.size)


def chosen_table(result: RobustnessResult) -> pd.DataFrame:
    """One row per (setting key, variable) (see the module docstring); NaN where a setting has no pairs."""
    rows = []
    for s in result.settings:
        check = result.checks.loc[s.key]
        cell = result.alignments.chosen[s.hypothesis]
        outcomes = result.outcomes.get(s.key, {})
        for v, variable in enumerate(result.hypotheses[s.hypothesis].variables):
            row: dict[str, Any] = {"key": s.key, "variable": variable, "setting": s.title, "hypothesis": s.hypothesis,
                                   "site": f"L{cell.layer} {cell.position}", "seed": cell.seed,
                                   **{c: check[c] for c in CHECK_COLUMNS}}
            if cell in outcomes:
                o = outcomes[cell]
                right = o.correct[v]
                low, high = binomial_interval(int(right.sum()), right.size)
                gain, gain_low, gain_high = paired_difference(right, o.none[v])
                runs = [float(outcomes[c].correct[v].mean()) for c in result.alignments.at_site[s.hypothesis]]
                row |= {"iia": float(right.mean()), "iia low": low, "iia high": high, "none": float(o.none[v].mean()),
                        "gain": gain, "gain low": gain_low, "gain high": gain_high, "runs": len(runs),
                        "runs min": min(runs), "runs max": max(runs), "label majority": _majority(result.labels[s.key][v])}
            else:
                row |= dict.fromkeys(NUMBERS, float("nan"))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["key", "variable"])


def grid_table(result: RobustnessResult) -> pd.DataFrame | None:
    """One row per setting over every grid cell of its hypothesis (the IIA of a cell: over its variables and the
    pairs): max IIA, r with the trained grid, variance x100, and the paper's; None when no grid was evaluated."""
    if result.cells.empty:
        return None
    rows = {}
    for s in result.settings:
        ours = (grid_stats(result.grid(s.key), result.trained_grid(s.hypothesis))
                if (result.cells["setting"] == s.key).any() else dict.fromkeys(COLUMNS, float("nan")))
        theirs = paper.ROBUSTNESS.get(s.paper) if s.paper else None
        rows[s.key] = {"setting": s.title, "cells": int((result.cells["setting"] == s.key).sum()), **ours,
                       **{f"paper {c}": (theirs[i] if theirs else float("nan")) for i, c in enumerate(COLUMNS)}}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("key")


def page_table(result: RobustnessResult) -> pd.DataFrame:
    """`chosen_table` as a chapter shows it, by setting and variable: the IIA, the gain and the runs' range left
    out (NaN) where the model answers the setting's games no better than their majority rate."""
    table = chosen_table(result)
    at_chance = ~table["answers"].astype(bool)
    numbers = ["iia", "iia low", "iia high", "gain", "gain low", "gain high", "runs min", "runs max"]
    table.loc[at_chance, numbers] = np.nan
    columns = ["site", "pairs", "task acc", "task acc low", "task acc high", "majority", "answers", "none", *numbers]
    return table.reset_index().set_index(["setting", "variable"])[columns]


def _settings(result: RobustnessResult, defaults: Sequence[Variant]) -> list[Variant]:
    """The `defaults` and the result's settings, each once by key (so that every default name exists)."""
    by_key = {s.key: s for s in defaults} | {s.key: s for s in result.settings}
    return list(by_key.values())


def headline_numbers(result: RobustnessResult, defaults: Sequence[Variant] = ()) -> dict[str, Any]:
    """Named numbers for a chapter's prose: per setting key k and variable v, `iia_k_v`, `iia_low_k_v`,
    `iia_high_k_v`, `none_k_v`, `gain_k_v`, `gain_low_k_v`, `gain_high_k_v`, `runs_min_k_v`, `runs_max_k_v`; per
    setting, `site_k`, `pairs_k`, `screened_k`, `task_acc_k` (and `_low`, `_high`), `majority_k`, `answers_k`, and
    over the whole grid `grid_max_iia_k`, `corr_k`, `var_k` with the paper's `paper_max_iia_k`, `paper_corr_k`,
    `paper_var_k`; per kind of setting `mean_corr_KIND`, the mean r over its settings (`mean_corr_context`: over the
    contexts); `at_chance` and `transferred`: the titles of the settings the model answers no better than chance,
    and of those where it answers and every variable's gain lies above 0. NaN where a setting was not evaluated,
    so that every name of the `defaults` exists."""
    chosen, grid = chosen_table(result), grid_table(result)
    nan = float("nan")
    out: dict[str, Any] = {}
    for s in _settings(result, defaults):
        k, evaluated = s.key, s.key in result.checks.index
        for v in result.hypotheses[s.hypothesis].variables:
            have = evaluated and (k, v) in chosen.index
            for name in ("iia", "iia low", "iia high", "none", "gain", "gain low", "gain high", "runs min", "runs max"):
                out[f"{name.replace(' ', '_')}_{k}_{v}"] = float(chosen.loc[(k, v), name]) if have else nan
        check = result.checks.loc[k] if evaluated else None
        for name in ("pairs", "screened", "task acc", "task acc low", "task acc high", "majority"):
            out[f"{name.replace(' ', '_')}_{k}"] = float(check[name]) if evaluated else nan
        out[f"answers_{k}"] = bool(check["answers"]) if evaluated else False
        out[f"site_{k}"] = chosen.loc[k, "site"].iloc[0] if evaluated else ""
        for name, column in (("grid_max_iia", "max IIA"), ("corr", "r"), ("var", "variance x100")):
            out[f"{name}_{k}"] = float(grid.loc[k, column]) if grid is not None and k in grid.index else nan
        theirs = paper.ROBUSTNESS.get(s.paper) if s.paper else None
        for i, name in enumerate(("paper_max_iia", "paper_corr", "paper_var")):
            out[f"{name}_{k}"] = theirs[i] if theirs else nan
    for kind in dict.fromkeys(s.kind for s in _settings(result, defaults)):
        known = [out[f"corr_{s.key}"] for s in result.settings if s.kind == kind and not np.isnan(out[f"corr_{s.key}"])]
        out[f"mean_corr_{kind}"] = float(np.mean(known)) if known else nan
    out["at_chance"] = [s.title for s in result.settings if not result.checks.loc[s.key, "answers"]]
    out["transferred"] = [s.title for s in result.settings if result.checks.loc[s.key, "answers"]
                          and s.key in result.outcomes and bool((chosen.loc[s.key, "gain low"] > 0).all())]
    return out
