"""Robustness settings: construction, moved positions, True/False labels, answer filters, the table's columns."""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib import paper
from das_lib.book import report
from das_lib.method.interventions import BoundlessDASIntervention, load_intervention, save_intervention
from das_lib.method.metrics import pearson
from das_lib.method.seeds import setting_seed
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, evaluate, unintervened_iia
from das_lib.models.standin import build_tokenizer
from das_lib.method.seeds import split_seeds
from das_lib.pricetag.game import get_hypothesis, sample_game, sample_pairs, task_label, label_pool, sample_pool
from das_lib.pricetag.task import PriceTagTask, task_accuracy
from das_lib.runs import grids, reuse
from das_lib.runs import robustness as rb
from das_lib.runs import robustness_table as rt
from das_lib.runs.store import Store

TEMPLATE = "standin"
MODEL_ID = {"name": "tiny", "files": {"w": "abc"}, "dtype": "float32"}
STANDARD = {"template": TEMPLATE, "variant": "yesno", "context": None}
MATCH = {"model": MODEL_ID, "task": STANDARD}
LAYERS, POSITIONS = (0, 1), ("resp_colon", "last")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(0)


@pytest.fixture(scope="module")
def llama(tok):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def _put(store: Store, hypothesis: str, layer: int, position: str, seed: int, iia: float, **changes) -> dict:
    """A record shaped like a sweep's, with a random Boundless DAS alignment saved next to it."""
    config = {"kind": "alignment", "model": MODEL_ID, "task": STANDARD, "hypothesis": hypothesis,
              "site": Site(layer, position).as_dict(), "method": {"name": "boundless", "rank": None},
              "train": {"seed": seed, "steps": 10}, **changes}
    torch.manual_seed(1000 * layer + 10 * seed + len(position) + len(hypothesis))
    intervention = BoundlessDASIntervention(16, n_variables=len(get_hypothesis(hypothesis).variables))
    intervention.temperature = 0.1
    save_intervention(intervention, store.folder(config) / "alignment")
    return store.put(config, {"iia": iia, "val_iia": iia, "alignment": "alignment"})


@pytest.fixture()
def store(tmp_path) -> Store:
    store = Store(tmp_path / "store")
    rng = random.Random(0)
    for h in ("left", "left_right"):
        for layer in LAYERS:
            for position in POSITIONS:
                _put(store, h, layer, position, 0, round(rng.uniform(0.4, 1.0), 3))
    return store


# --- settings -----------------------------------------------------------------------------------


def test_settings_follow_the_paper():
    settings = {s.key: s for s in rb.make_settings()}
    assert list(settings) == ["standard_left", "standard_left_right", "correct_only", "incorrect_only", "fixed_seen",
                              "fixed_unseen", "context_1", "context_2", "context_3", "sibling"]
    # Left Boundary for the fixed-bracket rows, Left and Right otherwise
    assert {k for k, s in settings.items() if s.hypothesis == "left"} == {"standard_left", "fixed_seen", "fixed_unseen"}
    assert settings["fixed_unseen"].bracket == (251, 551)
    assert settings["context_2"].context == "Fruitarian Frogs May Be Doing Flowers a Favor"
    assert settings["sibling"].variant == "truefalse"
    assert (settings["correct_only"].answers, settings["incorrect_only"].answers) == ("correct", "incorrect")
    assert settings["context_3"].paper is None  # our longer passage is not in the paper
    assert all(s.paper in paper.ROBUSTNESS for k, s in settings.items() if k != "context_3")
    other = {s.key: s for s in rb.make_settings(["fixed_bracket"], bracket_unseen="1.00-4.00")}
    assert other["fixed_unseen"].paper is None and other["fixed_seen"].paper is not None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="setting kinds"):
        rb.make_settings(["standard", "upside_down"])
    with pytest.raises(ValueError, match="must look like"):
        rb.make_settings(["fixed_bracket"], bracket_seen="cheap")
    with pytest.raises(ValueError, match="contexts"):
        rb.make_settings(["context"], contexts=[""])
    with pytest.raises(ValueError, match="answers"):
        rb.Setting("x", "x", "left", answers="maybe")


def test_positions_move_with_a_context(tok):
    game = {"lb": 549, "ub": 849, "amount": 712}
    plain = rb.Setting("s", "s", "left").task(tok, TEMPLATE)
    setting = next(s for s in rb.make_settings(["context"]) if s.key == "context_3")
    moved = setting.task(tok, TEMPLATE)
    shift = len(moved.encode([game])["input_ids"][0]) - len(plain.encode([game])["input_ids"][0])
    assert shift > 10  # the long passage adds many tokens
    assert moved.searched_roles() == plain.searched_roles()
    assert all(moved.roles(game)[r] == plain.roles(game)[r] + shift for r in plain.searched_roles())
    pairs = sample_pairs("left_right", 8, seed=0)
    a, b = plain.interchange_data(pairs, "resp_colon"), moved.interchange_data(pairs, "resp_colon")
    assert torch.equal(b.base_pos - a.base_pos, torch.full_like(a.base_pos, shift))


def test_sibling_labels_are_true_and_false(tok):
    sibling = next(s for s in rb.make_settings(["sibling"]))
    task = sibling.task(tok, TEMPLATE)
    pairs = sample_pairs("left_right", 16, seed=1)
    data = task.interchange_data(pairs, "last")
    true_id, false_id = tok.convert_tokens_to_ids("True"), tok.convert_tokens_to_ids("False")
    assert data.labels.tolist() == [true_id if p.label else false_id for p in pairs]
    assert {true_id, false_id}.isdisjoint(PriceTagTask(tok, TEMPLATE).answer_ids())
    assert "say True only" in task.prompt(pairs[0].base)


# --- correct-only and incorrect-only pairs ------------------------------------------------------


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
    pairs = sample_pairs("left", 4, seed=0)
    correct, incorrect = rb.split_by_answers(pairs, [True, True, False, False], [True, False, True, False])
    assert correct == pairs[:1] and incorrect == pairs[1:]
    with pytest.raises(ValueError, match="answers"):
        rb.split_by_answers(pairs, [True], [True])


def test_screening_keeps_pairs_by_the_models_answers(tok):
    task = PriceTagTask(tok, TEMPLATE)
    found, screened = rb.screen_pairs(Answerer(tok, task, always_yes=True), task, "left_right", 20, seed=3,
                                      max_screened=200, chunk=64)
    assert screened <= 200 and len(found["correct"]) == 20 and len(found["incorrect"]) == 20
    assert all(task_label(p.base) and task_label(p.source) for p in found["correct"])  # only Yes games are right
    assert all(not (task_label(p.base) and task_label(p.source)) for p in found["incorrect"])
    again, _ = rb.screen_pairs(Answerer(tok, task, always_yes=True), task, "left_right", 20, seed=3, max_screened=200, chunk=64)
    assert again == found  # same seed, same pairs


def test_no_incorrect_pairs_is_reported_not_hidden(tok, store):
    setting = next(s for s in rb.make_settings(["incorrect_only"]))
    oracle = Answerer(tok, setting.task(tok, TEMPLATE), always_yes=False)
    alignments = reuse.alignment_table(store, MATCH, ["left_right"])
    result = rb.evaluate_settings(oracle, tok, TEMPLATE, [setting], store, alignments, n_pairs=8, n_task=10, seed=0,
                                  max_screened=64)
    row = result.table.loc["incorrect_only"]
    assert row["pairs"] == 0 and row["screened"] == 64 and np.isnan(row["max IIA"])
    assert result.cells.empty and result.grids() == {}


# --- alignments in a store ----------------------------------------------------------------------


def test_alignment_table_keeps_the_best_seed_of_matching_records(store):
    _put(store, "left", 1, "last", 1, 0.999)  # a better seed
    _put(store, "left", 0, "last", 2, 0.001)  # a worse seed
    _put(store, "left", 0, "resp_colon", 0, 1.0, task={**STANDARD, "context": "Hi!"})  # another task
    _put(store, "left", 0, "resp_colon", 0, 1.0, model={**MODEL_ID, "files": {"w": "other"}})  # another model
    table = reuse.alignment_table(store, MATCH, ["left", "left_right"])
    assert len(table) == 8 and set(table["candidates"]) == {1, 2}
    best = table.set_index(["hypothesis", "layer", "position"])
    assert best.loc[("left", 1, "last"), "seed"] == 1 and best.loc[("left", 1, "last"), "iia"] == 0.999
    assert best.loc[("left", 0, "last"), "seed"] == 0 and best.loc[("left", 0, "last"), "candidates"] == 2
    assert best.loc[("left", 0, "resp_colon"), "iia"] < 1.0  # the other task's and model's records are not used
    assert reuse.needed_grid(table, None, None) == ([0, 1], ["last", "resp_colon"])
    assert len(reuse.alignment_table(store, MATCH, ["left"], layers=[1], positions=["last"])) == 1


def test_missing_alignments_are_named_with_the_command_to_make_them(store):
    table = reuse.alignment_table(store, MATCH, ["left", "left_right"])
    command = report.sweep_command("runs/sweep", "standin", "float32", ["left", "left_right"], [0, 1, 2], None)
    assert command.startswith("papermill book/05_sweep.ipynb")
    assert f"-p store {Path('runs/sweep').resolve()} " in command  # absolute: the chapters run in their own folder
    assert "-y '{hypotheses: [left, left_right], layers: [0, 1, 2], positions: []}'" in command
    assert reuse.missing_cells(table, ["left"], [0, 1, 2], ["last"]) == [("left", 2, "last")]
    reuse.require_alignments(table, ["left", "left_right"], [0, 1], ["last", "resp_colon"], command)  # complete: no error
    with pytest.raises(reuse.MissingAlignments, match=r"lacks 2 of the 6 alignments needed \(left L2@last, left_right L2@last\)"):
        reuse.require_alignments(table, ["left", "left_right"], [0, 1, 2], ["last"], command)
    empty = reuse.alignment_table(store, {"model": {"name": "nothing"}}, ["left"])
    with pytest.raises(reuse.MissingAlignments, match="holds no alignment"):
        reuse.require_alignments(empty, ["left"], *reuse.needed_grid(empty, None, None), command)


# --- the table ----------------------------------------------------------------------------------


def test_grid_stats_are_the_papers_columns():
    grid = pd.DataFrame([[0.5, 0.7], [0.9, 0.6]], index=[1, 0], columns=["a", "b"])
    reference = pd.DataFrame([[0.8, 0.5], [0.6, 0.9]], index=[0, 1], columns=["b", "a"])  # same cells, other order
    stats = grids.grid_stats(grid, reference)
    assert stats["max IIA"] == 0.9
    assert stats["variance x100"] == pytest.approx(np.var([0.5, 0.7, 0.9, 0.6]) * 100)
    assert stats["r"] == pytest.approx(np.corrcoef([0.5, 0.7, 0.9, 0.6], [0.9, 0.6, 0.5, 0.8])[0, 1])
    assert all(np.isnan(v) for v in grids.grid_stats(grid * np.nan, reference).values())


def test_table_columns_on_a_synthetic_store(tok, llama, store):
    settings = [s for s in rb.make_settings(["standard", "fixed_bracket", "context", "sibling"]) if s.key != "context_3"]
    alignments = reuse.alignment_table(store, MATCH, ["left", "left_right"])
    result = rb.evaluate_settings(llama, tok, TEMPLATE, settings, store, alignments, n_pairs=16, n_task=24, seed=5,
                                  max_screened=64)
    table = result.table
    assert list(table.index) == [s.key for s in settings]
    assert set(result.cells["path"]) == {"fast"}
    recorded = {(r.hypothesis, r.layer, r.position): r.iia for r in alignments.itertuples()}
    for s in settings:
        cells = result.cells[result.cells["setting"] == s.key]
        assert len(cells) == len(LAYERS) * len(POSITIONS)
        ours = [cells.set_index(["layer", "position"]).loc[(l, p), "iia"] for l in LAYERS for p in POSITIONS]
        trained = [recorded[(s.hypothesis, l, p)] for l in LAYERS for p in POSITIONS]
        row = table.loc[s.key]
        assert row["max IIA"] == max(ours)
        assert row["variance x100"] == pytest.approx(np.var(ours) * 100)
        assert row["r"] == pytest.approx(pearson(np.array(ours), np.array(trained)), nan_ok=True)
        assert row["pairs"] == 16 and row["dummy"] == 0.5
        theirs = paper.ROBUSTNESS[s.paper]
        assert (row["paper max IIA"], row["paper r"], row["paper variance x100"]) == theirs
    # one cell by hand, on the plain path: the fast, shared-cache evaluation must agree
    sibling = next(s for s in settings if s.key == "sibling")
    task = sibling.task(tok, TEMPLATE)
    cell = alignments[(alignments["hypothesis"] == "left_right") & (alignments["layer"] == 1) & (alignments["position"] == "last")].iloc[0]
    intervention, _ = load_intervention(store.root / cell["hash"] / "alignment", 16)
    data = task.interchange_data(sample_pairs("left_right", 16, setting_seed(5)), "last")
    by_hand = evaluate(PlainForward(llama, Site(1, "last"), intervention), data)
    assert result.cells.set_index(["setting", "layer", "position"]).loc[("sibling", 1, "last"), "iia"] == by_hand
    rng = random.Random(5)
    games = [sample_game(rng, (251, 551)) for _ in range(24)]
    expected = task_accuracy(llama, next(s for s in settings if s.key == "fixed_unseen").task(tok, TEMPLATE), games)
    assert table.loc["fixed_unseen", "task acc"] == expected
    assert set(result.grids()) == {s.title for s in settings}
    groups = result.figure_groups()
    assert list(groups) == ["new inputs", "irrelevant context", "instruction and inputs"]
    assert list(groups["new inputs"])[:2] == ["trained: Left Boundary", "standard inputs"]
    assert list(groups["instruction and inputs"]) == ["trained: Left and Right Boundary", "say True ... otherwise False"]
    assert list(groups["new inputs"])[2:] == ["bracket 5.49-8.49 (seen)", "bracket 2.51-5.51 (unseen)"]
    trained = groups["irrelevant context"]["trained: Left and Right Boundary"]
    assert trained.loc[1, "last"] == recorded[("left_right", 1, "last")]
    side = rt.side_by_side(table)
    assert list(side.columns[-8:]) == ["no intervention", "max IIA", "gain", "paper max IIA", "r", "paper r",
                                       "variance x100", "paper variance x100"]
    assert (side["gain"] == side["max IIA"] - side["no intervention"]).all()
    # the IIA of leaving the model alone on the sibling's pairs, by hand
    assert table.loc["sibling", "no intervention"] == unintervened_iia(llama, data)


def test_reading_the_table():
    nan = float("nan")
    table = pd.DataFrame({
        "setting": ["a", "b", "c", "incorrect-only inputs"], "r": [0.96, 0.5, nan, nan], "paper r": [0.97, 0.9, 0.9, 0.84],
        "max IIA": [0.9, 0.6, nan, nan], "paper max IIA": [0.9, 0.9, 0.9, 0.71], "variance x100": [1.0, 3.0, nan, nan],
        "paper variance x100": [1.5, 1.0, 1.0, 0.36], "pairs": [8, 8, 8, 0], "screened": [0, 0, 0, 96],
        "task acc": [1.0, 1.0, 1.0, nan], "dummy": [0.5] * 4, "no intervention": [0.6, 0.55, 0.5, nan],
    }, index=["context_1", "context_2", "sibling", "incorrect_only"])
    numbers = rt.headline_numbers(table)
    assert numbers["corr_context"] == pytest.approx(0.73) and numbers["paper_corr_context"] == pytest.approx(0.935)
    assert np.isnan(numbers["corr_fixed_unseen"])  # a setting not in the table still has its name
    # what the chapter says of an answer filter: its pairs and how many were screened, or that it was not evaluated
    assert (numbers["pairs_incorrect_only"], numbers["screened_incorrect_only"]) == (0, 96)
    assert np.isnan(numbers["pairs_correct_only"])
    assert numbers["gain_context_1"] == pytest.approx(0.3) and numbers["none_context_2"] == 0.55
    assert np.isnan(numbers["gain_incorrect_only"])  # no pairs: no IIA, no gain


def test_paper_rows_agree_with_the_sweeps_numbers():
    from das_lib import paper

    for key in ("left", "left_right"):
        assert paper.ROBUSTNESS[get_hypothesis(key).title][0] == paper.MAX_IIA[key]


def test_missing_alignments_are_trained_and_reproduce_the_sweeps_iia(tok, tmp_path):
    """train_missing goes through das_lib.runs.sweep; evaluated here on the sweep's own test pairs, each reused
    alignment gives exactly the IIA the sweep recorded (same intervention, same positions, same labels)."""
    yes, no = PriceTagTask(tok, TEMPLATE).answer_ids()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                         tie_word_embeddings=False, pad_token_id=tok.pad_token_id))
    with torch.no_grad():  # only Yes and No can win, so IIA is not trivially 0
        row = model.lm_head.weight[yes].clone()
        model.lm_head.weight.zero_()
        model.lm_head.weight[yes], model.lm_head.weight[no] = row, -row
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    name, store = str(tmp_path / "model"), str(tmp_path / "store")
    grid = dict(hypotheses=["left"], layers=[0], positions=["resp_colon", "last"])
    with pytest.raises(reuse.MissingAlignments, match=r"(?s)lacks 2 of the 2 alignments needed .*train_missing=True"):
        reuse.reuse_alignments(store, name, "float32", TEMPLATE, **grid)
    train = dict(steps=4, n_train=32, n_test=24, seed=0)
    table, counts = reuse.reuse_alignments(store, name, "float32", TEMPLATE, **grid, train=train)
    assert counts == {"trained": 2, "reused": 0} and len(table) == 2
    again, counts = reuse.reuse_alignments(store, name, "float32", TEMPLATE, **grid, train=train)
    assert counts == {"trained": 0, "reused": 2} and again.equals(table)
    loaded = LlamaForCausalLM.from_pretrained(name).eval()
    sweep_test_pairs = label_pool("left", sample_pool(24, split_seeds(train["seed"], 3)[2]))  # as das_lib.runs.jobs draws them
    here = rb.evaluate_grid(loaded, PriceTagTask(tok, TEMPLATE), sweep_test_pairs, table, Store(store))
    assert here["iia"].tolist() == table["iia"].tolist()
    assert 0 < here["iia"].max()
