"""benchmarks/bench_boundless.py (`make bench`: das_lib against pyvene 0.1.8) runs its quick mode here, so that the
side-by-side cannot break unseen: das_lib's fast and plain paths and pyvene (installed by `make setup`) give
the same logits at the shared start and train to the same IIA."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_boundless.py"
HAS_PYVENE = importlib.util.find_spec("pyvene") is not None


@pytest.fixture(scope="module")
def quick_row(tmp_path_factory) -> dict:
    """The one cell of `bench_boundless.py --quick`, run as `make bench` runs it (after it exited 0)."""
    out = tmp_path_factory.mktemp("bench") / "rows.jsonl"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| 4L d64 | 2 | -1 |" in done.stdout  # the table was printed
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    return row


def test_quick_mode_runs_and_das_libs_two_paths_agree_at_the_shared_start(quick_row):
    assert quick_row["compared"][:2] == ["fast", "plain"]
    assert quick_row["max_logit_diff"] < 1e-4
    assert all(quick_row[f"{m}_ms"] > 0 for m in quick_row["compared"])
    assert quick_row["cache_mib"] > 0 and 0 <= quick_row["fast_iia"] <= 1


@pytest.mark.skipif(not HAS_PYVENE, reason="pyvene is not installed: `make setup` installs it "
                    "(.venv/bin/pip install --no-deps pyvene==0.1.8)")
def test_quick_mode_compares_pyvene_on_the_same_computation(quick_row):
    assert quick_row["compared"] == ["fast", "plain", "pyvene"]
    assert quick_row["max_logit_diff"] < 1e-4  # all three, pairwise
    assert quick_row["pyvene_ms"] > 0
    # the same loop from the same start on the same batches: the same held-out IIA up to rounding (128 pairs)
    assert abs(quick_row["fast_iia"] - quick_row["pyvene_iia"]) <= 2 / 128


def test_the_agreement_check_refuses_methods_that_compute_different_things():
    spec = importlib.util.spec_from_file_location("bench_boundless", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    logits = torch.randn(8, 10)
    assert bench.check_agreement({"fast": logits, "plain": logits + 1e-6}) == pytest.approx(1e-6, rel=0.1)
    with pytest.raises(RuntimeError, match="fast / plain / pyvene do not compute the same thing"):
        bench.check_agreement({"fast": logits, "plain": logits, "pyvene": torch.roll(logits, 1, dims=0)})
