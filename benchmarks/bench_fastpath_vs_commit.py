"""This checkout's fast path against an earlier commit's, timed interleaved in one process on the same batches.

The earlier das_lib is taken from git (`git archive REV das_lib`) into a temporary folder and imported under
another name, so both run on one model, one batch and one intervention; each step is a forward and a backward
pass, timed by this process's CPU time (one torch thread: the machine is shared), rounds alternating. Written to
show that the model's own layers (das_lib.method.decoder_layers) did not slow the Llama fast path down against
the hand-written layers they replaced (commit 397ff47):

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fastpath_vs_commit.py 397ff47 --model smollm2 --layers 0 15 28
"""
from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from das_lib.method.fastpath import CachedForward
from das_lib.method.fastpath_checks import relative_error
from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.sites import Site
from das_lib.models.load import default_template, load_model
from das_lib.tasks.pricetag.game import sample_pairs
from das_lib.tasks.pricetag.task import PriceTagTask

ROOT = Path(__file__).resolve().parents[1]
THEN = "das_lib_then"  # the earlier package's name in this process


def earlier_fastpath(rev: str, folder: Path):
    """The module das_lib.method.fastpath of commit `rev`, imported as das_lib_then.method.fastpath."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "das_lib"], capture_output=True, check=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
    (folder / "das_lib").rename(folder / THEN)
    for path in (folder / THEN).rglob("*.py"):
        path.write_text(re.sub(r"\bdas_lib\b", THEN, path.read_text()))
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{THEN}.method.fastpath")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 15, 28])
    parser.add_argument("--roles", nargs="+", default=["last", "dollars"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per path (alternating)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        then = earlier_fastpath(args.rev, Path(folder))
        model, tokenizer = load_model(args.model)
        task = PriceTagTask(tokenizer, default_template(tokenizer))
        pairs = sample_pairs("left", 64, seed=0)
        print(f"{args.model}, batch {args.batch}, median CPU ms per step (forward and backward) of {args.steps}, one thread")
        print(f"{'layer':>5s} {'role':8s} {args.rev:>9s} {'this':>9s} {'this/then':>9s} {'rel. diff':>9s}")
        for role in args.roles:
            data = task.interchange_data(pairs, role=role)
            batch = data.select(slice(0, args.batch))
            for layer in args.layers:
                intervention = BoundlessDASIntervention(model.config.hidden_size)
                intervention.temperature = 1.0
                paths = {"then": then.CachedForward(model, Site(layer, role), intervention, [data]),
                         "this": CachedForward(model, Site(layer, role), intervention, [data])}

                def step(forward) -> torch.Tensor:
                    intervention.zero_grad()
                    logits = forward(batch)
                    logits.float().logsumexp(-1).mean().backward()  # any loss: the same backward pass for both
                    return logits.detach()

                outputs = {name: step(forward) for name, forward in paths.items()}
                times: dict[str, list[float]] = {name: [] for name in paths}
                for _ in range(args.steps):
                    for name, forward in paths.items():
                        start = time.process_time()
                        step(forward)
                        times[name].append(time.process_time() - start)
                ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
                print(f"{layer:5d} {role:8s} {ms['then']:9.1f} {ms['this']:9.1f} {ms['this'] / ms['then']:9.3f} "
                      f"{relative_error(outputs['this'], outputs['then']):9.1e}", flush=True)


if __name__ == "__main__":
    main()
