"""Findings tables: the gain over no intervention, the best site, side by side with the paper."""
import pandas as pd
import pytest

from das_lib import paper
from das_lib.book import report as findings


def frame(best: dict[str, float], none: float) -> pd.DataFrame:
    rows = []
    for h, top in best.items():
        for layer, position, iia in ((0, "last", top), (1, "dollars", none), (1, "last", none - 0.01)):
            rows.append({"hypothesis": h, "layer": layer, "position": position, "seed": 0, "iia": iia, "dummy": 0.5,
                         "unintervened": none, "normalised": 0.0, "boundary_dims": 1.0, "boundary_dims_start": 2.0})
    rows.append({**rows[0], "seed": 1, "iia": best[rows[0]["hypothesis"]] - 0.1})  # a second seed at the best site
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
    assert side[("planted", "gain")].round(3).tolist() == [0.3, 0.1]
    assert side[("Alpaca 7B (paper)", "max IIA")].tolist() == [paper.MAX_IIA["left"], paper.MAX_IIA["bracket"]]
    assert not side.isna().any().any()


def test_findings_name_the_numbers_a_chapter_pastes():
    table = findings.hypothesis_table(frame({"left": 0.9, "bracket": 0.7}, 0.6), 0.95)
    numbers = findings.findings(table)
    assert numbers["winner_key"] == "left" and numbers["winner"] == "Left Boundary"
    assert numbers["best_gain"] == pytest.approx(0.3) and numbers["gain_bracket"] == pytest.approx(0.1)
    assert numbers["max_iia_left"] == pytest.approx(0.9) and numbers["best_site_left"] == numbers["winner_site"]
    assert numbers["std_left"] > 0  # two seeds at the best site


def test_a_table_for_the_page_shows_no_nan():
    table = pd.DataFrame({"r": [0.5, float("nan")], "paper r": [float("nan"), 0.9]}, index=["a", "b"])
    shown = findings.without_nan(table)
    assert shown.loc["b", "r"] == "n/a" and shown.loc["a", "paper r"] == "n/a" and shown.loc["a", "r"] == 0.5
    assert "nan" not in shown.to_string().lower()
