"""Committed stores (das_lib.runs.committed): seeded into a chapter's store, pruned to the alignments a chapter reads
back, and verified by retraining cells from scratch, which fails when a committed record no longer matches."""
from __future__ import annotations

import json
import shutil

import pytest

from das_lib.runs import committed
from das_lib.runs.grid import Cell, Grid, IncompleteGrid
from tiny_grid import CELLS

pytestmark = pytest.mark.usefixtures("one_thread")
CELL = Cell("left_right", 1, "last", 0)


def test_verify_passes_on_a_cell_retrained_identically(tiny_grid, tmp_path):
    table = committed.verify(tiny_grid, [CELL], tmp_path / "scratch")
    row = table.loc["left_right L1 last seed 0"]
    assert row["within"] and row["same answers"] == 1.0 and row["recomputed"] == row["committed"]
    assert row["low"] <= row["committed"] <= row["high"]


def test_verify_fails_when_the_committed_record_was_edited_to_another_score(copy_store, tmp_path):
    grid = copy_store()
    path = grid.store.folder(grid.config(CELL)) / "record.json"
    record = json.loads(path.read_text())
    record["results"]["outcomes"]["test"]["correct"] = ["1" * len(r) for r in record["results"]["outcomes"]["test"]["correct"]]
    path.write_text(json.dumps(record))  # every test pair right: a score of 1 no retraining gives
    with pytest.raises(committed.CommittedMismatch, match="left_right L1 last seed 0"):
        committed.verify(grid, [CELL], tmp_path / "scratch")
    with pytest.raises(KeyError, match="no record"):
        committed.verify(Grid(grid.spec, tmp_path / "empty", progress=False), [CELL], tmp_path / "scratch")


def test_prune_keeps_only_the_listed_alignments_and_every_record(copy_store):
    grid = copy_store()
    keep = grid.record(CELL)["hash"]
    assert committed.prune(grid.store.root, [keep]) == CELLS - 1  # the task accuracy has no alignment to delete
    kept = [p.parent.name for p in grid.store.root.glob("*/alignment.safetensors")]
    assert kept == [keep] and len(grid.runs()) == CELLS  # every record is still read
    assert grid.record(Cell("left", 0, "last", 0))["results"]["alignment"] is None
    intervention, _ = grid.load_alignment(CELL)
    assert intervention.n_variables == 2


def test_loading_a_pruned_alignment_says_it_was_not_kept(copy_store):
    grid = copy_store()
    committed.prune(grid.store.root, [])
    cell = Cell("left", 0, "last", 0)
    with pytest.raises(IncompleteGrid, match="was not kept"):
        grid.load_alignment(cell)
    assert grid.record(cell) is not None  # its record (and outcomes) stay


def test_seed_copies_the_committed_records_a_store_lacks(tiny_grid, tmp_path, monkeypatch):
    monkeypatch.setattr(committed, "STORES", tmp_path / "stores")
    shutil.copytree(tiny_grid.store.root, tmp_path / "stores" / "tiny", ignore=shutil.ignore_patterns("locks"))
    (tmp_path / "stores" / "tiny" / committed.MANIFEST).write_text(json.dumps({"command": "make it", "seconds": 3}))
    shutil.copytree(tiny_grid.store.root, tmp_path / "stores" / "tiny" / "control", ignore=shutil.ignore_patterns("locks"))
    root = tmp_path / "chapter"
    assert committed.seed(root, "tiny") == 2 * (CELLS + 1) and committed.seed(root, "tiny") == 0  # nested stores too
    assert Grid(tiny_grid.spec, root, progress=False).run() == {"ran": 0, "reused": CELLS}
    assert Grid(tiny_grid.spec, root / "control", progress=False).run() == {"ran": 0, "reused": CELLS}
    assert committed.seed(root, "nothing committed") == 0 and committed.manifest("nothing committed") is None
    assert committed.seed(committed.path("tiny"), "tiny") == 0  # a store is never seeded from itself
    assert committed.manifest("tiny") == {"command": "make it", "seconds": 3}
