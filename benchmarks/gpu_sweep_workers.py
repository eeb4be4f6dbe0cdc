"""Chapter 8's grid on one GPU, run by several processes that share it.

A 135M-parameter model leaves an H200 idle between its small kernels, so one process trains one cell at a
time at a fraction of the GPU's speed. N processes that each run the whole grid on one store keep it busy
with nothing split by hand: a process claims a cell before training it, skips the cells others hold and then
waits for their records (Store claims: das_lib.runs.grid), so every cell is trained once, the extra seeds at
each hypothesis's site chosen on validation included. The grid is chapter 8's own (`spec_from_params`, the
call the chapter makes), so its records are the ones the chapter would write; give the chapter the same
store and it finds them:

    python benchmarks/gpu_sweep_workers.py book/params/08_finetuned.gpu.yml --store /tmp/das_ch8/store \\
        --device cuda --workers 8

Parameters are chapter 8's defaults (its parameters cell) overridden by the YAML file, as papermill reads them.
It exits non-zero, naming the cells, if any cell of the grid has no record at the end.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from das_lib.runs.grid import Grid, GridSpec, IncompleteGrid  # noqa: E402
from das_lib.runs.sweep import spec_from_params  # noqa: E402

CHAPTER = ROOT / "book" / "08_finetuned.ipynb"


def chapter_params(params_file: Path | None) -> dict[str, Any]:
    """Chapter 8's parameters: the defaults of its parameters cell, then those of `params_file`."""
    cells = json.loads(CHAPTER.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values: dict[str, Any] = {}
    exec("".join(cell["source"]), values)  # the cell holds literal assignments only
    values.pop("__builtins__", None)
    if params_file is not None:
        values.update(yaml.safe_load(params_file.read_text()) or {})
    return values


def work(spec: GridSpec, store: str, device: str, threads: int) -> None:
    """One process: the whole grid on the shared store, training the cells no other process has claimed."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    counts = Grid(spec, store, device, progress=False).run()
    print(f"[worker {os.getpid()}] {counts} in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", type=Path, nargs="?", help="a YAML file of chapter 8's parameters")
    ap.add_argument("--store", required=True, help="the grid's store (give the chapter the same one)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    args = ap.parse_args()
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    values = chapter_params(args.params)
    if not values["budget"]:
        ap.error("give the parameter file a budget: [steps, batch, training pairs] (the chapter calibrates one; this script cannot)")
    spec = spec_from_params({**values, "device": args.device})
    grid = Grid(spec, args.store, args.device, progress=False)  # a bad grid is refused here, before any process starts
    start = time.perf_counter()
    # CUDA cannot be used in a forked process; on a Linux CPU a fork spares each worker the imports (seconds)
    context = multiprocessing.get_context("fork" if args.device == "cpu" and sys.platform == "linux" else "spawn")
    processes = [context.Process(target=work, args=(spec, args.store, args.device, args.threads)) for _ in range(args.workers)]
    print(f"==> {len(grid.grid_cells())} cells ({len(spec.layers)} layers x {len(spec.positions)} positions x "
          f"{len(spec.candidates)} hypotheses x {len(spec.seeds)} seeds), then the extra runs at the chosen sites, "
          f"in {len(processes)} processes on {args.device}", flush=True)
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    try:
        runs = grid.runs()
    except IncompleteGrid as err:
        sys.exit(f"==> {len(failed)} processes failed {failed}; {err}")
    print(f"==> {len(runs)} cells in {args.store} in {time.perf_counter() - start:.0f} s; "
          f"{len(failed)} processes failed {failed}", flush=True)


if __name__ == "__main__":
    main()
