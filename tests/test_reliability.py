"""Probes of issue 26, each pinned: damaged records are named and set aside, two processes share one store,
broken model files are named, fine-tuning never writes over the shipped assets, and chapter parameters
are refused before any work (unknown names, duplicates, paths, an unreachable scheduler)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from das_lib.runs.store import ClaimReleased, DamagedRecordError, DamagedRecordWarning, Store, StoreInUse

CONFIG = {"kind": "alignment", "hypothesis": "left", "site": {"layer": 2, "position": "last"},
          "model": {"name": "standin"}, "train": {"seed": 0}}
REPO = Path(__file__).resolve().parents[1]


# ---- the store: damaged records ---------------------------------------------------------------
DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "invalid JSON": lambda text: "{not json",
    "no results key": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "results"}),
    "no hash key": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "hash"}),
    "no config key": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "config"}),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_record_is_named_set_aside_and_recomputed(tmp_path: Path, damage: str):
    store = Store(tmp_path / "s")
    store.put(CONFIG, {"iia": 0.75})
    (store.folder(CONFIG) / "alignment.safetensors").write_bytes(b"weights")
    path = store.folder(CONFIG) / "record.json"
    path.write_text(DAMAGES[damage](path.read_text()))
    with pytest.warns(DamagedRecordWarning) as caught:
        assert store.get(CONFIG) is None
    message = str(caught[0].message)
    assert str(path) in message and "hypothesis 'left'" in message and "layer 2" in message, message
    aside = tmp_path / "s" / "damaged" / f"{store.folder(CONFIG).name}-1"
    assert (aside / "alignment.safetensors").read_bytes() == b"weights"  # set aside, not deleted
    assert not store.folder(CONFIG).exists() and len(store) == 0
    store.put(CONFIG, {"iia": 0.5})  # the cell recomputed
    assert store.get(CONFIG)["results"]["iia"] == 0.5


def test_records_skip_and_set_aside_damaged_ones(tmp_path: Path):
    store = Store(tmp_path)
    store.put(CONFIG, {"iia": 0.75})
    other = {**CONFIG, "hypothesis": "right"}
    store.put(other, {"iia": 0.5})
    (store.folder(other) / "record.json").write_text('{"hash": "ab')
    with pytest.warns(DamagedRecordWarning, match="hypothesis|config unreadable"):
        records = list(store.records())
    assert [r["config"]["hypothesis"] for r in records] == ["left"]
    assert (tmp_path / "damaged" / f"{store.folder(other).name}-1" / "record.json").exists()
    store.put(other, {"iia": 0.5})
    (store.folder(other) / "record.json").write_text("")  # a second damage of the same cell: the next name
    with pytest.warns(DamagedRecordWarning):
        assert store.get(other) is None
    assert (tmp_path / "damaged" / f"{store.folder(other).name}-2").is_dir()


def test_a_record_missing_a_result_is_named_or_recomputed(tmp_path: Path):
    store = Store(tmp_path)
    record = store.put(CONFIG, {"iia": 0.75})
    with pytest.raises(DamagedRecordError, match=r"record\.json.*lacks result 'val_iia'"):
        store.require_results(record, ["iia", "val_iia"])
    assert store.require_results(record, ["iia"]) == {"iia": 0.75}
    with pytest.warns(DamagedRecordWarning, match=r"results lack key\(s\) \['val_iia'\]"):
        assert store.get(CONFIG, need=["val_iia"]) is None


def test_set_aside_a_file_beside_the_record(tmp_path: Path):
    store = Store(tmp_path)
    store.put(CONFIG, {"iia": 0.75})
    with pytest.warns(DamagedRecordWarning, match="alignment.safetensors is truncated"):
        target = store.set_aside(CONFIG, "alignment.safetensors is truncated")
    assert target == tmp_path / "damaged" / f"{store.folder(CONFIG).name}-1" and store.get(CONFIG) is None


def test_a_store_path_that_is_a_file_is_refused(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"store path .*f is a file; give a folder"):
        Store(tmp_path / "f")


# ---- the store: two processes ------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import json, os, sys, time
    from das_lib.runs.store import Store
    root, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store(root)
    configs = [{"kind": "alignment", "cell": i} for i in range(n)]
    def run(config):
        with open(os.path.join(root, "runs.log"), "a") as log:
            log.write(f"{os.getpid()} {config['cell']}\\n")
        time.sleep(0.3)
        store.put(config, {"pid": os.getpid()})
    open(go + f".ready{os.getpid()}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    with store.using():
        ran = store.share(configs, run, timeout=60, poll=0.05)
        seen = sum(store.get(c) is not None for c in configs)
    print(json.dumps({"ran": len(ran), "seen": seen}))
""")


def _python(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_share_the_cells_of_one_store(tmp_path: Path):
    n = 8
    go = tmp_path / "go"
    procs = [_python("-c", WORKER, str(tmp_path / "s"), str(go), str(n)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # both interpreters started and waiting: they start together
    go.write_text("")
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    runs = [line.split() for line in (tmp_path / "s" / "runs.log").read_text().splitlines()]
    cells = sorted(int(c) for _, c in runs)
    assert cells == list(range(n)), f"every cell once: {runs}"  # no cell run twice, none left out
    assert sum(o["ran"] for o in outs) == n and all(o["ran"] >= 2 for o in outs), outs  # about half each
    assert all(o["seen"] == n for o in outs), outs  # each waited for the other's records
    assert len(Store(tmp_path / "s")) == n


def test_wait_for_a_cell_whose_runner_died(tmp_path: Path):
    store = Store(tmp_path)
    holder = _python("-c", textwrap.dedent(f"""
        import sys, time
        from das_lib.runs.store import Store
        claim = Store({str(tmp_path)!r}).claim({CONFIG!r})
        print(claim.held, flush=True)
        time.sleep(60)
    """))
    assert holder.stdout.readline().strip() == "True"
    with store.claim(CONFIG) as claim:
        assert not claim.held  # the other process has it
    with pytest.raises(TimeoutError, match="still held"):
        store.wait_for(CONFIG, timeout=0.3, poll=0.05)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with pytest.raises(ClaimReleased, match="stopped without finishing"):
        store.wait_for(CONFIG, timeout=5, poll=0.05)
    assert store.share([CONFIG], lambda c: store.put(c, {"iia": 1.0})) == [CONFIG]  # so this process runs it


def test_clear_refuses_while_another_process_uses_the_store(tmp_path: Path):
    store = Store(tmp_path)
    store.put(CONFIG, {"iia": 0.75})
    user = _python("-c", textwrap.dedent(f"""
        import time
        from das_lib.runs.store import Store
        with Store({str(tmp_path)!r}).using():
            print("using", flush=True)
            time.sleep(60)
    """))
    assert user.stdout.readline().strip() == "using"
    with store.using():  # this process's own use does not count
        with pytest.raises(StoreInUse, match=f"process {user.pid} on"):
            store.clear()
    assert len(store) == 1
    user.send_signal(signal.SIGKILL)  # its lock file stays behind, stale
    user.wait()
    assert list((tmp_path / "locks").glob(f"user-{user.pid}@*.lock"))
    assert store.clear() == 1 and len(store) == 0
    assert not list((tmp_path / "locks").glob("user-*.lock"))


# ---- broken model files ------------------------------------------------------------------------
def _standin_copy(tmp_path: Path, name: str, weights: bool = True) -> Path:
    from das_lib.models.load import STANDIN_DIR

    folder = tmp_path / name
    folder.mkdir()
    for file in STANDIN_DIR.iterdir():
        if weights or file.suffix != ".safetensors":
            (folder / file.name).write_bytes(file.read_bytes())
    return folder


def _config_json(folder: Path, text: str) -> Path:
    (folder / "config.json").write_text(text)
    return folder


BROKEN_DIRECTORIES = {  # name -> (make the folder from a copy of the stand-in, what the error must say)
    "no weights": (lambda d: d, r"has a config\.json but no weight files \(\*\.safetensors, \*\.bin"),
    "config not JSON": (lambda d: _config_json(d, '{"model_type": "llama", '), r"config\.json is not valid JSON \(Expecting"),
    "config empty": (lambda d: _config_json(d, ""), r"config\.json is not valid JSON"),
    "config without model_type": (lambda d: _config_json(d, '{"hidden_size": 64}'), r"config\.json names no model_type"),
}


@pytest.mark.parametrize("broken", BROKEN_DIRECTORIES)
def test_a_broken_model_directory_is_named_not_sent_to_the_hub(tmp_path: Path, broken: str):
    from das_lib.models.load import load_model

    make, says = BROKEN_DIRECTORIES[broken]
    folder = make(_standin_copy(tmp_path, "m", weights=False))
    with pytest.raises((ValueError, OSError), match=says) as err:
        load_model(str(folder))
    assert str(folder) in str(err.value) and "hub" not in str(err.value)


@pytest.mark.parametrize("cut", [0, 100, 600_000])
def test_a_truncated_safetensors_file_is_named(tmp_path: Path, cut: int):
    from das_lib.models.load import load_config, load_model

    folder = _standin_copy(tmp_path, "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut])
    assert load_config(str(folder)).num_hidden_layers > 0  # the config alone is fine
    with pytest.raises(ValueError, match=rf"weight file {weights} is truncated or corrupt .*re-download or re-copy"):
        load_model(str(folder))


@pytest.mark.parametrize("content, says", [(b"", "is empty"), (b"GGUF\x03\x00\x00\x00\x05", "truncated or corrupt"),
                                           (b"<html>not found</html>", "is not a GGUF file")])
def test_a_broken_gguf_file_is_named(tmp_path: Path, content: bytes, says: str):
    from das_lib.models.load import load_config, load_model, load_tokenizer

    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    for load in (load_config, load_tokenizer, load_model):
        with pytest.raises(ValueError, match=says) as err:
            load(str(path))
        assert str(path) in str(err.value)


# ---- fine-tuning never writes over the shipped adapter -----------------------------------------
def test_fine_tuning_writes_to_a_new_folder_unless_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from das_lib.models import finetune

    written = []
    monkeypatch.setattr(finetune, "build", lambda cfg, out: written.append((cfg, Path(out))) or
                        {"train_seconds": 0, "train_cpu_seconds": 0, "accuracy": {}})
    monkeypatch.setattr(finetune, "CACHE_DIR", tmp_path / "cache")
    finetune.main(["steps=3"])
    cfg, out = written[-1]
    assert cfg.steps == 3 and out.parent == tmp_path / "cache" / "finetune"
    assert finetune.ADAPTER_DIR not in [out, *out.parents]
    finetune.main(["--out", str(finetune.ADAPTER_DIR)])  # only when named
    assert written[-1][1] == finetune.ADAPTER_DIR
    with pytest.raises(ValueError, match="cannot set 'stepz=3'"):
        finetune.main(["stepz=3"])  # refused before any training
    assert len(written) == 2


def test_a_training_record_is_optional_for_other_models(tmp_path: Path):
    from das_lib.models import finetune
    from das_lib.models.load import STANDIN_DIR, model_source

    assert finetune.record_or_none(STANDIN_DIR) is None
    assert finetune.record_or_none(model_source("smollm2-pricetag")[0])["accuracy"]["yesno"] >= finetune.TARGET
    with pytest.raises(FileNotFoundError, match="only a model fine-tuned by") as err:
        finetune.load_record(STANDIN_DIR)
    assert "--out" not in str(err.value)  # no retraining advice for a model that is not the shipped adapter
    (tmp_path / finetune.TRAINING_RECORD).write_text('{"config": ')
    with pytest.raises(ValueError, match=r"finetune_training\.json is not valid JSON"):
        finetune.record_or_none(tmp_path)


# ---- chapter parameters ------------------------------------------------------------------------
def _chapter_up_to_check(notebook: Path) -> list[str]:
    """The code of a chapter's cells up to and including its `params.check(...)` statement."""
    import ast

    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    code = []
    for cell in cells:
        source = "".join(cell["source"])
        if "params.check(" not in source:
            code.append(source)
            continue
        statements = ast.parse(source).body
        last = next(s for s in statements if "params.check(" in ast.get_source_segment(source, s))
        code.append("\n".join(source.splitlines()[: last.end_lineno]))
        return code
    raise AssertionError(f"{notebook} has no params.check")


@pytest.fixture(scope="module")
def shell():
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance()


@pytest.mark.parametrize("notebook", sorted((REPO / "book").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_chapter_passes_its_own_check_and_refuses_a_misspelt_parameter(shell, notebook: Path):
    """Each chapter's cells up to its check, run in an IPython shell: its defaults pass (nothing it defines
    before the check is taken for an unknown parameter), and a parameter papermill injected under a wrong
    name stops it, naming the closest parameter."""
    shell.reset(new_session=False)
    cells = _chapter_up_to_check(notebook)
    for i, code in enumerate(cells):
        result = shell.run_cell(code, silent=True)
        assert result.success, f"{notebook.name} cell {i}: {result.error_in_exec or result.error_before_exec}"
    declared = shell.user_ns["__annotations__"]
    misspelt = next(iter(declared)) + "s"
    shell.reset(new_session=False)
    for code in [*cells[:2], f"# Parameters\n{misspelt} = 20\n", *cells[2:]]:  # papermill's injected cell
        result = shell.run_cell(code, silent=True)
    from das_lib.book.params import ParameterError

    assert isinstance(result.error_in_exec, ParameterError), result.error_in_exec
    assert f"unknown parameter {misspelt!r}" in str(result.error_in_exec)
    assert f"did you mean {next(iter(declared))!r}" in str(result.error_in_exec)


def test_unknown_names_and_the_allow_list():
    from das_lib.book import params

    ns = {"steps": 10, "step": 20, "_private": 1, "np": os, "Rule": params.Int(), "shape": ("a",)}
    with pytest.raises(params.ParameterError, match=r"unknown parameter 'step' \(= 20\): did you mean 'steps'"):
        params.check(ns, {"steps": params.Int()})
    params.check(ns, {"steps": params.Int()}, allow=["step"])
    ns = {"n": 1, "__annotations__": {"n": int, "bracket_seen": str}, "bracket_seen": "1-2", "braket_seen": "x"}
    with pytest.raises(params.ParameterError, match="did you mean 'bracket_seen'"):
        params.check(ns, {"n": params.Int()})  # a declared parameter checked later is known, a near miss is not


@pytest.mark.parametrize("rule, values", [("IntList", [1, 1]), ("TextList", ["last", "dollars", "last"]),
                                          ("SubsetOf", ["left", "left"])])
def test_duplicates_in_a_list_parameter_are_refused(rule: str, values: list):
    from das_lib.book import params

    make = {"IntList": params.IntList, "TextList": params.TextList,
            "SubsetOf": lambda: params.SubsetOf(["left", "right"])}[rule]
    with pytest.raises(params.ParameterError, match=rf"parameter 'layers' lists {values[-1]!r} more than once"):
        params.check({"layers": values}, {"layers": make()})
    params.check({"layers": values[1:]}, {"layers": make()})


def test_store_and_export_paths_are_checked_up_front(tmp_path: Path):
    from das_lib.book import params

    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    ok = {"store": str(tmp_path / "new" / "store"), "export": str(tmp_path / "out" / "frame.json")}
    params.check(dict(ok), {"store": params.StorePath(), "export": params.OutputFile(empty=True)})
    assert not (tmp_path / "new").exists()  # checked, not made
    params.check({"export": ""}, {"export": params.OutputFile(empty=True)})
    refused = [("store", str(tmp_path / "file"), params.StorePath(), "is a file; give a folder"),
               ("store", str(tmp_path / "file" / "s"), params.StorePath(), "is a file"),
               ("export", str(tmp_path / "folder"), params.OutputFile(empty=True), "is a folder; give a file name"),
               ("export", str(tmp_path / "file" / "f.json"), params.OutputFile(empty=True), "is a file"),
               ("export", "", params.OutputFile(), "non-empty string")]
    for name, value, rule, says in refused:
        with pytest.raises(params.ParameterError, match=says):
            params.check({name: value}, {name: rule})


def test_an_unreachable_dask_scheduler_is_named_within_seconds():
    pytest.importorskip("distributed")
    import socket

    from das_lib.runs.distributed import CONNECT_TIMEOUT, dask_client

    assert CONNECT_TIMEOUT <= 5
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"could not reach the Dask scheduler '{address}' within 1"):
        with dask_client(address, connect_timeout=1):
            pass
    assert time.monotonic() - start < 10
    with pytest.raises(FileNotFoundError, match="scheduler file"):
        with dask_client("missing-scheduler.json"):
            pass
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:  # one that runs: connected
        with dask_client(cluster.scheduler_address) as client:
            assert client.scheduler_info()["address"] == cluster.scheduler_address


def test_every_parameter_file_names_only_its_chapters_parameters():
    """What the book injects (book/params/*.yml) is declared in the chapter's parameters cell, so the check's
    refusal of unknown names cannot stop `make book`."""
    import ast

    import yaml

    for path in sorted((REPO / "book" / "params").glob("*.yml")):
        notebook = REPO / "book" / f"{path.name.split('.')[0]}.ipynb"
        cell = next(c for c in json.loads(notebook.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
        declared = {s.target.id for s in ast.parse("".join(cell["source"])).body if isinstance(s, ast.AnnAssign)}
        assert set(yaml.safe_load(path.read_text()) or {}) <= declared, path.name
