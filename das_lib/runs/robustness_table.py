"""Reading a robustness table (robustness.evaluate_settings) against the paper's rows: numbers, no words."""
from __future__ import annotations

import pandas as pd

from das_lib.runs.grids import COLUMNS
from das_lib.runs.robustness import make_settings


def headline_numbers(table: pd.DataFrame) -> dict[str, float]:
    """Named numbers of the table for the chapter's prose: for every default setting key k, `corr_k`,
    `max_iia_k`, `task_acc_k`, `var_k`, `none_k` (the IIA of no intervention), `gain_k` (max IIA - none_k),
    `paper_corr_k`, ...; and `corr_context`, the mean r over the contexts.
    NaN where a setting was not evaluated, so that every name always exists."""
    keys = list(dict.fromkeys([s.key for s in make_settings()] + list(table.index)))
    columns = {"corr": "r", "max_iia": "max IIA", "var": "variance x100", "task_acc": "task acc", "pairs": "pairs",
               "dummy": "dummy", "screened": "screened", "none": "no intervention"}
    out: dict[str, float] = {}
    for key in keys:
        for name, column in columns.items():
            out[f"{name}_{key}"] = float(table.loc[key, column]) if key in table.index else float("nan")
        out[f"gain_{key}"] = out[f"max_iia_{key}"] - out[f"none_{key}"]
        for name, column in (("corr", "r"), ("max_iia", "max IIA"), ("var", "variance x100")):
            out[f"paper_{name}_{key}"] = float(table.loc[key, f"paper {column}"]) if key in table.index else float("nan")
    contexts = [k for k in table.index if k.startswith("context_")]
    out["corr_context"] = float(table.loc[contexts, "r"].mean()) if contexts else float("nan")
    out["paper_corr_context"] = float(table.loc[contexts, "paper r"].mean()) if contexts else float("nan")
    return out


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """Our columns next to the paper's, by setting title; our max IIA with the IIA of no intervention
    before it and the gain over it after it (the paper reports no IIA of doing nothing)."""
    columns = ["hypothesis", "pairs", "dummy", "task acc", "no intervention"]
    for c in COLUMNS:
        columns += [c, "gain", f"paper {c}"] if c == "max IIA" else [c, f"paper {c}"]
    return table.assign(gain=table["max IIA"] - table["no intervention"]).set_index("setting")[columns]
