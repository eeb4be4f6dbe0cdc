"""One Boundless DAS alignment of a language model, trained and read.

- `check_site`: a (layer, role) checked against the model and the task, with messages saying what is valid.
- `train_boundless`: train one alignment at a site (fast path when the model allows it).
- `scan_sites`: short trainings at a few sites, to choose where to look.
- `neuron_weights`, `effective_neurons`, `random_rotation_like`: which original neurons the learned
  subspace is made of, and the same for a random subspace of the same size.
- `subspace`, `captured_variation`, `planted_comparison`: the subspace an alignment swaps, and how much
  of what varies in a subspace planted in the model the learned one holds.
- `intervention_example`: one base/source pair, the model's answers before and after the intervention,
  and the causal model's counterfactual.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from das_lib.book import params
from das_lib.method.counterfactual import CounterfactualPair
from das_lib.method.fastpath import make_forward
from das_lib.method.interventions import BoundlessDASIntervention, RotatedSpaceIntervention
from das_lib.pricetag.game import pairs_table
from das_lib.method.sites import Site, answer_logits, layer_module
from das_lib.pricetag.task import PriceTagTask
from das_lib.method.training import InterchangeData, InterventionForward, PlainForward, TrainConfig, TrainResult, set_seed, train_intervention


def check_site(task: PriceTagTask, n_layers: int, layer: int, position: str) -> Site:
    """The site (layer, role), or a ParameterError naming the valid layers or the searched roles."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise params.ParameterError(
            f"parameter 'layer' must be a decoder layer of the model, an integer in 0..{n_layers - 1}, got {layer!r}"
        )
    roles = task.searched_roles()
    if position not in roles:
        raise params.ParameterError(
            f"parameter 'position' must be a searched token role of this tokenizer, one of {roles}; got {position!r}"
        )
    return Site(layer, position)


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
    intervention = BoundlessDASIntervention(model.config.hidden_size, rank, n_variables).to(device)
    train, test = train.to(device), test.to(device)
    forward = make_forward(model, site, intervention, [train, test])
    result = train_intervention(forward, intervention, train, config, eval_data=test, progress=progress)
    return intervention, result, forward


def scan_sites(
    model: nn.Module,
    task: PriceTagTask,
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


def neuron_weights(intervention: RotatedSpaceIntervention, variable: int = 0) -> torch.Tensor:
    """Weight of each original neuron i in the learned subspace: sum_j m_j W[j, i]^2, normalised to sum to 1.

    W (r x d) is the learned rotation and m the mask over rotated dims at the intervention's current
    temperature. A subspace spanned by k neurons gives them 1/k each; a subspace spread over all d
    neurons gives each about 1/d.
    """
    if not isinstance(intervention, RotatedSpaceIntervention):
        raise TypeError(f"neuron weights need a rotated-space intervention (DAS, Boundless DAS), got {type(intervention).__name__}")
    if not 0 <= variable < intervention.n_variables:
        raise ValueError(f"variable must be in 0..{intervention.n_variables - 1}, got {variable}")
    with torch.no_grad():
        w = intervention.rotation.weight.detach().double()
        m = intervention.mask(torch.tensor([variable], device=w.device))[0].double()
        weights = (m[:, None] * w**2).sum(0)
    return (weights / weights.sum()).float().cpu()


def random_rotation_like(intervention: BoundlessDASIntervention, seed: int) -> BoundlessDASIntervention:
    """The same intervention (sizes, boundaries, temperature) with a fresh random rotation: a reference subspace."""
    torch.manual_seed(seed)
    reference = BoundlessDASIntervention(intervention.d, intervention.r, intervention.n_variables)
    reference.to(intervention.boundaries.device)
    with torch.no_grad():
        reference.boundaries.copy_(intervention.boundaries)
    reference.temperature = intervention.temperature
    return reference


def effective_neurons(weights: torch.Tensor) -> float:
    """How many neurons the weights are spread over: 1 / sum(w_i^2) for weights summing to 1 (k for k equal ones)."""
    w = weights.double() / weights.double().sum()
    return float(1.0 / (w**2).sum())


def intervention_example(
    model: nn.Module, task: PriceTagTask, site: Site, intervention: nn.Module, pair: CounterfactualPair
) -> pd.Series:
    """One pair in action: the games, the model's answers on base and source and on the base after the
    intervention (exact, plain hooked forward), and the causal model's counterfactual answer."""
    device = next(layer_module(model, site).parameters()).device
    data = task.interchange_data([pair], site.position).to(device)
    decode = lambda logits: task.tokenizer.decode([int(logits.argmax(-1)[0])]).strip()  # noqa: E731
    with torch.no_grad():
        on_base, on_source = decode(answer_logits(model, data.base)), decode(answer_logits(model, data.source))
        after = decode(PlainForward(model, site, intervention)(data))
    row = pairs_table([pair], task.variant).iloc[0]  # the games and the causal model's answers
    return pd.Series({
        "base (amount in bracket)": row["base"],
        "source (amount in bracket)": row["source"],
        "intervened variable": row["variable"],
        "model on base": on_base,
        "model on source": on_source,
        "site": str(site),
        "model on base, intervened": after,
        "causal model's counterfactual": row["counterfactual"],
    }, name="example")


def subspace(intervention: RotatedSpaceIntervention, variable: int = 0) -> torch.Tensor:
    """Orthonormal rows (k, d) spanning the rotated dims the intervention swaps for `variable` (mask > 0.5)."""
    with torch.no_grad():
        m = intervention.mask(torch.tensor([variable], device=intervention.rotation.weight.device))[0]
        return intervention.rotation.weight.detach()[m > 0.5].double().cpu()


def captured_variation(hidden: torch.Tensor, planted: torch.Tensor, learned: torch.Tensor) -> float:
    """Share of what varies inside the planted subspace, over the hidden vectors (N, d), that lies inside
    the learned subspace: 1 when the learned one holds all of it, about k / d for a random k-dim one.

    Comparing subspaces by their variation on real inputs, not by their bases: a planted block of 4
    dims may carry a boolean along a single direction, and a learned subspace that holds that direction
    has found what matters even if it ignores the block's 3 idle dims."""
    if not hidden.shape[-1] == planted.shape[-1] == learned.shape[-1]:
        raise ValueError(f"sizes differ: hidden {hidden.shape[-1]}, planted {planted.shape[-1]}, learned {learned.shape[-1]}")
    h = hidden.double().cpu()
    inside = (h - h.mean(0)) @ planted.double().T @ planted.double()  # the variation inside the planted subspace
    total = inside.pow(2).sum()
    if total == 0:
        return float("nan")
    return float((inside @ learned.double().T).pow(2).sum() / total)


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
