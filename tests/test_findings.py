"""Findings (das_lib.runs.findings): nested candidates tested rather than ranked as rivals, a name only where the
test pairs separate it. The grid is the stand-in's (its pool and label functions are real; nothing is trained):
the runs are built to order (tests/synthetic.py)."""
from __future__ import annotations

import numpy as np
import pytest

from das_lib.method.sites import Site
from das_lib.runs import findings
from das_lib.runs.grid import Grid
from synthetic import outcome, row, runs
from tiny_grid import tiny_spec

HYPOTHESES = ("left", "left_right", "midpoint", "bracket")
N_VAL, N_TEST = 128, 128
VARIABLES = {"left": 1, "left_right": 2, "midpoint": 1, "bracket": 1, "control": 1}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Grid:
    """The paper's four hypotheses at L0 and L1 last on the stand-in (planned, never run)."""
    spec = tiny_spec(candidates=(*HYPOTHESES, "control"), positions=("last",), extra_seeds=(), extra_data_seeds=(),
                     n_val=N_VAL, n_test=N_TEST)
    return Grid(spec, tmp_path_factory.mktemp("findings"), progress=False)


def made_runs(val: dict[str, list[float]], test: dict[str, list[float]], seed: int = 0):
    """Each candidate realised as `val`/`test` say (a share per variable) at L1 last, and not at all at L0 last."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in val:
        low = [0.0] * VARIABLES[c]
        rows.append(row(c, 0, "last", outcome(N_VAL, low, rng=rng), outcome(N_TEST, low, rng=rng)))
        rows.append(row(c, 1, "last", outcome(N_VAL, val[c], rng=rng), outcome(N_TEST, test[c], rng=rng)))
    return runs(rows)


def test_contains_finds_left_inside_left_and_right_on_the_stand_ins_pool(grid):
    contained = findings.contains(grid, [*HYPOTHESES, "control"])
    assert contained == {"left": [], "left_right": ["left"], "midpoint": [], "bracket": [], "control": []}
    left, both = grid.labels("left", "test"), grid.labels("left_right", "test")
    assert np.array_equal(left[0], both[0]) and not np.array_equal(left[0], both[1])  # the same label function


def test_refined_order_puts_a_subsuming_candidate_at_the_best_score_of_those_it_holds():
    plain, scores = ["a", "c", "d", "b"], {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.6}
    assert findings.refined_order(plain, scores, {"a": [], "b": [], "c": ["a"], "d": []}) == ["c", "a", "d", "b"]
    assert findings.refined_order(plain, scores, {k: [] for k in scores}) == ["a", "c", "d", "b"]


def test_a_finer_candidate_realised_on_validation_subsumes_the_candidates_it_contains(grid):
    # Left Boundary alone scores higher (0.95) than Left and Right (mean of 0.9 and 0.8), which realises both
    val = {"left": [0.95], "left_right": [0.9, 0.8], "midpoint": [0.5], "bracket": [0.1]}
    finding = findings.finding(grid, HYPOTHESES, made_runs(val, val))
    assert finding.plain_order == ["left", "left_right", "midpoint", "bracket"]
    assert finding.subsumes == {"left": [], "left_right": ["left"], "midpoint": [], "bracket": []}
    assert finding.order == ["left_right", "left", "midpoint", "bracket"]
    assert finding.first == "left_right" and finding.second == "midpoint"  # the subsumed one is no runner-up
    assert finding.realised("left_right", "val") == {"left": True, "right": True}
    assert finding.top == ["left_right"] and finding.named == "left_right"
    assert finding.sites == {c: Site(1, "last") for c in HYPOTHESES}
    assert finding.margin[1] > 0  # the first minus the runner-up on the test pairs, above 0


def test_a_finer_candidate_with_a_variable_not_realised_subsumes_nothing(grid):
    val = {"left": [0.95], "left_right": [0.9, 0.0], "midpoint": [0.6], "bracket": [0.1]}  # the right boundary: no
    finding = findings.finding(grid, HYPOTHESES, made_runs(val, val))
    assert finding.realised("left_right", "val") == {"left": True, "right": False}
    assert finding.subsumes["left_right"] == [] and finding.order == ["left", "midpoint", "left_right", "bracket"]
    assert finding.first == "left" and finding.second == "midpoint"


def test_named_is_none_when_the_test_pairs_do_not_separate_the_first_from_a_rival(grid):
    val = {"left": [0.9], "left_right": [0.9, 0.0], "midpoint": [0.6], "bracket": [0.1]}
    test = {"left": [0.8], "left_right": [0.8, 0.0], "midpoint": [0.78], "bracket": [0.1]}  # midpoint as good, on test
    finding = findings.finding(grid, HYPOTHESES, made_runs(val, test))
    assert finding.first == "left" and finding.second == "midpoint"
    assert "midpoint" in finding.top and "bracket" not in finding.top and finding.named is None
    mean, low, high = finding.margin
    assert low < 0 < high  # the margin's interval says the same
    separated = findings.finding(grid, HYPOTHESES, made_runs(val, {**test, "midpoint": [0.3]}))
    assert separated.top == ["left"] and separated.named == "left"


def test_a_finding_leaves_out_the_control_task_and_reports_each_variable(grid):
    val = {"left": [0.9], "left_right": [0.9, 0.7], "midpoint": [0.2], "bracket": [0.1], "control": [0.99]}
    finding = findings.finding(grid, runs=made_runs(val, val))
    assert "control" not in finding.order  # a control task is never a finding, however well it scores
    assert list(finding.variables.index) == [("left", "left"), ("left_right", "left"), ("left_right", "right"),
                                             ("midpoint", "mid"), ("bracket", "bracket")]
    assert finding.variables.loc[("left_right", "right"), "normalised"] == pytest.approx(0.7, abs=0.1)
    assert list(finding.table.index) == finding.order
