"""The jobs of a sweep: one cell's alignment, or the model's task accuracy, run in one process.

`run_job` is what runs each cell, locally or as one Dask task: everything a cell's numbers depend on
is in its config. A process keeps what cells share between jobs: the model (one at a time), the
sweep's pool of pairs encoded at every searched position (every hypothesis labels the same pairs, so
they are compared on the same pairs), and the fast path's layer caches of that pool, built in one
forward pass for the layers coming up and shared by every hypothesis (a cache holds inputs, not
labels). None of it changes a cell's numbers.

The pool is split three ways: training pairs, validation pairs (to choose the site, the seed or the
config) and test pairs (to report, never used to choose). A cell's record keeps, per validation and
test pair, whether its alignment was right and whether doing nothing was, so that every number the
book reports can carry an interval and two hypotheses can be compared pair by pair.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, caches_or_plain
from das_lib.method.interventions import BoundlessDASIntervention, save_intervention
from das_lib.method.seeds import split_seeds
from das_lib.method.sites import Site, layer_module
from das_lib.method.training import (
    PlainForward, TrainConfig, answer_tokens, answer_tokens_under, correct_pairs, set_seed, train_intervention,
)
from das_lib.models.load import load_model
from das_lib.pricetag.game import HYPOTHESES, get_hypothesis, label_pool, majority_rate_of, sample_game, sample_pool
from das_lib.pricetag.task import PriceTagTask, task_accuracy
from das_lib.runs.cache import LastOne
from das_lib.runs.spec import run_identity
from das_lib.runs.store import Store, canonical

ALIGNMENT = "alignment"  # file stem of a cell's alignment in its record folder (.safetensors + .json)


SPLITS = ("train", "val", "test")  # the pool's parts: training, choosing (validation), reporting (test)
HELD_OUT = ("val", "test")


@dataclass
class _Pool:
    """A sweep's pairs of games (one pool per data config, every hypothesis labels them), encoded at every
    searched position ((N, k) positions), and the model's own answer on each base."""

    roles: list[str]
    games: dict[str, list]  # split -> (base, source) games
    encoded: dict[str, InterchangeData]  # split -> inputs and positions, on the model's device
    answers: dict[str, torch.Tensor]  # split -> (N,) token the model answers on each base (doing nothing)


@dataclass
class _HypothesisData:
    """One hypothesis's targets on the pool: its data per split, and per held-out pair whether doing
    nothing already gives the counterfactual label and whether that label differs from the base's answer."""

    roles: list[str]
    data: dict[str, InterchangeData]
    none: dict[str, torch.Tensor]  # split -> (N,) bool: the model's own base answer is the label
    changed: dict[str, torch.Tensor]  # split -> (N,) bool: the label is not the base's factual answer
    dummy: float  # majority-label rate of the test pairs: a dummy classifier's IIA


def data_key(config: dict[str, Any], *fields: str) -> str:
    """What names a config's pool (its task and data settings, and `fields`) for the runner's memory: canonical
    JSON, so that a record's config read back from its file (keys sorted) finds what the sweep's own config
    made, instead of encoding the pool and caching its layers again."""
    return canonical({name: config[name] for name in ("task", "data", *fields)})


def bits(flags: torch.Tensor) -> str:
    """A per-pair bool (or small int) vector as a compact string for a JSON record ("0110...")."""
    return "".join(str(int(v)) for v in flags.tolist())


class Runner:
    """Runs the jobs of one model in one process, keeping what cells share: model, data, layer caches."""

    def __init__(self, name: str, dtype: str, device: str, loaded: tuple[nn.Module, Any] | None = None):
        # `loaded`: the (model, tokenizer) that load_model(name, device, dtype) gave the caller already,
        # used as it is: a second copy of a large model would not fit beside it on one GPU
        self.model, self.tokenizer = loaded if loaded is not None else load_model(name, device, dtype)
        self.identity = run_identity(name, dtype, device)
        self.device = next(self.model.parameters()).device
        self.pool = LastOne()  # the pool of the data config at hand
        self.data = LastOne()  # one hypothesis's targets on it at a time: cells run grouped by hypothesis
        self.shared = LastOne()  # the pool's fast-path caches: layer -> CachedForward, or None

    def task(self, settings: dict[str, Any]) -> PriceTagTask:
        return PriceTagTask(self.tokenizer, settings["template"], settings["variant"], settings["context"])

    def pool_of(self, config: dict[str, Any]) -> tuple[str, _Pool]:
        """The pool of the config's task and data, encoded once for every hypothesis."""
        key = data_key(config)
        return key, self.pool.get(key, lambda: self._make_pool(config))

    def _make_pool(self, config: dict[str, Any]) -> _Pool:
        task, d = self.task(config["task"]), config["data"]
        roles = task.searched_roles()
        seeds = dict(zip(SPLITS, split_seeds(d["seed"], len(SPLITS))))
        games = {s: sample_pool(d[f"n_{s}"], seeds[s]) for s in SPLITS}
        first = next(iter(HYPOTHESES))  # any labels: each hypothesis puts its own on these inputs
        encoded = {s: task.interchange_data(label_pool(first, games[s]), roles).to(self.device) for s in SPLITS}
        answers = {s: answer_tokens(self.model, encoded[s]) for s in HELD_OUT}
        return _Pool(roles, games, encoded, answers)

    def hypothesis_data(self, config: dict[str, Any]) -> _HypothesisData:
        """The hypothesis's targets on the config's pool."""
        _, pool = self.pool_of(config)
        key = data_key(config, "hypothesis")
        return self.data.get(key, lambda: self._label(config, pool))

    def _label(self, config: dict[str, Any], pool: _Pool) -> _HypothesisData:
        task, h = self.task(config["task"]), config["hypothesis"]
        pairs = {s: label_pool(h, pool.games[s]) for s in SPLITS}
        data = {s: task.relabel(pool.encoded[s], pairs[s]) for s in SPLITS}
        none = {s: pool.answers[s] == data[s].labels.cpu() for s in HELD_OUT}  # the answers were read to the host
        changed = {s: (data[s].labels != data[s].base_labels).cpu() for s in HELD_OUT}
        return _HypothesisData(pool.roles, data, none, changed, majority_rate_of(pairs["test"]))

    def shared_forward(self, config: dict[str, Any], layer: int, layers: Sequence[int] = ()) -> CachedForward | None:
        """The fast-path cache of the config's pool at `layer` for all positions, or None when the fast path
        cannot run. The caches of `layers` (the layers the caller asks for next) are built with it, in one
        forward pass over the pool; only a layer not held, or another pool, builds anew."""
        key, pool = self.pool_of(config)
        held = self.shared.full and self.shared.key[0] == key and layer in self.shared.value
        if not held:
            wanted = tuple(sorted({layer, *layers}))
            self.shared.get((key, wanted), lambda: caches_or_plain(self.model, wanted, [pool.encoded[s] for s in SPLITS]))
        return self.shared.value[layer]

    def alignment(self, config: dict[str, Any], folder: Path, layers: Sequence[int] = ()) -> dict[str, Any]:
        """Train the cell's Boundless DAS alignment, save it in `folder`, and return the results
        (`layers`: the other layers coming up for this hypothesis, cached together with this one)."""
        data = self.hypothesis_data(config)
        site = Site.from_dict(config["site"])
        j = data.roles.index(site.position)
        split = {s: data.data[s].column(j) for s in SPLITS}
        shared = self.shared_forward(config, site.layer, layers)
        train_config = TrainConfig(**config["train"])
        set_seed(train_config.seed)  # the rotation's initialisation depends on the seed too
        d = self.model.config.hidden_size
        n_variables = len(get_hypothesis(config["hypothesis"]).variables)
        device = next(layer_module(self.model, site).parameters()).device
        intervention = BoundlessDASIntervention(d, config["method"]["rank"], n_variables,
                                                orthogonal_map=train_config.orthogonal_map, device=device)
        start_dims = intervention.boundary_dims()
        if shared is not None:
            forward = shared.for_position(j, [split[s] for s in SPLITS], site, intervention)
            path = "fast (shared cache)"
        else:  # caches_or_plain said why, once
            forward, path = PlainForward(self.model, site, intervention), "plain"
        result = train_intervention(forward, intervention, split["train"], train_config, progress=False)
        save_intervention(intervention, folder / ALIGNMENT, meta={"config": config})
        correct = {s: correct_pairs(forward, split[s]) for s in HELD_OUT}
        return {
            "iia": correct["test"].float().mean().item(), "val_iia": correct["val"].float().mean().item(),
            "dummy": data.dummy, "iia_unintervened": data.none["test"].float().mean().item(),
            "val_unintervened": data.none["val"].float().mean().item(),
            "correct": {s: bits(correct[s]) for s in HELD_OUT}, "unintervened_correct": {s: bits(data.none[s]) for s in HELD_OUT},
            "changed": bits(data.changed["test"]), "variable": bits(split["test"].variable.cpu()),
            "boundary_dims": intervention.boundary_dims(),
            "boundary_dims_start": start_dims, "curves": result.curves, "seconds": result.seconds,
            "path": path, "device": str(device), "alignment": ALIGNMENT,
        }

    def predictions(self, config: dict[str, Any], intervention: nn.Module, split: str = "test",
                    variable: int | None = None) -> torch.Tensor:
        """(N,) on the CPU: the token the model answers under `intervention` at the config's site, on the pool's
        `split`, each pair intervening on the config hypothesis's variable as its cell did (or on `variable`)."""
        _, pool = self.pool_of(config)
        site = Site.from_dict(config["site"])
        j = pool.roles.index(site.position)
        data = self.hypothesis_data(config).data[split].column(j)
        if variable is not None:
            data = data.relabelled(torch.full_like(data.variable, variable), data.labels, data.base_labels)
        shared = self.shared_forward(config, site.layer)
        forward = (PlainForward(self.model, site, intervention) if shared is None else
                   shared.for_position(j, [data], site, intervention))
        return answer_tokens_under(forward, data)

    def labels(self, config: dict[str, Any], hypothesis: str, variable: int | None = None, split: str = "test") -> torch.Tensor:
        """(N,) the counterfactual answer tokens of `hypothesis` on the config's pool `split` (every pair
        intervening on `variable`, or alternating as a cell does)."""
        _, pool = self.pool_of(config)
        return self.task(config["task"]).targets(label_pool(hypothesis, pool.games[split], variable))["labels"]

    def measure_task_accuracy(self, config: dict[str, Any]) -> dict[str, Any]:
        """The model's accuracy on the factual task (the upper bound of IIA)."""
        rng = random.Random(config["seed"])
        games = [sample_game(rng) for _ in range(config["n_games"])]
        return {"task_accuracy": task_accuracy(self.model, self.task(config["task"]), games)}


_RUNNER = LastOne()  # one model in memory per process: the runner of the last (model, dtype, device)


def runner_for(model: str, dtype: str, device: str, loaded: tuple[nn.Module, Any] | None = None) -> Runner:
    """The runner of (model, dtype, device) in this process, loading the model unless it is the one held
    (or `loaded`, the caller's own copy of it)."""
    return _RUNNER.get((model, dtype, device), lambda: Runner(model, dtype, device, loaded))


def layers_of(configs: Sequence[dict[str, Any]], config: dict[str, Any]) -> list[int]:
    """The layers of the cells in `configs` that share `config`'s pool (same task and data: every hypothesis)."""
    same = (config.get("task"), config.get("data"))
    return sorted({c["site"]["layer"] for c in configs if c.get("kind") == "alignment"
                   and (c.get("task"), c.get("data")) == same})


def run_job(config: dict[str, Any], store_root: str, device: str, layers: Sequence[int] = ()) -> dict[str, Any]:
    """Run one job (a cell, or the task accuracy) unless its record exists; returns the record.

    This is the function each Dask task runs: everything its numbers depend on is in `config`;
    `layers` only says which layer caches to build together (the same numbers either way).
    """
    store = Store(store_root)
    record = store.get(config)
    if record is not None:
        return record
    runner = runner_for(config["model"]["name"], config["model"]["dtype"], device)
    if runner.identity != config["model"]:
        raise ValueError(
            f"the model {config['model']['name']!r} loaded here has other files than the sweep asked for "
            f"({runner.identity['files']} vs {config['model']['files']}): give every worker the same model files"
        )
    if config["kind"] == "alignment":
        results = runner.alignment(config, store.folder(config), layers)
    else:
        results = runner.measure_task_accuracy(config)
    return store.put(config, results)
