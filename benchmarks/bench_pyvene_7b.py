"""das_lib against pyvene 0.1.8, one Boundless DAS training step at Alpaca 7B's shape, side by side.

    python benchmarks/bench_pyvene_7b.py                      # 32-layer 7B-shaped random Llama, bf16, cuda
    python benchmarks/bench_pyvene_7b.py --tiny               # a tiny Llama on the CPU (the tests run it)

The same random model, batches (16 pairs of 82-token prompts, intervened at the last token) and step
(intervened answer logits, cross-entropy, backward, Adam) for: pyvene 0.1.8's BoundlessRotatedSpaceIntervention
(full rotation) and LowRankRotatedSpaceIntervention (rank 8) on `block_output`, and das_lib's fast path with
each orthogonal map, full and rank 8. Steps/s are medians over the timed steps after warm-up; the ratio is
das_lib's steps/s over pyvene's for the same rotation. Without pyvene installed, only das_lib's rows are
timed and the script says so.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from das_lib.method.fastpath import CachedForward  # noqa: E402
from das_lib.method.interventions import ORTHOGONAL_MAPS, BoundlessDASIntervention  # noqa: E402
from das_lib.method.sites import Site  # noqa: E402
from das_lib.models import shape7b  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_7b", Path(__file__).with_name("bench_7b.py"))
bench_7b = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_7b)

try:
    import pyvene as pv
except ImportError:  # the main environment has no pyvene
    pv = None
PYVENE = importlib.metadata.version("pyvene") if pv is not None else None


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --tiny swaps in a small model on the CPU."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--layers", type=int, nargs="+", default=None)
    p.add_argument("--length", type=int, default=82)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--maps", nargs="+", default=list(ORTHOGONAL_MAPS), choices=list(ORTHOGONAL_MAPS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.layers = args.layers or ([0, 2] if args.tiny else [0, 15, 30])
    if args.tiny:
        args.length, args.steps, args.warmup, args.rank = 16, 1, 1, 4
    return args


class PyveneStep:
    """One training step of pyvene 0.1.8 at a site: full (Boundless) or low-rank rotated-space intervention."""

    def __init__(self, model, layer: int, position: int, rank: int | None):
        kind = pv.BoundlessRotatedSpaceIntervention if rank is None else pv.LowRankRotatedSpaceIntervention
        unit = {"layer": layer, "component": "block_output", "unit": "pos", "max_number_of_units": 1}
        if rank is not None:
            unit["low_rank_dimension"] = rank
        self.intervenable = pv.IntervenableModel(pv.IntervenableConfig(representations=[unit], intervention_types=kind), model)
        self.intervenable.set_device(next(model.parameters()).device)
        self.intervenable.disable_model_gradients()
        self.position, self.boundless = position, rank is None
        self.optimizer = torch.optim.Adam(self.intervenable.get_trainable_parameters(), lr=1e-9)

    def __call__(self, batch) -> None:
        _, out = self.intervenable({"input_ids": batch.base["input_ids"]}, [{"input_ids": batch.source["input_ids"]}],
                                   {"sources->base": self.position})
        loss = F.cross_entropy(out.logits[:, -1].float(), batch.labels)
        if self.boundless:
            iv = next(iter(self.intervenable.interventions.values()))
            iv = iv[0] if isinstance(iv, (list, tuple)) else iv
            loss = loss + iv.intervention_boundaries.clamp(1e-3, 1).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def run(args: argparse.Namespace) -> list[dict]:
    """One row per (layer, rotation): pyvene's steps/s and das_lib's with each map, and their ratios."""
    device = torch.device(args.device)
    config = shape7b.alpaca_7b_config(4, **bench_7b.TINY) if args.tiny else shape7b.alpaca_7b_config(32)
    model = shape7b.random_model(config, torch.bfloat16, device=str(device))
    if pv is None:
        print("pyvene is not installed: timing das_lib only (pip install --no-deps pyvene==0.1.8 for the comparison)")
    rows = []
    for layer in args.layers:
        position = args.length - 1
        data = bench_7b.make_data(4 * args.batch_size, args.length, position, config.vocab_size, device, seed=layer)
        batches = [data.select(torch.arange(i * args.batch_size, (i + 1) * args.batch_size) % len(data))
                   for i in range(args.warmup + args.steps)]
        cache = CachedForward(model, Site(layer, "last"), None, [data])
        for kind, rank in (("full", None), (f"r={args.rank}", args.rank)):
            row = {"layer": layer, "rotation": kind}
            if pv is not None:
                step = PyveneStep(model, layer, position, rank)
                row["pyvene_steps_per_s"] = 1 / bench_7b.time_steps(step, batches, args.warmup, device)
                del step
            for m in args.maps:
                torch.manual_seed(0)
                intervention = BoundlessDASIntervention(config.hidden_size, rank, orthogonal_map=m, device=device)
                optimizer = torch.optim.Adam(intervention.parameters(), lr=1e-9)
                step = bench_7b.training_step(cache.with_intervention(intervention), intervention, optimizer)
                row[f"das_lib_{m}_steps_per_s"] = 1 / bench_7b.time_steps(step, batches, args.warmup, device)
                if "pyvene_steps_per_s" in row:
                    row[f"das_lib_{m}_vs_pyvene"] = row[f"das_lib_{m}_steps_per_s"] / row["pyvene_steps_per_s"]
            rows.append(row)
            print(row, flush=True)
            bench_7b.save(args, rows, complete=False, pyvene=PYVENE)  # a run stopped at its limit keeps its rows
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the comparison, print its rows, optionally write them as JSON."""
    return bench_7b.timed_run(parse(argv), run, pyvene=PYVENE)


if __name__ == "__main__":
    main()
