"""The rotation's own cost per training step, map by map, side by side in one run.

    python benchmarks/bench_rotation.py                          # d = 64, 576, 4096 on the CPU (one thread)
    python benchmarks/bench_rotation.py --dims 4096 --device cuda

One step of a full-rotation Boundless DAS intervention with nothing else in it: the rotation made from its
parameters (the map's forward), applied to a batch of site vectors, a loss, the backward pass through the
map, Adam's step, and the map's retraction (the "qr" map's: das_lib.method.interventions). Every map of
ORTHOGONAL_MAPS runs in the same process, interleaved round by round, so that load on a shared machine hits
all alike; the table gives the median seconds per step and the speed-up over the matrix exponential (the
paper's map). The language model's share of a step is measured elsewhere (bench_7b.py, map_study.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from das_lib.method.interventions import ORTHOGONAL_MAPS, BoundlessDASIntervention  # noqa: E402
from das_lib.method.training import TrainConfig, make_optimizer  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[64, 576, 4096], help="hidden sizes d (full d x d rotations)")
    p.add_argument("--rank", type=int, default=None, help="time low-rank rotations of this rank instead of full ones")
    p.add_argument("--maps", nargs="+", default=list(ORTHOGONAL_MAPS), choices=list(ORTHOGONAL_MAPS))
    p.add_argument("--batch", type=int, default=16, help="site vectors per step (the paper's batch)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every map once)")
    p.add_argument("--budget-s", type=float, default=600.0,
                   help="skip a map at larger d once one of its steps took longer than this (the exponential at 4096 on a CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(intervention: BoundlessDASIntervention, optimizer: torch.optim.Optimizer, batch: tuple, device: torch.device) -> float:
    """Seconds of one step of the rotation alone: map forward, swap, loss, backward, Adam, retraction."""
    base, source, variable, target = batch
    _sync(device)
    start = time.perf_counter()
    loss = F.mse_loss(intervention(base, source, variable), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    intervention.rotation.retract()
    _sync(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> list[dict]:
    """One row per (d, map): median seconds per step and the speed-up over the first map."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows, too_slow = [], set()
    for d in args.dims:
        g = torch.Generator().manual_seed(d)
        batch = tuple(t.to(device) for t in (torch.randn(args.batch, d, generator=g), torch.randn(args.batch, d, generator=g),
                                             torch.zeros(args.batch, dtype=torch.long), torch.randn(args.batch, d, generator=g)))
        runs = {}
        for m in args.maps:
            if m in too_slow:
                continue
            torch.manual_seed(0)
            intervention = BoundlessDASIntervention(d, args.rank, orthogonal_map=m, device=device)
            intervention.temperature = 1.0
            optimizer = make_optimizer(intervention, TrainConfig(orthogonal_map=m))
            first = step_seconds(intervention, optimizer, batch, device)  # warm-up (and the budget's probe)
            runs[m] = (intervention, optimizer, [] if first < args.budget_s else [first])
            if first >= args.budget_s:
                too_slow.add(m)
        for _ in range(args.rounds):
            for m, (intervention, optimizer, seconds) in runs.items():
                if m not in too_slow:
                    seconds.append(step_seconds(intervention, optimizer, batch, device))
        for m, (_, _, seconds) in runs.items():
            rows.append({"d": d, "rank": args.rank, "map": m, "seconds": statistics.median(seconds), "steps": len(seconds)})
        reference = next((r["seconds"] for r in rows if r["d"] == d and r["map"] == args.maps[0]), None)
        for row in rows:
            if row["d"] == d:
                row["speedup_vs_" + args.maps[0]] = None if reference is None else reference / row["seconds"]
                print(row, flush=True)
        save(args, rows, complete=False)  # a run stopped at its time limit keeps the rows it made
    return rows


def save(args: argparse.Namespace, rows: list[dict], complete: bool = True) -> None:
    """Write the rows to --json, if given."""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "complete": complete}, indent=2))


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print its table, optionally write it as JSON."""
    args = parse(argv)
    rows = run(args)
    save(args, rows)
    return rows


if __name__ == "__main__":
    main()
