"""The network of chapter 1, for its toy task (das_lib.tasks.toy.task: (a + b) * c from three digits).

The network is a small MLP that reads the digits as numbers; its hidden layers are `self.layers` and
its forward takes `x=`, so the sites, interventions and training loop of das_lib work on it exactly as
on a language model.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from das_lib.method.causal import CausalModel
from das_lib.method.data import InterchangeData
from das_lib.method.interventions import DASIntervention, NeuronIntervention
from das_lib.method.metrics import accuracy, correct
from das_lib.method.neurons import NeuronResult, exhaustive_neuron_search
from das_lib.method.sites import Site, answer_logits, capture, intervened_logits
from das_lib.method.stats import paired_difference
from das_lib.method.training import PlainForward, TrainConfig, TrainResult, set_seed, train_intervention
from das_lib.tasks.toy.task import encode, n_classes, sum_model


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


# --- Chapter 1's steps, as data the chapter shows (tables and values; the chapter writes the prose) ---


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
