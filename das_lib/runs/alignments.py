"""One Boundless DAS alignment of a language model, trained and read.

- `train_boundless`: train one alignment at a site (fast path when the model allows it).
- `scan_sites`: short trainings at a few sites, to choose where to look.
- `planted_comparison`: how much of what varies in a subspace planted in the model the learned one
  holds (das_lib.method.subspaces reads the subspaces).
- `rank_comparison`: full rotation against low rank at one site, from the same pairs and seed.
- `intervention_example`: one base/source pair, the model's answers before and after the intervention,
  and the causal model's counterfactual.
- Chapter 4's steps, each one call: `pairs_and_references`, `choose_site`, `train_at`,
  `alignment_values`, `neuron_reading`, `planted_check`, `first_example`.
"""
from __future__ import annotations

import random
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from das_lib.method.counterfactual import CounterfactualPair, majority_rate_of
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, make_forward
from das_lib.method.interventions import BoundlessDASIntervention, RotatedSpaceIntervention
from das_lib.method.metrics import normalised_or_nan
from das_lib.method.seeds import split_seeds
from das_lib.method.readout import over_answers, predicted_tokens
from das_lib.method.sites import Site, answer_logits, capture, layer_module
from das_lib.method.subspaces import captured_variation, effective_neurons, neuron_weights, random_rotation_like, subspace
from das_lib.method.stats import beats, paired_difference
from das_lib.method.task import Task, accuracy
from das_lib.method.training import (
    InterventionForward, PlainForward, TrainConfig, TrainResult, set_seed, start_temperature, train_intervention,
    unintervened_correct, unintervened_iia,
)
from das_lib.models.standin.planted import planted_for
from das_lib.runs.scaling import rotation_footprint


def train_boundless(
    model: nn.Module,
    site: Site,
    train: InterchangeData,
    test: InterchangeData,
    config: TrainConfig,
    rank: int | None = None,
    n_variables: int = 1,
    progress: bool = False,
) -> tuple[BoundlessDASIntervention, TrainResult, InterventionForward]:
    """Train a Boundless DAS alignment (full rotation, or `rank` rotated dims) at `site`; IIA on `test`."""
    set_seed(config.seed)  # the rotation's initialisation depends on the seed too
    device = next(layer_module(model, site).parameters()).device
    intervention = BoundlessDASIntervention(model.config.hidden_size, rank, n_variables,
                                            orthogonal_map=config.orthogonal_map, device=device)
    train, test = train.to(device), test.to(device)
    forward = make_forward(model, site, intervention, [train, test])
    result = train_intervention(forward, intervention, train, config, eval_data=test, progress=progress)
    result.none_correct = unintervened_correct(model, test)
    return intervention, result, forward


def scan_sites(
    model: nn.Module,
    task: Task,
    train_pairs: Sequence[CounterfactualPair],
    test_pairs: Sequence[CounterfactualPair],
    sites: Iterable[Site],
    config: TrainConfig,
    n_variables: int = 1,
) -> pd.DataFrame:
    """One short Boundless DAS training per site: held-out IIA and learned subspace size, one row per site."""
    rows = []
    for site in sites:
        train, test = task.interchange_data(train_pairs, site.position), task.interchange_data(test_pairs, site.position)
        intervention, result, _ = train_boundless(model, site, train, test, config, n_variables=n_variables)
        rows.append({"layer": site.layer, "position": site.position, "iia": result.iia,
                     "boundary_dims": float(sum(intervention.boundary_dims()))})
    return pd.DataFrame(rows)


def intervention_example(
    model: nn.Module, task: Task, site: Site, intervention: nn.Module, pair: CounterfactualPair
) -> pd.Series:
    """One pair in action: the games, the model's answers on base and source and on the base after the
    intervention (exact, plain hooked forward), and the causal model's counterfactual answer."""
    device = next(layer_module(model, site).parameters()).device
    data = task.interchange_data([pair], site.position).to(device)
    def decode(logits: torch.Tensor) -> str:  # the answer as every IIA reads it (das_lib.method.readout)
        return task.tokenizer.decode([int(predicted_tokens(logits, data.answers)[0])]).strip()

    with torch.no_grad():
        on_base = decode(over_answers(answer_logits(model, data.base), data.answers))
        on_source = decode(over_answers(answer_logits(model, data.source), data.answers))
        after = decode(PlainForward(model, site, intervention)(data))
    row = task.pairs_table([pair]).iloc[0]  # the inputs and the causal model's answers
    return pd.Series({
        "base": row["base"],
        "source": row["source"],
        "intervened variable": row["variable"],
        "model on base": on_base,
        "model on source": on_source,
        "site": str(site),
        "model on base, intervened": after,
        "causal model's counterfactual": row["counterfactual"],
    }, name="example")


def planted_comparison(
    intervention: RotatedSpaceIntervention, site: Site, variables: Sequence[str], planted: RotatedSpaceIntervention,
    meta: dict, hidden: torch.Tensor,
) -> pd.DataFrame:
    """For each variable of an alignment that the model had planted: the two sites, the two subspace sizes,
    the share of the planted subspace's variation over `hidden` (site vectors, N x d) that the learned
    subspace holds, and the share a random subspace of the learned size would hold (k / d)."""
    planted_site = Site(meta["site"]["layer"], meta["site"]["position"])
    rows = []
    for k, name in enumerate(variables):
        if name not in meta.get("variables", []):
            continue
        learned, truth = subspace(intervention, k), subspace(planted, meta["variables"].index(name))
        same_site = site == planted_site
        rows.append({"variable": name, "learned at": str(site), "planted at": str(planted_site),
                     "learned dims": len(learned), "planted dims": len(truth),
                     "captured": captured_variation(hidden, truth, learned) if same_site else float("nan"),
                     "random": len(learned) / intervention.d if same_site else float("nan")})
    return pd.DataFrame(rows)


# --- Chapter 4's steps: the pairs and what doing nothing scores, the site, the alignment read back ---


def pairs_and_references(
    model: nn.Module, task: Task, hypothesis: str, n_train: int, n_test: int, n_task: int, seed: int,
) -> tuple[dict[str, list[CounterfactualPair]], dict[str, float]]:
    """Training, scan and test pairs of `hypothesis` (seeds from split_seeds(seed, 3); scan and test have
    n_test each), and the reference points: the model's task accuracy on n_task fresh games (seed; over the two
    answer tokens, and over the whole vocabulary), and on the test pairs the majority rate and the IIA of no
    intervention."""
    train_seed, scan_seed, test_seed = split_seeds(seed, 3)
    pairs = {"train": task.sample_pairs(hypothesis, n_train, train_seed),
             "scan": task.sample_pairs(hypothesis, n_test, scan_seed), "test": task.sample_pairs(hypothesis, n_test, test_seed)}
    device = next(model.parameters()).device
    rng = random.Random(seed)
    measured = accuracy(task, model, [task.sample_input(rng) for _ in range(n_task)])
    reference = {"task_accuracy": measured["answers"], "task_accuracy_vocabulary": measured["vocabulary"],
                 "dummy": majority_rate_of(pairs["test"]),
                 "no_intervention_iia": unintervened_iia(model, task.interchange_data(pairs["test"], "last").to(device))}
    return pairs, reference


def choose_site(
    model: nn.Module, task: Task, pairs: dict[str, list[CounterfactualPair]], sites: Sequence[Site],
    config: TrainConfig, n_variables: int = 1,
) -> tuple[Site, pd.DataFrame | None]:
    """The only site, or the best of a `scan_sites` over `sites` (trained on pairs['train'], scored on
    pairs['scan']) and the scan's table (None when there was nothing to choose)."""
    if len(sites) == 1:
        return sites[0], None
    scan = scan_sites(model, task, pairs["train"], pairs["scan"], sites, config, n_variables)
    best = scan.loc[scan["iia"].idxmax()]
    return Site(int(best["layer"]), str(best["position"])), scan


def scan_table(scan: pd.DataFrame) -> pd.DataFrame:
    """A `scan_sites` table as a layer (top: the highest) x position grid of held-out IIA."""
    return scan.pivot(index="layer", columns="position", values="iia").sort_index(ascending=False)


def train_at(
    model: nn.Module, task: Task, site: Site, pairs: dict[str, list[CounterfactualPair]], config: TrainConfig,
    n_variables: int = 1,
) -> tuple[BoundlessDASIntervention, TrainResult, InterventionForward]:
    """`train_boundless` at `site` on pairs['train'], its IIA measured on pairs['test']."""
    train, test = (task.interchange_data(pairs[k], site.position) for k in ("train", "test"))
    return train_boundless(model, site, train, test, config, n_variables=n_variables)


def alignment_values(
    intervention: BoundlessDASIntervention, result: TrainResult, forward: InterventionForward, config: TrainConfig,
    reference: dict[str, float],
) -> dict[str, float | str]:
    """What a trained alignment scored, beside `pairs_and_references`' reference points: the seconds and the
    path (fast or plain), the starting temperature, IIA and gain over no intervention, the learned
    subspace's size (dims and share of the width), and the paper's normalised IIA of the alignment and of
    doing nothing (NaN where the task accuracy is not above the majority rate), and whether the IIA is
    above that of no intervention on the same pairs: the 95% interval of the gain lies above 0."""
    dims = float(sum(intervention.boundary_dims()))
    task_acc, dummy = reference["task_accuracy"], reference["dummy"]
    gain, gain_low, gain_high = paired_difference(result.correct, result.none_correct)
    return {"train_seconds": result.seconds, "path": "fast" if isinstance(forward, CachedForward) else "plain",
            "temperature_start": start_temperature(config, intervention.r), "iia": result.iia, "gain": gain,
            "gain_low": gain_low, "gain_high": gain_high, "boundary_dims": dims,
            "boundary_share": dims / intervention.d, "normalised_iia": normalised_or_nan(result.iia, task_acc, dummy),
            "no_intervention_normalised": normalised_or_nan(reference["no_intervention_iia"], task_acc, dummy),
            "finds_alignment": gain_low > 0}


def neuron_reading(
    intervention: BoundlessDASIntervention, variables: Sequence[str], seed: int, top: int = 5,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Each variable's neuron weights (`subspaces.neuron_weights`), and for the first variable its effective
    number of neurons, that of a random rotation's subspace of the same size, and the weight share of
    its `top` heaviest neurons."""
    weights = {v: neuron_weights(intervention, k) for k, v in enumerate(variables)}
    first = weights[variables[0]]
    random_weights = neuron_weights(random_rotation_like(intervention, seed), 0)
    return weights, {"effective_neurons": effective_neurons(first), "effective_neurons_random": effective_neurons(random_weights),
                     "top_neuron_share": float(first[torch.argsort(first, descending=True)[:top]].sum())}


def top_neurons(weights: torch.Tensor, top: int = 5) -> pd.DataFrame:
    """The `top` heaviest neurons of a subspace's neuron weights, and their weights."""
    index = torch.argsort(weights, descending=True)[:top]
    return pd.DataFrame({"neuron": index.tolist(), "weight": weights[index].numpy()})


def planted_check(
    model: nn.Module, name: str, task: Task, site: Site, intervention: RotatedSpaceIntervention,
    variables: Sequence[str], pairs: Sequence[CounterfactualPair],
) -> pd.DataFrame | None:
    """`planted_comparison` with the subspace planted in the model called `name` (as load_model names it),
    over the site's vectors of the base prompts of `pairs`; None where the model has no planted mechanism."""
    planted = planted_for(name)
    if planted is None:
        return None
    data = task.interchange_data(pairs, site.position).to(next(model.parameters()).device)
    hidden = capture(model, site, data.base, data.base_pos)
    return planted_comparison(intervention, site, variables, *planted, hidden)


def first_example(
    model: nn.Module, task: Task, site: Site, intervention: nn.Module, pairs: Sequence[CounterfactualPair],
) -> pd.DataFrame | None:
    """`intervention_example` of the first pair whose base and source the model answers correctly and whose
    counterfactual answer differs from the base's; None when no pair qualifies."""
    right = task.readings(model, [p.base for p in pairs])[0] & task.readings(model, [p.source for p in pairs])[0]
    pair = next((p for p, ok in zip(pairs, right.tolist()) if ok and p.label != p.base_label), None)
    return None if pair is None else intervention_example(model, task, site, intervention, pair).to_frame()


def rank_comparison(
    model: nn.Module, task: Task, site: Site, hypothesis: str, ranks: Sequence[int | None],
    config: TrainConfig, n_train: int, n_test: int,
) -> tuple[pd.DataFrame, float]:
    """Boundless DAS at one site for each rank (None: the full rotation), from the same pairs, seed and
    schedule (chapter 4's seed split of `config.seed`): one row per rank (r, trainable values, IIA, learned
    subspace size, training seconds), the IIA of no intervention on the same test pairs, and on those pairs
    the comparison of the last rank with the first: the difference of their IIAs with its 95% interval,
    and whether either beats doing nothing (its gain's interval above 0)."""
    train_seed, _, test_seed = split_seeds(config.seed, 3)
    train = task.interchange_data(task.sample_pairs(hypothesis, n_train, train_seed), site.position)
    test = task.interchange_data(task.sample_pairs(hypothesis, n_test, test_seed), site.position)
    n_variables, d = len(task.hypotheses()[hypothesis].variables), model.config.hidden_size
    rows, results = {}, []
    for r in ranks:
        intervention, result, _ = train_boundless(model, site, train, test, config, rank=r, n_variables=n_variables)
        results.append(result)
        rows["full rotation" if r is None else f"low rank (r = {r})"] = {
            "r": intervention.r, "trainable values": rotation_footprint(d, r, n_variables)["parameters"],
            "IIA": result.iia, "learned dims": float(sum(intervention.boundary_dims())), "seconds": result.seconds}
    difference, low, high = paired_difference(results[-1].correct, results[0].correct)
    comparison = {"difference": difference, "low": low, "high": high,
                  "beats_nothing": any(beats(r.correct, r.none_correct) for r in results)}
    return pd.DataFrame.from_dict(rows, orient="index"), results[0].none_correct.float().mean().item(), comparison
