"""Step time of each fast-path cache strategy against the plain path, at Alpaca 7B's width, on CPU;
and from it an estimate of one cell of the paper's grid on one GPU.

    python benchmarks/make_7b_shaped.py            # once: _build/llama7b-shape (2 layers, d = 4096, bf16)
    python benchmarks/strategies_7b.py             # a few minutes on a free core; more on a busy one

The model directory's own tokenizer (LLaMA's) encodes price-tagging pairs in the Alpaca template;
the site is layer 0 at `--position` (default the paper's ':' after Response). For every strategy
(das_lib.method.cache_plan: full, site, batch) and the plain path, one step = intervened logits, loss,
backward, Adam, with a low-rank Boundless DAS (the full rotation's matrix exponential would hide the
paths' differences; its cost is measured separately in benchmarks/README.md). The logits of every
strategy are checked against the plain path's first.

The estimate counts each step's work in layer-token passes (one decoder layer on one token, forward;
a frozen model's backward needs input gradients only, about one pass more), calibrates the seconds
per pass on the measured steps, and scales the counts to 32 layers and the paper's budget; on a GPU
it divides the FLOPs by an assumed throughput (`--gpu-tflops`), which is not a measurement.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from das_lib.method.cache_plan import STRATEGIES, CacheShape, plan_cache  # noqa: E402
from das_lib.method.fastpath import CachedForward  # noqa: E402
from das_lib.method.interventions import BoundlessDASIntervention  # noqa: E402
from das_lib.models.load import default_template, load_model  # noqa: E402
from das_lib.tasks.pricetag.game import sample_pairs  # noqa: E402
from das_lib.method.sites import Site  # noqa: E402
from das_lib.tasks.pricetag.task import PriceTagTask  # noqa: E402
from das_lib.method.training import PlainForward  # noqa: E402


def passes(strategy: str, layers: int, site: int, length: int, prefix: int) -> dict[str, float]:
    """Layer-token passes of one step per example (with gradients, without), and output-head tokens."""
    upper, suffix = layers - site - 1, length - prefix
    fast = {"grad": 2 * upper * suffix, "no_grad": 0.0, "head": 2}  # forward + input-gradient backward
    if strategy == "plain":  # source to the site; base through every layer; backward from the top to the site
        return {"grad": 2 * upper * length, "no_grad": (site + 1) * length + (site + 1) * length, "head": 2 * length}
    if strategy == "site":
        fast["no_grad"] = upper * prefix
    if strategy == "batch":
        fast["no_grad"] = layers * length + (site + 1) * length
    return fast


def main(argv: list[str] | None = None) -> dict:
    """Measure every strategy's step, print the plans, the table and the estimate."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "_build" / "llama7b-shape"), help="model directory (benchmarks/make_7b_shaped.py)")
    p.add_argument("--position", default="resp_colon", help="token role of the site")
    p.add_argument("--examples", type=int, default=2, help="cached pairs (even)")
    p.add_argument("--batch-size", type=int, default=1, help="pairs per step")
    p.add_argument("--steps", type=int, default=2, help="timed steps per strategy")
    p.add_argument("--rank", type=int, default=8, help="rank of the low-rank Boundless DAS")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--gpu-tflops", type=float, default=300.0, help="assumed sustained bf16 TFLOP/s of one GPU (an assumption)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, "cpu", "bfloat16")
    task = PriceTagTask(tokenizer, default_template(tokenizer))
    site = Site(0, args.position)
    data = task.interchange_data(sample_pairs("left", args.examples, 0), args.position)
    cfg = model.config
    length, prefix = data.base["input_ids"].shape[1], int(data.base_pos.min())
    print(f"{args.model}: {cfg.num_hidden_layers} layers, d = {cfg.hidden_size}, {model.dtype}; {len(data)} pairs of "
          f"{length} tokens, site {site} (position {prefix})")
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(cfg.hidden_size, args.rank)
    intervention.temperature = 1.0
    batches = [data.select(torch.arange(i, i + args.batch_size) % len(data)) for i in range(args.steps)]
    plain = PlainForward(model, site, intervention)
    with torch.no_grad():
        reference = plain(batches[0]).float()
    rows = {}
    for strategy in (*STRATEGIES, "plain"):
        start = time.perf_counter()
        if strategy == "plain":
            forward, cache_s = plain, 0.0
        else:
            forward = CachedForward(model, site, intervention, [data], strategy=strategy)
            cache_s = time.perf_counter() - start
            print(forward.plan_report())
            with torch.no_grad():
                diff = (forward(batches[0]).float() - reference).abs().max().item()
            print(f"   {strategy}: max |logit - plain| = {diff:.3g} (plain's max |logit| {reference.abs().max().item():.3g})")
        optimizer = torch.optim.Adam(intervention.parameters(), lr=1e-9)
        seconds = []
        for batch in batches:
            t0 = time.perf_counter()
            loss = F.cross_entropy(forward(batch).float(), batch.labels) + intervention.clamped_boundaries().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - t0)
        rows[strategy] = {"cache_s": cache_s, "step_s": min(seconds), "steps_s": seconds,
                          "cache_mib": sum(s.nbytes() for s in getattr(forward, "stores", [])) / 2**20}
        print(f"   {strategy:5s}: cache {cache_s:7.1f} s ({rows[strategy]['cache_mib']:.1f} MiB), "
              f"step {min(seconds):7.2f} s (all: {', '.join(f'{s:.2f}' for s in seconds)})", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # calibrate seconds per layer-token pass on the plain step (the most work, the least overhead)
    layer_flops = 2 * (4 * cfg.hidden_size**2 + 3 * cfg.hidden_size * cfg.intermediate_size)  # per token, forward
    head_flops = 2 * cfg.hidden_size * cfg.vocab_size
    def step_flops(strategy: str, layers: int, layer: int, batch: int) -> float:
        n = passes(strategy, layers, layer, length, prefix)
        return batch * ((n["grad"] + n["no_grad"]) * layer_flops + n["head"] * head_flops)
    cpu_flops = rows["plain"]["step_s"] and step_flops("plain", cfg.num_hidden_layers, 0, args.batch_size) / rows["plain"]["step_s"]
    print(f"\npeak RSS {peak:.2f} GiB; effective CPU throughput on the plain step {cpu_flops / 1e9:.2f} GFLOP/s")
    print("step time predicted by the pass count at that throughput, against the measurement:")
    for strategy, row in rows.items():
        predicted = step_flops(strategy, cfg.num_hidden_layers, 0, args.batch_size) / cpu_flops
        row["predicted_s"] = predicted
        print(f"   {strategy:5s}: predicted {predicted:7.2f} s, measured {row['step_s']:7.2f} s")

    # the paper's cell on Alpaca 7B: 940 steps of 64 pairs, 20,000 + 1,000 pairs cached, 32 layers
    steps, batch, n_cached, n_layers, gpu = 940, 64, 21000, 32, args.gpu_tflops * 1e12
    print(f"\nestimate, one cell of the paper's grid on one GPU at an assumed {args.gpu_tflops:.0f} bf16 TFLOP/s "
          f"({steps} steps x {batch} pairs, {n_cached} pairs cached, prompts of {length} tokens), minutes:")
    estimate = {}
    for layer in (0, 15, 30):
        shape = CacheShape(n_cached, length, prefix, cfg.hidden_size, cfg.hidden_size, n_layers - layer - 1)
        build = n_cached * (n_layers + layer + 1) * length * layer_flops / gpu  # base through every layer, source to the site
        cells = {}
        for strategy in (*STRATEGIES, "plain"):
            train = steps * step_flops(strategy, n_layers, layer, batch) / gpu
            cells[strategy] = {"minutes": (train + (build if strategy in ("full", "site") else 0)) / 60,
                               "cache_gib": shape.bytes(strategy) / 2**30 if strategy != "plain" else 0.0}
        chosen = plan_cache(shape, 40 * 2**30).strategy
        estimate[layer] = {"cells": cells, "auto_at_40gib": chosen}
        print(f"   layer {layer:2d}: " + ", ".join(
            f"{s} {c['minutes']:.1f} min ({c['cache_gib']:.0f} GiB)" for s, c in cells.items()) + f"; auto (40 GiB budget): {chosen}")
    result = {"args": vars(args), "length": length, "prefix": prefix, "rows": rows, "peak_rss_gib": peak,
              "cpu_gflops": cpu_flops / 1e9, "estimate": estimate}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
