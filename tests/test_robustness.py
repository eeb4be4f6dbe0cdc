"""Reusing a grid's alignments: the cell chosen on validation, the robustness settings with their intervals and the
check that a model answers a setting at all, the cross-hypothesis matrix, and a grid that is not all there."""
from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from das_lib import paper
from das_lib.method.counterfactual import make_pair
from das_lib.method.outcome import candidate_score
from das_lib.method.seeds import setting_games_seed
from das_lib.method.stats import binomial_interval, paired_difference
from das_lib.method.training import PlainForward, TrainConfig, answer_tokens_under
from das_lib.models.standin import build_tokenizer
from das_lib.method.task import Variant
from das_lib.tasks.pricetag import variants
from das_lib.tasks.pricetag.game import get_hypothesis, majority_rate_of_games, sample_game, task_label
from das_lib.tasks.pricetag.task import PriceTagTask
from das_lib.runs import committed, crosscheck, findings, grids, reuse
from das_lib.runs import robustness as rb
from das_lib.runs import robustness_table as rt
from das_lib.runs.grid import Cell, Grid, IncompleteGrid
from das_lib.runs.sweep import spec_from_params, sweep_spec

TEMPLATE = "standin"
STANDARD = {"template": TEMPLATE, "variant": "yesno", "context": None}
KINDS = ["standard", "fixed_bracket", "sibling", "correct_only", "incorrect_only"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # damaged records are set aside with a warning


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(0)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Grid:
    """A finished tiny grid on the stand-in: Left and Left and Right Boundary at L1 x two positions, seed 0, and seed
    1 at each one's chosen site (6 cells)."""
    spec = sweep_spec("standin", ["left", "left_right"], [1], ["resp_colon", "last"], seeds=(0,), extra_seeds=(1,),
                      train=TrainConfig(steps=20, batch_size=16), n_train=64, n_val=32, n_test=32, n_task=50)
    grid = Grid(spec, tmp_path_factory.mktemp("store"), progress=False)
    assert grid.run() == {"ran": 6, "reused": 0}
    return grid


@pytest.fixture(scope="module")
def finding(grid) -> findings.Finding:
    return findings.finding(grid)


@pytest.fixture(scope="module")
def result(grid, finding) -> rb.RobustnessResult:
    return reuse.robustness_of(grid, finding, variants.make_settings(KINDS), n_pairs=16, n_games=40, max_screened=128,
                               whole_grid=True)


def test_a_study_is_recorded_in_the_grids_store_and_read_back_unchanged(grid, finding, result):
    again = reuse.robustness_of(grid, finding, variants.make_settings(KINDS), n_pairs=16, n_games=40, max_screened=128,
                                whole_grid=True)
    assert not result.stored and again.stored  # no evaluation the second time
    assert again.outcomes.keys() == result.outcomes.keys() and again.checks.equals(result.checks)
    for key, by_cell in result.outcomes.items():
        assert again.outcomes[key].keys() == by_cell.keys()
        assert all(np.array_equal(again.outcomes[key][c].correct, o.correct) for c, o in by_cell.items())
        assert np.array_equal(again.labels[key], result.labels[key])
    assert rt.page_table(again).equals(rt.page_table(result))
    other = reuse.robustness_of(grid, finding, variants.make_settings(KINDS), n_pairs=8, n_games=40, max_screened=128)
    assert not other.stored  # another budget is another study


def test_a_study_read_back_is_checked_by_evaluating_one_setting_again(grid, finding, result):
    study = reuse.robustness_of(grid, finding, variants.make_settings(KINDS), n_pairs=16, n_games=40, max_screened=128,
                                whole_grid=True)
    table = committed.verify_study(grid, study)
    assert study.stored and list(table.index) == [table.index[0]] and table["within"].all()
    assert table["recomputed"].iloc[0] == table["committed"].iloc[0] > 0.2  # the same pairs, the same answers
    assert committed.verify_study(grid, result).empty  # evaluated here: nothing to check
    setting = next(s for s in study.settings if s.answers is None)
    cell = study.alignments.chosen[setting.hypothesis]
    wrong = replace(study.outcomes[setting.key][cell], correct=np.zeros_like(study.outcomes[setting.key][cell].correct))
    stale = replace(study, outcomes={**study.outcomes, setting.key: {**study.outcomes[setting.key], cell: wrong}})
    with pytest.raises(committed.CommittedMismatch, match="regenerate the committed store"):
        committed.verify_study(grid, stale)


# --- settings -----------------------------------------------------------------------------------


def test_settings_follow_the_paper():
    settings = {s.key: s for s in variants.make_settings()}
    assert list(settings) == ["standard_left", "standard_left_right", "correct_only", "incorrect_only", "fixed_seen",
                              "fixed_unseen", "context_1", "context_2", "context_3", "sibling"]
    # Left Boundary for the fixed-bracket rows, Left and Right otherwise
    assert {k for k, s in settings.items() if s.hypothesis == "left"} == {"standard_left", "fixed_seen", "fixed_unseen"}
    assert settings["fixed_unseen"].changes == (("bracket", (251, 551)),)
    assert settings["context_2"].changes == (("context", "Fruitarian Frogs May Be Doing Flowers a Favor"),)
    assert settings["sibling"].changes == (("variant", "truefalse"),)
    assert (settings["correct_only"].answers, settings["incorrect_only"].answers) == ("correct", "incorrect")
    assert settings["context_3"].paper is None  # our longer passage is not in the paper
    assert all(s.paper in paper.ROBUSTNESS for k, s in settings.items() if k != "context_3")
    other = {s.key: s for s in variants.make_settings(["fixed_bracket"], bracket_unseen="1.00-4.00")}
    assert other["fixed_unseen"].paper is None and other["fixed_seen"].paper is not None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="setting kinds"):
        variants.make_settings(["standard", "upside_down"])
    with pytest.raises(ValueError, match="must look like"):
        variants.make_settings(["fixed_bracket"], bracket_seen="cheap")
    with pytest.raises(ValueError, match="contexts"):
        variants.make_settings(["context"], contexts=[""])
    with pytest.raises(ValueError, match="answers"):
        Variant("x", "x", "left", "standard", answers="maybe")


def test_positions_move_with_a_context(tok):
    game = {"lb": 549, "ub": 849, "amount": 712}
    plain = rb.setting_task("pricetag", tok, STANDARD, Variant("s", "s", "left", "standard"))
    setting = next(s for s in variants.make_settings(["context"]) if s.key == "context_3")
    moved = rb.setting_task("pricetag", tok, STANDARD, setting)
    shift = len(moved.encode([game])["input_ids"][0]) - len(plain.encode([game])["input_ids"][0])
    assert shift > 10  # the long passage adds many tokens
    assert moved.searched_roles() == plain.searched_roles()
    assert all(moved.roles(game)[r] == plain.roles(game)[r] + shift for r in plain.searched_roles())
    pairs, _ = rb.setting_pairs(setting, None, moved, 8, seed=0, max_screened=2)
    a, b = (rb.encode_pairs(t, pairs, ["resp_colon"], torch.device("cpu")) for t in (plain, moved))
    assert torch.equal(b.base_pos - a.base_pos, torch.full_like(a.base_pos, shift))


def test_sibling_labels_are_true_and_false(tok):
    sibling = next(s for s in variants.make_settings(["sibling"]))
    task = rb.setting_task("pricetag", tok, STANDARD, sibling)
    true_id, false_id = tok.convert_tokens_to_ids("True"), tok.convert_tokens_to_ids("False")
    assert task.answer_ids() == (true_id, false_id)
    assert {true_id, false_id}.isdisjoint(PriceTagTask(tok, TEMPLATE).answer_ids())
    assert "say True only" in task.prompt(sample_game(random.Random(0)))


# --- what a setting's pairs can mean --------------------------------------------------------------


class Answerer(torch.nn.Module):
    """Reads the game off the prompt and answers it: always right (oracle) or always the first answer word."""

    def __init__(self, tok, task: PriceTagTask, always_yes: bool):
        super().__init__()
        self.tok, self.task, self.always_yes = tok, task, always_yes
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for row, ids in enumerate(input_ids):
            text = self.tok.decode(ids, skip_special_tokens=True)
            lb, ub = re.search(r"between (\S+) and (\S+) dollars", text).groups()
            amount = re.search(r"Input:\n(\S+) dollars", text).group(1)
            game = {"lb": round(float(lb) * 100), "ub": round(float(ub) * 100), "amount": round(float(amount) * 100)}
            logits[row, -1, self.task.answer_id(True if self.always_yes else task_label(game))] = 1.0
        return logits + self.w


def test_split_by_answers():
    pairs = [({"n": i}, {"n": -i}) for i in range(4)]
    correct, incorrect = rb.split_by_answers(pairs, [True, True, False, False], [True, False, True, False])
    assert correct == pairs[:1] and incorrect == pairs[1:]
    with pytest.raises(ValueError, match="answers"):
        rb.split_by_answers(pairs, [True], [True])


def test_screening_keeps_pairs_by_the_models_answers(tok):
    task = PriceTagTask(tok, TEMPLATE)
    yes = Answerer(tok, task, always_yes=True)
    found, screened = rb.screen_pairs(yes, task, 20, seed=3, max_screened=600, chunk=64)
    assert screened < 600 and len(found["correct"]) == 20 and len(found["incorrect"]) == 20
    assert all(task_label(b) and task_label(s) for b, s in found["correct"])  # only Yes games are right
    assert all(not (task_label(b) and task_label(s)) for b, s in found["incorrect"])
    assert rb.screen_pairs(yes, task, 20, seed=3, max_screened=600, chunk=64) == (found, screened)  # same seed, same pairs
    few, spent = rb.screen_pairs(yes, task, 20, seed=3, max_screened=64, chunk=64)  # the budget runs out first
    assert spent == 64 and len(few["correct"]) < 20 and few["correct"] == found["correct"][:len(few["correct"])]


def test_a_model_at_chance_on_a_setting_is_flagged(tok):
    """The check fires for a model that always says Yes (its accuracy is the Yes rate, below the majority rate of
    the games) and not for one that answers every game."""
    setting = variants.make_settings(["standard"])[0]
    task = rb.setting_task("pricetag", tok, STANDARD, setting)
    lazy = rb.task_check(Answerer(tok, task, always_yes=True), task, 60, seed=0)
    right = rb.task_check(Answerer(tok, task, always_yes=False), task, 60, seed=0)
    assert lazy["majority"] == right["majority"] > 0.5 and lazy["task acc"] == pytest.approx(1 - lazy["majority"])
    assert (lazy["task acc low"], lazy["task acc high"]) == binomial_interval(round(60 * lazy["task acc"]), 60)
    assert not lazy["answers"] and right["answers"] and right["task acc"] == 1.0


def test_a_setting_at_chance_is_shown_without_its_iia(result):
    """page_table leaves out the IIAs of a setting the model does not answer, and the numbers name it."""
    checks = result.checks.copy()
    assert checks["answers"].all()  # the stand-in answers every setting here
    at_chance = replace(result, checks=checks.assign(answers=checks.index != "sibling"))
    page = rt.page_table(at_chance)
    sibling = next(s for s in result.settings if s.key == "sibling").title
    assert page.loc[sibling, "iia"].isna().all() and page.loc[sibling, "gain low"].isna().all()
    assert page.drop(index=sibling, level=0)["iia"].notna().all()
    assert rt.headline_numbers(at_chance)["at_chance"] == [sibling]
    assert rt.headline_numbers(result)["at_chance"] == []


def test_no_incorrect_pairs_is_reported_not_hidden(tok, result):
    setting = variants.make_settings(["incorrect_only"])[0]
    oracle = Answerer(tok, rb.setting_task("pricetag", tok, STANDARD, setting), always_yes=False)
    empty = rb.evaluate_settings(oracle, tok, "pricetag", STANDARD, [setting], result.alignments, n_pairs=8, n_games=10,
                                 seed=0, max_screened=64)
    assert empty.checks.loc["incorrect_only", ["pairs", "screened"]].tolist() == [0, 64]
    assert empty.outcomes == {} and empty.cells.empty and empty.grids() == {}
    assert rt.chosen_table(empty)["iia"].isna().all() and np.isnan(rt.headline_numbers(empty)["iia_incorrect_only_left"])


# --- the cells reused, chosen on validation ----------------------------------------------------------


def test_the_reported_cell_is_the_findings_site_and_its_best_seed_on_validation(grid, finding, result):
    for h in ("left", "left_right"):
        site = finding.sites[h]
        here = grid.runs([Cell(h, site.layer, site.position, s) for s in (0, 1)])
        scores = [float(candidate_score(o.correct, o.none, o.changed)) for o in here["val"]]
        expected = Cell(h, site.layer, site.position, (0, 1)[int(np.argmax(scores))])
        assert reuse.chosen_cell(grid, finding, h) == result.alignments.chosen[h] == expected
        assert set(result.alignments.at_site[h]) == {Cell(h, site.layer, site.position, s) for s in (0, 1)}
    table = rt.chosen_table(result)
    assert (table["site"] == [f"L{finding.sites[h].layer} {finding.sites[h].position}" for h in table["hypothesis"]]).all()
    # another site chosen (say, on other validation pairs) moves the reported cell there, whatever the test pairs say
    other = {h: replace(site, position="resp_colon" if site.position == "last" else "last") for h, site in finding.sites.items()}
    moved = replace(finding, sites=other)
    assert reuse.chosen_cell(grid, moved, "left").site() == other["left"]


def test_the_seed_is_chosen_on_validation_not_on_test(grid, finding):
    """Runs whose validation outcomes favour seed 1 and whose test outcomes favour seed 0: seed 1 is chosen."""
    site = finding.sites["left"]
    runs = grid.runs([Cell("left", site.layer, site.position, s) for s in (0, 1)]).reset_index(drop=True)
    for column, best in (("val", 1), ("test", 0)):
        outcomes = list(runs[column])
        outcomes[best] = replace(outcomes[best], correct=np.ones_like(outcomes[best].correct), none=np.zeros_like(outcomes[best].none))
        outcomes[1 - best] = replace(outcomes[1 - best], correct=np.zeros_like(outcomes[1 - best].correct))
        runs[column] = outcomes
    assert reuse.chosen_cell(grid, finding, "left", runs).seed == 1


def test_the_chosen_cells_numbers_by_hand_on_the_plain_path(tok, grid, result):
    """The sibling's outcome of the chosen cell, computed here pair by pair on the plain hooked forward, and its
    intervals from das_lib.method.stats."""
    setting = next(s for s in result.settings if s.key == "sibling")
    task, model = rb.setting_task("pricetag", tok, STANDARD, setting), grid.runner.model
    pairs, _ = rb.setting_pairs(setting, model, task, 16, grid.spec.data_seed, 128)
    cell = result.alignments.chosen["left_right"]
    intervention = result.alignments.interventions[cell]
    outcome = result.outcomes["sibling"][cell]
    hypothesis = get_hypothesis("left_right")
    table = rt.chosen_table(result)
    for v, variable in enumerate(hypothesis.variables):
        data = task.interchange_data([make_pair(hypothesis.model, b, s, (variable,), variable_index=v) for b, s in pairs],
                                     cell.position)
        by_hand = answer_tokens_under(PlainForward(model, cell.site(), intervention), data) == data.labels
        assert by_hand.tolist() == outcome.correct[v].tolist()
        row = table.loc[("sibling", variable)]
        assert (row["iia low"], row["iia high"]) == binomial_interval(int(by_hand.sum()), len(pairs))
        assert (row["gain"], row["gain low"], row["gain high"]) == paired_difference(outcome.correct[v], outcome.none[v])
        assert row["iia"] == by_hand.float().mean().item() and row["runs"] == 2
        assert row["runs min"] <= row["iia"] <= row["runs max"]


def test_the_whole_grid_gives_the_heatmaps_and_the_papers_statistics(grid, result):
    with_pairs = [s for s in result.settings if result.checks.loc[s.key, "pairs"] > 0]
    assert len(result.cells) == len(with_pairs) * 2  # each setting: its hypothesis at 1 layer x 2 positions
    trained = grid.runs(grid.grid_cells(("left_right",)))
    assert sorted(result.trained_grid("left_right").loc[1].tolist()) == sorted(o.correct.mean() for o in trained["test"])
    table = rt.grid_table(result)
    sibling = result.cells[result.cells["setting"] == "sibling"]
    assert table.loc["sibling", "max IIA"] == sibling["iia"].max()
    assert table.loc["sibling", "paper max IIA"] == paper.ROBUSTNESS[next(s.paper for s in result.settings if s.key == "sibling")][0]
    groups = result.figure_groups()
    assert list(groups) == ["new inputs", "irrelevant context", "instruction and inputs"]
    assert list(groups["new inputs"])[:2] == ["trained: Left Boundary", "standard inputs"]
    assert list(groups["instruction and inputs"])[1:] == [s.short or s.title for s in with_pairs
                                                          if s.figure == "instruction and inputs"]


def test_the_settings_task_accuracy_and_majority_are_measured_on_their_games(tok, grid, result):
    setting = next(s for s in result.settings if s.key == "fixed_unseen")
    rng = random.Random(setting_games_seed(0))
    games = [sample_game(rng, dict(setting.changes)["bracket"]) for _ in range(40)]
    row = result.checks.loc["fixed_unseen"]
    assert row["majority"] == majority_rate_of_games(games)
    task = rb.setting_task("pricetag", tok, STANDARD, setting)
    assert row["task acc"] == pytest.approx(task.readings(grid.runner.model, games)[0].float().mean().item())


def test_headline_numbers_name_every_default_setting(result):
    numbers = rt.headline_numbers(result, variants.make_settings())
    assert np.isnan(numbers["iia_context_1_left"]) and np.isnan(numbers["mean_corr_context"])  # not evaluated here
    assert numbers["iia_sibling_right"] == rt.chosen_table(result).loc[("sibling", "right"), "iia"]
    assert numbers["site_sibling"] == rt.chosen_table(result).loc[("sibling", "left"), "site"]
    assert numbers["paper_max_iia_fixed_seen"] == paper.ROBUSTNESS["fixed bracket 5.49-8.49 (seen)"][0]


def test_a_hypothesis_the_grid_does_not_search_is_named(grid, finding):
    with pytest.raises(KeyError, match=r"alignments of \['left'\], which the grid does not search"):
        reuse.robustness_of(replace_candidates(grid, ("left_right",)), finding, variants.make_settings(["fixed_bracket"]), 8, 8, 8)


def replace_candidates(grid: Grid, candidates: tuple[str, ...]) -> Grid:
    return Grid(replace(grid.spec, candidates=candidates), grid.store, progress=False)


# --- a grid that is not all there ---------------------------------------------------------------------


def test_a_grid_with_missing_cells_is_refused_naming_them(grid, finding):
    wider = Grid(replace(grid.spec, layers=(1, 2)), grid.store, progress=False)
    with pytest.raises(IncompleteGrid, match=r"2 of 4 cells .*left L2 resp_colon seed 0"):
        reuse.alignments(wider, finding, ["left"], whole_grid=True)


def test_a_damaged_alignment_is_named_and_set_aside(grid, finding, tmp_path):
    copy = Grid(grid.spec, shutil.copytree(grid.store.root, tmp_path / "store"), progress=False)
    cell = reuse.chosen_cell(copy, finding, "left")
    record = copy.record(cell)
    weights = copy.store.root / record["hash"] / f"{record['results']['alignment']}.safetensors"
    weights.write_bytes(b"not a tensor file")
    with pytest.raises(IncompleteGrid, match=re.escape(str(weights.with_suffix("")))):
        reuse.alignments(copy, finding, ["left"])
    assert copy.record(cell) is None  # set aside: the next Grid.run trains it again


# --- the cross-hypothesis matrix ----------------------------------------------------------------------


def test_the_cross_matrix_scores_each_chosen_alignment_against_every_label(grid, finding):
    matrix = crosscheck.cross_matrix(grid, finding)
    names = ["Left Boundary", "Left and Right Boundary (left)", "Left and Right Boundary (right)"]
    assert list(matrix.iia.index) == list(matrix.iia.columns) == names
    labels = {names[0]: grid.labels("left")[0], names[1]: grid.labels("left_right")[0], names[2]: grid.labels("left_right")[1]}
    for h, rows in (("left", names[:1]), ("left_right", names[1:])):  # the diagonal is the grid's own test IIA
        cell = reuse.chosen_cell(grid, finding, h)
        test = grid.runs([cell])["test"].iloc[0]
        for v, r in enumerate(rows):
            assert matrix.iia.loc[r, r] == test.correct[v].mean() and matrix.pairs.loc[r, r] == test.pairs
    # Left Boundary and L&R's left variable have the same labels: no pair tells them apart
    assert matrix.pairs.loc[names[0], names[1]] == 0 and np.isnan(matrix.iia.loc[names[0], names[1]])
    differ = labels[names[2]] != labels[names[0]]
    assert matrix.pairs.loc[names[2], names[0]] == differ.sum() > 0
    k = round(matrix.iia.loc[names[2], names[0]] * differ.sum())
    assert (matrix.low.loc[names[2], names[0]], matrix.high.loc[names[2], names[0]]) == binomial_interval(k, int(differ.sum()))
    assert len(matrix.long()) == 9


def test_grid_stats_are_the_papers_columns():
    grid = pd.DataFrame([[0.5, 0.7], [0.9, 0.6]], index=[1, 0], columns=["a", "b"])
    reference = pd.DataFrame([[0.8, 0.5], [0.6, 0.9]], index=[0, 1], columns=["b", "a"])  # same cells, other order
    stats = grids.grid_stats(grid, reference)
    assert stats["max IIA"] == 0.9
    assert stats["variance x100"] == pytest.approx(np.var([0.5, 0.7, 0.9, 0.6]) * 100)
    assert stats["r"] == pytest.approx(np.corrcoef([0.5, 0.7, 0.9, 0.6], [0.9, 0.6, 0.5, 0.8])[0, 1])
    assert all(np.isnan(v) for v in grids.grid_stats(grid * np.nan, reference).values())


def test_paper_rows_agree_with_the_sweeps_numbers():
    for key in ("left", "left_right"):
        assert paper.ROBUSTNESS[get_hypothesis(key).title][0] == paper.MAX_IIA[key]


# --- chapter 6 opens chapter 5's grid -------------------------------------------------------------------


def parameter_defaults(chapter: str) -> dict:
    """The defaults of a chapter's parameters cell."""
    cells = json.loads((Path(__file__).resolve().parents[1] / "book" / chapter).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict = {}
    exec("".join(cell["source"]), values)  # the cell holds literal assignments only
    values.pop("__builtins__")
    return values


class Reading(dict):
    """A dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def test_chapter_6_builds_chapter_5s_grid_from_the_same_parameters():
    """Chapter 6 builds its grid with spec_from_params from its own parameters, whose defaults are chapter 5's
    wherever chapter 5 has the parameter (the candidates aside: a cell's config does not hold the list), so that
    with the defaults it opens chapter 5's store and finds chapter 5's cells there."""
    six, five = parameter_defaults("06_robustness.ipynb"), parameter_defaults("05_sweep.ipynb")
    reading = Reading({**six, "orthogonal_map": six["orthogonal_map"] or None})  # the chapter's check reads "" as None
    spec = spec_from_params(reading)
    assert set(spec.candidates) == {s.hypothesis for s in variants.make_settings()}
    shared = (reading.read - {"hypotheses"}) & set(five)
    assert {"model", "layers", "positions", "seeds", "budget", "n_val", "n_test"} <= shared
    assert {k: six[k] for k in [*shared, "store"]} == {k: five[k] for k in [*shared, "store"]}
