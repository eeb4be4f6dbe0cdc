"""The book's figures (the IIA heatmaps are in das_lib.book.heatmaps) and the style every figure is drawn in.

Every figure is drawn for the book's content column: WIDTH_IN inches at DPI dots per inch (about
750 px, shown at its natural size), with no text under MIN_FONT_PT points (12 px as displayed). The
site's browser test (tests/site/browser_check.py) assumes that smallest size.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


WIDTH_IN = 7.5
DPI = 100
MIN_FONT_PT = 9.0
# Text sizes of every figure here; set while a figure is drawn, so a chapter's own figures keep theirs.
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": MIN_FONT_PT,
         "ytick.labelsize": MIN_FONT_PT, "legend.fontsize": MIN_FONT_PT, "figure.titlesize": 12,
         "figure.dpi": DPI}


@contextmanager
def styled() -> Iterator[None]:
    """Apply STYLE while a figure is drawn, then restore those keys only.

    Not plt.rc_context: it restores every rcParam, and the first figure of a notebook switches the
    inline backend on inside it (interactive mode), so leaving it would stop every later figure of
    the chapter from being shown."""
    saved = {key: plt.rcParams[key] for key in STYLE}
    plt.rcParams.update(STYLE)
    try:
        yield
    finally:
        plt.rcParams.update(saved)


def boundary_curves(curves: pd.DataFrame, hue: str = "shrank", window: int = 10) -> plt.Figure:
    """IIA (training batches, rolling mean over `window` steps) and learned boundary width against
    training step, one line per run, split by `hue`."""
    curves = curves.assign(batch_iia=curves.groupby("run")["batch_iia"].transform(
        lambda s: s.rolling(window, min_periods=1).mean()))
    with styled():
        fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 3.4))
        sns.lineplot(curves, x="step", y="batch_iia", hue=hue, units="run", estimator=None, alpha=0.5, lw=0.8, ax=axes[0])
        sns.lineplot(curves, x="step", y="boundary_dims", hue=hue, units="run", estimator=None, alpha=0.5, lw=0.8, ax=axes[1])
        axes[0].set_ylabel(f"IIA, training batches\n({window}-step mean)")
        axes[1].set_ylabel("learned subspace size (dims)")
        fig.tight_layout()
    return fig


def training_curves(curves: pd.DataFrame | list[dict], title: str | None = None) -> plt.Figure:
    """One Boundless DAS run against training step: loss, IIA (training batches and held-out), learned
    subspace size and temperature (curves of training.train_intervention, held-out IIA every eval_every steps;
    a frame, or the result's list of rows).

    Two rows of two panels, so that each is half the page's column wide."""
    curves = pd.DataFrame(curves)
    with styled():
        fig, grid = plt.subplots(2, 2, figsize=(WIDTH_IN, 5.4))
        axes = grid.flat
        axes[0].plot(curves["step"], curves["loss"], lw=0.8, label="loss")
        axes[0].plot(curves["step"], curves["task_loss"], lw=0.8, label="cross-entropy only")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        axes[1].plot(curves["step"], curves["batch_iia"], lw=0.6, alpha=0.6, label="training batch")
        if "iia" in curves:
            held = curves.dropna(subset=["iia"])
            axes[1].plot(held["step"], held["iia"], "o-", ms=3, label="held-out pairs")
        axes[1].set_ylim(0, 1.02)
        axes[1].set_ylabel("IIA")
        axes[1].legend()
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
    with styled():
        fig, axes = plt.subplots(len(weights), 1, figsize=(WIDTH_IN, 2.4 * len(weights)), squeeze=False)
        for ax, (variable, w) in zip(axes[:, 0], weights.items()):
            d = len(w)
            ax.bar(range(d), np.asarray(w), width=1.0, color="C0")
            ax.axhline(1 / d, color="grey", linestyle="--", linewidth=1, label="uniform (1/d)")
            ax.set_xlim(-0.5, d - 0.5)
            ax.set_xlabel("neuron of the layer output")
            ax.set_ylabel(f"weight in the\n'{variable}' subspace")
            ax.legend()
        fig.tight_layout()
    return fig


# --- Chapters 1-4: figures glued with a caption (plots.unshown keeps the cell from showing them too) ---


def unshown(fig: plt.Figure) -> plt.Figure:
    """Close `fig` in pyplot, so that the cell does not show it as well as where it is glued; returns it."""
    plt.close(fig)
    return fig


def layer_bars(results: pd.DataFrame, floor: float, floor_label: str = "doing nothing") -> plt.Figure:
    """IIA per layer (x) and method (hue) from a frame with columns layer, method and IIA, with a dashed
    line at `floor`, the IIA of doing nothing."""
    with styled():
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.6))
        sns.barplot(results, x="layer", y="IIA", hue="method", ax=ax, palette="colorblind")
        ax.axhline(floor, color="gray", ls="--", lw=1, label=floor_label)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("IIA (held-out pairs)")
        ax.legend(loc="upper right")
        fig.tight_layout()
    return fig


def projection_scatter(frame: pd.DataFrame, x: str, y: str, hue: str) -> plt.Figure:
    """One point per row of `frame`: column y against column x, coloured by column hue."""
    with styled():
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.8))
        sns.scatterplot(frame, x=x, y=y, hue=hue, palette="viridis", legend="full", s=25, alpha=0.6, ax=ax)
        ax.legend(title=hue, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
        fig.tight_layout()
    return fig


def growth_curve(iia: Sequence[float], levels: dict[str, float], xlabel: str = "neurons swapped") -> plt.Figure:
    """IIA after each step of a growing search (a greedy neuron set), against horizontal reference levels
    (label -> IIA; one named 'doing nothing' is dashed grey)."""
    with styled():
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.2))
        ax.plot(range(1, len(iia) + 1), list(iia), marker="o", ms=3, label="greedy neuron set")
        for i, (label, level) in enumerate(levels.items()):
            style = dict(color="gray", ls="--", lw=1) if label == "doing nothing" else dict(color=f"C{i + 1}")
            ax.axhline(level, label=label, **style)
        ax.set(xlabel=xlabel, ylabel="IIA (held-out pairs)", ylim=(0, 1.05))
        ax.legend()
        fig.tight_layout()
    return fig


def accuracy_bars(corrects: dict[str, pd.DataFrame], majority: float) -> plt.Figure:
    """Task accuracy per setting (x) and model (hue; name -> a standin.correct_by_game table), with a
    dashed line at the accuracy of always giving the more common answer."""
    frame = pd.concat([c.assign(model=name, correct=c["correct"].astype(float)) for name, c in corrects.items()])
    with styled():
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.8))
        sns.barplot(data=frame, x="setting", y="correct", hue="model", errorbar=None, ax=ax)
        ax.axhline(majority, color="grey", linestyle="--", linewidth=1, label="majority answer")
        ax.set(ylim=(0, 1.02), ylabel="task accuracy", xlabel="")
        ax.tick_params(axis="x", rotation=20)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Chapters 5-7


def iia_bars(iia: dict[str, float], no_intervention: float) -> plt.Figure:
    """One bar per run (its held-out IIA), with the IIA of no intervention as a dashed line."""
    with styled():
        fig, ax = plt.subplots(figsize=(WIDTH_IN * 0.7, 3.2))
        ax.bar(list(iia), list(iia.values()), color=[f"C{i}" for i in range(len(iia))])
        ax.axhline(no_intervention, color="grey", linestyle="--", linewidth=1, label="no intervention")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("held-out IIA")
        ax.legend(loc="lower right")
        fig.tight_layout()
    return fig


def message_figure(text: str) -> plt.Figure:
    """A small figure that only says `text`: what a glued figure shows where there is nothing to draw."""
    fig, ax = plt.subplots(figsize=(6, 1))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 9


SCORE_LABEL = "normalised gain: (IIA - no intervention) / (1 - no intervention)"


def finding_figure(rows: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """The finding at a glance: one bar per row of `rows` (index: label; columns value, low, high, group), on one
    axis with its 95% interval, grouped by colour (e.g. the hypotheses' variables, the nulls, the positive
    control), with a line at 0 (no better than doing nothing) and at 1 (every pair right)."""
    groups = list(dict.fromkeys(rows["group"]))
    colours = {g: f"C{i}" for i, g in enumerate(groups)}
    t = rows[::-1]
    with styled():
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.2 + 0.34 * len(rows)))
        ax.barh(list(t.index), t["value"], color=[colours[g] for g in t["group"]])
        ax.errorbar(t["value"], list(t.index), xerr=[(t["value"] - t["low"]).clip(lower=0), (t["high"] - t["value"]).clip(lower=0)],
                    fmt="none", ecolor="black", elinewidth=1, capsize=2)
        ax.axvline(0, color="grey", lw=1)
        ax.axvline(1, color="grey", lw=1, ls=":")
        ax.set_xlabel(SCORE_LABEL + "\n(test pairs, 95% interval over pairs and seeds)")
        if title:
            ax.set_title(title, loc="left")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in groups]
        fig.legend(handles, groups, loc="lower center", ncol=min(3, len(groups)), frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(groups) > 3), 1, 1))
    return fig


def budget_curves(curves: pd.DataFrame, titles: dict[str, str], chosen: tuple[int, int, int] | None = None) -> plt.Figure:
    """Score against training budget (steps x batch), one line per candidate (and panel per model, column
    "model"), each point with its 95% interval; the budget the search ran at marked."""
    curves = curves.assign(examples=curves["steps"] * curves["batch"])
    models = list(dict.fromkeys(curves["model"]))
    with styled():
        fig, axes = plt.subplots(1, len(models), figsize=(WIDTH_IN, 3.4), squeeze=False, sharey=True)
        for ax, model in zip(axes[0], models):
            for i, (candidate, c) in enumerate(curves[curves["model"] == model].groupby("candidate", sort=False)):
                ax.errorbar(c["examples"], c["score"], yerr=[c["score"] - c["score low"], c["score high"] - c["score"]],
                            marker="o", capsize=2, label=titles.get(candidate, candidate), color=f"C{i}")
            if chosen is not None:
                ax.axvline(chosen[0] * chosen[1], color="grey", ls=":", lw=1)
            ax.axhline(0, color="grey", lw=1)
            ax.set_xscale("log")
            ax.set_title(model, loc="left")
            ax.set_xlabel("training budget (steps x batch)")
        axes[0, 0].set_ylabel("test score (normalised gain)")
        axes[0, -1].legend(frameon=False)
        fig.tight_layout()
    return fig


def score_ranking(rankings: dict[str, tuple], top: int = 8) -> plt.Figure:
    """One panel per model (name -> (finding, titles, papers, keep) of a search): the test score of its first `top`
    groups and of the groups `keep`, in validation rank order, with 95% intervals; the paper's hypotheses in one
    colour, the programs it did not consider in another, and a line at 0 (doing nothing)."""
    chosen = {name: f.order[:top] + sorted(set(keep) & set(f.order[top:]), key=f.order.index)
              for name, (f, _, _, keep) in rankings.items()}
    with styled():
        fig, axes = plt.subplots(len(rankings), 1, figsize=(WIDTH_IN, 0.9 + 0.27 * sum(map(len, chosen.values())) + 0.5 * len(rankings)),
                                 gridspec_kw={"height_ratios": [len(r) + 2 for r in chosen.values()]}, squeeze=False)
        for ax, (name, (f, titles, papers, _)) in zip(axes[:, 0], rankings.items()):
            rows = chosen[name][::-1]
            t = f.table.loc[rows]
            labels = [f"{f.order.index(k) + 1}. {titles.get(k, k)}" for k in rows]
            ax.barh(labels, t["score"], color=["C1" if k in papers else "C0" for k in rows])
            ax.errorbar(t["score"], labels, xerr=[(t["score"] - t["score low"]).clip(lower=0), (t["score high"] - t["score"]).clip(lower=0)],
                        fmt="none", ecolor="black", elinewidth=1, capsize=2)
            ax.axvline(0, color="grey", lw=1)
            ax.set_title(name, loc="left")
        axes[-1, 0].set_xlabel("test score: mean normalised gain over the program's variables (95% interval)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("C1", "C0")]
        fig.legend(handles, ["one of the paper's four", "a program the paper did not consider"], loc="lower center",
                   ncol=2, frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
