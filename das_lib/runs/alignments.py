"""One Boundless DAS alignment of a language model, trained and read.

- `train_boundless`: train one alignment at a site (fast path when the model allows it).
- `scan_sites`: short trainings at a few sites, to choose where to look.
- `planted_comparison`: how much of what varies in a subspace planted in the model the learned one
  holds (das_lib.method.subspaces reads the subspaces).
- `rank_comparison`: full rotation against low rank at one site, from the same pairs and seed.
- `intervention_example`: one base/source pair, the model's answers before and after the intervention,
  and the causal model's counterfactual.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from das_lib.method.counterfactual import CounterfactualPair
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import make_forward
from das_lib.method.interventions import BoundlessDASIntervention, RotatedSpaceIntervention
from das_lib.method.sites import Site, answer_logits, layer_module
from das_lib.method.subspaces import captured_variation, subspace
from das_lib.method.seeds import split_seeds
from das_lib.method.training import (InterventionForward, PlainForward, TrainConfig, TrainResult, set_seed, train_intervention,
                                     unintervened_iia)
from das_lib.pricetag.game import HYPOTHESES, pairs_table, sample_pairs
from das_lib.pricetag.task import PriceTagTask
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


def rank_comparison(
    model: nn.Module, task: PriceTagTask, site: Site, hypothesis: str, ranks: Sequence[int | None],
    config: TrainConfig, n_train: int, n_test: int,
) -> tuple[pd.DataFrame, float]:
    """Boundless DAS at one site for each rank (None: the full rotation), from the same pairs, seed and
    schedule (chapter 4's seed split of `config.seed`): one row per rank (r, trainable values, IIA, learned
    subspace size, training seconds), and the IIA of no intervention on the same test pairs."""
    train_seed, _, test_seed = split_seeds(config.seed, 3)
    train = task.interchange_data(sample_pairs(hypothesis, n_train, train_seed), site.position)
    test = task.interchange_data(sample_pairs(hypothesis, n_test, test_seed), site.position)
    n_variables, d = len(HYPOTHESES[hypothesis].variables), model.config.hidden_size
    rows = {}
    for r in ranks:
        intervention, result, _ = train_boundless(model, site, train, test, config, rank=r, n_variables=n_variables)
        rows["full rotation" if r is None else f"low rank (r = {r})"] = {
            "r": intervention.r, "trainable values": rotation_footprint(d, r, n_variables)["parameters"],
            "IIA": result.iia, "learned dims": float(sum(intervention.boundary_dims())), "seconds": result.seconds}
    device = next(layer_module(model, site).parameters()).device
    return pd.DataFrame.from_dict(rows, orient="index"), unintervened_iia(model, test.to(device))
