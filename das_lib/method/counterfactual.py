"""Counterfactual pair datasets sampled from a causal model.

A pair is (base, source, intervened variables); its label is what the causal model outputs on the
base when those variables take their values from the source. Labels are always computed by
running the model (`CausalModel.interchange`).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from das_lib.method.causal import CausalModel


@dataclass(frozen=True)
class CounterfactualPair:
    """One training or test example for an interchange intervention."""

    base: Mapping[str, Any]
    source: Mapping[str, Any]
    variables: tuple[str, ...]
    label: Any
    base_label: Any
    source_label: Any
    meta: Mapping[str, Any] = field(default_factory=dict)


def make_pair(model: CausalModel, base: Mapping, source: Mapping, variables: Sequence[str], **meta: Any) -> CounterfactualPair:
    """Label a (base, source) pair by running `model` with `variables` taken from the source."""
    return CounterfactualPair(
        base=dict(base),
        source=dict(source),
        variables=tuple(variables),
        label=model.interchange(base, source, variables),
        base_label=model.predict(base),
        source_label=model.predict(source),
        meta=meta,
    )


def sample_causal_pairs(
    model: CausalModel,
    sample_inputs: Callable[[random.Random], Mapping[str, Any]],
    variables: Sequence[str],
    n: int,
    seed: int,
    balance: bool = False,
) -> list[CounterfactualPair]:
    """Sample `n` labelled pairs with independent base and source inputs.

    With `balance=True` pairs are drawn until every counterfactual label occurs equally often
    (n must then be a multiple of the number of labels seen).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    if not balance:
        return [make_pair(model, sample_inputs(rng), sample_inputs(rng), variables) for _ in range(n)]
    by_label: dict[Any, list[CounterfactualPair]] = {}
    for _ in range(200 * n):
        pair = make_pair(model, sample_inputs(rng), sample_inputs(rng), variables)
        by_label.setdefault(pair.label, []).append(pair)
        k = len(by_label)
        if n % k == 0 and all(len(v) >= n // k for v in by_label.values()) and sum(map(len, by_label.values())) > 20 * k:
            out = [p for v in by_label.values() for p in v[: n // k]]
            rng.shuffle(out)
            return out
    raise RuntimeError(
        f"could not balance {n} pairs over labels {dict(Counter({k: len(v) for k, v in by_label.items()}))}; "
        "use balance=False or a sampler that reaches every label"
    )


def majority_rate_of(pairs: Sequence[CounterfactualPair]) -> float:
    """Share of the most common counterfactual label: the IIA of always giving it (the dummy classifier's)."""
    counts = Counter(p.label for p in pairs)
    return max(counts.values()) / len(pairs)
