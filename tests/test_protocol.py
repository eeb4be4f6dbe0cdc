"""The protocol (das_lib.runs.protocol) and the scores (das_lib.method.outcome) on runs built to order
(tests/synthetic.py): chosen on validation, reported on test, intervals that cover, paired comparisons, seeds."""
from __future__ import annotations

import numpy as np
import pytest

from das_lib.method.outcome import Outcome, candidate_score, flags, variable_scores
from das_lib.method.sites import Site
from das_lib.runs import protocol
from das_lib.runs.protocol import Evidence, bootstrap, interval
from synthetic import outcome, row, runs

P = 200  # pairs per split


def width(low: float, high: float) -> float:
    return float(np.squeeze(np.asarray(high) - np.asarray(low)))


def evidence(name: str, correct: np.ndarray, none: np.ndarray, changed: np.ndarray, data_seed: int = 0) -> Evidence:
    """One candidate's evidence on one data seed: correct (S, V, P), none and changed (V, P)."""
    return Evidence(name, {data_seed: (correct, none, changed)})


IIA = lambda c, n, ch, w: variable_scores(c, n, ch, w)["iia"]  # noqa: E731  (w: the resamples' pair weights)
GAIN = lambda c, n, ch, w: variable_scores(c, n, ch, w)["gain"]  # noqa: E731


# ---- the scores --------------------------------------------------------------------------------------


def test_a_variable_with_too_few_pairs_to_gain_on_has_no_normalised_score():
    from das_lib.method.outcome import MIN_CHANGEABLE, candidate_score

    n = 200
    none = np.ones((1, n), bool)
    none[0, : MIN_CHANGEABLE - 1] = False  # doing nothing is wrong on too few pairs to divide by
    correct = none.copy()
    correct[0, 0] = True  # one lucky pair would be a normalised gain of 1 / 9
    assert np.isnan(variable_scores(correct, none, ~none)["normalised"][0])
    assert np.isnan(candidate_score(correct, none, ~none))
    none[0, MIN_CHANGEABLE - 1] = False  # one more pair to gain on: now a score
    correct[0, MIN_CHANGEABLE - 1] = False
    assert variable_scores(correct, none, ~none)["normalised"][0] == pytest.approx(1 / MIN_CHANGEABLE)


def test_each_score_of_a_variable_counts_the_pairs_it_says():
    correct = np.tile(np.array([[1, 1, 0, 1, 0, 1]], bool), 4)
    none = np.tile(np.array([[1, 0, 0, 1, 0, 1]], bool), 4)  # doing nothing is right on 12 of 24 pairs
    changed = np.tile(np.array([[0, 1, 1, 0, 1, 0]], bool), 4)  # the swap is predicted to change the other 12
    s = {k: float(v[0]) for k, v in variable_scores(correct, none, changed).items()}
    assert s["iia"] == 4 / 6 and s["none"] == 3 / 6 and s["gain"] == pytest.approx(1 / 6)
    assert s["ceiling"] == 0.5 and s["normalised"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 3)  # one of the three predicted changes happened
    assert s["false_change"] == 0.0  # every unchanged pair kept its label
    correct[0, 0] = False
    assert float(variable_scores(correct, none, changed)["false_change"][0]) == pytest.approx(1 / 12)  # 1 of 12 unchanged


def test_a_fully_realised_variable_scores_as_high_as_two_and_higher_than_two_at_half():
    """Issue 25, item 5: the score does not reward predicting more changes; the raw sum of gains does."""
    left = outcome(P, 1.0, changes=0.37)  # Left Boundary's ceiling
    product_full = outcome(P, [1.0, 1.0], changes=[0.50, 0.45])  # a two-variable program predicting many changes
    product_half = outcome(P, [0.5, 0.5], changes=[0.50, 0.45])
    score = {k: float(candidate_score(o.correct, o.none, o.changed)) for k, o in
             (("left", left), ("full", product_full), ("half", product_half))}
    raw = {k: float(candidate_score(o.correct, o.none, o.changed, "raw")) for k, o in
           (("left", left), ("full", product_full), ("half", product_half))}
    assert score["left"] == score["full"] == 1.0 and score["half"] == pytest.approx(0.5)
    assert raw == pytest.approx({"left": 0.37, "full": 0.95, "half": 0.475})
    assert raw["half"] > raw["left"]  # what the raw sum would rank: half a program above a whole one
    table = runs([row(k, 0, "last", o, o) for k, o in (("half", product_half), ("left", left), ("full", product_full))])
    sites = {k: Site(0, "last") for k in ("half", "left", "full")}
    assert protocol.order(table, sites) == ["left", "full", "half"]  # ties keep the given order
    assert protocol.order(table, sites, kind="raw") == ["full", "half", "left"]
    with pytest.raises(ValueError, match="'score' or 'raw'"):
        candidate_score(left.correct, left.none, left.changed, "sum")


def test_a_variable_with_no_room_to_gain_is_left_out_of_the_score():
    o = outcome(20, [1.0, 0.5], changes=[0.5, 0.0])  # the second variable never changes the answer: ceiling 0
    assert np.isnan(o.scores()["normalised"][1]) and float(candidate_score(o.correct, o.none, o.changed)) == 1.0
    inert = outcome(20, 0.5, changes=0.0)
    assert np.isnan(candidate_score(inert.correct, inert.none, inert.changed))


def test_an_outcome_round_trips_through_its_record_and_refuses_bad_ones():
    o = outcome(30, [0.5, 0.8], changes=0.4, rng=np.random.default_rng(0))
    back = Outcome.from_dict(o.as_dict())
    assert all(np.array_equal(getattr(back, k), getattr(o, k)) for k in ("correct", "none", "changed"))
    with pytest.raises(KeyError, match="lacks 'none'"):
        Outcome.from_dict({"correct": ["01"], "changed": ["01"]})
    with pytest.raises(ValueError, match="0s and 1s"):
        flags("0120")
    with pytest.raises(ValueError, match="one shape"):
        Outcome(np.zeros((1, 3), bool), np.zeros((1, 4), bool), np.zeros((1, 3), bool))


# ---- choosing on validation, reporting on test ------------------------------------------------------


def test_sites_and_the_order_are_chosen_on_validation_never_on_test():
    # at L0 the validation pairs say realised, the test pairs not; at L1 the reverse: L0 must be chosen
    table = runs([row("left", 0, "last", outcome(P, 0.9), outcome(P, 0.1)),
                  row("left", 1, "last", outcome(P, 0.2), outcome(P, 0.95)),
                  row("bracket", 0, "last", outcome(P, 0.5), outcome(P, 0.95)),
                  row("bracket", 1, "last", outcome(P, 0.4), outcome(P, 0.98))])
    sites = protocol.choose_sites(table)
    assert sites == {"left": Site(0, "last"), "bracket": Site(0, "last")}
    assert protocol.order(table, sites) == ["left", "bracket"]  # on test, bracket would lead
    report = protocol.report(table, sites)
    assert report.loc["left", "score"] == pytest.approx(0.1) and report.loc["bracket", "score"] == pytest.approx(0.95)
    assert protocol.report(table, sites, split="val").loc["left", "score"] == pytest.approx(0.9)


def test_the_site_is_chosen_on_the_mean_over_seeds_and_a_tie_keeps_the_grids_order():
    table = runs([row("left", 0, "last", outcome(P, 0.9), outcome(P, 0.5), seed=0),
                  row("left", 0, "last", outcome(P, 0.1), outcome(P, 0.5), seed=1),  # L0: mean 0.5
                  row("left", 1, "last", outcome(P, 0.6), outcome(P, 0.5), seed=0),
                  row("left", 1, "last", outcome(P, 0.6), outcome(P, 0.5), seed=1),  # L1: mean 0.6
                  row("left", 2, "last", outcome(P, 0.6), outcome(P, 0.5), seed=0),
                  row("left", 2, "last", outcome(P, 0.6), outcome(P, 0.5), seed=1)])  # L2: as L1, later
    assert protocol.choose_sites(table) == {"left": Site(1, "last")}


def test_bootstrap_intervals_cover_the_true_value():
    rng, covered = np.random.default_rng(0), {"iia": 0, "gain": 0}
    for draw in range(100):  # IIA 0.7 and doing nothing 0.4 per pair, independently: gain 0.3
        correct, none = rng.random((1, 1, P)) < 0.7, rng.random((1, P)) < 0.4
        ev = [evidence("a", correct, none, ~none)]
        for name, stat, truth in (("iia", IIA, 0.7), ("gain", GAIN, 0.3)):
            low, high = interval(bootstrap(ev, stat, n_boot=500, seed=draw)[1])
            covered[name] += bool(low[0, 0] <= truth <= high[0, 0])
    assert covered["iia"] >= 90 and covered["gain"] >= 90, covered  # 95% intervals over 100 draws


def test_pairs_are_resampled_together_so_paired_differences_are_narrower():
    rng = np.random.default_rng(1)
    none = rng.random((1, P)) < 0.5
    a = rng.random((1, 1, P)) < 0.7
    b = a ^ (rng.random((1, 1, P)) < 0.05)  # the same answers on 95% of the pairs
    ea, eb = evidence("a", a, none, ~none), evidence("b", b, none, ~none)
    _, paired = bootstrap([ea, eb], IIA, seed=0)
    paired_width = width(*interval(paired[:, 0] - paired[:, 1]))
    _, alone_a = bootstrap([ea], IIA, seed=1)
    _, alone_b = bootstrap([eb], IIA, seed=2)
    unpaired_width = width(*interval(alone_a[:, 0] - alone_b[:, 0]))
    assert paired_width < 0.5 * unpaired_width, (paired_width, unpaired_width)
    table = runs([row("a", 0, "last", None, Outcome(a[0], none, ~none)), row("b", 0, "last", None, Outcome(b[0], none, ~none))])
    mean, low, high = protocol.margin(table, {"a": Site(0, "last"), "b": Site(0, "last")}, "a", "b", kind="raw")
    assert mean == pytest.approx(float(a.mean() - b.mean())) and width(low, high) < 0.5 * unpaired_width


def test_seed_resampling_widens_the_interval_when_seeds_disagree():
    none = np.arange(P) >= P // 2  # doing nothing is right on half the pairs
    agree = np.stack([np.arange(P) < P // 2] * 2)[:, None, :]  # two seeds, right on the same half
    disagree = np.stack([np.arange(P) < int(0.8 * P), np.arange(P) < int(0.2 * P)])[:, None, :]  # 0.8 and 0.2
    points, widths = {}, {}
    for name, correct in (("agree", agree), ("disagree", disagree)):
        point, reps = bootstrap([evidence(name, correct, none[None], ~none[None])], IIA)
        points[name], widths[name] = float(point[0, 0]), width(*(x[0, 0] for x in interval(reps)))
    assert points["agree"] == points["disagree"] == 0.5
    assert widths["disagree"] > 3 * widths["agree"], widths  # the seeds' spread, not only the pairs'
    low, high = interval(bootstrap([evidence("d", disagree, none[None], ~none[None])], IIA)[1])
    assert low[0, 0] <= 0.3 and high[0, 0] >= 0.7


def test_data_seeds_are_averaged_and_only_shared_ones_compared():
    ea = Evidence("a", {0: (np.ones((1, 1, 10), bool), np.zeros((1, 10), bool), np.ones((1, 10), bool)),
                        1: (np.zeros((1, 1, 10), bool), np.zeros((1, 10), bool), np.ones((1, 10), bool))})
    point, _ = bootstrap([ea], IIA, n_boot=10)
    assert float(point[0, 0]) == 0.5  # the mean over the two pools
    eb = Evidence("b", {2: ea.by_data[0]})
    with pytest.raises(ValueError, match="share no data seed"):
        bootstrap([ea, eb], IIA)
    ec = Evidence("c", {0: (np.ones((1, 1, 12), bool), np.zeros((1, 12), bool), np.ones((1, 12), bool))})
    with pytest.raises(ValueError, match="different pairs"):
        bootstrap([ea, ec], IIA)


def test_top_set_keeps_a_candidate_equal_to_the_first_and_drops_one_far_worse():
    rng = np.random.default_rng(2)
    test = {"first": outcome(P, 0.8, rng=rng), "equal": outcome(P, 0.78, rng=rng), "worse": outcome(P, 0.2, rng=rng)}
    table = runs([row(k, 0, "last", o, o) for k, o in test.items()])
    sites = {k: Site(0, "last") for k in test}
    assert protocol.top_set(table, sites, "first", ["equal", "worse"]) == ["first", "equal"]
    assert protocol.top_set(table, sites, "first", ["worse"]) == ["first"]
    assert protocol.top_set(table, sites, "first", []) == ["first"]


def test_top_set_drops_a_candidate_that_has_no_score():
    rng = np.random.default_rng(4)
    test = {"first": outcome(P, 0.9, rng=rng), "inert": outcome(P, 0.5, changes=0.0, rng=rng)}
    assert np.isnan(candidate_score(test["inert"].correct, test["inert"].none, test["inert"].changed))
    table = runs([row(k, 0, "last", o, o) for k, o in test.items()])
    assert protocol.top_set(table, {k: Site(0, "last") for k in test}, "first", ["inert"]) == ["first"]


def test_the_report_and_the_variables_give_intervals_around_their_points():
    rng = np.random.default_rng(3)
    rows = [row("pair", 0, "last", outcome(P, [0.9, 0.1], rng=rng), outcome(P, [0.9, 0.1], rng=rng), seed=s, data_seed=d)
            for s in (0, 1) for d in (0, 1)]
    table, sites = runs(rows), {"pair": Site(0, "last")}
    report = protocol.report(table, sites).loc["pair"]
    assert (report["runs"], report["data seeds"], report["pairs"], report["variables"]) == (4, 2, P, 2)
    assert report["score low"] <= report["score"] <= report["score high"] and report["runs min"] <= report["runs max"]
    per = protocol.variables(table, sites, {"pair": ["first", "second"]})
    assert list(per.index) == [("pair", "first"), ("pair", "second")]
    assert per.loc[("pair", "first"), "recall"] == pytest.approx(0.9, abs=0.08)
    assert per.loc[("pair", "first"), "gain low"] > 0 and per.loc[("pair", "second"), "normalised"] < 0.25
    for name in ("iia", "gain", "normalised", "recall"):
        assert (per[f"{name} low"] <= per[name]).all() and (per[name] <= per[f"{name} high"]).all()
