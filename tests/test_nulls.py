"""The nulls that could produce a finding if it were an artefact (das_lib.tasks.pricetag.game's controls, das_lib.runs.controls)
and the illusion check on a grid's chosen alignments (das_lib.runs.illusion_check): each defined as it claims, and
each able to fail."""
import random

import numpy as np
import pandas as pd
import pytest
import torch

from das_lib.method.training import TrainConfig
from das_lib.tasks.pricetag import game
from das_lib.runs import controls, findings, illusion_check
from das_lib.runs.grid import Grid
from das_lib.runs.sweep import sweep_spec


def pairs(n: int = 4000, seed: int = 7):
    rng = random.Random(seed)
    return [game.sample_pair(rng) for _ in range(n)]


@pytest.mark.parametrize("key", ["left", "midpoint"])
def test_a_matched_control_flips_answers_at_the_hypothesis_s_rate_and_never_on_a_factual_game(key):
    control, hypothesis, ps = game.matched(key), game.HYPOTHESES[key], pairs()
    assert all(control.model.predict(b) == game.task_label(b) for b, _ in ps)  # factual games: the true answer
    flips = np.mean([control.model.interchange(b, s, ("dollars",)) != control.model.predict(b) for b, s in ps])
    changes = np.mean([hypothesis.model.interchange(b, s, (v,)) != hypothesis.model.predict(b)
                       for b, s in ps for v in hypothesis.variables])
    assert abs(flips - changes) < 0.03  # the same ceiling, on pairs the rate was not tuned on
    assert game.matched(key) is control  # made once
    assert key in game.MATCHED_RATES


def test_the_shifted_boundaries_are_false_but_agree_with_the_truth_on_most_games():
    ps = pairs()
    for key in ("left_shifted", "right_shifted"):
        model = game.Controls()[key].model
        agree = np.mean([model.predict(b) == game.task_label(b) for b, _ in ps])
        assert 0.8 < agree < 1.0  # wrong on some games: a null that only correlation can explain
    copy = game.Controls()["amount_copy"].model
    b, s = ps[0]
    assert copy.interchange(b, s, ("price",)) == (b["lb"] <= s["amount"] <= b["ub"])  # the source's amount, the base's bracket


def test_controls_are_looked_up_lazily_and_unknown_keys_refused():
    c = game.Controls()
    assert "control_bracket" in c and "left_shifted" in c and "left" not in c
    with pytest.raises(KeyError):
        c["control_nothing"]


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory):
    torch.set_num_threads(1)
    spec = sweep_spec("standin", ["left", "left_right"], [0, 1], ["last"], seeds=(0,), train=TrainConfig(60, 32),
                      n_train=128, n_val=64, n_test=128, n_task=64)
    grid = Grid(spec, tmp_path_factory.mktemp("grid"), progress=False)
    grid.run()
    return grid, findings.finding(grid)


def test_the_artefact_nulls_train_at_the_first_hypothesis_s_site(small_grid, tmp_path):
    grid, finding = small_grid
    nulls, null = controls.artefacts(grid, finding, tmp_path / "artefacts")
    site = finding.sites[finding.first]
    assert set(null.sites) == {*controls.ARTEFACTS, f"control_{finding.first}"}
    assert all((s.layer, s.position) == (site.layer, site.position) for s in null.sites.values())
    assert null.table.loc[f"control_{finding.first}", "score high"] < finding.table.loc[finding.first, "score low"]


def test_the_whole_state_swap_bounds_what_a_subspace_at_the_site_does(small_grid):
    grid, finding = small_grid
    whole = controls.whole_swap(grid, finding, finding.first)
    learned = grid.runs()
    first = learned[(learned.candidate == finding.first) & (learned.layer == finding.sites[finding.first].layer)]["test"].iloc[0]
    assert whole.correct.shape == first.correct.shape and np.array_equal(whole.none, first.none)
    # at the last token every answer follows the source's whole state: the hypothesis's labels where it predicts a
    # change only if the source's answer is the label, so the whole swap is a bound, not the finding
    assert not np.array_equal(whole.correct, first.correct)


def test_the_illusion_check_passes_the_planted_stand_in_s_alignment_at_the_planted_site(small_grid):
    grid, finding = small_grid
    table = illusion_check.check(grid, finding, ["left"], controls.planted_subspaces("standin"))
    row = table.loc[("left", "left")]
    assert row["site"] == "L1 last" and row["verdict"] == "passes"
    assert row["inside left gain low"] > 0 and row["outside left gain high"] < row["inside left gain low"]
    again = illusion_check.check(grid, finding, ["left"], controls.planted_subspaces("standin"))  # read back, not run
    assert not table.attrs["stored"] and again.attrs["stored"]
    pd.testing.assert_frame_equal(again, table)
    assert not illusion_check.check(grid, finding, ["left"]).attrs["stored"]  # no reference: another check
