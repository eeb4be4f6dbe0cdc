"""Layer x position grids of IIA, and the paper's statistics of a grid."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from das_lib.method.metrics import pearson

COLUMNS = ("max IIA", "r", "variance x100")  # the paper's columns of a robustness row


def iia_grid(frame: pd.DataFrame, value: str = "iia", positions: Sequence[str] | None = None) -> pd.DataFrame:
    """A layer x position table of `value` (mean over seeds), layers top to bottom from high to low."""
    grid = frame.pivot_table(index="layer", columns="position", values=value, aggfunc="mean")
    if positions is not None:
        grid = grid.reindex(columns=[p for p in positions if p in grid.columns])
    return grid.sort_index(ascending=False)


def grid_stats(grid: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """The paper's columns for a layer x position IIA grid: max IIA, Pearson r with `reference` (the
    grid the alignments were trained on, matched cell by cell), and the variance over the grid x 100."""
    values = grid.to_numpy(float)
    ref = reference.reindex(index=grid.index, columns=grid.columns).to_numpy(float)
    if np.isnan(values).all():
        return dict.fromkeys(COLUMNS, float("nan"))
    return {"max IIA": float(np.nanmax(values)), "r": pearson(values, ref), "variance x100": float(np.nanvar(values) * 100)}
