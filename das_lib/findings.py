"""What sweeps found, side by side: per hypothesis and model, the best site, its IIA, and its gain
over doing nothing, next to the paper's numbers for Alpaca 7B.

An IIA means something only beside the IIA of leaving the model alone (many counterfactual labels
equal the base's own answer), so every table here carries the gain, IIA - no-intervention IIA.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from das_lib.pricetag import HYPOTHESES
from das_lib.sweep import PAPER_MAX_IIA, summary


def hypothesis_table(frame: pd.DataFrame, task_acc: float) -> pd.DataFrame:
    """`sweep.summary` of a sweep's frame with the gain over no intervention and the best site's layer and
    position, indexed by hypothesis key."""
    table = summary(frame, task_acc)
    table.index = [next(k for k, h in HYPOTHESES.items() if h.title == title) for title in table.index]
    first = frame[frame["seed"] == frame["seed"].min()]
    best = first.loc[first.groupby("hypothesis", sort=False)["iia"].idxmax()].set_index("hypothesis")  # as summary picks it
    return table.assign(gain=table["max IIA"] - table["unintervened"], layer=best["layer"].astype(int), position=best["position"])


def side_by_side(tables: Mapping[str, pd.DataFrame], paper: str = "Alpaca 7B (paper)") -> pd.DataFrame:
    """One row per hypothesis; per model (a `hypothesis_table` each) its max IIA, gain and best site, then
    the paper's max IIA (the paper reports no IIA of doing nothing, so no gain is shown for it)."""
    hypotheses = list(dict.fromkeys(h for t in tables.values() for h in t.index))
    columns = {}
    for name, table in tables.items():
        t = table.reindex(hypotheses)
        columns[(name, "max IIA")] = t["max IIA"]
        columns[(name, "gain")] = t["gain"]
        columns[(name, "best site")] = t["best site"]
    columns[(paper, "max IIA")] = pd.Series({h: PAPER_MAX_IIA[h] for h in hypotheses})
    out = pd.DataFrame(columns)
    out.index = [HYPOTHESES[h].title for h in hypotheses]
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out
