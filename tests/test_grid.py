"""The grid engine (das_lib.runs.grid): one record per finished cell, resumed and never reused for another config,
shared by processes and Dask workers, the extra runs at the sites chosen on validation, same seed same numbers."""
from __future__ import annotations

import multiprocessing
import shutil
import sys
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from das_lib.method.fastpath import FastPathMismatch
from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.outcome import Outcome, candidate_score
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, answers_both_ways
from das_lib.models import load
from das_lib.models.load import STANDIN_DIR
from das_lib.tasks.pricetag import game
from das_lib.runs import controls, crosscheck, findings, grid as grid_module, jobs, protocol, store, sweep
from das_lib.runs.grid import Cell, Grid, IncompleteGrid
from das_lib.runs.identity import model_identity
from das_lib.runs.store import DamagedRecordWarning
from tiny_grid import CELLS, GRID_CELLS, TINY, recorded, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def score(outcome: Outcome) -> float:
    return float(candidate_score(outcome.correct, outcome.none, outcome.changed))


# ---- running, resuming, reusing ------------------------------------------------------------------------


def test_a_rerun_reuses_every_finished_cell(tiny_grid):
    again = Grid(tiny_grid.spec, tiny_grid.store.root, progress=False)
    assert again.run() == {"ran": 0, "reused": CELLS}
    runs = again.runs()
    assert len(runs) == CELLS and len(set(runs["hash"])) == CELLS
    assert {o.pairs for o in runs["val"]} == {TINY["n_val"]} and {o.pairs for o in runs["test"]} == {TINY["n_test"]}
    assert all(o.variables == (2 if c == "left_right" else 1) for c, o in zip(runs["candidate"], runs["test"]))
    assert 0 <= again.task_accuracy() <= 1 and 0 <= again.task_accuracy(vocabulary=True) <= 1


def test_extra_seeds_and_data_seeds_run_only_at_the_sites_chosen_on_validation(tiny_grid):
    runs = tiny_grid.runs()
    grid_runs = runs[(runs["seed"] == 0) & (runs["data_seed"] == 0)]
    assert len(grid_runs) == GRID_CELLS
    chosen = tiny_grid.chosen_sites()
    for candidate, rows in grid_runs.groupby("candidate"):  # the site of best validation score, computed here
        by_site = {(r.layer, r.position): score(r.val) for r in rows.itertuples()}
        assert by_site[(chosen[candidate].layer, chosen[candidate].position)] == max(by_site.values())
    extra = runs[(runs["seed"] != 0) | (runs["data_seed"] != 0)]
    assert sorted((r.candidate, r.seed, r.data_seed) for r in extra.itertuples()) == sorted(
        (c, s, d) for c in TINY["candidates"] for s, d in ((1, 0), (0, 1), (1, 1)))
    assert all(Site(r.layer, r.position) == chosen[r.candidate] for r in extra.itertuples())


def test_a_killed_run_loses_only_the_cell_in_flight_and_resumes_to_the_same_numbers(tiny_grid, tmp_path, monkeypatch):
    grid = Grid(tiny_grid.spec, tmp_path / "store", progress=False)
    real, calls = jobs.train_intervention, []

    def killed_on_the_third_cell(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "train_intervention", killed_on_the_third_cell)
    with pytest.raises(KeyboardInterrupt):
        grid.run()
    assert len([r for r in grid.store.records() if r["config"]["kind"] == "cell"]) == 2
    assert grid.extra_cells() == []  # no site is chosen before a candidate's grid is finished
    monkeypatch.setattr(jobs, "train_intervention", real)
    order, run_job = [], grid_module.run_job

    def logged(config, *args, **kwargs):
        if config["kind"] == "cell":
            order.append((config["train"]["seed"], config["data"]["seed"]))
        return run_job(config, *args, **kwargs)

    monkeypatch.setattr(grid_module, "run_job", logged)
    assert grid.run() == {"ran": CELLS - 2, "reused": 2}
    assert order[:GRID_CELLS - 2] == [(0, 0)] * (GRID_CELLS - 2) and (0, 0) not in order[GRID_CELLS - 2:]  # grid first
    assert recorded(grid) == recorded(tiny_grid)  # same seed, same numbers: a fresh store, resumed or not


def _run_in_a_process(spec, root, log, barrier, results) -> None:
    """One of two processes running the same grid on the same store (forked: the model is already loaded)."""
    real_put, real_train = store.Store.put, jobs.train_intervention

    def put(self, config, results_):  # every record this process writes, by hash
        with open(log, "a") as f:
            f.write(store.config_hash(config) + "\n")
        return real_put(self, config, results_)

    def slow_train(*args, **kwargs):  # slower cells, so that the two processes overlap (the same numbers)
        time.sleep(0.1)
        return real_train(*args, **kwargs)

    store.Store.put, jobs.train_intervention = put, slow_train
    barrier.wait(timeout=60)
    results.put(Grid(spec, root, progress=False).run())


def test_two_processes_running_one_grid_on_one_store_share_its_cells(tiny_grid, tmp_path):
    tiny_grid.runner  # noqa: B018  (loaded here, so that both forked processes start at once)
    context = multiprocessing.get_context("fork")
    log, root, barrier, results = tmp_path / "puts.log", tmp_path / "shared", context.Barrier(2), context.Queue()
    processes = [context.Process(target=_run_in_a_process, args=(tiny_grid.spec, root, log, barrier, results))
                 for _ in range(2)]
    for p in processes:
        p.start()
    counts = [results.get(timeout=300) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]
    assert counts[0]["ran"] > 0 and counts[1]["ran"] > 0, counts  # each ran some cells
    assert counts[0]["ran"] + counts[1]["ran"] == CELLS, counts  # no cell ran twice
    writes = Counter(log.read_text().split())
    assert len(writes) == CELLS + 1 and set(writes.values()) == {1}  # every record (and the task accuracy) once
    shared = Grid(tiny_grid.spec, root, progress=False)
    assert recorded(shared) == recorded(tiny_grid) and not (root / "damaged").exists()


def test_dask_workers_write_the_same_records_as_a_local_run(tiny_grid, tmp_path, monkeypatch):
    from dask.distributed import Client, LocalCluster, get_task_stream

    grid = Grid(tiny_grid.spec, tmp_path / "dask", progress=False)
    # spawned worker processes (Dask's default; forked ones, which skip torch's import, hung once in six runs of
    # the suite: a fork of a process with threads), each running every cell through run_job from its config alone;
    # a pytest-xdist worker's __main__ (code given to `python -c`) lacks the __spec__ that spawning reads
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as stream:
            assert grid.run(client=client) == {"ran": CELLS, "reused": 0}
    tasks = Counter(task["worker"] for task in stream.data if task["key"].startswith("das-"))
    assert sum(tasks.values()) == CELLS + 1  # every cell and the task accuracy ran as a task on a worker
    assert recorded(grid) == recorded(tiny_grid)
    assert grid.task_accuracy() == tiny_grid.task_accuracy()


# ---- what a grid refuses, sets aside and recomputes ------------------------------------------------------


def test_an_incomplete_grid_is_refused_naming_its_missing_cells(tiny_grid, copy_store, tmp_path):
    grid = copy_store()
    missing = Cell("left_right", 1, "last", 0, 0)
    grid.store.discard(grid.config(missing))
    with pytest.raises(IncompleteGrid, match=r"1 of \d+ cells .*left_right L1 last seed 0 data 0"):
        grid.runs()
    assert "left_right" not in grid.chosen_sites()  # nothing is chosen from an unfinished candidate
    assert set(grid.chosen_sites()) == {"left"}
    with pytest.raises(IncompleteGrid, match="task accuracy"):
        Grid(tiny_grid.spec, tmp_path / "empty", progress=False).task_accuracy()


def test_a_damaged_record_is_set_aside_and_its_cell_recomputed(tiny_grid, copy_store):
    grid = copy_store()
    cell = Cell("left", 0, "resp_colon", 0, 0)
    path = grid.store.folder(grid.config(cell)) / "record.json"
    path.write_text(path.read_text()[:100])  # truncated mid-write
    with pytest.warns(DamagedRecordWarning, match=str(path)):
        assert grid.run() == {"ran": 1, "reused": CELLS - 1}
    assert len(list((grid.store.root / "damaged").iterdir())) == 1
    assert recorded(grid) == recorded(tiny_grid)


def test_an_unreadable_alignment_is_named_set_aside_and_retrained(tiny_grid, copy_store):
    grid = copy_store()
    cell = Cell("left_right", 0, "last", 0, 0)
    record = grid.record(cell)
    path = grid.store.root / record["hash"] / f"{record['results']['alignment']}.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(DamagedRecordWarning), pytest.raises(IncompleteGrid, match=str(path.with_suffix(""))):
        grid.load_alignment(cell)
    assert grid.record(cell) is None and (grid.store.root / "damaged").is_dir()
    assert grid.run() == {"ran": 1, "reused": CELLS - 1}
    intervention, _ = grid.load_alignment(cell)
    assert intervention.n_variables == 2


def test_every_setting_of_a_cell_is_in_its_config(tiny_grid, tmp_path):
    cell = Cell("left", 0, "last", 0)
    base = tiny_grid.config(cell)
    separate = {"family": {"n_brackets": 10, "seed": 0, "thresholds": [500]}, "pool_factor": 2, "share": 0.05}
    for change in [dict(train=TrainConfig(steps=5, batch_size=16)), dict(train=TrainConfig(steps=4, batch_size=8)),
                   dict(train=TrainConfig(steps=4, batch_size=16, orthogonal_map="exp")), dict(n_train=34),
                   dict(n_val=10), dict(n_test=26), dict(rank=8),
                   dict(separate=separate), dict(dtype="bfloat16"),
                   dict(task_settings={**tiny_grid.spec.task_settings, "context": "Pricing tag game!"}),
                   dict(task_settings={**tiny_grid.spec.task_settings, "variant": "truefalse"})]:
        other = Grid(replace(tiny_grid.spec, **change), tiny_grid.store.root, progress=False)
        assert other.config(cell) != base and other.record(cell) is None, change
    for other_cell in [Cell("left", 0, "last", 1), Cell("left", 1, "last", 0), Cell("left", 0, "resp_colon", 0),
                       Cell("left_right", 0, "last", 0), Cell("left", 0, "last", 0, 1)]:
        assert tiny_grid.config(other_cell) != base
    # the same model under another name and with one weight changed is another model
    copy = tmp_path / "copy"
    shutil.copytree(STANDIN_DIR, copy)
    assert model_identity(str(copy))["files"] == model_identity("standin")["files"]
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "model.safetensors")
    name = next(k for k in weights if k.endswith("norm.weight"))
    weights[name][0] += 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert model_identity(str(copy))["files"] != model_identity("standin")["files"]
    assert Grid(replace(tiny_grid.spec, model=str(copy)), tiny_grid.store.root, progress=False).record(cell) is None


def test_a_record_is_never_reused_for_another_config(tiny_grid, copy_store):
    grid = copy_store()
    cell, other = Cell("left", 0, "last", 0), Cell("left", 1, "last", 0)
    # the record of one cell put where another cell's record belongs (a hash collision, or an edited file)
    source = grid.store.folder(grid.config(cell)) / "record.json"
    target = grid.store.folder(grid.config(other)) / "record.json"
    shutil.copy(source, target)
    assert grid.record(other) is None and grid.run() == {"ran": 1, "reused": CELLS - 1}
    assert Site.from_dict(grid.record(other)["config"]["site"]) == Site(1, "last")


def test_a_worker_with_other_model_files_refuses_to_run(tiny_grid, tmp_path):
    config = tiny_grid.config(Cell("left", 0, "last", 0))
    config["model"] = {**config["model"], "files": {"model.safetensors": "0" * 16}}
    with pytest.raises(ValueError, match="other files"):
        jobs.run_job(config, str(tmp_path), tiny_grid.device)


def test_bad_grids_are_refused_with_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match=r"layers 0\.\.3"):
        Grid(tiny_spec(layers=(4,)), tmp_path)
    with pytest.raises(ValueError, match="searched positions"):
        Grid(tiny_spec(positions=("lb_int",)), tmp_path)
    with pytest.raises(ValueError, match=r"seeds \[1\] are both"):
        tiny_spec(seeds=(0, 1), extra_seeds=(1, 2))
    with pytest.raises(ValueError, match="lists \\[0\\] more than once"):
        tiny_spec(layers=(0, 0))
    with pytest.raises(ValueError, match="data seed 0 is the grid's own"):
        tiny_spec(extra_data_seeds=(0,))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        tiny_spec(n_val=1)
    with pytest.raises(ValueError, match="give at least one of candidates"):
        tiny_spec(candidates=())


def test_an_unknown_candidate_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"candidates \['right'\] are not the task's"):
        Grid(tiny_spec(candidates=("left", "right")), tmp_path)


# ---- what the cells share and what they record ---------------------------------------------------------


def test_every_candidate_labels_the_same_pool_and_one_cache_serves_them_all(tiny_grid):
    runner = tiny_grid.runner
    left, both = (tiny_grid.config(Cell(c, 0, "last", 0)) for c in ("left", "left_right"))
    assert runner.pool(left) is runner.pool(both)
    assert runner.layer_caches(left, 0) is runner.layer_caches(both, 0) is not None
    (left_labels, _), (both_labels, _) = runner.targets(left, "test"), runner.targets(both, "test")
    assert np.array_equal(left_labels[0], both_labels[0])  # Left Boundary is Left and Right's left variable
    assert not np.array_equal(both_labels[0], both_labels[1])  # each variable with its own labels
    assert runner.pool(tiny_grid.config(Cell("left", 0, "last", 0, 1))) is not runner.pool(left)  # another data seed


def test_a_records_config_read_back_finds_the_grids_own_pool_and_cache(tiny_grid):
    """A record's config comes back from JSON with its keys sorted; the runner must still find the pool and layer
    cache the grid's own config made (else it would make them again: a whole forward pass per call)."""
    runner = tiny_grid.runner
    cell = Cell("left", 0, "last", 0)
    config, record = tiny_grid.config(cell), tiny_grid.record(cell)["config"]
    assert list(record) != list(config)  # the same settings in another order
    assert runner.pool(record) is runner.pool(config)
    assert runner.layer_caches(record, 0) is runner.layer_caches(config, 0)


def test_the_shared_layer_cache_equals_the_plain_path_at_every_position(tiny_grid):
    runner = tiny_grid.runner
    config = tiny_grid.config(Cell("left_right", 0, "last", 0))
    pool, shared = runner.pool(config), runner.layer_caches(config, 0)
    assert shared is not None and pool.encoded["train"].base_pos.shape[1] == len(pool.roles)
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(runner.model.config.hidden_size, n_variables=2)
    intervention.temperature = 1.0
    splits = [pool.encoded[s] for s in ("train", "val", "test")]
    for j, role in enumerate(pool.roles):
        forward = shared.for_position(j, [s.column(j) for s in splits], Site(0, role), intervention)
        batch = pool.encoded["test"].column(j).select(slice(0, 8))
        with torch.no_grad():
            torch.testing.assert_close(forward(batch), PlainForward(runner.model, Site(0, role), intervention)(batch),
                                       atol=1e-5, rtol=1e-5)
    with pytest.raises(FastPathMismatch):  # the data of another position is refused
        shared.for_position(0, [s.column(3) for s in splits], Site(0, pool.roles[0]), intervention)


def test_the_models_own_answers_from_the_cache_equal_a_full_forward_pass(tiny_grid):
    runner = tiny_grid.runner
    config = tiny_grid.config(Cell("left", 1, "last", 0))
    pool = runner.pool(config)
    j = pool.roles.index("last")
    for split in ("val", "test"):
        plain = answers_both_ways(PlainForward(runner.model, Site(0, "last"), lambda b, s, v: b), pool.encoded[split].column(j))
        cached = runner.base_answers(config, split)
        assert all(torch.equal(a, b) for a, b in zip(cached, plain))


def test_a_loaded_alignment_reproduces_its_recorded_outcome(tiny_grid):
    for cell in (Cell("left_right", 0, "resp_colon", 0), Cell("left", 1, "last", 0)):
        intervention, record = tiny_grid.load_alignment(cell)
        assert record["config"]["candidate"] == cell.candidate and record["config"]["task"]["settings"]["template"] == "standin"
        tokens = tiny_grid.runner.predictions(record["config"], intervention.eval(), "test")
        recorded_outcome = Outcome.from_dict(record["results"]["outcomes"]["test"])
        assert np.array_equal(tokens.numpy() == tiny_grid.labels(cell.candidate, "test"), recorded_outcome.correct)
        # two answer tokens: the record gives every answer, the wrong ones included, as a rerun does
        assert not recorded_outcome.correct.all()
        assert np.array_equal(crosscheck.recorded_answers(tiny_grid, cell), tokens.numpy())


def test_the_control_task_is_trained_like_a_hypothesis_with_labels_from_its_causal_model(tiny_grid, tmp_path):
    grid = Grid(replace(tiny_grid.spec, candidates=("control",), layers=(1,), positions=("last",), extra_seeds=(),
                        extra_data_seeds=()), tmp_path, progress=False)
    assert grid.run() == {"ran": 1, "reused": 0}
    pairs = grid.runner.pool(grid.config(grid.cells()[0])).pairs["test"]
    expected = [grid.task.answer_id(game.CONTROL_TASK.interchange(b, s, ["dollars"])) for b, s in pairs]
    assert grid.labels("control", "test")[0].tolist() == expected  # the random table at (base lb's, source amount's dollars)
    assert 0 <= grid.runs()["test"].iloc[0].correct.mean() <= 1


def test_the_sweeps_frame_and_curves(tiny_grid):
    frame = sweep.frame(tiny_grid)
    assert len(frame) == CELLS and frame[["iia", "val_iia"]].stack().between(0, 1).all()
    row = frame[(frame.candidate == "left_right") & (frame.layer == 0) & (frame.position == "last")
                & (frame.seed == 0) & (frame.data_seed == 0)].iloc[0]
    outcome = tiny_grid.runs([Cell("left_right", 0, "last", 0)])["test"].iloc[0]
    assert row["iia"] == outcome.correct.mean() and row["unintervened"] == outcome.none.mean()
    assert row["score"] == pytest.approx(score(outcome)) and row["raw"] == pytest.approx((outcome.correct.mean(1) - outcome.none.mean(1)).sum())
    curves = tiny_grid.curves()
    assert set(curves["run"]) == {f"{c} L{l} {p}" for c in TINY["candidates"] for l in TINY["layers"] for p in TINY["positions"]}  # noqa: E741


def test_spec_from_params_builds_the_grid_a_chapter_names():
    values = dict(model="standin", hypotheses=["left"], layers=[1], positions=["last"], seeds=[0], extra_seeds=[1, 2],
                  extra_data_seeds=[1], budget=[7, 8, 16], orthogonal_map="cayley", n_val=8, n_test=8, n_task=10,
                  data_seed=3, dtype="float32")
    spec = sweep.spec_from_params(values)
    assert (spec.candidates, spec.layers, spec.positions, spec.extra_seeds, spec.extra_data_seeds) == (
        ("left",), (1,), ("last",), (1, 2), (1,))
    assert (spec.train.steps, spec.train.batch_size, spec.n_train, spec.data_seed) == (7, 8, 16, 3)
    assert spec.task_settings["template"] == "standin"
    other = sweep.spec_from_params(values, (9, 4, 32))  # a budget of a calibration ladder instead of the parameter's
    assert (other.train.steps, other.train.batch_size, other.n_train) == (9, 4, 32)


# ---- the nulls on the grid's own cells -------------------------------------------------------------------


def test_the_random_weights_null_searches_the_same_grid(tiny_grid, tmp_path, monkeypatch):
    monkeypatch.setattr(load, "CACHE_DIR", tmp_path / "cache")
    null = controls.random_weights(tiny_grid.spec, str(tmp_path / "null"))
    assert null.spec.model == load.random_weights_name("standin", 0) == "random:0:standin"  # the same on every machine
    assert (tmp_path / "cache" / "random-weights").is_dir()  # its files, made once
    assert replace(null.spec, model=tiny_grid.spec.model) == tiny_grid.spec  # the same grid, budget and pairs
    assert len(null.runs()) == CELLS and null.runner.model.config.hidden_size == tiny_grid.runner.model.config.hidden_size
    for split in ("val", "test"):  # the same pairs: the labels of every candidate agree
        assert np.array_equal(null.labels("left_right", split), tiny_grid.labels("left_right", split))
    mine, theirs = tiny_grid.runs(), null.runs()
    assert not all(np.array_equal(a.none, b.none) for a, b in zip(mine["test"], theirs["test"]))  # another network


def test_random_subspaces_score_the_learned_boundaries_with_random_rotations(tiny_grid):
    finding = findings.finding(tiny_grid)
    table = controls.random_subspaces(tiny_grid, finding, "left_right", draws=3)
    site = finding.sites["left_right"]
    learned = tiny_grid.runs([Cell("left_right", site.layer, site.position, 0)])["test"].iloc[0]
    assert list(table["draw"]) == [0, 1, 2] and table["learned"].eq(score(learned)).all()
    assert table["iia"].between(0, 1).all()
    again = controls.random_subspaces(tiny_grid, finding, "left_right", draws=3)
    assert table.equals(again)  # each draw is seeded


def test_a_finding_reads_the_tiny_grid_through_the_protocol(tiny_grid):
    finding = findings.finding(tiny_grid)
    runs = tiny_grid.runs()
    assert finding.sites == protocol.choose_sites(runs[(runs.seed == 0) & (runs.data_seed == 0)])
    assert set(finding.order) == {"left", "left_right"} and finding.contains == {"left": [], "left_right": ["left"]}
    table = finding.table
    assert list(table.index) == finding.order and (table["runs"] == 4).all() and (table["data seeds"] == 2).all()
    assert ((table["score low"] <= table["score"]) & (table["score"] <= table["score high"])).all()
