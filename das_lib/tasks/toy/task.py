"""The toy task of chapter 1: compute (a + b) * c from three digits.

Two causal models solve it with the same outputs but different intermediate variables:
`sum_model` computes S = a + b first (the hypothesis we expect a network to realise),
`distributive_model` computes P = a * c and Q = b * c and adds them (a wrong hypothesis for contrast:
interchanging P predicts other counterfactual outputs than interchanging S). Inputs are digit triples,
encoded as numbers for a network that reads `x=` (das_lib.models.toy), and pairs of them labelled by running
a causal model; the tables are what chapter 1 shows of them.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from das_lib.method.causal import CausalModel, Variable
from das_lib.method.counterfactual import CounterfactualPair, sample_causal_pairs
from das_lib.method.data import InterchangeData

INPUTS = ("a", "b", "c")


def sum_model() -> CausalModel:
    """(a + b) * c through the intermediate variable S = a + b."""
    return CausalModel(
        "sum",
        INPUTS,
        [Variable("S", ("a", "b"), lambda a, b: a + b), Variable("O", ("S", "c"), lambda s, c: s * c)],
        output="O",
    )


def distributive_model() -> CausalModel:
    """(a + b) * c computed as P + Q with P = a * c and Q = b * c (same outputs, other variables)."""
    return CausalModel(
        "distributive",
        INPUTS,
        [
            Variable("P", ("a", "c"), lambda a, c: a * c),
            Variable("Q", ("b", "c"), lambda b, c: b * c),
            Variable("O", ("P", "Q"), lambda p, q: p + q),
        ],
        output="O",
    )


def all_triples(n_digits: int) -> list[dict[str, int]]:
    """Every input {a, b, c} with digits 0..n_digits-1."""
    if n_digits < 2:
        raise ValueError(f"n_digits must be at least 2, got {n_digits}")
    return [dict(zip(INPUTS, t)) for t in itertools.product(range(n_digits), repeat=3)]


def split_triples(n_digits: int, test_frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """All triples shuffled with `seed` and split into (train, held-out test)."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    triples = all_triples(n_digits)
    random.Random(seed).shuffle(triples)
    n_test = max(1, round(test_frac * len(triples)))
    return triples[n_test:], triples[:n_test]


def n_classes(n_digits: int) -> int:
    """Number of output classes: every value 0..(2 (n_digits - 1)) * (n_digits - 1)."""
    return 2 * (n_digits - 1) ** 2 + 1


def encode(triples: Sequence[Mapping[str, int]]) -> torch.Tensor:
    """(N, 3) long tensor of the digits a, b, c: the network's input `x`."""
    return torch.tensor([[t[k] for k in INPUTS] for t in triples], dtype=torch.long, device="cpu")


def sample_toy_pairs(
    causal: CausalModel, triples: Sequence[Mapping[str, int]], variable: str, n: int, seed: int
) -> list[CounterfactualPair]:
    """`n` pairs with base and source drawn from `triples`, labelled by interchanging `variable`."""
    pool = list(triples)
    return sample_causal_pairs(causal, lambda rng: rng.choice(pool), [variable], n, seed)


def interchange_data(pairs: Sequence[CounterfactualPair]) -> InterchangeData:
    """Tensors for das_lib.method.training: base/source digits as `x`, counterfactual labels as classes."""
    return InterchangeData(
        base={"x": encode([p.base for p in pairs])},
        source={"x": encode([p.source for p in pairs])},
        base_pos=None,
        source_pos=None,
        variable=torch.zeros(len(pairs), dtype=torch.long, device="cpu"),
        labels=torch.tensor([p.label for p in pairs], device="cpu"),
        base_labels=torch.tensor([p.base_label for p in pairs], device="cpu"),
    )


def describe(triple: Mapping[str, Any]) -> str:
    """'(a + b) * c' with the digits filled in."""
    return f"({triple['a']} + {triple['b']}) * {triple['c']}"


def interchange_table(models: Mapping[str, CausalModel], base: Mapping, source: Mapping) -> pd.DataFrame:
    """Per intermediate variable (key of `models`, the causal model holding it): its value on the
    source, and the causal model's output on the base with that value (the counterfactual label)."""
    return pd.DataFrame([{"variable": v, "causal model": m.name, f"on the source {describe(source)}": m.run(source)[v],
                          f"base {describe(base)} with it": m.interchange(base, source, [v])}
                         for v, m in models.items()]).set_index("variable")


def same_outputs(a: CausalModel, b: CausalModel, n_digits: int) -> bool:
    """Whether the two causal models give the same output on every triple."""
    return all(a.predict(t) == b.predict(t) for t in all_triples(n_digits))


def pair_split(
    causal: CausalModel, variable: str, triples: tuple[Sequence[Mapping], Sequence[Mapping]], sizes: tuple[int, int],
    seed: int,
) -> tuple[list[CounterfactualPair], list[CounterfactualPair]]:
    """(training pairs, held-out pairs) interchanging `variable`, drawn from the (train, test) triples with
    seeds seed + 1 and seed + 2: the same (base, source) inputs for every causal model."""
    return (sample_toy_pairs(causal, triples[0], variable, sizes[0], seed + 1),
            sample_toy_pairs(causal, triples[1], variable, sizes[1], seed + 2))


def noop_rate(pairs: Sequence[CounterfactualPair]) -> float:
    """Share of pairs whose label is the base's own answer: the IIA of doing nothing."""
    return sum(p.label == p.base_label for p in pairs) / len(pairs)


def labels_differ(a: Sequence[CounterfactualPair], b: Sequence[CounterfactualPair]) -> float:
    """Share of pair positions where two pair lists (same inputs, two hypotheses) have different labels."""
    return sum(x.label != y.label for x, y in zip(a, b)) / len(a)


def pairs_table(pairs: Mapping[str, Sequence[CounterfactualPair]]) -> pd.DataFrame:
    """Pairs of several hypotheses (same inputs) side by side: base, source, base answer, label under each."""
    first = next(iter(pairs.values()))
    return pd.DataFrame([{"base": describe(p.base), "source": describe(p.source), "base answer": p.base_label,
                          **{f"label under {v}": ps[i].label for v, ps in pairs.items()}}
                         for i, p in enumerate(first)])
