"""The toy task of chapter 1: compute (a + b) * c from three digits.

Two causal models solve it with the same outputs but different intermediate variables:
`sum_model` computes S = a + b first (the hypothesis we expect a network to realise),
`distributive_model` computes P = a * c and Q = b * c and adds them (a wrong hypothesis for contrast:
interchanging P predicts other counterfactual outputs than interchanging S).
The network is a small MLP that reads the digits as numbers; its hidden layers are `self.layers` and
its forward takes `x=`, so the sites, interventions and training loop of das_lib work on it exactly as
on a language model.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from das_lib.method.causal import CausalModel, Variable
from das_lib.method.counterfactual import CounterfactualPair, sample_causal_pairs
from das_lib.method.data import InterchangeData
from das_lib.method.interventions import DASIntervention
from das_lib.method.metrics import accuracy
from das_lib.method.sites import Site, answer_logits, capture, intervened_logits
from das_lib.method.training import PlainForward, TrainConfig, TrainResult, set_seed, train_intervention

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
    return torch.tensor([[t[k] for k in INPUTS] for t in triples], dtype=torch.long)


class ToyMLP(nn.Module):
    """An MLP from the numbers (a, b, c) to a class per output value; its layers are `self.layers`.

    Layer 0 is Linear(3, width); layer i > 0 is ReLU then Linear(width, width); the head is ReLU then
    Linear(width, n_classes). So each site (a layer's output) is a pre-activation: a sum of
    contributions, like the residual stream of a transformer, where a variable can own a direction.
    """

    def __init__(self, n_digits: int, width: int, n_layers: int):
        super().__init__()
        self.n_digits, self.width = n_digits, width
        self.layers = nn.ModuleList(
            nn.Linear(3, width) if i == 0 else nn.Sequential(nn.ReLU(), nn.Linear(width, width))
            for i in range(n_layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(width, n_classes(n_digits)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) for digits x of shape (B, 3)."""
        h = x.float() / (self.n_digits - 1)  # the digits as numbers in [0, 1]
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def train_toy_model(
    triples: Sequence[Mapping[str, int]],
    n_digits: int,
    width: int = 64,
    n_layers: int = 3,
    steps: int = 1000,
    lr: float = 1e-2,
    weight_decay: float = 0.1,
    seed: int = 0,
) -> ToyMLP:
    """Train a ToyMLP on `triples` (full batch, AdamW) with labels from running `sum_model`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    set_seed(seed)
    model = ToyMLP(n_digits, width, n_layers)
    causal = sum_model()
    x = encode(triples)
    y = torch.tensor([causal.predict(t) for t in triples])
    # weight decay makes the network generalise to held-out triples instead of memorising them
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # linear decay to zero: the last steps settle instead of oscillating at a high learning rate
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x=x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen from here on: only interventions are trained
    return model


def network_accuracy(model: nn.Module, triples: Sequence[Mapping[str, int]], causal: CausalModel) -> float:
    """How often the network's answer equals the causal model's output on `triples`."""
    with torch.no_grad():
        logits = answer_logits(model, {"x": encode(triples)})
    return accuracy(logits, torch.tensor([causal.predict(t) for t in triples]))


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
        variable=torch.zeros(len(pairs), dtype=torch.long),
        labels=torch.tensor([p.label for p in pairs]),
        base_labels=torch.tensor([p.base_label for p in pairs]),
    )


def train_das(
    model: ToyMLP, site: Site, k: int, train: InterchangeData, test: InterchangeData, config: TrainConfig
) -> tuple[DASIntervention, TrainResult]:
    """Learn a DAS rotation with a k-dimensional subspace at `site`; result.iia is on `test`."""
    set_seed(config.seed)  # the rotation's initial value depends on the seed
    intervention = DASIntervention(model.width, k)
    result = train_intervention(PlainForward(model, site, intervention), intervention, train, config, test, progress=False)
    return intervention, result


def das_by_layer(
    model: ToyMLP, k: int, train: InterchangeData, test: InterchangeData, config: TrainConfig
) -> list[tuple[DASIntervention, TrainResult]]:
    """`train_das` at every layer of the network, in layer order."""
    return [train_das(model, Site(layer), k, train, test, config) for layer in range(len(model.layers))]


def intervened_answer(model: nn.Module, site: Site, intervention: nn.Module, base: Mapping, source: Mapping) -> int:
    """The network's answer on `base` when `intervention` brings in the site's vector from `source`."""
    with torch.no_grad():
        source_vectors = capture(model, site, {"x": encode([source])}, None)
        logits = intervened_logits(model, site, {"x": encode([base])}, None, source_vectors, intervention)
    return int(logits.argmax(-1).item())


def describe(triple: Mapping[str, Any]) -> str:
    """'(a + b) * c' with the digits filled in."""
    return f"({triple['a']} + {triple['b']}) * {triple['c']}"
