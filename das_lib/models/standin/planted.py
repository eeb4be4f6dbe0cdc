"""The mechanism interchange intervention training plants in the stand-in, and reading it back.

Where it can plant. The answer is read at the last token. A subspace at the last token reaches it
through the residual stream, at any layer; at an earlier token it can reach it only through the
attention of the layers above. There, training plants nothing. With `iit_layer=2 iit_position=dollars`
(whose planted IIA ends equal to the no-intervention IIA) we measured, every 183 steps from step 183 to
732: swapping the *whole* hidden vector at that site, not only the planted subspace, moved the answer's
Yes-No logit margin by under 0.1% of its mean size and changed no answer, while the IIT loss's gradient
reached every layer below the site. The last token's attention does not read that position, so no
gradient says what to write there, and the task is learnt through other paths. `plantable`
refuses such sites before training, and every record says whether the plant took (`planted_iia`).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from das_lib.method.interventions import DASIntervention, load_intervention
from das_lib.method.sites import Site, capture, intervened_logits, layer_module
from das_lib.method.stats import binomial_interval, paired_difference
from das_lib.method.training import PlainForward, answer_tokens, answer_tokens_under
from das_lib.models.load import STANDIN_DIR, model_source
from das_lib.models.standin.config import StandinConfig
from das_lib.tasks.pricetag import game as pricetag
from das_lib.tasks.pricetag import programs
from das_lib.tasks.pricetag.task import PriceTagTask

PLANTED = "planted_subspace"  # file stem, in the model directory, of the subspace IIT planted
EVAL_SEED = 12345  # fresh games, contexts and pairs: training draws from random.Random(seed + 1)


def planted_program(key: str) -> pricetag.Hypothesis:
    """The causal model a plant follows: one of the paper's four hypotheses by key, or a candidate of the
    game's space of programs (das_lib.tasks.pricetag.programs) by its key."""
    if key in pricetag.HYPOTHESES:
        return pricetag.HYPOTHESES[key]
    found = [c for c in programs.space().candidates if c.key == key]
    if not found:
        raise KeyError(f"cannot plant {key!r}: give one of {list(pricetag.HYPOTHESES)} or a candidate key of "
                       "das_lib.tasks.pricetag.programs.space(), e.g. 'product | amount-lb & ub-amount'")
    return found[0]


def plantable(cfg: StandinConfig) -> None:
    """Refuse, before training, a plant this training cannot make (see the module docstring)."""
    if not 0 <= cfg.iit_layer < cfg.num_layers:
        raise ValueError(f"iit_layer={cfg.iit_layer}: the model has layers 0..{cfg.num_layers - 1}")
    if cfg.iit_position != "last":
        raise ValueError(
            f"cannot plant at position {cfg.iit_position!r}: the answer is read at the last token, and a subspace at "
            "an earlier one reaches it only through the attention of the layers above, which this training did not "
            "learn to use for it (measured at iit_layer=2, iit_position=dollars: swapping the whole hidden vector there "
            "left the answer unchanged, and the planted IIA equalled the IIA of doing nothing). Plant at "
            "iit_position=last, at any layer")
    if cfg.iit_dims * len(planted_program(cfg.iit_program).variables) > cfg.hidden_size:
        raise ValueError(f"iit_dims={cfg.iit_dims} per variable does not fit in hidden size {cfg.hidden_size}")


def planted_subspace(cfg: StandinConfig) -> DASIntervention:
    """The fixed random subspaces (`iit_dims` rotated dims for each variable of the planted program) that
    IIT plants, drawn from `cfg.seed` alone, so they can be drawn again without the model."""
    with torch.random.fork_rng(devices=[]):  # leaves the training's random stream untouched
        torch.manual_seed(cfg.seed + 2)
        n = len(planted_program(cfg.iit_program).variables)
        intervention = DASIntervention(cfg.hidden_size, cfg.iit_dims, n_variables=n)
    return intervention.requires_grad_(False)  # the planted subspace stays where it was drawn


class PlantedMechanism:
    """The IIT part of training: a fixed random subspace per variable of the planted program at one site,
    and the loss that makes swapping it act like swapping that variable."""

    def __init__(self, cfg: StandinConfig, tokenizer: PreTrainedTokenizerFast):
        plantable(cfg)
        self.meta = planted_meta(cfg)
        self.program = planted_program(cfg.iit_program)
        self.site = Site(cfg.iit_layer, cfg.iit_position)
        self.task = PriceTagTask(tokenizer, "standin")
        self.intervention = planted_subspace(cfg)

    def loss_sum(self, model: LlamaForCausalLM, rng: random.Random, n: int) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy of `n` fresh interchange pairs, and how many the model got right."""
        pairs = pricetag.sample_pairs(self.program, n, rng.randrange(2**31))  # labels from the causal model
        data = self.task.interchange_data(pairs, self.site.position)
        source = capture(model, self.site, data.source, data.source_pos)
        logits = intervened_logits(model, self.site, data.base, data.base_pos, source, self.intervention, data.variable)
        loss = torch.nn.functional.cross_entropy(logits, data.labels, reduction="sum")
        return loss, int((logits.argmax(-1) == data.labels).sum())


def planted_meta(cfg: StandinConfig) -> dict:
    """What the planted subspace stands for: the causal model, its variables (in subspace order) and the site."""
    return {"hypothesis": cfg.iit_program, "variables": list(planted_program(cfg.iit_program).variables),
            "site": {"layer": cfg.iit_layer, "position": cfg.iit_position}}


def planted_iia(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, planted: DASIntervention, meta: dict,
                n_pairs: int = 1000, seed: int = EVAL_SEED) -> dict[str, float | bool | list[float]]:
    """IIA of swapping the planted subspace (at the site in `meta`) on fresh pairs of the planted causal
    model, and of doing nothing, each with its 95% interval; the plant took when the paired interval of
    their difference on the same pairs lies above 0."""
    site = Site(meta["site"]["layer"], meta["site"]["position"])
    device = next(layer_module(model, site).parameters()).device  # the data and the subspace go where the model is
    pairs = pricetag.sample_pairs(planted_program(meta["hypothesis"]), n_pairs, seed)
    data = PriceTagTask(tokenizer, "standin").interchange_data(pairs, site.position).to(device)
    swapped = (answer_tokens_under(PlainForward(model, site, planted.to(device)), data) == data.labels.cpu()).numpy()
    alone = (answer_tokens(model, data) == data.labels.cpu()).numpy()
    gain, low, high = paired_difference(swapped, alone)
    return {"planted": round(float(swapped.mean()), 4), "no_intervention": round(float(alone.mean()), 4),
            "planted_interval": [round(x, 4) for x in binomial_interval(int(swapped.sum()), len(swapped))],
            "no_intervention_interval": [round(x, 4) for x in binomial_interval(int(alone.sum()), len(alone))],
            "gain": round(gain, 4), "gain_interval": [round(low, 4), round(high, 4)], "took": bool(low > 0),
            "n_pairs": n_pairs}


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
