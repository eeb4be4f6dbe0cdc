"""The paper's figure: IIA heatmaps over (layer, position), one panel per hypothesis or setting, on one scale."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from das_lib.book.plots import MIN_FONT_PT, WIDTH_IN, styled
from das_lib.book.report import MISSING
from das_lib.runs.grids import iia_grid
from das_lib.tasks.pricetag.task import REFERENCE_GAME, PriceTagTask, position_table

# Above this many positions a heatmap panel gets the full width: narrower cells cannot hold a number.
FULL_WIDTH_COLUMNS = 6
GAIN_LABEL = "IIA gain over no intervention"
NORMALISED_LABEL = "normalised IIA (0: majority rate,\n1: task accuracy)"


def _gain_limit(grids: Sequence[pd.DataFrame]) -> float:
    """The symmetric colour limit of gain grids: their largest gain or loss, at least 0.05."""
    values = [float(np.nanmax(np.abs(g.to_numpy(dtype=float)))) for g in grids if g.size]
    return max([0.05] + [v for v in values if np.isfinite(v)])


def _one_scale(gain: bool, normalised: bool) -> None:
    if gain and normalised:
        raise ValueError("a heatmap shows the gain or the normalised IIA, not both: pass one of gain, normalised")


def _normalised_limits(grids: Sequence[pd.DataFrame]) -> tuple[float, float]:
    """The colour limits of normalised IIA grids: 0 to 1 (majority rate to task accuracy), widened to any
    value beyond (an alignment can do worse than the majority rate, or better than the model's accuracy)."""
    values = np.concatenate([g.to_numpy(dtype=float).ravel() for g in grids] + [np.array([0.0, 1.0])])
    values = values[np.isfinite(values)]
    return float(values.min()), float(values.max())


def heatmap(grid: pd.DataFrame, ax: plt.Axes, title: str, labels: Sequence[str] | None = None,
            vmin: float | None = None, vmax: float | None = None, gain: bool = False, colorbar: bool = True,
            cbar_label: str | None = None, normalised: bool = False) -> plt.Axes:
    """One annotated heatmap: layer on y, token position (with its token text) on x, with a colorbar.
    A cell with no value (NaN) is written MISSING ("n/a").

    vmin/vmax default to 0 and 1. gain: the grid holds IIA - no-intervention IIA; a diverging scale
    centred on 0 (limits default to the largest gain or loss) shows where an alignment does better
    (red) or worse (blue) than leaving the model alone. normalised: the grid holds the paper's normalised
    IIA (0: the majority rate, 1: the model's task accuracy), on 0 to 1 widened to any value beyond."""
    _one_scale(gain, normalised)
    if normalised:
        low, high = _normalised_limits([grid])
        vmin, vmax, cmap = low if vmin is None else vmin, high if vmax is None else vmax, "magma"
    elif gain:
        limit = _gain_limit([grid])
        vmin, vmax, cmap = -limit if vmin is None else vmin, limit if vmax is None else vmax, "RdBu_r"
    else:
        vmin, vmax, cmap = 0.0 if vmin is None else vmin, 1.0 if vmax is None else vmax, "magma"
    cells = max(grid.shape[1], 1)
    # the annotation shrinks with the cell, but never below the smallest size of the book's figures
    size = MIN_FONT_PT if cells > 4 else MIN_FONT_PT + 1
    # no seaborn `center`: the gain limits are symmetric already, and center re-cuts the colormap
    # with a call matplotlib now warns about
    sns.heatmap(grid, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, annot=True,
                fmt="+.2f" if gain else ".2f", annot_kws={"size": size}, cbar=False,
                linewidths=0.3, linecolor="white")
    for row, col in zip(*np.nonzero(grid.isna().to_numpy())):
        ax.text(col + 0.5, row + 0.5, MISSING, ha="center", va="center", fontsize=size, color="dimgray")
    if colorbar and ax.collections:
        # An inset colorbar stays a child of the panel: fig.axes lists only the panels, so a chapter
        # that relabels every axis of the figure (chapter 2) does not relabel the colorbars.
        cax = ax.inset_axes([1.03, 0.0, 0.035, 1.0])
        bar = ax.figure.colorbar(ax.collections[0], cax=cax)
        bar.ax.tick_params(labelsize=MIN_FONT_PT)
        bar.set_label(cbar_label or (GAIN_LABEL if gain else NORMALISED_LABEL if normalised else ""),
                      fontsize=MIN_FONT_PT)
    if labels is not None:
        ax.set_xticks(np.arange(len(labels)) + 0.5, labels, rotation=45 if len(labels) > 3 else 0,
                      ha="right" if len(labels) > 3 else "center", fontsize=MIN_FONT_PT)
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(title)
    ax.set_xlabel("token position")
    ax.set_ylabel("layer")
    return ax


def heatmap_panels(grids: dict[str, pd.DataFrame], labels: Sequence[str] | None = None, ncols: int | None = None,
                   vmin: float = 0.0, vmax: float = 1.0, suptitle: str | None = None,
                   gain: bool = False, cbar_label: str | None = None, normalised: bool = False) -> plt.Figure:
    """A panel per hypothesis (or setting), sharing one colour scale, sized for the page's column.

    ncols None: 2 columns, or 1 (each panel full width) when a grid has more than FULL_WIDTH_COLUMNS
    positions. gain: the grids hold IIA - no-intervention IIA (grids_by(..., "gain")), drawn on a
    diverging scale centred on 0; the shared limit is the largest gain or loss of any panel.
    normalised: the grids hold normalised IIA (grids_by(..., "normalised")), on 0 to 1 widened to any
    panel's value beyond; a cell where it is undefined reads "n/a"."""
    _one_scale(gain, normalised)
    n = len(grids)
    first = next(iter(grids.values()))
    if ncols is None:
        ncols = 1 if first.shape[1] > FULL_WIDTH_COLUMNS else 2
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    if gain:
        limit = _gain_limit(list(grids.values()))
        vmin, vmax = -limit, limit
    if normalised:
        vmin, vmax = _normalised_limits(list(grids.values()))
    # rows sized to the grid's layers; the x labels are rotated token texts, so leave them room
    height = (0.42 * first.shape[0] + 1.9) * nrows + (0.4 if suptitle else 0.0)
    with styled():
        fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH_IN, height), squeeze=False)
        for ax, (title, grid) in zip(axes.flat, grids.items()):
            heatmap(grid, ax, title, labels, vmin, vmax, gain=gain, cbar_label=cbar_label, normalised=normalised)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        if suptitle:
            fig.suptitle(suptitle)
        fig.tight_layout(w_pad=3.0)
    return fig


def grids_by(frame: pd.DataFrame, titles: dict[str, str], value: str = "iia", by: str = "hypothesis",
             positions: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """One layer x position grid of `value` per value of column `by` (in the order of `titles`, which names them).

    value "gain": IIA - no-intervention IIA, for heatmap_panels(..., gain=True); "normalised": the paper's
    normalised IIA (a sweep frame's column), for heatmap_panels(..., normalised=True)."""
    return {title: iia_grid(frame[frame[by] == key], value, positions) for key, title in titles.items()
            if (frame[by] == key).any()}


def position_labels(task: PriceTagTask, positions: Sequence[str]) -> list[str]:
    """Heatmap x labels: each position's token text (on the reference game) and role."""
    tokens = position_table(task, REFERENCE_GAME).set_index("role")["token"]
    return [f"{tokens.get(p, '?')} {p}" for p in positions]


def region_heatmaps(panels: dict[str, pd.DataFrame]) -> plt.Figure:
    """Chapter 2's panels of pricetag.tables.region_panels: the share of Yes labels per (base region, source region)."""
    fig = heatmap_panels(panels, ncols=3, cbar_label="share of Yes")
    for ax in fig.axes:
        ax.set_xlabel("source region")
        ax.set_ylabel("base region")
    return fig
