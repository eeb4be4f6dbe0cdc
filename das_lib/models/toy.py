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

import numpy as np
import pandas as pd
import torch
from torch import nn

from das_lib.method.causal import CausalModel, Variable
from das_lib.method.counterfactual import CounterfactualPair, sample_causal_pairs
from das_lib.method.data import InterchangeData
from das_lib.method.interventions import DASIntervention, NeuronIntervention
from das_lib.method.metrics import accuracy, correct
from das_lib.method.neurons import NeuronResult, exhaustive_neuron_search
from das_lib.method.sites import Site, answer_logits, capture, intervened_logits
from das_lib.method.stats import paired_difference
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
    return torch.tensor([[t[k] for k in INPUTS] for t in triples], dtype=torch.long, device="cpu")


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
    y = torch.tensor([causal.predict(t) for t in triples], device="cpu")
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
    return accuracy(logits, torch.tensor([causal.predict(t) for t in triples], device="cpu"))


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


# --- Chapter 1's steps, as data the chapter shows (tables and values; the chapter writes the prose) ---


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


def neuron_search_by_layer(model: ToyMLP, sizes: list[int], data: InterchangeData) -> dict[int, list[NeuronResult]]:
    """`exhaustive_neuron_search` at every layer of the network: layer -> results, best first."""
    return {layer: exhaustive_neuron_search(model, Site(layer), model.width, sizes, data)
            for layer in range(len(model.layers))}


def iia_by_layer(
    neuron_search: Mapping[int, Sequence[NeuronResult]], das: Mapping[str, Sequence[tuple[DASIntervention, TrainResult]]],
    k: int,
) -> pd.DataFrame:
    """One row per (layer, method): the best neuron set's IIA, then DAS's for each variable of `das`
    (the first is the hypothesis; the others are labelled wrong)."""
    rows = [{"layer": layer, "method": "best neuron set, S", "IIA": found[0].iia} for layer, found in neuron_search.items()]
    for i, (variable, runs) in enumerate(das.items()):
        name = f"DAS (k={k}), {variable}" + (" (wrong)" if i else "")
        rows += [{"layer": layer, "method": name, "IIA": result.iia} for layer, (_, result) in enumerate(runs)]
    return pd.DataFrame(rows)


def best_layer_summary(
    neuron_search: Mapping[int, Sequence[NeuronResult]], das_S: Sequence[tuple[DASIntervention, TrainResult]],
    das_P: Sequence[tuple[DASIntervention, TrainResult]],
) -> dict[str, float | int]:
    """The layer where DAS on S does best, DAS's IIA there for S and for P, and the best neuron set's IIA anywhere."""
    best = max(range(len(das_S)), key=lambda layer: das_S[layer][1].iia)
    return {"best_layer": best, "das_iia": das_S[best][1].iia, "wrong_iia": das_P[best][1].iia,
            "exhaustive_iia": max(found[0].iia for found in neuron_search.values())}


def right_by_pair(model: nn.Module, data: InterchangeData, site: Site | None = None,
                  intervention: nn.Module | None = None) -> np.ndarray:
    """Per pair, 1 where the network outputs the pair's label, else 0: with `intervention` at `site`, or left alone."""
    with torch.no_grad():
        logits = (answer_logits(model, data.base) if intervention is None
                  else PlainForward(model, site, intervention)(data))
    return correct(logits, data.labels).numpy().astype(int)


# The chapter's comparisons, each (a, b) for `paired_difference(a, b)` on the same held-out pairs.
COMPARISONS = {"neurons": ("best neuron set", "nothing on S"), "das": ("DAS on S", "nothing on S"),
               "wrong": ("DAS on P", "nothing on P"), "greedy": ("best greedy set", "DAS on S")}


def comparisons(
    model: ToyMLP, site: Site, das_S: Sequence[tuple[DASIntervention, TrainResult]],
    das_P: Sequence[tuple[DASIntervention, TrainResult]], neuron_search: Mapping[int, Sequence[NeuronResult]],
    greedy_path: Sequence[NeuronResult], data_S: InterchangeData, data_P: InterchangeData,
) -> dict[str, tuple[float, float, float]]:
    """COMPARISONS on the held-out pairs, each (mean of a - b, 95% low, high) from `paired_difference`: DAS
    at `site` and the best neuron set anywhere against leaving the network alone, on the labels of the
    variable they swap, and the best set of the greedy path against DAS on S."""
    neurons = max((found[0] for found in neuron_search.values()), key=lambda r: r.iia)
    greedy = max(greedy_path, key=lambda r: r.iia)
    right = {"nothing on S": right_by_pair(model, data_S), "nothing on P": right_by_pair(model, data_P),
             "DAS on S": right_by_pair(model, data_S, site, das_S[site.layer][0]),
             "DAS on P": right_by_pair(model, data_P, site, das_P[site.layer][0])}
    for name, found in {"best neuron set": neurons, "best greedy set": greedy}.items():
        right[name] = right_by_pair(model, data_S, found.site, NeuronIntervention(model.width, list(found.dims)))
    return {name: paired_difference(right[a], right[b]) for name, (a, b) in COMPARISONS.items()}


def projection_frame(model: ToyMLP, site: Site, intervention: DASIntervention, triples: Sequence[Mapping]) -> pd.DataFrame:
    """Every triple's S = a + b, c, and its site vector projected on the rotation's first learned direction."""
    with torch.no_grad():
        hidden = capture(model, site, {"x": encode(triples)}, None)
        direction = hidden @ intervention.rotation.weight[0]
    return pd.DataFrame({"S = a + b": [t["a"] + t["b"] for t in triples], "c": [t["c"] for t in triples],
                         "projection on the learned direction": direction.numpy()})


def intervened_answers(model: ToyMLP, site: Site, base: Mapping, source: Mapping,
                       interventions: Mapping[str, nn.Module]) -> dict[str, int]:
    """The network's answer on `base` with no intervention, then with each of `interventions` from `source`."""
    plain = int(model(x=encode([base])).argmax())
    return {"no intervention": plain, **{name: intervened_answer(model, site, i, base, source)
                                         for name, i in interventions.items()}}
