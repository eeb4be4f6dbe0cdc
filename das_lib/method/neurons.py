"""Brute-force search over neuron-aligned interventions: the baseline that DAS is compared with.

A neuron-aligned intervention swaps a fixed set of coordinates of the site's vector
(`NeuronIntervention`); nothing is learned, so the only freedom is which set. Two searches:
`exhaustive_neuron_search` tries every set of the given sizes, `greedy_neuron_search` grows one
set a neuron at a time (for when the exhaustive search is too large).
"""
from __future__ import annotations

import itertools
from math import comb
from dataclasses import dataclass

import pandas as pd
from torch import nn

from das_lib.method.data import InterchangeData
from das_lib.method.interventions import NeuronIntervention
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, evaluate

MAX_SETS = 20_000  # the most neuron sets an exhaustive search tries


@dataclass(frozen=True)
class NeuronResult:
    """IIA of swapping the neurons `dims` at `site`."""

    site: Site
    dims: tuple[int, ...]
    iia: float


def neuron_iia(model: nn.Module, site: Site, d: int, dims: tuple[int, ...], data: InterchangeData) -> NeuronResult:
    """IIA of the neuron-aligned intervention on `dims` at `site`."""
    forward = PlainForward(model, site, NeuronIntervention(d, list(dims)))
    return NeuronResult(site, tuple(dims), evaluate(forward, data))


def n_neuron_sets(d: int, sizes: list[int]) -> int:
    """How many neuron sets of the given sizes `d` neurons have."""
    return sum(comb(d, s) for s in sizes)


def exhaustive_neuron_search(
    model: nn.Module, site: Site, d: int, sizes: list[int], data: InterchangeData, max_sets: int = MAX_SETS
) -> list[NeuronResult]:
    """IIA of every set of neurons with a size in `sizes`, best first (ties: smaller, then lower dims)."""
    bad = [s for s in sizes if not 1 <= s <= d]
    if not sizes or bad:
        raise ValueError(f"neuron set sizes must be in 1..{d}, got {sizes}")
    n_sets = n_neuron_sets(d, sizes)
    if n_sets > max_sets:
        raise ValueError(
            f"{n_sets} neuron sets of sizes {sizes} among {d} neurons is more than max_sets={max_sets}; "
            "use smaller sizes or greedy_neuron_search"
        )
    results = [
        neuron_iia(model, site, d, dims, data) for s in sizes for dims in itertools.combinations(range(d), s)
    ]
    return sorted(results, key=lambda r: (-r.iia, len(r.dims), r.dims))


def greedy_neuron_search(
    model: nn.Module, site: Site, d: int, data: InterchangeData, max_size: int | None = None
) -> list[NeuronResult]:
    """Grow a set one neuron at a time, adding the neuron that raises IIA most; the set after each step."""
    max_size = d if max_size is None else max_size
    if not 1 <= max_size <= d:
        raise ValueError(f"max_size must be in 1..{d}, got {max_size}")
    chosen: tuple[int, ...] = ()
    path = []
    for _ in range(max_size):
        candidates = [neuron_iia(model, site, d, chosen + (i,), data) for i in range(d) if i not in chosen]
        best = max(candidates, key=lambda r: r.iia)  # first maximum: the lowest index wins ties
        chosen = best.dims
        path.append(best)
    return path



def best_sets_table(search: dict[int, list[NeuronResult]]) -> pd.DataFrame:
    """One row per layer of an exhaustive search (layer -> results, best first): sets tried, best set, its IIA."""
    return pd.DataFrame([{"layer": layer, "sets tried": len(found), "best set": found[0].dims, "IIA": found[0].iia}
                         for layer, found in search.items()])
