"""The scripts that run chapter 8's grid on a GPU (benchmarks/gpu_sweep_workers.py, gpu_payload.sh), on this CPU."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from das_lib.runs.grid import Grid
from das_lib.runs.store import Store
from das_lib.runs.sweep import spec_from_params

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model": "standin", "hypotheses": ["left"], "layers": [1], "positions": ["resp_colon", "last"], "seeds": [0],
        "extra_seeds": [1], "extra_data_seeds": [], "budget": [2, 8, 16], "orthogonal_map": "cayley",
        "n_val": 8, "n_test": 8, "n_task": 8, "data_seed": 0, "dtype": "float32"}


@pytest.fixture(scope="module")
def workers():
    spec = importlib.util.spec_from_file_location("gpu_sweep_workers", ROOT / "benchmarks" / "gpu_sweep_workers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_processes_sharing_one_store_train_every_cell_once(tmp_path):
    """Two processes run the same grid on one store: each cell (the grid, then the extra seed at the chosen site) is
    trained by exactly one of them, and the store ends with the grid the chapter would read."""
    params = tmp_path / "tiny.yml"
    params.write_text(yaml.safe_dump(TINY))
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_sweep_workers.py"), str(params), "--store",
                           str(store), "--device", "cpu", "--workers", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ran = [int(n) for n in re.findall(r"\[worker \d+\] \{'ran': (\d+)", done.stdout)]
    grid = Grid(spec_from_params(TINY), store, progress=False)
    assert len(ran) == 2 and sum(ran) == len(grid.cells()) == 3  # 2 grid cells, then seed 1 at the chosen site
    assert len(grid.runs()) == 3 and len(list(Store(store).records())) == 4  # and the task accuracy
    assert "==> 3 cells in" in done.stdout


def test_the_chapter_builds_its_grid_with_the_same_call():
    """chapter 8 and the GPU script share spec_from_params, so the script's records are the chapter's."""
    assert "sweep.spec_from_params(globals()" in (ROOT / "book" / "08_finetuned.ipynb").read_text()


def test_assemble_without_the_parts_prints_nothing(tmp_path):
    script = ROOT / "benchmarks" / "gpu_payload.sh"
    copy = tmp_path / "benchmarks" / "gpu_payload.sh"
    copy.parent.mkdir()
    copy.write_text(script.read_text())  # run from an empty tree: no .whl, no parts of SmolLM2's wheel
    done = subprocess.run(["bash", str(copy), "assemble"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == ""


@pytest.mark.parametrize("params", [None, "smoke", "full", "gpu"])
def test_every_parameter_set_of_chapter_8_makes_valid_grids_for_the_model_and_its_control(workers, params, tmp_path):
    """Chapter 8's defaults and parameter files give grids both models have: the searched model's, and the
    planted control's (its own token roles: a chat template's tok_im_end is no role of the stand-in's prompt)."""
    from das_lib.runs import controls

    values = workers.chapter_params(None if params is None else ROOT / "book" / "params" / f"08_finetuned.{params}.yml")
    spec = spec_from_params(values, values["budget"] or values["budgets"][0])
    assert len(Grid(spec, tmp_path / "model", progress=False).grid_cells()) > 0  # a bad grid is refused, naming the roles
    control = controls.control_spec(spec, values["control"], values["control_layers"], values["control_positions"])
    assert len(Grid(control, tmp_path / "control", progress=False).grid_cells()) > 0
