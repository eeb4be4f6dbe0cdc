"""What Boundless DAS costs as the model grows: the values one intervention holds while it trains, and a
7B model's size, for any hidden size and rotation rank.

`rotation_footprint` counts analytically, so it works for Alpaca's d = 4096 without building a 4096 x 4096
matrix exponential; `measure_footprint` counts a real intervention after one training step, and the
tests hold the two equal.

What das_lib's `BoundlessDASIntervention` holds (see interventions.OrthonormalMap):
- full rotation (r = d): torch's orthogonal parametrization with the matrix exponential stores an
  unconstrained d x d parameter (only its strictly lower triangle matters: d(d-1)/2 free values, the
  dimension of the rotation group) and a d x d buffer `base` (the rotation it started from);
- low rank (r < d): Householder reflectors in a d x r parameter (d*r - r(r+1)/2 free values), no buffer.
Training adds a gradient and Adam's two moments per stored parameter value, and every step
materialises the r x d weight.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.method.interventions import BoundlessDASIntervention
from das_lib.method.training import TrainConfig, make_optimizer

# Alpaca 7B is LLaMA 7B fine-tuned: its config.json
ALPACA_7B = {"hidden_size": 4096, "num_layers": 32, "intermediate_size": 11008, "vocab_size": 32000, "num_heads": 32}
FOOTPRINT_KINDS = ("parameters", "free", "buffers", "gradients", "adam", "weight")


def _check_sizes(d: int, r: int | None, n_variables: int) -> int:
    r = d if r is None else r
    if d < 1 or not 1 <= r <= d or not 1 <= n_variables <= r:
        raise ValueError(f"need 1 <= n_variables <= r <= d, got d={d}, r={r}, n_variables={n_variables}")
    return r


def rotation_footprint(d: int, r: int | None = None, n_variables: int = 1) -> dict[str, int]:
    """Values a training BoundlessDASIntervention(d, r) holds, by kind (see FOOTPRINT_KINDS), plus 'resident'.

    parameters: stored trainable values; free: those the optimiser can actually move; buffers: the rotation's (not the temperature, one number); gradients
    and adam (two moments): one per stored parameter value; weight: the r x d matrix each step
    materialises. resident = parameters + buffers + gradients + adam + weight.
    """
    r = _check_sizes(d, r, n_variables)
    full = r == d
    counts = {
        "parameters": r * d + n_variables,  # the parametrization's matrix and the boundaries
        "free": d * r - r * (r + 1) // 2 + n_variables,  # dimension of the Stiefel manifold (d(d-1)/2 for r = d)
        "buffers": d * d if full else 0,  # the matrix exponential's starting rotation `base`
        "gradients": r * d + n_variables,
        "adam": 2 * (r * d + n_variables),
        "weight": r * d,
    }
    counts["resident"] = sum(counts[k] for k in ("parameters", "buffers", "gradients", "adam", "weight"))
    return counts


def measure_footprint(d: int, r: int | None = None, n_variables: int = 1, seed: int = 0) -> dict[str, int]:
    """The counts of `rotation_footprint`, taken from a real intervention after one Adam step."""
    _check_sizes(d, r, n_variables)
    torch.manual_seed(seed)
    intervention = BoundlessDASIntervention(d, r, n_variables)
    intervention.temperature = 1.0
    optimizer = make_optimizer(intervention, TrainConfig())
    base, source = torch.randn(4, d, device="cpu"), torch.randn(4, d, device="cpu")
    variable = torch.arange(4, device="cpu") % n_variables
    (intervention(base, source, variable) ** 2).sum().backward()
    grads = sum(p.grad.numel() for p in intervention.parameters())
    optimizer.step()
    adam = sum(t.numel() for s in optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
    # free values: those a generic function of the rotation has a gradient for (a random linear one:
    # a loss through the mask could leave some at zero by symmetry, mixing dims the mask treats alike)
    optimizer.zero_grad(set_to_none=True)
    weight = intervention.rotation.weight
    (torch.randn(weight.shape, device="cpu") * weight).sum().backward()
    rotation_free = sum(int((p.grad != 0).sum()) for p in intervention.rotation.parameters())
    counts = {
        "parameters": sum(p.numel() for p in intervention.parameters()),
        "free": rotation_free + intervention.boundaries.numel(),
        "buffers": sum(b.numel() for b in intervention.rotation.buffers()),  # the one-number temperature aside
        "gradients": grads,
        "adam": adam,
        "weight": weight.numel(),
    }
    counts["resident"] = sum(counts[k] for k in ("parameters", "buffers", "gradients", "adam", "weight"))
    return counts


def llama_parameter_count(hidden_size: int, num_layers: int, intermediate_size: int, vocab_size: int, num_heads: int) -> int:
    """Parameters of a Llama of this shape (untied embeddings, like LLaMA 7B), built on the meta device (no memory)."""
    config = LlamaConfig(hidden_size=hidden_size, num_hidden_layers=num_layers, intermediate_size=intermediate_size,
                         vocab_size=vocab_size, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model: nn.Module = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def paper_layers(num_layers: int, every: int = 5) -> list[int]:
    """The layers the paper searched: 0, 5, 10, ... below num_layers (7 layers for LLaMA 7B's 32)."""
    return list(range(0, num_layers, every))


def footprint_checks(sizes: Sequence[tuple[int, int | None]], seed: int = 0) -> pd.DataFrame:
    """For each (d, r) (r None: the full rotation), the counts `measure_footprint` takes from a real
    intervention, and whether `rotation_footprint`'s formula gives the same."""
    rows = []
    for d, r in sizes:
        measured = measure_footprint(d, r, seed=seed)
        rows.append({"d": d, "r": r or d, **{k: measured[k] for k in FOOTPRINT_KINDS},
                     "formula agrees": rotation_footprint(d, r) == measured})
    return pd.DataFrame(rows)


def grid_estimate(hidden_size: int, num_layers: int, intermediate_size: int, vocab_size: int, num_heads: int,
                  n_positions: int, rank: int, minutes_per_cell: float, hypotheses: int = 4) -> dict[str, Any]:
    """What the paper's grid (layers 0, 5, ... x n_positions, one alignment per cell and hypothesis) costs for
    a Llama of this shape: the model's size, the saved alignments (full and rank r, float32, with the
    full rotation's buffer) and the GPU time at `minutes_per_cell` a cell. Arithmetic, not measurement."""
    n_params = llama_parameter_count(hidden_size, num_layers, intermediate_size, vocab_size, num_heads)
    layers = paper_layers(num_layers)
    cells = len(layers) * n_positions
    saved = {name: (f["parameters"] + f["buffers"]) * 4 for name, f in
             (("full", rotation_footprint(hidden_size)), ("low", rotation_footprint(hidden_size, rank)))}
    return {"model_params": n_params, "model_params_b": n_params / 1e9, "model_gib_bf16": n_params * 2 / 2**30,
            "layers": layers, "grid_layers": len(layers), "grid_positions": n_positions, "grid_cells": cells,
            "grid_rank": rank,
            "grid_full_gib": cells * saved["full"] / 2**30, "grid_low_mib": cells * saved["low"] / 2**20,
            "hypotheses": hypotheses, "minutes_per_cell": minutes_per_cell,
            "grid_gpu_hours": hypotheses * cells * minutes_per_cell / 60}


def footprint_summary(d: int, r: int) -> dict[str, float]:
    """The footprint numbers chapter 7 names, for the full rotation and rank r at width d: millions of
    values (parameters, free, buffers), MiB resident in float32, their ratio, and the MiB of the 2d x 2d
    block matrix through which torch differentiates the matrix exponential."""
    full, low = rotation_footprint(d), rotation_footprint(d, r)
    mib = lambda n: n * 4 / 2**20  # noqa: E731  (float32: 4 bytes a value)
    return {"d": d, "rank": r, "full_parameters_m": full["parameters"] / 1e6, "full_free_m": full["free"] / 1e6,
            "full_buffers_m": full["buffers"] / 1e6, "full_resident_mib": mib(full["resident"]),
            "low_parameters_k": low["parameters"] / 1e3, "low_resident_mib": mib(low["resident"]),
            "resident_ratio": full["resident"] / low["resident"], "backward_block_mib": mib((2 * d) ** 2)}
