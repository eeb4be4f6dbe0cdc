"""Boundless DAS training speed and IIA: das_lib's fast path, das_lib's plain path and pyvene 0.1.8.

All three run in one process on the same random Llama, the same pairs, site, batch size, steps,
initial rotation and schedules (das_lib.method.training's warm-up and temperature annealing), so that only
the implementation differs. Labels are meaningful although the model is random: each pair is
labelled with the model's own answer under a fixed, seeded "teacher" DAS intervention (a quarter of
the rotated dimensions swapped) at the same site, so a learned alignment can reach IIA 1. Two
choices make that target learnable on a random model, and both are the same for every method: the
output head is scaled x30 (with the default init the answer distribution is nearly flat, so the
cross-entropy barely rewards a right alignment and the boundary penalty wins), and the boundary
temperature starts at 50 * d / 4096 (at least 1): the paper's 50 was for d = 4096, and on d = 64 it
makes the mask almost flat.

Run it in the benchmark environment (see benchmarks/README.md), which `make bench` creates:
    make bench                       # full table
    make bench BENCH_ARGS=--quick    # a smoke run (tests/test_bench_boundless.py runs it in the main environment)
"""
from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import time
import warnings

import torch
import transformers
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, make_forward
from das_lib.method.interventions import BoundlessDASIntervention, DASIntervention
from das_lib.method.metrics import accuracy
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, lr_factor, next_batch, random_order, temperature_at, train_intervention

try:
    import pyvene as pv
except ImportError:  # without pyvene: das_lib's columns only
    pv = None

# Float32 logits of magnitude ~10 agree to ~1e-5 when the computations are the same (benchmarks/README.md);
# a wrong position, rotation convention or schedule moves them by far more.
MAX_LOGIT_DIFF = 1e-3

MODELS = {
    "4L d64": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
    "8L d256": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8),
}


def build_model(name: str, vocab: int, seed: int) -> LlamaForCausalLM:
    """A random, frozen Llama of the named size."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=128, **MODELS[name])
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.lm_head.weight *= 30.0  # a confident random model (see the module docstring)
    return model


def teacher_pairs(model, site: Site, position: int, n: int, length: int, seed: int, teacher: DASIntervention) -> InterchangeData:
    """Random (base, source) token pairs labelled by the model's answer under the teacher intervention."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    pos = torch.full((n,), position)
    data = InterchangeData({"input_ids": torch.randint(0, vocab, (n, length), generator=g)},
                           {"input_ids": torch.randint(0, vocab, (n, length), generator=g)},
                           pos, pos.clone(), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    with torch.no_grad():
        data.labels = evaluate_logits(PlainForward(model, site, teacher), data).argmax(-1)
        data.base_labels = model(**data.base).logits[:, -1].argmax(-1)
    return data


def evaluate_logits(forward, data: InterchangeData, batch_size: int = 256) -> torch.Tensor:
    """Answer logits of every example, in batches."""
    with torch.no_grad():
        return torch.cat([forward(data.select(slice(i, i + batch_size))) for i in range(0, len(data), batch_size)])


class Pyvene:
    """pyvene 0.1.8's BoundlessRotatedSpaceIntervention at the site, started from a given rotation."""

    def __init__(self, model, site: Site, position: int, rotation: torch.Tensor):
        config = pv.IntervenableConfig(
            representations=[{"layer": site.layer, "component": "block_output", "unit": "pos", "max_number_of_units": 1}],
            intervention_types=pv.BoundlessRotatedSpaceIntervention,
        )
        self.intervenable = pv.IntervenableModel(config, model)
        self.intervenable.disable_model_gradients()
        self.iv = list(self.intervenable.interventions.values())[0]
        with torch.no_grad():  # pyvene rotates x @ W; das_lib x @ w.T: the same start means W = w.T
            self.iv.rotate_layer.weight = rotation.T.contiguous()
        self.position = position

    def __call__(self, batch: InterchangeData) -> torch.Tensor:
        _, out = self.intervenable({"input_ids": batch.base["input_ids"]}, [{"input_ids": batch.source["input_ids"]}],
                                   {"sources->base": self.position})
        return out.logits[:, -1]

    def train(self, data: InterchangeData, config: TrainConfig, eval_data: InterchangeData | None = None) -> tuple[float, float | None]:
        """das_lib.method.training.train_intervention's loop, step for step, on pyvene: (seconds, IIA)."""
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        rotation = list(self.iv.rotate_layer.parameters())
        optimizer = torch.optim.Adam([{"params": rotation, "lr": config.lr},
                                      {"params": [self.iv.intervention_boundaries], "lr": config.boundary_lr}])
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        order, cursor = random_order(len(data), generator), 0
        start = time.perf_counter()
        for step in range(config.steps):
            batch, order, cursor = next_batch(data, order, cursor, config.batch_size, generator)
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * lr_factor(step, config)
            self.intervenable.set_temperature(torch.tensor(temperature_at(step, config)))
            logits = self(batch)
            loss = F.cross_entropy(logits.float(), batch.labels)
            loss = loss + config.boundary_loss_weight * self.iv.intervention_boundaries.clamp(1e-3, 1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _ = loss.item(), accuracy(logits.detach(), batch.labels)  # the same per-step bookkeeping as das_lib
        seconds = time.perf_counter() - start
        iia = None if eval_data is None else accuracy(evaluate_logits(self, eval_data), eval_data.labels)
        return seconds, iia


def check_agreement(logits: dict[str, torch.Tensor], tolerance: float = MAX_LOGIT_DIFF) -> float:
    """The largest difference between any two methods' logits; an error if it exceeds `tolerance`."""
    diff = max((a - b).abs().max().item() for a, b in itertools.combinations(logits.values(), 2))
    if not diff <= tolerance:
        raise RuntimeError(f"{' / '.join(logits)} do not compute the same thing: their logits at the shared start differ "
                           f"by up to {diff:.3g} (more than {tolerance:g}); timing them side by side would compare "
                           "different computations, so fix the implementation before benchmarking")
    return diff


def das_lib_train(forward, iv, data, config, eval_data=None) -> tuple[float, float | None]:
    """das_lib's own training loop: (seconds, IIA)."""
    result = train_intervention(forward, iv, data, config, eval_data, progress=False)
    return result.seconds, result.iia


def load() -> str:
    return "%.1f/%.1f/%.1f" % os.getloadavg()


def run_cell(model_name: str, model, layer: int, position: int, args, iia: bool) -> dict:
    """Time the three methods (interleaved rounds) and, if `iia`, train each to the end and evaluate."""
    d = model.config.hidden_size
    site = Site(layer, f"pos{position}")
    torch.manual_seed(1000 + layer)
    teacher = DASIntervention(d, d // 4)
    train = teacher_pairs(model, site, position, args.train, args.length, 1, teacher)
    test = teacher_pairs(model, site, position, args.test, args.length, 2, teacher)
    torch.manual_seed(0)
    init = BoundlessDASIntervention(d).state_dict()
    rotation = BoundlessDASIntervention(d)
    rotation.load_state_dict(init)
    rotation = rotation.rotation.weight.detach()

    def fresh() -> BoundlessDASIntervention:
        iv = BoundlessDASIntervention(d)
        iv.load_state_dict(init)
        return iv

    row = {"model": model_name, "layer": layer, "position": position - args.length, "load_before": load()}
    t0 = time.perf_counter()
    iv_fast = fresh()
    fast = make_forward(model, site, iv_fast, [train, test])
    row["cache_s"] = time.perf_counter() - t0
    assert isinstance(fast, CachedForward)
    row["cache_mib"] = sum(s.nbytes() for s in fast.stores) / 2**20
    iv_plain = fresh()
    plain = PlainForward(model, site, iv_plain)
    methods = {"fast": lambda cfg, ev=None: das_lib_train(fast, iv_fast, train, cfg, ev),
               "plain": lambda cfg, ev=None: das_lib_train(plain, iv_plain, train, cfg, ev)}
    if pv is not None:
        pyv = Pyvene(model, site, position, rotation)
        methods["pyvene"] = lambda cfg, ev=None: pyv.train(train, cfg, ev)
        pyv.intervenable.set_temperature(torch.tensor(5.0))
    iv_fast.temperature = iv_plain.temperature = 5.0
    batch = test.select(slice(0, 32))
    with torch.no_grad():  # the same computation: the same logits at the shared starting point
        logits = {"fast": fast(batch), "plain": plain(batch)} | ({"pyvene": pyv(batch)} if pv is not None else {})
    row["compared"] = list(logits)
    row["max_logit_diff"] = check_agreement(logits)
    t_start = max(1.0, 50.0 * d / 4096)
    short = TrainConfig(steps=args.timing_steps, batch_size=args.batch, lr=args.lr, boundary_lr=args.boundary_lr,
                        temperature_start=t_start)
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):  # interleaved, so that a change of machine load hits every method alike
        for name, train_fn in methods.items():
            w, c = time.perf_counter(), time.process_time()
            train_fn(short)
            wall[name].append((time.perf_counter() - w) / short.steps)
            cpu[name].append((time.process_time() - c) / short.steps)
    for name in methods:
        row[f"{name}_ms"] = 1000 * statistics.median(cpu[name])
        row[f"{name}_wall_ms"] = 1000 * statistics.median(wall[name])
    row["no_intervention"] = (test.base_labels == test.labels).float().mean().item()
    if iia:
        full = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, boundary_lr=args.boundary_lr,
                           temperature_start=t_start)
        for name in [m for m in methods if m != "plain" or args.iia_plain]:  # each from the same initial state
            if name == "pyvene":
                pyv = Pyvene(model, site, position, rotation)
                _, row["pyvene_iia"] = pyv.train(train, full, test)
            else:
                iv = fresh()
                forward = make_forward(model, site, iv, [train, test], fast=name == "fast")
                _, row[f"{name}_iia"] = das_lib_train(forward, iv, train, full, test)
        # how far float rounding alone moves the final IIA: das_lib from starts 1e-6 apart
        jitter = []
        for k in range(args.jitter):
            iv = fresh()
            with torch.no_grad():
                torch.manual_seed(10 + k)
                for p in iv.parameters():
                    p.add_(1e-6 * torch.randn_like(p))
            jitter.append(das_lib_train(make_forward(model, site, iv, [train, test]), iv, train, full, test)[1])
        if jitter:
            row["jitter_iia"] = (min(jitter + [row["fast_iia"]]), max(jitter + [row["fast_iia"]]))
    row["load_after"] = load()
    return row


def fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if row.get(key) is not None else "-"


def print_table(rows: list[dict]) -> None:
    has_pv = any("pyvene_ms" in r for r in rows)
    methods = ["fast", "plain"] + (["pyvene"] if has_pv else [])
    head = ["model", "layer", "pos"] + [f"{m} steps/s" for m in methods]
    head += ["fast/pyvene", "plain/pyvene", "fast/pyvene (wall)"] if has_pv else []
    head += ["fast/plain", "IIA fast", "IIA fast, rounding spread", "IIA plain"] + (["IIA pyvene"] if has_pv else [])
    head += ["no-interv.", "cache s", "cache MiB", "load after"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["model"], str(r["layer"]), str(r["position"])] + [f"{1000 / r[m + '_ms']:.1f}" for m in methods]
        if has_pv:
            cells += [f"{r['pyvene_ms'] / r['fast_ms']:.1f}x", f"{r['pyvene_ms'] / r['plain_ms']:.1f}x",
                      f"{r['pyvene_wall_ms'] / r['fast_wall_ms']:.1f}x"]
        spread = "%.3f-%.3f" % tuple(r["jitter_iia"]) if "jitter_iia" in r else "-"
        cells += [f"{r['plain_ms'] / r['fast_ms']:.1f}x", fmt(r, "fast_iia", ".3f"), spread, fmt(r, "plain_iia", ".3f")]
        cells += [fmt(r, "pyvene_iia", ".3f")] if has_pv else []
        cells += [fmt(r, "no_intervention", ".3f"), fmt(r, "cache_s", ".2f"), fmt(r, "cache_mib", ".1f"), r["load_after"]]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small model, one cell, few steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=31, help="tokens per input")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--train", type=int, default=2048, help="training pairs")
    parser.add_argument("--test", type=int, default=512, help="held-out pairs")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the IIA runs")
    parser.add_argument("--timing-steps", type=int, default=16, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--boundary-lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--iia-plain", action="store_true", help="also train the plain path to the end (its IIA "
                        "equals the fast path's: tests/test_fastpath.py)")
    parser.add_argument("--jitter", type=int, default=2, help="extra das_lib runs from starts 1e-6 apart")
    parser.add_argument("--json", help="append each cell's numbers to this JSON-lines file")
    parser.add_argument("--iia-large", action="store_true", help="also train the 8-layer model to the end (slow)")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.steps, args.timing_steps, args.rounds = 256, 128, 20, 3, 1
    warnings.simplefilter("ignore", UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"pyvene {importlib.metadata.version('pyvene') if pv else 'not installed'}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"batch {args.batch}, {args.length} tokens, vocab {args.vocab}, {args.train} train / {args.test} held-out pairs, "
          f"{args.steps} training steps (lr {args.lr}, boundary lr {args.boundary_lr}), timing: median of "
          f"{args.rounds} interleaved rounds of {args.timing_steps} steps, per-step CPU time of this process "
          "(wall time in the log)")
    rows = []
    cells = [("4L d64", 2, args.length - 1)] if args.quick else [
        (name, layer, pos)
        for name, layers in [("4L d64", (0, 2, 3)), ("8L d256", (1, 4, 7))]
        if name in args.models.split(",")
        for layer in layers
        for pos in (args.length - 1, args.length - 11)
    ]
    models = {}
    for name, layer, pos in cells:
        if name not in models:
            models[name] = build_model(name, args.vocab, seed=0)
        iia = name == "4L d64" or args.iia_large
        rows.append(run_cell(name, models[name], layer, pos, args, iia))
        r = rows[-1]
        print(f"  {name} layer {layer} pos {pos - args.length}: "
              + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k not in ("model", "layer", "position")), flush=True)
        if args.json:  # every number at full precision, one cell a line
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
