"""Chapter 8's sweep on one GPU, split over several processes that share it, then exported for the chapter.

A 135M-parameter model leaves an H200 idle between its small kernels, so one process trains one cell at a
time at a fraction of the GPU's speed; N processes, each with some layers and hypotheses of the grid, keep it
busy. Each cell's record depends only on its own config, so the records are the ones chapter 8 would write
itself: a last run of the whole sweep in this process finds the grid done, trains the extra seeds at each
hypothesis's site chosen on validation, and writes the frame the chapter shows beside its CPU grid:

    python benchmarks/gpu_sweep_workers.py book/params/08_finetuned.gpu.yml --store /tmp/das_ch8/store \\
        --device cuda --workers 8 --export OUT/finetuned_gpu.json

Parameters are chapter 8's defaults (its parameters cell) overridden by the YAML file, as papermill reads them.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from das_lib.runs import committed  # noqa: E402
from das_lib.runs.spec import SweepSpec, spec_from_params  # noqa: E402
from das_lib.runs.sweep import Sweep  # noqa: E402

CHAPTER = ROOT / "book" / "08_finetuned.ipynb"


def chapter_params(params_file: Path | None) -> dict[str, Any]:
    """Chapter 8's parameters: the defaults of its parameters cell, then those of `params_file`."""
    cells = json.loads(CHAPTER.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict[str, Any] = {}
    exec("".join(cell["source"]), values)  # the cell holds literal assignments only
    if params_file is not None:
        values.update(yaml.safe_load(params_file.read_text()) or {})
    return values


def parts(spec: SweepSpec, layers: list[int], workers: int) -> list[SweepSpec]:
    """The grid split into about `workers` parts: layers paired deep with shallow (a cell's cost grows with the
    layers above its site), times halves of the hypotheses when there are more workers than layer groups."""
    ordered = sorted(layers)
    pairs = [sorted({ordered[i], ordered[-1 - i]}) for i in range((len(ordered) + 1) // 2)]
    n_layer_groups = max(1, min(len(pairs), workers))
    groups = [sum(pairs[i::n_layer_groups], []) for i in range(n_layer_groups)]
    n_hyp_groups = max(1, min(len(spec.hypotheses), workers // n_layer_groups))
    hyps = [spec.hypotheses[i::n_hyp_groups] for i in range(n_hyp_groups)]
    return [replace(spec, layers=tuple(g), hypotheses=tuple(h), best_site_seeds=()) for g in groups for h in hyps]


def work(spec: SweepSpec, store: str, device: str, threads: int) -> None:
    """One process: its part of the grid into the shared store (the store writes each record atomically)."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    counts = Sweep(spec, store, device).run(progress=False)
    print(f"[worker] layers {list(spec.layers)} hypotheses {list(spec.hypotheses)}: {counts} in "
          f"{time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", type=Path, nargs="?", help="a YAML file of chapter 8's parameters")
    ap.add_argument("--store", required=True, help="the sweep's store (give the chapter the same one)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    ap.add_argument("--export", help="write the finished sweep's frame here (committed.save), as the chapter does")
    args = ap.parse_args()
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    values = {**chapter_params(args.params), "device": args.device}
    spec = spec_from_params(values)
    sweep = Sweep(spec, args.store, args.device)  # checks the grid before any process starts
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked process
    processes = [context.Process(target=work, args=(part, args.store, args.device, args.threads))
                 for part in parts(spec, sweep.layers, args.workers)]
    print(f"==> {len(sweep.grid())} cells of {len(sweep.layers)} layers x {len(sweep.positions)} positions x "
          f"{len(spec.hypotheses)} hypotheses in {len(processes)} processes on {args.device}", flush=True)
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    print(f"==> grid: {time.perf_counter() - start:.0f} s, {len(failed)} processes failed {failed}", flush=True)
    counts = sweep.run(progress=False)  # the grid is reused; the best-site seeds run here
    seconds = time.perf_counter() - start
    print(f"==> sweep: {counts} in {seconds:.0f} s", flush=True)
    if args.export:
        path = committed.save(sweep.frame(), args.export, committed.about(sweep, seconds))
        print(f"==> frame: {path}", flush=True)


if __name__ == "__main__":
    main()
