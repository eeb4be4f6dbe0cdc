"""The library calls chapters 1-4 make, one per story step: the values and tables they return."""
from __future__ import annotations

import random

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from das_lib.book import heatmaps, params, plots, report  # noqa: E402
from das_lib.method import neurons  # noqa: E402
from das_lib.method.counterfactual import majority_rate_of  # noqa: E402
from das_lib.method.sites import Site  # noqa: E402
from das_lib.method.training import TrainConfig  # noqa: E402
from das_lib.models import standin, toy  # noqa: E402
from das_lib.tasks.toy import task as toy_task  # noqa: E402
from das_lib.models.load import default_template, load_model  # noqa: E402
from das_lib.tasks.pricetag import game, tables  # noqa: E402
from das_lib.tasks.pricetag.task import PriceTagTask, roles_table  # noqa: E402
from das_lib.runs import alignments  # noqa: E402

BASE, SOURCE = {"a": 2, "b": 3, "c": 4}, {"a": 1, "b": 2, "c": 3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- parameters -------------------------------------------------------------------------------


def test_int_max_and_parsed_rules():
    ns = {"k": 3, "b": "5.49-8.49", "e": ""}
    params.check(ns, {"k": params.Int(max=4), "b": params.Parsed(game.parse_bracket),
                      "e": params.Parsed(game.parse_bracket)})
    assert ns == {"k": 3, "b": (549, 849), "e": None}
    with pytest.raises(params.ParameterError, match=r"in 1\.\.4"):
        params.check({"k": 5}, {"k": params.Int(max=4)})
    with pytest.raises(params.ParameterError, match="parameter 'b'.*5.49-8.49"):
        params.check({"b": "cheap"}, {"b": params.Parsed(game.parse_bracket)})
    with pytest.raises(params.ParameterError, match="string"):
        params.check({"b": 3}, {"b": params.Parsed(game.parse_bracket)})


def test_check_sites_gives_the_scan_or_the_given_site():
    tokenizer = load_model("standin")[1]
    task = PriceTagTask(tokenizer, default_template(tokenizer))
    assert params.check_sites(task, "standin", 2, "last", [], ["last"]) == [Site(2, "last")]
    scan = params.check_sites(task, "standin", -1, "", [], ["last", "resp_colon"])
    assert scan == [Site(layer, p) for layer in range(4) for p in ("last", "resp_colon")]
    assert params.check_sites(task, "standin", -1, "last", [1, 3], ["resp_colon"]) == [Site(1, "last"), Site(3, "last")]
    with pytest.raises(params.ParameterError, match="scan_layers"):
        params.check_sites(task, "standin", -1, "", [7], ["last"])
    with pytest.raises(params.ParameterError, match="scan_positions"):
        params.check_sites(task, "standin", -1, "", [], ["nowhere"])
    with pytest.raises(params.ParameterError, match="layer"):
        params.check_sites(task, "standin", 9, "last", [], ["last"])


def test_glue_values_glues_each_key_with_the_prefix(monkeypatch):
    import myst_nb

    seen = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.append((name, value, display)))
    report.glue_values("x_", {"a": 1, "b": "two"})
    assert seen == [("x_a", 1, False), ("x_b", "two", False)]


# --- chapter 1: the toy -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_run():
    split = toy_task.split_triples(5, 0.2, seed=0)
    S, P = toy_task.sum_model(), toy_task.distributive_model()
    pairs = {"S": toy_task.pair_split(S, "S", split, (200, 60), 0), "P": toy_task.pair_split(P, "P", split, (200, 60), 0)}
    net = toy.train_toy_model(split[0], 5, width=8, n_layers=2, steps=200, seed=0)
    return split, pairs, net


def test_interchange_table_and_same_outputs():
    table = toy_task.interchange_table({"S": toy_task.sum_model(), "P": toy_task.distributive_model()}, BASE, SOURCE)
    assert list(table.index) == ["S", "P"]
    assert table.iloc[:, -1].tolist() == [12, 15] and table.iloc[:, -2].tolist() == [3, 3]
    assert toy_task.same_outputs(toy_task.sum_model(), toy_task.distributive_model(), 5)


def test_pair_split_shares_inputs_across_hypotheses_and_counts(toy_run):
    split, pairs, _ = toy_run
    (train_S, test_S), (train_P, test_P) = pairs["S"], pairs["P"]
    assert (len(train_S), len(test_S)) == (len(train_P), len(test_P)) == (200, 60)
    assert [p.base for p in test_S] == [p.base for p in test_P]
    held_out = {tuple(t.values()) for t in split[1]}
    assert all(tuple(p.base.values()) in held_out for p in test_S)
    assert toy_task.noop_rate(test_S) == sum(p.label == p.base_label for p in test_S) / 60
    assert toy_task.labels_differ(test_S, test_P) == sum(s.label != w.label for s, w in zip(test_S, test_P)) / 60
    table = toy_task.pairs_table({"S": test_S[:3], "P": test_P[:3]})
    assert list(table.columns) == ["base", "source", "base answer", "label under S", "label under P"]
    assert table["label under P"].tolist() == [p.label for p in test_P[:3]]


def test_layer_steps_of_chapter_1(toy_run):
    _, pairs, net = toy_run
    data_S = toy_task.interchange_data(pairs["S"][1])
    search = toy.neuron_search_by_layer(net, [1], data_S)
    assert list(search) == [0, 1] and all(len(found) == 8 for found in search.values())
    table = neurons.best_sets_table(search)
    assert table["IIA"].tolist() == [found[0].iia for found in search.values()]
    assert table["sets tried"].tolist() == [8, 8] and neurons.n_neuron_sets(8, [1, 2]) == 8 + 28
    config = TrainConfig(steps=5, lr=1e-2, seed=0)
    das_S = toy.das_by_layer(net, 1, toy_task.interchange_data(pairs["S"][0]), data_S, config)
    das_P = toy.das_by_layer(net, 1, toy_task.interchange_data(pairs["P"][0]), toy_task.interchange_data(pairs["P"][1]), config)
    results = toy.iia_by_layer(search, {"S": das_S, "P": das_P}, 1)
    assert set(results["method"]) == {"best neuron set, S", "DAS (k=1), S", "DAS (k=1), P (wrong)"}
    assert len(results) == 6
    best = toy.best_layer_summary(search, das_S, das_P)
    layer = best["best_layer"]
    assert best["das_iia"] == max(r.iia for _, r in das_S) == das_S[layer][1].iia
    assert best["wrong_iia"] == das_P[layer][1].iia
    assert best["exhaustive_iia"] == max(found[0].iia for found in search.values())
    frame = toy.projection_frame(net, Site(layer), das_S[layer][0], toy_task.all_triples(5))
    assert len(frame) == 125 and list(frame.columns[:2]) == ["S = a + b", "c"]
    answers = toy.intervened_answers(net, Site(layer), BASE, SOURCE, {"DAS on S": das_S[layer][0]})
    assert list(answers) == ["no intervention", "DAS on S"]
    assert answers["DAS on S"] == toy.intervened_answer(net, Site(layer), das_S[layer][0], BASE, SOURCE)


# --- chapter 2: the game ------------------------------------------------------------------------


def test_sample_games_is_sample_game_in_sequence():
    rng = random.Random(3)
    assert game.sample_games(5, 3) == [game.sample_game(rng) for _ in range(5)]
    assert all((g["lb"], g["ub"]) == (549, 849) for g in game.sample_games(5, 0, (549, 849)))
    table = tables.games_table(game.sample_games(3, 0))
    assert list(table.columns) == ["lb", "ub", "amount", "answer"] and set(table["answer"]) <= {"Yes", "No"}


def test_chapter_2_tables():
    pairs = {k: game.sample_pairs(k, 40, 0) for k in game.HYPOTHESES}
    unbalanced = {k: game.sample_pairs(k, 400, 0, balance=False) for k in game.HYPOTHESES}
    examples = tables.examples_table(pairs, 2)
    assert examples.index.get_level_values(0).unique().tolist() == [h.title for h in game.HYPOTHESES.values()]
    assert len(examples) == 8
    panels = tables.region_panels(unbalanced, ["left", "left_right"])
    assert list(panels) == ["Left Boundary", "Left and Right Boundary: left", "Left and Right Boundary: right"]
    assert panels["Left Boundary"].shape == (3, 3)
    assert tables.yes_share(unbalanced["left_right"], "left", (2, 3)) == 1.0  # the release labelled it No
    assert tables.yes_share(unbalanced["left_right"], "right", (2, 1)) == 1.0
    with pytest.raises(ValueError, match="no pair"):
        tables.yes_share(unbalanced["left"], "right", (2, 1))
    summary = tables.balance_summary(pairs, unbalanced)
    assert summary.loc["Left Boundary", "dummy acc"] == majority_rate_of(pairs["left"]) == 0.5
    assert summary.loc["Bracket Identity", "label changed"] == tables.changed_rate(pairs["bracket"])
    assert summary.loc["Mid-point Distance", "dummy acc unbalanced"] == majority_rate_of(unbalanced["midpoint"])


def test_roles_table_follows_the_context():
    tokenizer = load_model("standin")[1]
    plain = PriceTagTask(tokenizer, "standin")
    table = roles_table({"plain": plain, "with context": PriceTagTask(tokenizer, "standin", context="Hello there.")},
                        game.sample_games(1, 0)[0])
    assert list(table.columns) == plain.searched_roles()
    assert (table.loc["with context"] > table.loc["plain"]).all()


# --- chapter 3: the stand-in ---------------------------------------------------------------------


def test_record_values_and_accuracy_tables():
    record = standin.load_record()
    values = standin.record_values(record)
    assert values["layers"] == record["config"]["num_layers"] and values["train_seconds"] == record["train_seconds"]
    assert 0 < values["asset_mb"] < 20 and values["sibling_share"] == standin.training_mix()["sibling"]
    assert standin.record_table(record).loc["steps", "value"] == record["config"]["steps"]
    games = game.sample_games(24, 7)
    settings = {**standin.eval_settings(7), **standin.untrained_settings()}
    correct = standin.correct_by_name("standin", games, settings)
    by_setting = standin.accuracy_by_setting(correct)
    assert list(by_setting.index) == list(settings)
    headline = standin.headline_accuracy(by_setting)
    assert headline["task_acc"] == by_setting["yesno"]
    assert headline["untrained_context_acc"] == min(by_setting["yesno_pricing_tag"], by_setting["yesno_frogs"])
    table = standin.accuracy_table(correct)
    assert list(table.columns)[-1] == "all" and (table["all"] == by_setting).all()
    frame = standin.accuracy_frame({"a": correct, "b": correct})
    assert list(frame.columns) == ["a", "b"] and (frame["a"] == by_setting).all()


# --- chapter 4: one alignment ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def alignment():
    model, tokenizer = load_model("standin")
    task = PriceTagTask(tokenizer, default_template(tokenizer))
    pairs, refs = alignments.pairs_and_references(model, task, "left_right", 32, 32, 40, 0)
    config = TrainConfig(steps=4, batch_size=16, eval_every=2, seed=0)
    intervention, result, forward = alignments.train_at(model, task, Site(1, "last"), pairs, config, 2)
    return model, task, pairs, refs, config, intervention, result, forward


def test_pairs_and_references(alignment):
    model, task, pairs, refs, *_ = alignment
    assert [len(pairs[k]) for k in ("train", "scan", "test")] == [32, 32, 32]
    assert pairs["train"] != pairs["test"] and pairs["scan"] != pairs["test"]
    assert refs["dummy"] == majority_rate_of(pairs["test"])
    assert 0 <= refs["no_intervention_iia"] <= 1 and refs["task_accuracy"] > 0.8


def test_choose_site_scans_only_when_there_is_a_choice(alignment):
    model, task, pairs, *_ = alignment
    config = TrainConfig(steps=2, batch_size=16, seed=0)
    assert alignments.choose_site(model, task, pairs, [Site(1, "last")], config, 2) == (Site(1, "last"), None)
    site, scan = alignments.choose_site(model, task, pairs, [Site(0, "last"), Site(1, "last")], config, 2)
    assert len(scan) == 2 and site.layer == int(scan.loc[scan["iia"].idxmax(), "layer"])
    assert alignments.scan_table(scan).index.tolist() == [1, 0]


def test_alignment_values_neurons_planted_and_example(alignment):
    model, task, pairs, refs, config, intervention, result, forward = alignment
    values = alignments.alignment_values(intervention, result, forward, config, refs)
    assert values["path"] == "fast" and values["iia"] == result.iia
    assert values["gain"] == result.iia - refs["no_intervention_iia"]
    assert values["boundary_share"] == values["boundary_dims"] / 64
    weights, spread = alignments.neuron_reading(intervention, ("left", "right"), 0)
    assert list(weights) == ["left", "right"] and abs(float(weights["left"].sum()) - 1) < 1e-5
    assert 1 <= spread["effective_neurons"] <= 64 and 0 < spread["top_neuron_share"] <= 1
    top = alignments.top_neurons(weights["left"], 3)
    assert top["weight"].is_monotonic_decreasing and len(top) == 3
    table = alignments.planted_check(model, "standin", task, Site(1, "last"), intervention, ("left", "right"),
                                     pairs["test"])
    assert table["variable"].tolist() == ["left", "right"] and table["captured"].notna().all()
    other = alignments.planted_check(model, "standin", task, Site(2, "last"), intervention, ("left", "right"),
                                     pairs["test"])
    assert other["captured"].isna().all()
    assert alignments.planted_check(model, "smollm2", task, Site(1, "last"), intervention, ("left",),
                                    pairs["test"]) is None
    example = alignments.first_example(model, task, Site(1, "last"), intervention, pairs["test"])
    assert example is not None and example.shape == (8, 1)
    assert alignments.first_example(model, task, Site(1, "last"), intervention,
                                    [p for p in pairs["test"] if p.label == p.base_label]) is None


# --- figures -------------------------------------------------------------------------------------


def _fits(fig: plt.Figure) -> bool:
    return fig.get_size_inches()[0] * fig.dpi <= 800


def test_chapter_figures_fit_the_column_and_unshown_closes_them():
    results = pd.DataFrame([{"layer": 0, "method": "m", "IIA": 0.5}, {"layer": 1, "method": "m", "IIA": 0.9}])
    frame = pd.DataFrame({"S": [0, 1, 2], "c": [0, 1, 0], "p": [0.1, 0.2, 0.3]})
    correct = pd.DataFrame({"setting": ["yesno", "yesno"], "correct": [True, False]})
    curves = [{"step": s, "loss": 1.0, "task_loss": 0.9, "batch_iia": 0.5, "boundary_dims": 8, "temperature": 1}
              for s in range(3)]
    figures = [plots.layer_bars(results, 0.3), plots.projection_scatter(frame, "S", "p", "c"),
               plots.growth_curve([0.1, 0.2], {"DAS": 0.8, "doing nothing": 0.3}),
               heatmaps.region_heatmaps({"a": pd.DataFrame([[0.0, 1.0], [1.0, 0.5]])}),
               plots.accuracy_bars({"m": correct}, 0.5), plots.training_curves(curves)]
    for fig in figures:
        assert _fits(fig)
        assert plots.unshown(fig) is fig and not plt.fignum_exists(fig.number)
