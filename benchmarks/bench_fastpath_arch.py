"""Training steps per second on the fast path and on the plain path, for two architectures.

Llama (SmolLM2-135M-Instruct, `load_model("smollm2")`, or the stand-in) and Gemma 3 270M
(`load_model("gemma3-270m")`): for each, the price-tagging game's pairs in the model's chat template, and a
Boundless DAS intervention trained at a few sites (layer x token role) from the same initial state on both
paths. The table gives each path's steps per second from its per-step CPU time (this process's time, one
torch thread: the machine is shared, so wall time would measure the other jobs too), and their ratio. Before
timing, each site's fast-path logits are compared with the plain path's on the same batch (relative error,
float32): the fast path is exact, so a large error would mean a bug, not a speed-up.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fastpath_arch.py                      # SmolLM2 and Gemma 3 270M
    PYTHONPATH=. .venv/bin/python benchmarks/bench_fastpath_arch.py --models standin --steps 3 --rounds 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from das_lib.method.fastpath import CachedForward, make_forward
from das_lib.method.fastpath_checks import relative_error
from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, train_intervention
from das_lib.models.load import default_template, load_model
from das_lib.tasks.pricetag.game import sample_pairs
from das_lib.tasks.pricetag.task import PriceTagTask

# layers per model: the first, a middle one and, for Gemma 3, a global layer (5, 11) and a sliding one (8)
LAYERS = {"smollm2": (0, 15, 25), "standin": (0, 1, 2), "gemma3-270m": (0, 5, 8, 11)}
ROLES = ("last", "dollars")  # the answer token, and one five tokens before it (a suffix of 6 positions)


def per_step_cpu(forward, intervention, data, config: TrainConfig, rounds: int) -> float:
    """The median over `rounds` of the CPU seconds per training step (after one warm-up step)."""
    train_intervention(forward, intervention, data, TrainConfig(steps=1, batch_size=config.batch_size), progress=False)
    times = []
    for _ in range(rounds):
        start = time.process_time()
        train_intervention(forward, intervention, data, config, progress=False)
        times.append((time.process_time() - start) / config.steps)
    return statistics.median(times)


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    """One row per site of `name`: steps/s on both paths, their ratio and the fast path's error."""
    start = time.perf_counter()
    model, tokenizer = load_model(name)
    loaded = time.perf_counter() - start
    task = PriceTagTask(tokenizer, default_template(tokenizer))
    pairs = sample_pairs("left", args.examples, seed=0)
    rows = []
    for role in ROLES:
        data = task.interchange_data(pairs, role=role)
        for layer in LAYERS[name]:
            site = Site(layer, role)
            torch.manual_seed(0)
            initial = BoundlessDASIntervention(model.config.hidden_size).state_dict()
            fresh = [BoundlessDASIntervention(model.config.hidden_size) for _ in range(2)]
            for iv in fresh:
                iv.load_state_dict(initial)
                iv.temperature = 1.0
            t0 = time.perf_counter()
            fast = make_forward(model, site, fresh[0], [data])
            cache_s = time.perf_counter() - t0
            if not isinstance(fast, CachedForward):
                raise RuntimeError(f"{name} at {site}: the fast path did not run")
            plain = PlainForward(model, site, fresh[1])
            batch = data.select(slice(0, args.batch))
            with torch.no_grad():
                error = relative_error(fast(batch), plain(batch))
            config = TrainConfig(steps=args.steps, batch_size=args.batch)
            seconds = {path: per_step_cpu(forward, iv, data, config, args.rounds)
                       for path, forward, iv in (("fast", fast, fresh[0]), ("plain", plain, fresh[1]))}
            rows.append({"model": name, "layer": layer, "role": role, "suffix": int(data.base["input_ids"].shape[1] - data.base_pos.min()),
                         "fast": 1 / seconds["fast"], "plain": 1 / seconds["plain"], "ratio": seconds["plain"] / seconds["fast"],
                         "error": error, "check": fast.check_result["error"], "cache_s": cache_s, "load_s": loaded})
            print(_line(rows[-1]), flush=True)
    return rows


HEADER = (f"{'model':12s} {'layer':>5s} {'role':8s} {'suffix':>6s} {'fast steps/s':>12s} {'plain steps/s':>13s} "
          f"{'ratio':>6s} {'rel. error':>10s} {'cache s':>7s}")


def _line(r: dict) -> str:
    return (f"{r['model']:12s} {r['layer']:5d} {r['role']:8s} {r['suffix']:6d} {r['fast']:12.2f} {r['plain']:13.3f} "
            f"{r['ratio']:6.1f} {r['error']:10.1e} {r['cache_s']:7.1f}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"], choices=sorted(LAYERS))
    parser.add_argument("--examples", type=int, default=64, help="training pairs cached per site")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per path (the median is kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds per path, one thread, CPU time per step; "
          f"torch {torch.__version__}")
    print(HEADER, flush=True)
    rows = [row for name in args.models for row in bench_model(name, args)]
    print("\n" + HEADER)
    for row in rows:
        print(_line(row))
    for name in args.models:
        mine = [r for r in rows if r["model"] == name]
        print(f"{name}: loaded in {mine[0]['load_s']:.0f} s; largest relative error fast vs plain {max(r['error'] for r in mine):.1e}")
    return rows


if __name__ == "__main__":
    main()
