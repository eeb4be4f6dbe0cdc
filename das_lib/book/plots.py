"""Figures of the paper: IIA heatmaps over (layer, position) and boundary-learning curves."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from das_lib.pricetag.task import REFERENCE_GAME, PriceTagTask, position_table
from das_lib.runs.grids import iia_grid


def heatmap(grid: pd.DataFrame, ax: plt.Axes, title: str, labels: Sequence[str] | None = None,
            vmin: float = 0.0, vmax: float = 1.0) -> plt.Axes:
    """One annotated heatmap: layer on y, token position (with its token text) on x."""
    sns.heatmap(grid, ax=ax, vmin=vmin, vmax=vmax, cmap="magma", annot=True, fmt=".2f",
                annot_kws={"size": 7}, cbar=False, linewidths=0.3, linecolor="white")
    if labels is not None:
        ax.set_xticks(np.arange(len(labels)) + 0.5, labels, rotation=60, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("token position")
    ax.set_ylabel("layer")
    return ax


def heatmap_panels(grids: dict[str, pd.DataFrame], labels: Sequence[str] | None = None, ncols: int = 2,
                   vmin: float = 0.0, vmax: float = 1.0, suptitle: str | None = None) -> plt.Figure:
    """A panel per hypothesis (or setting), 2 columns, sharing one colour scale."""
    n = len(grids)
    nrows = int(np.ceil(n / ncols))
    first = next(iter(grids.values()))
    width = max(4.0, 0.55 * first.shape[1] + 1.5)
    height = max(2.5, 0.45 * first.shape[0] + 1.5)
    fig, axes = plt.subplots(nrows, min(ncols, n), figsize=(width * min(ncols, n), height * nrows), squeeze=False)
    for ax, (title, grid) in zip(axes.flat, grids.items()):
        heatmap(grid, ax, title, labels, vmin, vmax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def boundary_curves(curves: pd.DataFrame, hue: str = "shrank", window: int = 10) -> plt.Figure:
    """IIA (training batches, rolling mean over `window` steps) and learned boundary width against
    training step, one line per run, split by `hue`."""
    curves = curves.assign(batch_iia=curves.groupby("run")["batch_iia"].transform(
        lambda s: s.rolling(window, min_periods=1).mean()))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    sns.lineplot(curves, x="step", y="batch_iia", hue=hue, units="run", estimator=None, alpha=0.5, lw=0.8, ax=axes[0])
    sns.lineplot(curves, x="step", y="boundary_dims", hue=hue, units="run", estimator=None, alpha=0.5, lw=0.8, ax=axes[1])
    axes[0].set_ylabel(f"IIA on training batches ({window}-step mean)")
    axes[1].set_ylabel("learned subspace size (dims)")
    fig.tight_layout()
    return fig


def grids_by(frame: pd.DataFrame, titles: dict[str, str], value: str = "iia", by: str = "hypothesis",
             positions: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """One layer x position grid of `value` per value of column `by` (in the order of `titles`, which names them)."""
    return {title: iia_grid(frame[frame[by] == key], value, positions) for key, title in titles.items()
            if (frame[by] == key).any()}


def position_labels(task: PriceTagTask, positions: Sequence[str]) -> list[str]:
    """Heatmap x labels: each position's token text (on the reference game) and role."""
    tokens = position_table(task, REFERENCE_GAME).set_index("role")["token"]
    return [f"{tokens.get(p, '?')} {p}" for p in positions]


def training_curves(curves: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """One Boundless DAS run against training step: loss, IIA (training batches and held-out), learned
    subspace size and temperature (curves of training.train_intervention, held-out IIA every eval_every steps)."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    axes[0].plot(curves["step"], curves["loss"], lw=0.8, label="loss")
    axes[0].plot(curves["step"], curves["task_loss"], lw=0.8, label="cross-entropy only")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(curves["step"], curves["batch_iia"], lw=0.6, alpha=0.6, label="training batch")
    if "iia" in curves:
        held = curves.dropna(subset=["iia"])
        axes[1].plot(held["step"], held["iia"], "o-", ms=3, label="held-out pairs")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("IIA")
    axes[1].legend(fontsize=8)
    axes[2].plot(curves["step"], curves["boundary_dims"], lw=1)
    axes[2].set_ylabel("learned subspace size (dims)")
    axes[3].plot(curves["step"], curves["temperature"], lw=1)
    axes[3].set_yscale("log")
    axes[3].set_ylabel("temperature")
    for ax in axes:
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def neuron_weight_bars(weights: dict[str, np.ndarray]) -> plt.Figure:
    """One bar chart per variable: the weight of each original neuron in its learned subspace, against 1/d."""
    fig, axes = plt.subplots(len(weights), 1, figsize=(10, 2.6 * len(weights)), squeeze=False)
    for ax, (variable, w) in zip(axes[:, 0], weights.items()):
        d = len(w)
        ax.bar(range(d), np.asarray(w), width=1.0, color="C0")
        ax.axhline(1 / d, color="grey", linestyle="--", linewidth=1, label="uniform (1/d)")
        ax.set_xlim(-0.5, d - 0.5)
        ax.set_xlabel("neuron of the layer output")
        ax.set_ylabel(f"weight in the\n'{variable}' subspace")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
