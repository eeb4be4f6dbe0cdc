"""The store reuses a record only for exactly its config, and a record is all or nothing."""
import json
import os
from pathlib import Path

from das_lib.runs.store import Store, canonical, config_hash, file_hash

CONFIG = {"model": {"name": "m", "files": {"model.safetensors": "abc"}}, "site": {"layer": 2, "position": "last"},
          "train": {"steps": 10, "seed": 0}, "context": None}


def test_hash_ignores_key_order_but_not_values():
    shuffled = {"context": None, "train": {"seed": 0, "steps": 10}, "site": {"position": "last", "layer": 2},
                "model": {"files": {"model.safetensors": "abc"}, "name": "m"}}
    assert config_hash(shuffled) == config_hash(CONFIG)
    assert canonical(shuffled) == canonical(CONFIG)
    other = json.loads(json.dumps(CONFIG))
    other["train"]["seed"] = 1
    assert config_hash(other) != config_hash(CONFIG)


def test_put_then_get_round_trip_and_rerun_finds_it(tmp_path: Path):
    store = Store(tmp_path / "s")
    assert store.get(CONFIG) is None and len(store) == 0
    record = store.put(CONFIG, {"iia": 0.75})
    assert record["hash"] == config_hash(CONFIG)
    again = Store(tmp_path / "s").get(CONFIG)  # a new process sees the same record
    assert again == record and again["results"]["iia"] == 0.75
    assert len(store) == 1 and list(store.records()) == [record]


def test_another_config_is_never_reused(tmp_path: Path):
    store = Store(tmp_path)
    store.put(CONFIG, {"iia": 0.75})
    for key, value in [("site", {"layer": 3, "position": "last"}), ("train", {"steps": 11, "seed": 0}),
                       ("model", {"name": "m", "files": {"model.safetensors": "abd"}}), ("context", "Pricing tag game!")]:
        assert store.get({**CONFIG, key: value}) is None, key


def test_a_record_whose_config_differs_from_its_key_is_refused(tmp_path: Path):
    store = Store(tmp_path)
    store.put(CONFIG, {"iia": 0.75})
    path = store.folder(CONFIG) / "record.json"
    record = json.loads(path.read_text())
    record["config"]["train"]["steps"] = 99  # an edited file, or a hash collision
    path.write_text(json.dumps(record))
    assert store.get(CONFIG) is None


def test_a_cell_killed_before_its_record_leaves_nothing_reusable(tmp_path: Path):
    store = Store(tmp_path)
    folder = store.folder(CONFIG)
    folder.mkdir()
    (folder / "alignment.safetensors").write_bytes(b"half written")
    (folder / f"record.json.tmp{os.getpid()}").write_text("{")  # killed while writing the record
    assert store.get(CONFIG) is None and len(store) == 0
    store.put(CONFIG, {"iia": 0.5})  # the rerun overwrites the leftovers
    assert store.get(CONFIG)["results"]["iia"] == 0.5


def test_discard_and_clear(tmp_path: Path):
    store = Store(tmp_path)
    store.put(CONFIG, {"iia": 0.5})
    store.put({**CONFIG, "context": "x"}, {"iia": 0.6})
    (tmp_path / "notes.txt").write_text("kept")
    store.discard(CONFIG)
    assert store.get(CONFIG) is None and len(store) == 1
    assert store.clear() == 1 and len(store) == 0
    assert (tmp_path / "notes.txt").read_text() == "kept"


def test_file_hash_follows_the_bytes(tmp_path: Path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"weights" * 1000)
    b.write_bytes(b"weights" * 1000)
    assert file_hash(a) == file_hash(b)
    b.write_bytes(b"weights" * 999 + b"weighT!")
    assert file_hash(a) != file_hash(b)
