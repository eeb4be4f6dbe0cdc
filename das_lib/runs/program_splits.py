"""The data of a search over programs: train, validation and test pairs chosen to separate the space's groups.

Each split is chosen from a random pool of (base, source) games `pool_factor` times its size: first the
pairs that tell apart label functions of the space that few pool pairs tell apart
(`das_lib.method.separation.separating_pairs`), then random ones; no pair is in two splits. Every
candidate of the space is labelled on every pair by running its causal model. The pairs depend on the
whole space and the sizes and seed only, never on which groups or sites a search trains.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any

from das_lib.method.seeds import split_seeds
from das_lib.method.separation import group, label_functions, restrict, separating_pairs
from das_lib.pricetag import programs
from das_lib.pricetag.game import sample_pair

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split's pairs and every candidate's label functions on them."""

    pairs: list[tuple[dict, dict]]
    labels: dict[str, tuple[tuple[Any, ...], ...]]


@functools.lru_cache(maxsize=4)
def splits(n_train: int, n_val: int, n_test: int, pool_factor: int, separating_share: float, data_seed: int,
            n_brackets: int, thresholds: tuple[int, ...]) -> dict[str, Split]:
    """Each split's pairs and labels for one data config, made once per process (searches of several models
    share them)."""
    space = programs.space(n_brackets, data_seed, thresholds)
    out, seen = {}, set()
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for name, seed in zip(SPLITS, split_seeds(data_seed, len(SPLITS))):
        rng = random.Random(seed)
        pool = [p for p in (sample_pair(rng) for _ in range(sizes[name] * pool_factor)) if pair_key(p) not in seen]
        labels = {c.key: label_functions(c, pool) for c in space.candidates}
        chosen = separating_pairs(group(labels).functions, sizes[name], math.ceil(separating_share * sizes[name]), seed)
        out[name] = Split([pool[i] for i in chosen], restrict(labels, chosen))
        seen |= {pair_key(pool[i]) for i in chosen}
    return out


def pair_key(pair: tuple[dict, dict]) -> tuple:
    """A (base, source) pair as a hashable key."""
    return tuple(sorted(pair[0].items())) + tuple(sorted(pair[1].items()))
