"""Layer x position grids of IIA, and the paper's statistics of a grid."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from das_lib.method.metrics import pearson

COLUMNS = ("max IIA", "r", "variance x100")  # the paper's columns of a robustness row


def _ordered(grid: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """The grid's columns in `order` (the sweep's position order), not pandas' alphabetical one."""
    return grid.reindex(columns=[p for p in order if p in grid.columns])


def iia_grid(frame: pd.DataFrame, value: str = "iia", positions: Sequence[str] | None = None) -> pd.DataFrame:
    """A layer x position table of `value` (mean over seeds), layers top to bottom from high to low.

    value "gain" is IIA minus the IIA of no intervention (column "unintervened") when the frame has no
    such column. Positions come in the order given, else in their order of first appearance in `frame`
    (the order the sweep ran them), so every chapter shows the prompt's tokens left to right. A cell whose
    value is undefined (NaN: normalised IIA where the model is no better than the majority rate) stays in
    the grid as NaN, even when every cell is."""
    if value == "gain" and "gain" not in frame:
        frame = frame.assign(gain=frame["iia"] - frame["unintervened"])
    grid = frame.pivot_table(index="layer", columns="position", values=value, aggfunc="mean", dropna=False)
    grid = _ordered(grid, positions if positions is not None else list(dict.fromkeys(frame["position"])))
    return grid.sort_index(ascending=False)


def grid_stats(grid: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """The paper's columns for a layer x position IIA grid: max IIA, Pearson r with `reference` (the
    grid the alignments were trained on, matched cell by cell), and the variance over the grid x 100."""
    values = grid.to_numpy(float)
    ref = reference.reindex(index=grid.index, columns=grid.columns).to_numpy(float)
    if np.isnan(values).all():
        return dict.fromkeys(COLUMNS, float("nan"))
    return {"max IIA": float(np.nanmax(values)), "r": pearson(values, ref), "variance x100": float(np.nanvar(values) * 100)}
