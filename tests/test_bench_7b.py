"""benchmarks/bench_7b.py (the GPU benchmark at Alpaca 7B's size) runs end to end on a tiny CPU config."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_7b.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_7b", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("strategy", ["site"])  # "auto": in the GPU check below
def test_tiny_config_runs_every_cell(bench, tmp_path, strategy):
    out = tmp_path / "rows.json"
    rows = bench.main(["--tiny", "--layers", "0", "2", "--steps", "1", "--warmup", "1", "--strategy", strategy,
                       "--json", str(out)])
    assert len(rows) == 2 * 2 * 2 * 3  # layers x (last, ':') x (full, low rank) x orthogonal maps
    assert {(r["layer"], r["position"], r["rotation"], r["map"]) for r in rows} == {
        (layer, pos, rot, m) for layer in (0, 2) for pos in ("last", ":") for rot in ("full", "r=4") for m in ("exp", "cayley", "qr")}
    for row in rows:
        assert row["strategy"] == ("full" if strategy == "auto" else "site")  # a tiny cache fits the budget
        assert row["check_error"] <= row["check_tolerance"]  # the self-check passed
        for name in ("fast_steps_per_s", "floor_steps_per_s", "fast_time_vs_floor"):
            assert math.isfinite(row[name]) and row[name] > 0
    for row in rows[::3]:  # the plain path runs with the first map
        assert row["map"] == "exp" and row["max_logit_diff"] < 0.05  # fast and plain: the same logits (bf16 rounding)
        assert math.isfinite(row["plain_steps_per_s"]) and row["plain_steps_per_s"] > 0
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))


def test_the_gpu_check_runs_every_part_with_tiny_configs(tmp_path):
    """benchmarks/gpu_check.sh --tiny: the GPU check's own script, on this CPU, so that it cannot rot."""
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", str(out)], capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "PY": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert {name: part["exit"] for name, part in result["parts"].items()} == dict.fromkeys(
        ["environment", "bench_7b", "pyvene_7b", "rotation", "cuda_suite"], 0)
    rows = result["bench_7b"]
    assert len(rows) == 2 * 2 * 2 * 3 and all(r["strategy"] == "full" for r in rows)  # "auto": a tiny cache fits
    assert all(r["check_error"] <= r["check_tolerance"] and r["fast_steps_per_s"] > 0 for r in rows)
    assert {r["map"] for r in result["rotation"]} == {"exp", "cayley", "qr"}
    assert all(k.startswith("das_lib_") or k in ("layer", "rotation", "pyvene_steps_per_s") for r in result["pyvene_7b"] for k in r)
    suite = result["cuda_suite"]
    if not torch.cuda.is_available():  # the suite is skipped here, each test saying why
        assert set(suite["counts"]) == {"skipped"} and suite["counts"]["skipped"] >= 10
    assert (out / "gpu_check.log").read_text().count("==> ") >= 10
    assert "## bench_7b.py" in done.stdout


def test_bad_options_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--layers", "9"])
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--batch-size", "64"])
