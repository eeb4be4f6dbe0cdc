"""Boundless DAS training steps at Alpaca 7B's size, on one GPU, with no weights needed.

    python benchmarks/bench_7b.py                 # 32-layer 7B-shaped random Llama, bf16, cuda (a few minutes)
    python benchmarks/bench_7b.py --tiny          # the same code on a tiny Llama on CPU (seconds; run by the tests)

Builds a random LlamaForCausalLM of Alpaca 7B's shape (das_lib.models.shape7b) directly on the device in
bfloat16 and, for full and low-rank Boundless DAS at layers 0, 15, 30 and the last and ':' positions
(the last two tokens of an 82-token prompt, as with LLaMA's tokenizer), prints:

- steps/s of the fast path (das_lib.fastpath.CachedForward, cache strategy under --budget-gib) and of
  the plain path (PlainForward: the whole model with a hook), one step = forward, loss, backward, Adam;
- peak GPU memory of each (torch.cuda.max_memory_allocated, model included);
- the ratio of the fast step's time to the floor: the layers above the site, run forward and backward
  from the site's token on (prefix keys and values given), with no intervention;
- the largest logit difference of fast against plain at the start (they compute the same thing).

The random weights make the IIA meaningless; only time and memory are measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from das_lib.models import shape7b  # noqa: E402
from das_lib.method.fastpath import CachedForward  # noqa: E402
from das_lib.method.interventions import ORTHOGONAL_MAPS, BoundlessDASIntervention  # noqa: E402
from das_lib.method.sites import Site  # noqa: E402
from das_lib.method.data import InterchangeData  # noqa: E402
from das_lib.method.training import PlainForward  # noqa: E402

TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128, vocab_size=256)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --tiny swaps in a small model on CPU."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny Llama (4 layers, d = 64, bf16) on CPU, few steps: a smoke run")
    p.add_argument("--device", default=None, help="torch device (default cuda; cpu with --tiny)")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="site layers (default 0 15 30; 0 1 2 with --tiny)")
    p.add_argument("--length", type=int, default=82, help="tokens per prompt (the paper's Alpaca prompt: 82)")
    p.add_argument("--examples", type=int, default=None, help="cached examples (default 64; 8 with --tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 16, the paper's; 4 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per path and cell (default 8; 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rank", type=int, default=None, help="rank of the low-rank Boundless DAS (default 8; 4 with --tiny)")
    p.add_argument("--budget-gib", type=float, default=40.0, help="memory budget of the fast path's cache (GiB)")
    p.add_argument("--strategy", default="auto", help="fast path cache strategy: auto, full, site or batch")
    p.add_argument("--maps", nargs="+", default=list(ORTHOGONAL_MAPS), choices=list(ORTHOGONAL_MAPS),
                   help="orthogonal maps timed on the fast path, side by side (the plain path runs the first)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    tiny_defaults = dict(device="cpu", layers=[0, 1, 2], examples=8, batch_size=4, steps=2, rank=4)
    big_defaults = dict(device="cuda", layers=[0, 15, 30], examples=64, batch_size=16, steps=8, rank=8)
    for name, value in (tiny_defaults if args.tiny else big_defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.tiny and "--length" not in (argv or sys.argv[1:]):
        args.length = 16
    if args.batch_size > args.examples:
        p.error(f"--batch-size ({args.batch_size}) must not exceed --examples ({args.examples})")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def make_data(n: int, length: int, position: int, vocab: int, device: torch.device, seed: int = 0) -> InterchangeData:
    """Random prompts, intervened at `position` of base and source, with random answer labels."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda: torch.randint(3, vocab, (n, length), generator=g).to(device)  # noqa: E731
    pos = torch.full((n,), position, device=device)
    return InterchangeData({"input_ids": ids()}, {"input_ids": ids()}, pos, pos.clone(),
                           torch.zeros(n, dtype=torch.long, device=device), torch.randint(3, vocab, (n,), generator=g).to(device))


def time_steps(step, batches, warmup: int, device: torch.device) -> float:
    """Median seconds of one call of `step(batch)` over the timed batches (after `warmup` calls)."""
    for batch in batches[:warmup]:
        step(batch)
    seconds = []
    for batch in batches[warmup:]:
        _sync(device)
        start = time.perf_counter()
        step(batch)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def training_step(forward, intervention, optimizer):
    """One Boundless DAS step as das_lib.method.training.train_intervention takes it: intervened answer
    logits, loss (task + boundary), backward, Adam, and the map's retraction (the "qr" map's)."""
    def step(batch: InterchangeData) -> None:
        logits = forward(batch)
        loss = F.cross_entropy(logits.float(), batch.labels) + intervention.clamped_boundaries().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        intervention.rotation.retract()
    return step


def floor_step(fast: CachedForward, model):
    """The floor: the layers above the site from the site's token on, forward and backward, no intervention."""
    head, norm = model.get_output_embeddings(), model.model.norm

    def step(batch: InterchangeData) -> None:
        store = fast._build(batch)[0][fast.site.layer]  # prefix keys and values given: built outside the timing
        rows = np.arange(len(batch))  # the cache's rows, on the host
        hidden = store.suffix.clone().requires_grad_(True)
        _sync(store.suffix.device)
        start = time.perf_counter()
        logits = head(norm(fast._upper_layers(store, rows, hidden)))
        F.cross_entropy(logits.float(), batch.labels).backward()
        _sync(store.suffix.device)
        step.seconds.append(time.perf_counter() - start)
    step.seconds = []
    return step


def run(args: argparse.Namespace) -> list[dict]:
    """Every cell of the benchmark: one row per (layer, position, full or low rank, orthogonal map)."""
    device = torch.device(args.device)
    config = shape7b.alpaca_7b_config(4, **TINY) if args.tiny else shape7b.alpaca_7b_config(32)
    start = time.perf_counter()
    model = shape7b.random_model(config, torch.bfloat16, device=str(device))
    print(f"model: {config.num_hidden_layers} layers, d = {config.hidden_size}, bf16 on {device}, "
          f"built in {time.perf_counter() - start:.1f} s")
    for layer in args.layers:
        if not 0 <= layer < config.num_hidden_layers:
            raise SystemExit(f"--layers: layer {layer} does not exist (0..{config.num_hidden_layers - 1})")
    n_batches = args.warmup + args.steps
    rows = []
    for layer in args.layers:
        for position_name, position in (("last", args.length - 1), (":", args.length - 2)):
            data = make_data(args.examples, args.length, position, config.vocab_size, device, seed=layer)
            perm = torch.Generator().manual_seed(1)
            batches = [data.select(torch.randperm(len(data), generator=perm)[: args.batch_size].to(device))
                       for _ in range(n_batches)]
            site = Site(layer, position_name)
            _reset_peak(device)
            t0 = time.perf_counter()
            cache = CachedForward(model, site, None, [data], max_cache_bytes=int(args.budget_gib * 2**30),
                                  strategy=args.strategy)  # checks itself against the model (check_result)
            _sync(device)
            cached = {"cache_s": time.perf_counter() - t0, "strategy": cache.plans[0].strategy,
                      "cache_gib": sum(s.nbytes() for s in cache.stores) / 2**30,
                      **{f"check_{k}": v for k, v in cache.check_result.items()}}
            floor = floor_step(cache, model)
            time_steps(floor, batches, args.warmup, device)
            floor_steps_per_s = 1 / statistics.median(floor.seconds[args.warmup:])
            for kind, rank in (("full", None), (f"r={args.rank}", args.rank)):
                for m in args.maps:
                    torch.manual_seed(0)
                    intervention = BoundlessDASIntervention(config.hidden_size, rank, orthogonal_map=m, device=device)
                    row = {"layer": layer, "position": position_name, "rotation": kind, "map": m, **cached,
                           "floor_steps_per_s": floor_steps_per_s}
                    fast = cache.with_intervention(intervention)
                    paths = [("fast", fast)]
                    if m == args.maps[0]:  # the plain path's step differs by the map's cost only: timed once
                        plain = PlainForward(model, site, intervention)
                        with torch.no_grad():
                            row["max_logit_diff"] = (fast(batches[0]).float() - plain(batches[0]).float()).abs().max().item()
                        paths.append(("plain", plain))
                    for name, forward in paths:
                        optimizer = torch.optim.Adam(intervention.parameters(), lr=1e-9)  # tiny lr: the same weights each step
                        _reset_peak(device)
                        seconds = time_steps(training_step(forward, intervention, optimizer), batches, args.warmup, device)
                        row[f"{name}_steps_per_s"] = 1 / seconds
                        row[f"{name}_peak_gib"] = _peak_gib(device)
                    if "plain_steps_per_s" in row:
                        row["fast_vs_plain"] = row["fast_steps_per_s"] / row["plain_steps_per_s"]
                    row["fast_time_vs_floor"] = row["floor_steps_per_s"] / row["fast_steps_per_s"]
                    rows.append(row)
                    print(format_row(row), flush=True)
                    save(args, rows, complete=False)  # a run stopped at its time limit keeps the rows it made
    return rows


def save(args: argparse.Namespace, rows: list[dict], complete: bool = True, **extra: object) -> None:
    """Write the rows (and `extra`) to --json, if given."""
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **extra, "rows": rows, "complete": complete}, indent=2))


COLUMNS = ["layer", "position", "rotation", "map", "strategy", "cache_gib", "cache_s", "fast_steps_per_s", "plain_steps_per_s",
           "fast_vs_plain", "floor_steps_per_s", "fast_time_vs_floor", "fast_peak_gib", "plain_peak_gib", "max_logit_diff",
           "check_error", "check_model_noise"]


def format_row(row: dict) -> str:
    """One row of the printed table."""
    cells = []
    for name in COLUMNS:
        value = row.get(name)
        cells.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return "  ".join(cells)


def timed_run(args: argparse.Namespace, run_rows, **extra: object) -> list[dict]:
    """`run_rows(args)` (refused without a GPU where one is asked for), its time printed, its rows saved."""
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --tiny (CPU)")
    start = time.perf_counter()
    rows = run_rows(args)
    print(f"done in {time.perf_counter() - start:.0f} s")
    save(args, rows, **extra)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print its table, optionally write it as JSON."""
    return timed_run(parse(argv), run)


if __name__ == "__main__":
    main()
