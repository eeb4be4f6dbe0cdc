"""The shipped stand-in: loads with plain transformers, meets its accuracy targets, and can be rebuilt."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from das_lib import paper
from das_lib.models import standin
from das_lib.models.game_training import sample_training_game
from das_lib.models.load import default_template
from das_lib.tasks.pricetag import game as pricetag
from das_lib.tasks.pricetag.task import PriceTagTask

ROOT = Path(__file__).resolve().parents[1]

ROBUSTNESS_CONTEXTS = paper.CONTEXTS


@pytest.fixture(scope="module")
def shipped():
    model = AutoModelForCausalLM.from_pretrained(standin.STANDIN_DIR)
    tokenizer = AutoTokenizer.from_pretrained(standin.STANDIN_DIR)
    return model.eval(), tokenizer


def test_asset_is_small_and_loads_with_plain_transformers(shipped):
    model, tokenizer = shipped
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.is_fast and tokenizer.padding_side == "left"
    assert default_template(tokenizer) == "standin"
    size = sum(f.stat().st_size for f in standin.STANDIN_DIR.iterdir())
    assert size < 10 * 2**20
    assert model.config.num_hidden_layers <= 4 and model.config.hidden_size <= 128


def test_tokenizer_encodes_any_text_and_splits_digits(shipped):
    _, tokenizer = shipped
    text = "Fruitarian Frogs ✓ ünïcode 日本 \t tabs 1234.56"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("9.99", add_special_tokens=False)["input_ids"]) == ["9", ".", "9", "9"]
    for yes, no in pricetag.ANSWERS.values():
        assert len(tokenizer(yes, add_special_tokens=False)["input_ids"]) == 1
        assert len(tokenizer(no, add_special_tokens=False)["input_ids"]) == 1
    # offsets work: every searched role of the prompt is found
    assert PriceTagTask(tokenizer, "standin").searched_roles()[0] == "amount_int"


@pytest.fixture(scope="module")
def fresh_accuracy(shipped):
    model, tokenizer = shipped
    return standin.measure(model, tokenizer, n_games=400, seed=2024)  # other games than the shipped record's


def test_recorded_accuracy_is_what_fresh_games_give(fresh_accuracy):
    recorded = standin.load_record()["accuracy"]
    for name, value in fresh_accuracy.items():
        assert abs(value - recorded[name]) <= 0.05, f"{name}: fresh {value:.3f}, recorded {recorded[name]:.3f}"
    assert fresh_accuracy["yesno"] >= 0.9  # far above the ~0.5 majority rate: the model solves the game


def test_accuracy_targets_on_fresh_games(fresh_accuracy):
    for name, target in standin.TARGETS.items():
        assert fresh_accuracy[name] >= target, f"{name}: {fresh_accuracy[name]:.3f} < {target}"


def test_record_states_how_it_was_trained():
    record = standin.load_record()
    # trained on the two cores the book targets, with nothing else running: at most 10 minutes
    assert record["config"]["threads"] <= 2 and record["train_seconds"] <= 600
    assert set(record["accuracy"]) == set(standin.TARGETS)
    assert standin.StandinConfig(**record["config"]).seed == record["config"]["seed"]


def test_training_never_sees_the_robustness_contexts():
    rng = random.Random(0)
    contexts = {standin.sample_context(rng) for _ in range(3000)}
    assert not contexts & set(ROBUSTNESS_CONTEXTS)
    assert not any(held in c for c in contexts for held in ROBUSTNESS_CONTEXTS)
    assert len(contexts) > 1500  # a varied pool


def test_training_is_deterministic_and_builds_a_loadable_dir(tmp_path):
    cfg = standin.StandinConfig(steps=3, batch_size=8, warmup_steps=1, threads=1, context_rate=0.5)
    a, tokenizer, record = standin.train(cfg, log_every=0)
    b, _, _ = standin.train(cfg, log_every=0)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    standin.save(a, tokenizer, record, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert default_template(AutoTokenizer.from_pretrained(tmp_path)) == "standin"
    assert standin.load_record(tmp_path)["config"]["steps"] == 3
    assert model.config.num_hidden_layers == cfg.num_layers


def test_planted_subspace_is_fixed_by_the_seed_and_orthonormal():
    cfg = standin.StandinConfig(iit_dims=3)
    a, b = standin.planted_subspace(cfg), standin.planted_subspace(cfg)
    assert torch.equal(a.rotation.weight, b.rotation.weight)
    assert a.rotation.orthogonality_error() < 1e-5
    assert not torch.equal(a.rotation.weight, standin.planted_subspace(standin.StandinConfig(seed=1, iit_dims=3)).rotation.weight)
    assert a.masks.sum(1).tolist() == [3.0, 3.0] and not any(p.requires_grad for p in a.parameters())


def test_iit_training_is_deterministic_and_ships_the_planted_subspace(tmp_path):
    cfg = standin.StandinConfig(steps=2, batch_size=8, warmup_steps=1, iit_rate=0.5, iit_layer=1)
    record = standin.build(cfg, tmp_path, n_eval=8, log_every=0)
    again = standin.build(cfg, tmp_path / "again", n_eval=8, log_every=0)
    assert record["accuracy"] == again["accuracy"] and record["planted_iia"] == again["planted_iia"]
    planted, meta = standin.load_planted(tmp_path)
    assert meta["site"] == {"layer": 1, "position": "last"} and meta["hypothesis"] == "left_right"
    assert torch.equal(planted.rotation.weight, standin.planted_subspace(cfg).rotation.weight)
    assert standin.load_planted(tmp_path / "missing") is None


def test_shipped_model_realises_its_planted_mechanism(shipped):
    """IIT planted L and R at one site: swapping those subspaces must act like swapping L or R."""
    record = standin.load_record()
    assert record["config"]["iit_rate"] > 0, "the chapters compare their findings with the planted mechanism"
    model, tokenizer = shipped
    planted, meta = standin.load_planted()
    assert meta == standin.planted_meta(standin.StandinConfig(**record["config"]))
    measured = standin.planted_iia(model, tokenizer, planted, meta, n_pairs=400, seed=2024)
    assert measured["planted"] >= 0.9 and measured["planted"] - measured["no_intervention"] >= 0.2
    assert abs(measured["planted"] - record["planted_iia"]["planted"]) <= 0.05
    assert measured["took"] and measured["gain_interval"][0] > 0
    low, high = measured["planted_interval"]
    assert low < measured["planted"] < high


def test_planting_refuses_a_site_it_cannot_plant_before_training(tmp_path):
    cfg = standin.StandinConfig(steps=2, batch_size=8, warmup_steps=1, iit_layer=2, iit_position="dollars")
    with pytest.raises(ValueError, match="cannot plant at position 'dollars'.*iit_position=last"):
        standin.build(cfg, tmp_path, n_eval=8, log_every=0)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(KeyError, match="cannot plant 'halfway'"):
        standin.planted_meta(standin.StandinConfig(iit_program="halfway"))


def test_a_program_of_the_space_can_be_planted_and_the_record_says_whether_it_took(tmp_path):
    key = "product | amount-lb & ub-amount"
    cfg = standin.StandinConfig(steps=2, batch_size=8, warmup_steps=1, iit_rate=0.5, iit_layer=2, iit_program=key)
    record = standin.build(cfg, tmp_path, n_eval=16, log_every=0)
    planted, meta = standin.load_planted(tmp_path)
    assert meta == {"hypothesis": key, "variables": ["amount-lb", "ub-amount"], "site": {"layer": 2, "position": "last"}}
    assert planted.n_variables == 2
    result = record["planted_iia"]
    assert result["took"] is (result["gain_interval"][0] > 0) and not result["took"]  # two steps plant nothing
    assert result["gain"] == pytest.approx(result["planted"] - result["no_intervention"], abs=1e-3)


def test_a_build_that_does_not_solve_the_game_fails_saying_why(tmp_path):
    """Issue 30: the build checks the task as well as the plant (a plant can take in a model that plays badly)."""
    cfg = standin.StandinConfig(steps=2, batch_size=8, warmup_steps=1)
    found = standin.problems(standin.build(cfg, tmp_path / "two_steps", n_eval=16, log_every=0))
    assert any("fresh yesno games, below 0.95" in p for p in found) and any("did not take" in p for p in found)
    took = {"accuracy": {"yesno": 0.75, "truefalse": 0.99}, "planted_iia": {"took": True}}  # the case the issue met
    assert standin.problems(took) == ["it answers 0.750 of fresh yesno games, below 0.95"]
    assert standin.problems(standin.load_record(standin.STANDIN_PRODUCT_DIR)) == []  # the shipped ones pass, the first
    assert standin.problems(standin.load_record()) == ["the record does not say whether the plant took (it predates that check)"]
    run = subprocess.run([sys.executable, "-m", "das_lib.models.standin", str(tmp_path / "cli"), "steps=2", "batch_size=8",
                          "warmup_steps=1"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "no model with a known mechanism: it answers" in run.stderr, run.stderr[-2000:]
    assert json.loads((tmp_path / "cli" / standin.TRAINING_RECORD).read_text())["solves_game"]["solves"] is False


def test_hard_games_sit_near_a_bound_and_labels_are_balanced():
    cfg = standin.StandinConfig()
    rng = random.Random(1)
    games = [sample_training_game(rng, cfg) for _ in range(4000)]
    yes = sum(pricetag.task_label(g) for g in games) / len(games)
    assert 0.4 < yes < 0.6
    near = sum(min(abs(g["amount"] - g["lb"]), abs(g["amount"] - g["ub"])) <= cfg.hard_cents for g in games)
    assert near / len(games) >= cfg.hard_rate


def test_the_second_stand_in_loads_by_name_and_its_plant_took():
    from das_lib.models.load import load_model

    model, tokenizer = load_model("standin-product")
    record = standin.load_record(standin.STANDIN_PRODUCT_DIR)
    assert record["planted_iia"]["took"] and record["accuracy"]["yesno"] >= 0.98
    planted, meta = standin.planted_for("standin-product")
    assert meta == standin.planted_meta(standin.StandinConfig(**record["config"]))
    assert meta["hypothesis"] == "product | amount-lb & ub-amount" and meta["site"] == {"layer": 2, "position": "last"}
    measured = standin.planted_iia(model, tokenizer, planted, meta, n_pairs=400, seed=2024)
    assert measured["took"] and measured["planted"] >= 0.9
