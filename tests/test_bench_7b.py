"""benchmarks/bench_7b.py (the GPU benchmark at Alpaca 7B's size) runs end to end on a tiny CPU config."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_7b.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_7b", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("strategy", ["auto", "site"])
def test_tiny_config_runs_every_cell(bench, tmp_path, strategy):
    out = tmp_path / "rows.json"
    rows = bench.main(["--tiny", "--layers", "0", "2", "--steps", "1", "--warmup", "1", "--strategy", strategy,
                       "--json", str(out)])
    assert len(rows) == 2 * 2 * 2  # layers x (last, ':') x (full, low rank)
    assert {(r["layer"], r["position"], r["rotation"]) for r in rows} == {
        (layer, pos, rot) for layer in (0, 2) for pos in ("last", ":") for rot in ("full", "r=4")}
    for row in rows:
        assert row["strategy"] == ("full" if strategy == "auto" else "site")  # a tiny cache fits the budget
        assert row["max_logit_diff"] < 0.05  # fast and plain compute the same logits (bf16 rounding)
        for name in ("fast_steps_per_s", "plain_steps_per_s", "floor_steps_per_s", "fast_time_vs_floor"):
            assert math.isfinite(row[name]) and row[name] > 0
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))


def test_bad_options_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--layers", "9"])
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--batch-size", "64"])
