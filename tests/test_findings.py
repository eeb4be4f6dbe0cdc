"""Findings tables: the gain over no intervention, the best site, side by side with the paper."""
import pandas as pd
import pytest

from das_lib import paper
from das_lib.book import report as findings


N = 100  # test pairs


def ones(share: float, n: int = N) -> str:
    """A record's per-pair string with round(share * n) ones first."""
    k = round(share * n)
    return "1" * k + "0" * (n - k)


def frame(best: dict[str, float], none: float, validation: dict[str, float] | None = None) -> pd.DataFrame:
    """A sweep's frame: per hypothesis, its best cell at L0 last (validation IIA as `validation` says, else
    the test IIA) and two cells at the IIA of doing nothing; a second seed at L0 last."""
    rows = []
    for h, top in best.items():
        for layer, position, iia in ((0, "last", top), (1, "dollars", none), (1, "last", none - 0.01)):
            val = (validation or {}).get(h, iia) if (layer, position) == (0, "last") else iia
            rows.append({"hypothesis": h, "layer": layer, "position": position, "seed": 0, "iia": iia, "val_iia": val,
                         "dummy": 0.5, "unintervened": none, "normalised": 0.0, "boundary_dims": 1.0,
                         "boundary_dims_start": 2.0, "correct": ones(iia), "none_correct": ones(none),
                         "changed": ones(0.5), "variable": "0" * N})
    rows.append({**rows[0], "seed": 1, "iia": best[rows[0]["hypothesis"]] - 0.1, "val_iia": 0.0,
                 "correct": ones(best[rows[0]["hypothesis"]] - 0.1)})  # a second seed at the best site
    return pd.DataFrame(rows)


def test_the_table_gives_gain_and_best_site():
    table = findings.hypothesis_table(frame({"left": 0.9, "midpoint": 0.6}, 0.6), task_acc=0.95)
    assert list(table.index) == ["left", "midpoint"]
    assert table.loc["left", "gain"] == pytest.approx(0.3) and table.loc["midpoint", "gain"] == pytest.approx(0.0)
    assert (table.loc["left", "layer"], table.loc["left", "position"], table.loc["left", "seeds"]) == (0, "last", 2)


def test_side_by_side_puts_models_and_the_paper_in_columns():
    a = findings.hypothesis_table(frame({"left": 0.9, "bracket": 0.7}, 0.6), 0.95)
    b = findings.hypothesis_table(frame({"left": 0.65, "bracket": 0.62}, 0.6), 0.95)
    side = findings.side_by_side({"planted": a, "nobody planted": b})
    assert list(side.index) == ["Left Boundary", "Bracket Identity"]
    assert [g.split()[0] for g in side[("planted", "gain")]] == ["+0.300", "+0.100"]  # each with its interval
    assert all("[" in g for g in side[("planted", "IIA")])
    assert side[("Alpaca 7B (paper)", "max IIA")].tolist() == [paper.MAX_IIA["left"], paper.MAX_IIA["bracket"]]
    assert not side.isna().any().any()


def test_findings_name_the_numbers_a_chapter_pastes():
    table = findings.hypothesis_table(frame({"left": 0.9, "bracket": 0.7}, 0.6), 0.95)
    numbers = findings.findings_values(table)
    assert numbers["winner_key"] == "left" and numbers["winner"] == "Left Boundary"
    assert numbers["best_gain"] == pytest.approx(0.3) and numbers["gain_bracket"] == pytest.approx(0.1)
    assert numbers["max_iia_left"] == pytest.approx(0.9) and numbers["best_site_left"] == numbers["winner_site"]
    assert numbers["iia_low_left"] < 0.9 < numbers["iia_high_left"] and numbers["gain_low_left"] > 0  # +0.3 on 100 pairs


def test_the_site_is_chosen_on_validation_and_reported_on_test():
    # the cell of best test IIA (L0 last, 0.9) has a poor validation IIA: the site of best validation IIA is kept
    table = findings.hypothesis_table(frame({"left": 0.9}, 0.6, validation={"left": 0.1}), task_acc=0.95)
    assert table.loc["left", "best site"] == "L1 dollars" and table.loc["left", "IIA"] == pytest.approx(0.6)


def test_a_table_for_the_page_shows_no_nan():
    table = pd.DataFrame({"r": [0.5, float("nan")], "paper r": [float("nan"), 0.9]}, index=["a", "b"])
    shown = findings.for_page(table)
    assert shown.loc["b", "r"] == "n/a" and shown.loc["a", "paper r"] == "n/a" and shown.loc["a", "r"] == "0.5"
    assert "nan" not in shown.to_string().lower()


def test_for_page_shows_no_nan():
    table = pd.DataFrame({"r": [0.98765, float("nan")], "setting": ["a", None], "paper": [0.9, 0.85], "n": [3, 4]})
    shown = findings.for_page(table)
    assert shown["r"].tolist() == ["0.988", findings.MISSING] and shown["setting"].tolist() == ["a", findings.MISSING]
    assert shown["paper"].tolist() == ["0.90", "0.85"] and shown["n"].tolist() == [3, 4]
    assert not shown.isna().any().any()


def test_boundary_table_splits_by_whether_the_boundary_shrank():
    f = frame({"left": 0.9}, 0.6).assign(boundary_dims=[1.0, 3.0, 3.0, 1.0], boundary_dims_start=4.0)
    table = findings.boundary_table(f)  # the second seed's run at the best site is left out
    assert table.loc[("left", True), "cells"] == 1 and table.loc[("left", False), "cells"] == 2
    assert table.loc[("left", True), "max_gain"] == pytest.approx(0.3)  # the best site (0.9) shrank
    assert table.loc[("left", False), "max_iia"] == pytest.approx(0.6)
    assert table["cells"].sum() == 3
    values = findings.boundary_values(f)
    assert values == {"boundary_cells": 3, "boundary_cells_shrank": 1, "width_start": 4.0, "width_end": pytest.approx(7 / 3)}


def test_footprint_and_estimate_tables_read_the_counts():
    from das_lib.runs import scaling

    low = scaling.rotation_footprint(64, 4)
    table = findings.footprint_table(64, 4)
    assert list(table.columns) == ["full rotation (r = d)", "low rank (r = 4)"]
    full_values = f"{64 * 64 + 1:,} ({(64 * 64 + 1) * 4 / 2**20:,.2f} MiB)"
    assert table.loc["trainable values stored", "full rotation (r = d)"] == full_values
    assert table.loc["of which free (moved by training)", "low rank (r = 4)"] == f"{low['free']:,}"  # a count: no MiB
    assert table.loc["buffers", "low rank (r = 4)"] == "0 (0.00 MiB)"
    estimate = scaling.grid_estimate(64, 10, 128, 100, 4, n_positions=13, rank=4, minutes_per_cell=23)
    rows = findings.estimate_table(estimate)["estimate"]
    assert rows["cells per hypothesis"] == "26" and rows["layers searched"] == "[0, 5]"
    assert rows["GPU time, 4 hypotheses x 26 cells x 23 min"] == f"{4 * 26 * 23 / 60:.0f} h"


def test_findings_values_and_table_name_what_the_prose_says():
    table = findings.hypothesis_table(frame({"left": 0.9, "midpoint": 0.6}, 0.6), task_acc=0.95)
    values = findings.findings_values(table)
    assert values["max_iia_left"] == 0.9 and values["gain_midpoint"] == pytest.approx(0.0)
    assert values["paper_iia_left"] == paper.MAX_IIA["left"] and values["best_site_left"] == "L0 last"
    assert (values["winner"], values["winner_site"]) == ("Left Boundary", "L0 last")
    assert values["best_gain"] == pytest.approx(0.3)
    shown = findings.findings_table(table)
    assert list(shown.index) == ["Left Boundary", "Mid-point Distance"]
    assert shown.loc["Left Boundary", "site (validation)"] == "L0 last" and "[" in shown.loc["Left Boundary", "95% interval"]
    base = findings.baselines(frame({"left": 0.9}, 0.6))
    assert base.loc["left", "IIA with no intervention"] == 0.6


def test_planted_site_of_the_stand_in_and_of_a_model_without_one(tmp_path):
    assert findings.planted_site("standin") == "L1 last"
    (tmp_path / "config.json").write_text("{}")  # a model directory nobody planted a mechanism in
    assert findings.planted_site(str(tmp_path)) is None


def test_the_ranking_compares_the_first_two_on_the_same_pairs():
    from das_lib.runs import findings as runs_findings
    f = frame({"left": 0.9, "midpoint": 0.7, "bracket": 0.6}, 0.6)
    ranked = runs_findings.ranking(f)
    assert (ranked["first"], ranked["second"]) == ("left", "midpoint")
    assert ranked["margin"] == pytest.approx(0.2) and 0 < ranked["margin_low"] < 0.2 < ranked["margin_high"] < 1
    row = runs_findings.chosen(f).loc["left"]
    assert (runs_findings.gains(row) >= -1).all() and runs_findings.gains(row).min() == 0  # never wraps around
