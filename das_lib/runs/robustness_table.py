"""Reading a robustness table (robustness.evaluate_settings) against the paper's rows: numbers and signs, no words."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from das_lib.runs.grids import COLUMNS
from das_lib.runs.robustness import make_settings



def comparison(ours: float, theirs: float, tolerance: float = 0.02) -> float:
    """How `ours` compares with `theirs`: 1 higher, -1 lower, 0 within `tolerance`, NaN where either is missing."""
    if np.isnan(ours) or np.isnan(theirs):
        return float("nan")
    if abs(ours - theirs) <= tolerance:
        return 0.0
    return 1.0 if ours > theirs else -1.0


def headline_numbers(table: pd.DataFrame) -> dict[str, float]:
    """Named numbers of the table for the chapter's prose: for every default setting key k, `corr_k`,
    `max_iia_k`, `task_acc_k`, `var_k`, `paper_corr_k`, ...; and `corr_context`, the mean r over the contexts.
    NaN where a setting was not evaluated, so that every name always exists."""
    keys = list(dict.fromkeys([s.key for s in make_settings()] + list(table.index)))
    columns = {"corr": "r", "max_iia": "max IIA", "var": "variance x100", "task_acc": "task acc", "pairs": "pairs",
               "dummy": "dummy", "screened": "screened"}
    out: dict[str, float] = {}
    for key in keys:
        for name, column in columns.items():
            out[f"{name}_{key}"] = float(table.loc[key, column]) if key in table.index else float("nan")
        for name, column in (("corr", "r"), ("max_iia", "max IIA"), ("var", "variance x100")):
            out[f"paper_{name}_{key}"] = float(table.loc[key, f"paper {column}"]) if key in table.index else float("nan")
    contexts = [k for k in table.index if k.startswith("context_")]
    out["corr_context"] = float(table.loc[contexts, "r"].mean()) if contexts else float("nan")
    out["paper_corr_context"] = float(table.loc[contexts, "paper r"].mean()) if contexts else float("nan")
    return out


# Differences smaller than these count as "about the same" (variance in its x100 units).
TOLERANCE = {"max IIA": 0.02, "r": 0.02, "variance x100": 0.2}


def comparison_table(table: pd.DataFrame, tolerance: Mapping[str, float] = TOLERANCE) -> pd.DataFrame:
    """For each setting with a paper row: is our max IIA / r / variance higher than (1), lower than (-1) or
    about the same as (0) the paper's?"""
    rows = {}
    for _, row in table.iterrows():
        if np.isnan(row["paper r"]):
            continue
        rows[row["setting"]] = {c: comparison(row[c], row[f"paper {c}"], tolerance[c]) for c in COLUMNS}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(COLUMNS))




def comparisons(table: pd.DataFrame, tolerance: Mapping[str, float] = TOLERANCE) -> dict[str, float]:
    """`cmp_corr_k`, `cmp_max_iia_k`, `cmp_var_k` for every default setting key k: `comparison` of our number
    with the paper's (NaN where either is missing, or the setting was not evaluated)."""
    signs = comparison_table(table, tolerance)
    out = {}
    for key in dict.fromkeys([s.key for s in make_settings()] + list(table.index)):
        title = table.loc[key, "setting"] if key in table.index else None
        for column, short in (("r", "corr"), ("max IIA", "max_iia"), ("variance x100", "var")):
            out[f"cmp_{short}_{key}"] = float(signs.loc[title, column]) if title in signs.index else float("nan")
    return out


def agreement(table: pd.DataFrame, tolerance: float = 0.05) -> dict[str, list[str]]:
    """Settings whose r lies within `tolerance` of the paper's ("close"), further ("apart"), or that have no
    r to compare (no paper row, or no r: too few pairs or a constant grid)."""
    out: dict[str, list[str]] = {"close": [], "apart": [], "not comparable": []}
    for _, row in table.iterrows():
        if np.isnan(row["paper r"]) or np.isnan(row["r"]):
            out["not comparable"].append(row["setting"])
        else:
            out["close" if abs(row["r"] - row["paper r"]) <= tolerance else "apart"].append(row["setting"])
    return out






def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """Our columns next to the paper's, by setting title."""
    columns = ["hypothesis", "pairs", "dummy", "task acc"]
    for c in COLUMNS:
        columns += [c, f"paper {c}"]
    return table.set_index("setting")[columns]
