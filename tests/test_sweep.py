"""Sweeps: one record per finished cell, resumed and never reused across configs, the same on Dask."""
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from das_lib.method.fastpath import FastPathMismatch
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, evaluate
from das_lib.models.load import STANDIN_DIR
from das_lib.pricetag.task import PriceTagTask
from das_lib.runs import jobs
from das_lib.runs.spec import Cell, SweepSpec, model_identity
from das_lib.runs.sweep import Sweep, alignments, summary

TOKENIZER_DIR = STANDIN_DIR
pytestmark = pytest.mark.filterwarnings("ignore:the model.s task accuracy")  # the random test model is at chance
GRID = dict(layers=(0,), positions=("resp_colon", "last"), hypotheses=("left", "left_right"), template="standin",
            train=TrainConfig(steps=4, batch_size=16), n_train=32, n_test=24, n_task=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (more only add synchronisation), as the Dask workers do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A random 2-layer Llama with the stand-in's tokenizer whose head can only answer Yes or No."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    yes, no = PriceTagTask(tokenizer, "standin").answer_ids()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=False,
    ))
    with torch.no_grad():  # every other logit is 0 and exactly one of Yes/No is positive: IIA is not trivially 0
        w = model.lm_head.weight
        row = w[yes].clone()
        w.zero_()
        w[yes], w[no] = row, -row
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> Sweep:
    """A small sweep run to the end (grid, then seed 1 at each hypothesis's best site)."""
    sweep = Sweep(SweepSpec(model=tiny, best_site_seeds=(1,), **GRID), tmp_path_factory.mktemp("store"))
    assert sweep.run(progress=False) == {"ran": 6, "reused": 0}
    return sweep


NUMBERS = ("iia", "dummy", "iia_unintervened", "boundary_dims", "boundary_dims_start", "curves")


def results(sweep: Sweep) -> dict:
    """The deterministic results of every cell (not the seconds it took)."""
    return {c: {k: sweep.record(c)["results"][k] for k in NUMBERS} for c in sweep.cells()}


def test_a_rerun_reuses_every_finished_cell(finished):
    again = Sweep(finished.spec, finished.store.root)
    assert again.run(progress=False) == {"ran": 0, "reused": 6}
    frame = again.frame()
    assert len(frame) == 6 and frame["iia"].between(0, 1).all() and (frame["dummy"] == 0.5).all()


def test_extra_seeds_train_the_best_site_of_each_hypothesis(finished):
    frame = finished.frame()
    for h, site in finished.best_sites().items():
        first = frame[(frame.hypothesis == h) & (frame.seed == 0)]
        assert first["iia"].max() == first[(first.layer == site.layer) & (first.position == site.position)]["iia"].iloc[0]
        extra = frame[(frame.hypothesis == h) & (frame.seed == 1)]
        assert [(r.layer, r.position) for r in extra.itertuples()] == [(site.layer, site.position)]
    table = summary(frame, finished.recorded_task_accuracy())
    assert list(table["seeds"]) == [2, 2] and (table["unintervened"] > 0).all() and table.loc["Left Boundary", "paper (Alpaca 7B)"] == 0.90


def test_a_killed_sweep_loses_only_the_cell_in_flight(finished, tiny, tmp_path, monkeypatch):
    sweep = Sweep(finished.spec, tmp_path / "store")
    real, calls = jobs.train_intervention, []

    def killed_on_third_cell(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "train_intervention", killed_on_third_cell)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(progress=False)
    assert len([r for r in sweep.store.records() if r["config"]["kind"] == "alignment"]) == 2
    monkeypatch.setattr(jobs, "train_intervention", real)
    assert sweep.run(progress=False) == {"ran": 4, "reused": 2}
    assert results(sweep) == results(finished)  # resumed cells give the numbers of an uninterrupted run


def test_every_setting_of_a_cell_is_in_its_config(finished, tiny, tmp_path):
    cell = Cell("left", 0, "last", 0)
    base = finished.config(cell)
    for change in [dict(train=TrainConfig(steps=5, batch_size=16)), dict(n_train=34), dict(n_test=26), dict(data_seed=1),
                   dict(rank=8), dict(context="Pricing tag game!"), dict(variant="truefalse")]:
        other = Sweep(replace(finished.spec, **change), finished.store.root)
        assert other.config(cell) != base and other.record(cell) is None, change
    for other_cell in [Cell("left", 0, "last", 1), Cell("left", 1, "last", 0), Cell("left", 0, "resp_colon", 0),
                       Cell("left_right", 0, "last", 0)]:
        assert finished.config(other_cell) != base
    # the same model under another name and with one weight changed is another model
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert model_identity(str(copy))["files"] == model_identity(tiny)["files"]
    model = LlamaForCausalLM.from_pretrained(copy)
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3
    model.save_pretrained(copy)
    assert model_identity(str(copy))["files"] != model_identity(tiny)["files"]
    assert Sweep(replace(finished.spec, model=str(copy)), finished.store.root).record(cell) is None


def test_a_worker_with_other_model_files_refuses_to_run(finished, tmp_path):
    config = finished.config(Cell("left", 0, "last", 0))
    config["model"] = {**config["model"], "files": {"model.safetensors": "0" * 16}}
    with pytest.raises(ValueError, match="other files"):
        jobs.run_job(config, str(tmp_path), finished.device)


def test_shared_layer_cache_equals_the_plain_path_at_every_position(finished):
    runner = finished.runner
    config = finished.config(Cell("left_right", 0, "last", 0))
    key, data = runner.hypothesis_data(config)
    shared = runner.shared_forward(key, data, 0)
    assert shared is not None and data.train.base_pos.shape[1] == len(finished.roles)
    torch.manual_seed(0)
    intervention = jobs.BoundlessDASIntervention(32, n_variables=2)
    intervention.temperature = 1.0
    for j, role in enumerate(data.roles):
        train, test = data.train.column(j), data.test.column(j)
        forward = shared.for_position(j, [train, test], Site(0, role), intervention)
        batch = test.select(slice(0, 8))
        with torch.no_grad():
            torch.testing.assert_close(forward(batch), PlainForward(runner.model, Site(0, role), intervention)(batch),
                                       atol=1e-5, rtol=1e-5)
    with pytest.raises(FastPathMismatch):  # the data of another position is refused
        shared.for_position(0, [data.train.column(3), data.test.column(3)], Site(0, data.roles[0]), intervention)


def test_a_loaded_alignment_reproduces_its_recorded_iia(finished):
    cell = Cell("left_right", 0, "resp_colon", 0)
    intervention, record = finished.load_alignment(cell)
    assert record["config"]["task"] == {"template": "standin", "variant": "yesno", "context": None}
    assert record["config"]["hypothesis"] == "left_right" and intervention.n_variables == 2
    _, data = finished.runner.hypothesis_data(record["config"])
    test = data.test.column(data.roles.index(cell.position))
    forward = PlainForward(finished.runner.model, cell.site(), intervention)
    assert evaluate(forward, test) == record["results"]["iia"]
    table = alignments(finished.store)
    assert len(table) == 6 and set(table["hypothesis"]) == {"left", "left_right"}


def test_bad_grids_are_refused_with_the_valid_choices(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        Sweep(SweepSpec(model=tiny, **{**GRID, "layers": (2,)}), tmp_path)
    with pytest.raises(ValueError, match="searched positions"):
        Sweep(SweepSpec(model=tiny, **{**GRID, "positions": ("lb_int",)}), tmp_path)
    with pytest.raises(ValueError, match="hypotheses"):
        SweepSpec(hypotheses=("right",))
    with pytest.raises(ValueError, match="even"):
        SweepSpec(n_train=33)


def test_dask_workers_write_the_same_records_as_a_local_run(finished, tmp_path):
    from dask.distributed import Client, LocalCluster

    sweep = Sweep(finished.spec, tmp_path / "dask")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert sweep.run(client=client, progress=False) == {"ran": 6, "reused": 0}
    assert results(sweep) == results(finished)
    assert sweep.recorded_task_accuracy() == finished.recorded_task_accuracy()


def test_the_shuffled_label_control_permutes_the_labels_of_the_same_pairs(tiny, tmp_path):
    spec = SweepSpec(model=tiny, **{**GRID, "hypotheses": ("left",), "positions": ("last",)})
    plain, shuffled = Sweep(spec, tmp_path), Sweep(replace(spec, shuffle_labels=True), tmp_path)
    cell = plain.grid()[0]
    assert "shuffled_labels" not in plain.config(cell)["data"]  # the plain cells' hashes are unchanged
    assert plain.store.folder(plain.config(cell)) != shuffled.store.folder(shuffled.config(cell))
    _, data = plain.runner.hypothesis_data(plain.config(cell))
    labels = data.test.labels.clone()
    _, mixed = shuffled.runner.hypothesis_data(shuffled.config(cell))
    assert torch.equal(mixed.test.base["input_ids"], data.test.base["input_ids"])
    assert not torch.equal(mixed.test.labels, labels) and sorted(mixed.test.labels.tolist()) == sorted(labels.tolist())
    assert shuffled.run(progress=False)["ran"] == 1 and 0 <= shuffled.frame()["iia"].iloc[0] <= 1
