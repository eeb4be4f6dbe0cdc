"""The book's tables (das_lib.book.report): for the page, the learned boundaries, the footprint, the planted site."""
import pandas as pd
import pytest

from das_lib.book import report
from das_lib.runs import sweep


def test_a_table_for_the_page_shows_no_nan():
    table = pd.DataFrame({"r": [0.5, float("nan")], "paper r": [float("nan"), 0.9]}, index=["a", "b"])
    shown = report.for_page(table)
    assert shown.loc["b", "r"] == "n/a" and shown.loc["a", "paper r"] == "n/a" and shown.loc["a", "r"] == "0.5"
    assert "nan" not in shown.to_string().lower()


def test_for_page_shows_no_nan():
    table = pd.DataFrame({"r": [0.98765, float("nan")], "setting": ["a", None], "paper": [0.9, 0.85], "n": [3, 4]})
    shown = report.for_page(table)
    assert shown["r"].tolist() == ["0.988", report.MISSING] and shown["setting"].tolist() == ["a", report.MISSING]
    assert shown["paper"].tolist() == ["0.90", "0.85"] and shown["n"].tolist() == [3, 4]
    assert not shown.isna().any().any()


def test_footprint_and_estimate_tables_read_the_counts():
    from das_lib.runs import scaling

    low = scaling.rotation_footprint(64, 4)
    table = report.footprint_table(64, 4)
    assert list(table.columns) == ["full rotation (r = d)", "low rank (r = 4)"]
    full_values = f"{64 * 64 + 1:,} ({(64 * 64 + 1) * 4 / 2**20:,.2f} MiB)"
    assert table.loc["trainable values stored", "full rotation (r = d)"] == full_values
    assert table.loc["of which free (moved by training)", "low rank (r = 4)"] == f"{low['free']:,}"  # a count: no MiB
    assert table.loc["buffers", "low rank (r = 4)"] == "0 (0.00 MiB)"
    estimate = scaling.grid_estimate(64, 10, 128, 100, 4, n_positions=13, rank=4, minutes_per_cell=23)
    rows = report.estimate_table(estimate)["estimate"]
    assert rows["cells per hypothesis"] == "26" and rows["layers searched"] == "[0, 5]"
    assert rows["GPU time, 4 hypotheses x 26 cells x 23 min"] == f"{4 * 26 * 23 / 60:.0f} h"


def test_planted_site_of_the_stand_in_and_of_a_model_without_one(tmp_path):
    assert report.planted_site("standin") == "L1 last"
    (tmp_path / "config.json").write_text("{}")  # a model directory nobody planted a mechanism in
    assert report.planted_site(str(tmp_path)) is None


def test_boundary_table_reads_the_first_seeds_grid_of_the_sweeps_frame(tiny_grid):
    frame = sweep.frame(tiny_grid)
    titles = {"left": "Left Boundary", "left_right": "Left and Right Boundary"}
    table = report.boundary_table(frame, titles)
    assert table["cells"].sum() == 8 and set(table.index.get_level_values(0)) == set(titles.values())
    grid = frame[(frame.seed == 0) & (frame.data_seed == 0)]  # not the extra seeds' and data seeds' runs
    shrank = sweep.boundary_shrank(grid["boundary_dims"], grid["boundary_dims_start"])
    assert report.boundary_values(frame) == {"boundary_cells": 8, "boundary_cells_shrank": int(shrank.sum()),
                                             "width_start": pytest.approx(grid["boundary_dims_start"].mean()),
                                             "width_end": pytest.approx(grid["boundary_dims"].mean())}
