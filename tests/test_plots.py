"""Figures sized for the page, with colorbars and the gain colouring, and no side effects on matplotlib."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from das_lib.book import heatmaps, plots  # noqa: E402

POSITIONS = ["resp_colon", "last", "d0"]  # not alphabetical: the order the sweep ran them


def _frame() -> pd.DataFrame:
    rows = [dict(hypothesis=h, layer=layer, position=p, iia=0.5 + 0.1 * layer, unintervened=0.6, seed=0)
            for h in ("left", "midpoint") for layer in range(3) for p in POSITIONS]
    return pd.DataFrame(rows)


def test_grids_keep_the_run_order_and_compute_the_gain() -> None:
    grids = heatmaps.grids_by(_frame(), {"left": "Left", "midpoint": "Mid"}, "gain")
    assert list(grids["Left"].columns) == POSITIONS
    assert list(grids["Left"].index) == [2, 1, 0]
    assert np.allclose(grids["Left"].loc[2], 0.5 + 0.2 - 0.6)


def test_heatmap_panels_fit_the_column_with_colorbars() -> None:
    grids = heatmaps.grids_by(_frame(), {"left": "Left", "midpoint": "Mid"}, "gain")
    fig = heatmaps.heatmap_panels(grids, POSITIONS, gain=True, suptitle="gain")
    assert fig.get_size_inches()[0] * fig.dpi <= 800
    panels = fig.axes
    assert len(panels) == 2  # colorbars are children of their panel, so a chapter's loop over fig.axes sees panels only
    assert all(len(ax.child_axes) == 1 for ax in panels)
    low, high = panels[0].collections[0].get_clim()
    assert low == -high and high > 0  # diverging, centred on no gain
    assert all(t.get_fontsize() >= plots.MIN_FONT_PT for ax in panels for t in ax.texts)
    plt.close(fig)


def test_drawing_keeps_rcparams_set_meanwhile(monkeypatch) -> None:
    """The inline backend turns interactive mode on while a notebook's first figure is made; undoing
    that (as plt.rc_context does) stopped every later figure of the chapter from being shown."""
    original = plt.subplots

    def subplots(*args, **kwargs):
        plt.rcParams["interactive"] = True
        return original(*args, **kwargs)

    monkeypatch.setattr(plt, "subplots", subplots)
    plt.rcParams["interactive"] = False
    size = plt.rcParams["font.size"]
    fig = heatmaps.heatmap_panels({"a": pd.DataFrame(np.eye(2))})
    assert plt.rcParams["interactive"] is True
    assert plt.rcParams["font.size"] == size
    plt.rcParams["interactive"] = False
    plt.close(fig)


def test_iia_bars_draw_one_bar_per_run_and_the_baseline() -> None:
    fig = plots.iia_bars({"full rotation": 0.9, "low rank (r = 8)": 0.85}, 0.6)
    ax = fig.axes[0]
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.9, 0.85]
    assert ax.lines[0].get_ydata()[0] == 0.6
    assert fig.get_size_inches()[0] <= plots.WIDTH_IN
    plt.close(fig)


def test_normalised_heatmaps_write_n_a_where_it_is_undefined() -> None:
    frame = _frame().assign(normalised=lambda f: (f["iia"] - 0.5) / 0.45)
    frame.loc[(frame.hypothesis == "left") & (frame.layer == 0) & (frame.position == "last"), "normalised"] = np.nan
    frame.loc[frame.hypothesis == "midpoint", "normalised"] = np.nan  # a model no better than the majority rate
    grids = heatmaps.grids_by(frame, {"left": "Left", "midpoint": "Mid"}, "normalised", positions=POSITIONS)
    assert grids["Mid"].shape == (3, 3) and grids["Mid"].isna().all().all()  # kept, not dropped
    fig = heatmaps.heatmap_panels(grids, POSITIONS, normalised=True)
    left, mid = fig.axes
    texts = [t.get_text() for t in left.texts]
    assert texts.count("n/a") == 1 and "0.44" in texts and not any("nan" in t for t in texts)
    assert [t.get_text() for t in mid.texts] == ["n/a"] * 9
    assert left.collections[0].get_clim() == (0.0, 1.0)  # the paper's unit: majority rate to task accuracy
    assert "normalised IIA" in left.child_axes[0].get_ylabel()
    plt.close(fig)


def test_the_normalised_scale_widens_to_values_beyond_0_and_1() -> None:
    grid = pd.DataFrame([[-0.4, 0.5], [1.2, np.nan]], index=[1, 0], columns=["a", "b"])
    fig = heatmaps.heatmap_panels({"x": grid}, normalised=True)
    assert fig.axes[0].collections[0].get_clim() == (-0.4, 1.2)
    plt.close(fig)
    with pytest.raises(ValueError, match="not both"):
        heatmaps.heatmap_panels({"x": grid}, gain=True, normalised=True)
