"""Sweeps: one record per finished cell, resumed and never reused across configs, the same on Dask."""
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from das_lib.method.fastpath import FastPathMismatch
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, evaluate
from das_lib.models import load
from das_lib.models.load import STANDIN_DIR
from das_lib.pricetag import game
from das_lib.pricetag.task import PriceTagTask
from das_lib.runs import jobs
from das_lib.runs.spec import Cell, SweepSpec, model_identity
from das_lib.runs import controls, crosscheck, findings
from das_lib.runs.findings import summary
from das_lib.runs.sweep import Sweep, alignments

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
    assert len(frame) == 6 and frame["iia"].between(0, 1).all() and frame["dummy"].between(0.5, 1).all()


def test_extra_seeds_train_the_best_site_of_each_hypothesis(finished):
    frame = finished.frame()
    for h, site in finished.best_sites().items():
        first = frame[(frame.hypothesis == h) & (frame.seed == 0)]  # chosen on the validation pairs
        assert first["val_iia"].max() == first[(first.layer == site.layer) & (first.position == site.position)]["val_iia"].iloc[0]
        extra = frame[(frame.hypothesis == h) & (frame.seed == 1)]
        assert [(r.layer, r.position) for r in extra.itertuples()] == [(site.layer, site.position)]
    table = summary(frame, finished.recorded_task_accuracy())
    assert list(table["seeds"]) == [2, 2] and (table["unintervened"] > 0).all() and table.loc["left", "paper (Alpaca 7B)"] == 0.90
    assert (table["IIA low"] <= table["IIA"]).all() and (table["IIA"] <= table["IIA high"]).all()
    assert (table["gain low"] <= table["gain"]).all() and (table["gain"] <= table["gain high"]).all()


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
    for change in [dict(train=TrainConfig(steps=5, batch_size=16)), dict(n_train=34), dict(n_val=10), dict(n_test=26), dict(data_seed=1),
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
    data = runner.hypothesis_data(config)
    shared = runner.shared_forward(config, 0)
    assert shared is not None and data.data["train"].base_pos.shape[1] == len(finished.roles)
    torch.manual_seed(0)
    intervention = jobs.BoundlessDASIntervention(32, n_variables=2)
    intervention.temperature = 1.0
    for j, role in enumerate(data.roles):
        train, test = data.data["train"].column(j), data.data["test"].column(j)
        forward = shared.for_position(j, [train, test], Site(0, role), intervention)
        batch = test.select(slice(0, 8))
        with torch.no_grad():
            torch.testing.assert_close(forward(batch), PlainForward(runner.model, Site(0, role), intervention)(batch),
                                       atol=1e-5, rtol=1e-5)
    with pytest.raises(FastPathMismatch):  # the data of another position is refused
        shared.for_position(0, [data.data["train"].column(3), data.data["test"].column(3)], Site(0, data.roles[0]), intervention)


def test_a_loaded_alignment_reproduces_its_recorded_iia(finished):
    cell = Cell("left_right", 0, "resp_colon", 0)
    intervention, record = finished.load_alignment(cell)
    assert record["config"]["task"] == {"template": "standin", "variant": "yesno", "context": None}
    assert record["config"]["hypothesis"] == "left_right" and intervention.n_variables == 2
    data = finished.runner.hypothesis_data(record["config"])
    test = data.data["test"].column(data.roles.index(cell.position))
    forward = PlainForward(finished.runner.model, cell.site(), intervention)
    assert evaluate(forward, test) == record["results"]["iia"]
    table = alignments(finished.store)
    assert len(table) == 6 and set(table["hypothesis"]) == {"left", "left_right"}


def test_every_hypothesis_labels_the_same_pool_and_one_cache_serves_them_all(finished):
    runner = finished.runner
    left, both = (runner.hypothesis_data(finished.config(Cell(h, 0, "last", 0))) for h in ("left", "left_right"))
    for split in ("train", "val", "test"):  # the same inputs (one origin: a cache of one serves the other)
        assert left.data[split].origin == both.data[split].origin
        assert torch.equal(left.data[split].base["input_ids"], both.data[split].base["input_ids"])
    assert not torch.equal(left.data["test"].labels, both.data["test"].labels)  # each with its own labels
    assert runner.shared_forward(finished.config(Cell("left", 0, "last", 0)), 0) is \
        runner.shared_forward(finished.config(Cell("left_right", 0, "last", 0)), 0)
    record = finished.record(Cell("left", 0, "last", 0))["results"]
    assert len(record["correct"]["val"]) == finished.spec.n_val and len(record["correct"]["test"]) == finished.spec.n_test
    assert record["iia"] == pytest.approx(record["correct"]["test"].count("1") / finished.spec.n_test)


def test_a_records_config_read_back_finds_the_sweeps_own_pool_and_cache(finished):
    """A record's config comes back from JSON with its keys sorted; the runner must still find the pool and
    layer cache the sweep's own config made (once it made them again: a whole forward pass per call)."""
    runner = finished.runner
    config = finished.config(Cell("left", 0, "last", 0))
    record = finished.record(Cell("left", 0, "last", 0))["config"]
    assert list(record["data"]) != list(config["data"])  # the same settings in another order
    assert runner.pool_of(record)[1] is runner.pool_of(config)[1]
    assert runner.hypothesis_data(record) is runner.hypothesis_data(config)
    assert runner.shared_forward(record, 0) is runner.shared_forward(config, 0)


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


def test_the_control_task_is_swept_like_a_hypothesis_with_labels_from_its_causal_model(tiny, tmp_path):
    spec = SweepSpec(model=tiny, **{**GRID, "hypotheses": ("control",), "positions": ("last",)})
    sweep = Sweep(spec, tmp_path)
    assert sweep.run(progress=False)["ran"] == 1 and 0 <= sweep.frame()["iia"].iloc[0] <= 1
    config = sweep.config(sweep.grid()[0])
    data, (_, pool) = sweep.runner.hypothesis_data(config), sweep.runner.pool_of(config)
    task = sweep.task
    expected = [task.answer_id(game.CONTROL_TASK.interchange(b, s, ["dollars"])) for b, s in pool.games["test"]]
    assert data.data["test"].labels.tolist() == expected  # the random table at (base lb's, source amount's dollars)


def test_findings_report_the_validation_choice_on_test_pairs_with_intervals(finished):
    frame = finished.frame()
    picks = findings.chosen(frame)
    for h, row in picks.iterrows():  # the site has the best validation IIA of the first seed's grid
        first = frame[(frame.hypothesis == h) & (frame.seed == 0)]
        assert row["val_iia"] >= first["val_iia"].max() - 1e-12 or row["seed"] != 0
    ranked = findings.ranking(frame)
    both = {h: findings.gains(picks.loc[h]) for h in ("left", "left_right")}
    assert {ranked["first"], ranked["second"]} == {"left", "left_right"}
    assert ranked["margin"] == pytest.approx(both[ranked["first"]].mean() - both[ranked["second"]].mean())
    assert ranked["margin_low"] <= ranked["margin"] <= ranked["margin_high"]
    same = findings.versus(picks.loc["left"], findings.gains(picks.loc["left"]))
    assert same == {"difference": 0.0, "difference low": 0.0, "difference high": 0.0}  # a null equal to the finding


def test_the_nulls_and_the_cross_matrix_run_on_the_sweeps_pairs(finished, tmp_path, monkeypatch):
    picks = findings.chosen(finished.frame())
    row = picks.loc["left"]
    random = controls.random_subspace(finished, row, seed=1)
    assert random.shape == (finished.spec.n_test,) and set(random) <= {0, 1}
    iia, pairs = crosscheck.cross_matrix(finished)
    names = ["Left Boundary", "Left and Right Boundary (left)", "Left and Right Boundary (right)"]
    assert list(iia.index) == names == list(iia.columns)
    assert all(pairs.loc[n, n] == finished.spec.n_test for n in names)
    # Left Boundary's labels and Left and Right's with the left variable are the same program: they never disagree
    assert pairs.loc["Left Boundary", "Left and Right Boundary (left)"] == 0
    monkeypatch.setattr(load, "CACHE_DIR", tmp_path / "cache")
    null = controls.random_weights_search(finished.spec, ["left"], str(tmp_path / "null"))
    assert null.spec.model.startswith(str(tmp_path / "cache")) and len(null.frame()) == 3  # 2 sites, 1 more seed
    assert null.runner.model.config.to_dict()["hidden_size"] == finished.runner.model.config.hidden_size
