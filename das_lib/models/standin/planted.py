"""The mechanism interchange intervention training plants in the stand-in, and reading it back."""
from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from das_lib.method.interventions import DASIntervention, load_intervention
from das_lib.method.sites import Site, capture, intervened_logits, layer_module
from das_lib.method.training import PlainForward, evaluate, unintervened_iia
from das_lib.models.load import STANDIN_DIR, model_source
from das_lib.models.standin.config import StandinConfig
from das_lib.pricetag import game as pricetag
from das_lib.pricetag.task import PriceTagTask

PLANTED = "planted_subspace"  # file stem, in the model directory, of the subspace IIT planted
EVAL_SEED = 12345  # fresh games, contexts and pairs: training draws from random.Random(seed + 1)


def planted_subspace(cfg: StandinConfig) -> DASIntervention:
    """The fixed random subspaces (`iit_dims` rotated dims for L, as many for R) that IIT plants,
    drawn from `cfg.seed` alone, so they can be drawn again without the model."""
    with torch.random.fork_rng(devices=[]):  # leaves the training's random stream untouched
        torch.manual_seed(cfg.seed + 2)
        intervention = DASIntervention(cfg.hidden_size, cfg.iit_dims, n_variables=2)
    return intervention.requires_grad_(False)  # the planted subspace stays where it was drawn


class PlantedMechanism:
    """The IIT part of training: a fixed random subspace per variable of the Left and Right Boundary
    model at one site, and the loss that makes swapping it act like swapping L or R."""

    def __init__(self, cfg: StandinConfig, tokenizer: PreTrainedTokenizerFast):
        self.meta = planted_meta(cfg)
        self.site = Site(cfg.iit_layer, cfg.iit_position)
        self.task = PriceTagTask(tokenizer, "standin")
        self.intervention = planted_subspace(cfg)

    def loss_sum(self, model: LlamaForCausalLM, rng: random.Random, n: int) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy of `n` fresh interchange pairs, and how many the model got right."""
        pairs = pricetag.sample_pairs(self.meta["hypothesis"], n, rng.randrange(2**31))  # labels from the causal model
        data = self.task.interchange_data(pairs, self.site.position)
        source = capture(model, self.site, data.source, data.source_pos)
        logits = intervened_logits(model, self.site, data.base, data.base_pos, source, self.intervention, data.variable)
        loss = torch.nn.functional.cross_entropy(logits, data.labels, reduction="sum")
        return loss, int((logits.argmax(-1) == data.labels).sum())


def planted_meta(cfg: StandinConfig) -> dict:
    """What the planted subspace stands for: the causal model, its variables (in subspace order) and the site."""
    return {"hypothesis": "left_right", "variables": ["left", "right"],
            "site": {"layer": cfg.iit_layer, "position": cfg.iit_position}}


def planted_iia(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, planted: DASIntervention, meta: dict,
                n_pairs: int = 1000, seed: int = EVAL_SEED) -> dict[str, float]:
    """IIA of swapping the planted subspace (at the site in `meta`) on fresh pairs of the planted causal
    model, and of doing nothing."""
    site = Site(meta["site"]["layer"], meta["site"]["position"])
    device = next(layer_module(model, site).parameters()).device  # the data and the subspace go where the model is
    pairs = pricetag.sample_pairs(meta["hypothesis"], n_pairs, seed)
    data = PriceTagTask(tokenizer, "standin").interchange_data(pairs, site.position).to(device)
    return {"planted": round(evaluate(PlainForward(model, site, planted.to(device)), data), 4),
            "no_intervention": round(unintervened_iia(model, data), 4)}


def load_planted(model_dir: Path | str = STANDIN_DIR) -> tuple[DASIntervention, dict] | None:
    """The subspace IIT planted in the model at `model_dir` and its site, or None if it was trained plainly."""
    path = Path(model_dir) / PLANTED
    if not path.with_suffix(".json").exists():
        return None
    return load_intervention(path)


def planted_for(model: str) -> tuple[DASIntervention, dict] | None:
    """The planted subspace of a model named as `load_model` names it (the stand-in, or a directory that
    `build` made with IIT), or None for any other model."""
    folder, gguf = model_source(model)
    if gguf is not None or not Path(folder).is_dir():
        return None
    return load_planted(folder)
