"""The positive control (das_lib.runs.controls.control_passes): it fails on findings that miss the planted program
or its site or one of its variables, and passes on the planted stand-in searched at the calibrated budget."""
from __future__ import annotations

import pandas as pd
import pytest

from das_lib.method.sites import Site
from das_lib.method.training import TrainConfig
from das_lib.runs import calibration, controls, findings
from das_lib.runs.grid import Grid
from tiny_grid import tiny_spec

HYPOTHESES = ("left", "left_right", "midpoint", "bracket")
PLANTED = Site(1, "last")  # where the stand-in's Left and Right Boundary was planted (das_lib/assets/standin)


def made_finding(order: list[str], sites: dict[str, Site], right_realised: bool = True) -> findings.Finding:
    """A finding as `findings.finding` returns it, with only what `control_passes` reads filled in."""
    variables = pd.DataFrame([{"candidate": "left_right", "variable": "left", "gain low": 0.2},
                              {"candidate": "left_right", "variable": "right", "gain low": 0.1 if right_realised else -0.05},
                              {"candidate": "left", "variable": "left", "gain low": 0.2}]).set_index(["candidate", "variable"])
    return findings.Finding(sites=sites, order=order, plain_order=order, raw_order=order, table=pd.DataFrame(),
                            variables=variables, validation=variables, contains={}, subsumes={c: [] for c in order},
                            top=order[:1], named=order[0], margin=None, runs=pd.DataFrame())


def test_the_positive_control_fails_where_the_search_misses_the_plant():
    at_plant = {"left_right": PLANTED, "left": PLANTED}
    found = controls.control_passes(made_finding(["left_right", "left"], at_plant), "standin")
    assert found["passed"] and found["found_site"] == found["planted_site"] == "L1 last"
    not_first = controls.control_passes(made_finding(["left", "left_right"], at_plant), "standin")
    assert not not_first["passed"] and not not_first["first"] and not_first["site"] and not_first["variables"]
    elsewhere = controls.control_passes(made_finding(["left_right", "left"], {"left_right": Site(0, "last"), "left": PLANTED}),
                                        "standin")
    assert not elsewhere["passed"] and not elsewhere["site"] and elsewhere["found_site"] == "L0 last"
    half = controls.control_passes(made_finding(["left_right", "left"], at_plant, right_realised=False), "standin")
    assert not half["passed"] and not half["variables"] and half["first"] and half["site"]


def test_a_model_with_nothing_planted_cannot_be_a_positive_control(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert controls.planted(str(tmp_path)) is None
    with pytest.raises(ValueError, match="no planted mechanism"):
        controls.control_passes(made_finding(["left"], {"left": PLANTED}), str(tmp_path))
    assert controls.planted("standin") == {"candidate": "left_right", "variables": ["left", "right"], "layer": 1,
                                           "position": "last"}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Grid:
    """The paper's four hypotheses at every layer of the stand-in (last position), at the budget the positive
    control was calibrated at: 150 steps x 32 pairs, 512 training pairs (about 30 s on one thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model_spec = tiny_spec(candidates=HYPOTHESES, layers=(0,), positions=("last",), extra_seeds=(), extra_data_seeds=(),
                           train=TrainConfig(steps=150, batch_size=32), n_train=512, n_val=128, n_test=256)
    spec = controls.control_spec(model_spec, "standin", positions=("last",))
    grid = Grid(spec, tmp_path_factory.mktemp("control"), progress=False)
    try:
        grid.run()
    finally:
        torch.set_num_threads(threads)
    return grid


def test_the_planted_stand_in_passes_at_the_calibrated_budget(calibrated):
    assert calibrated.spec.layers == (0, 1, 2, 3)  # control_spec searches every layer of the control
    finding = findings.finding(calibrated)
    result = controls.control_passes(finding, "standin")
    assert result == {"first": True, "site": True, "variables": True, "passed": True, "planted": "left_right",
                      "planted_site": "L1 last", "found_site": "L1 last"}, result
    assert finding.named == "left_right" and finding.subsumes["left_right"] == ["left"]
    assert finding.table.loc["left_right", "score low"] > 0.8  # the planted subspace is found, not just beaten


def test_the_calibrated_budget_is_the_smallest_from_which_the_control_always_passes():
    def table(passed: list[bool]) -> pd.DataFrame:
        return pd.DataFrame([{"steps": s, "batch": b, "n_train": n, "passed": p}
                             for (s, b, n), p in zip(calibration.BUDGETS, passed)])

    assert calibration.calibrated(table([False, True, True, True])) == calibration.BUDGETS[1]
    assert calibration.calibrated(table([True, False, True, True])) == calibration.BUDGETS[2]  # a pass then a fail
    assert calibration.calibrated(table([True, True, True, False])) is None  # fails at the largest budget tried
    spec = calibration.with_budget(tiny_spec(), (150, 32, 512))
    assert (spec.train.steps, spec.train.batch_size, spec.n_train) == (150, 32, 512)
    assert spec.train.orthogonal_map == tiny_spec().train.orthogonal_map
