"""The jobs of a sweep: one cell's alignment, or the model's task accuracy, run in one process.

`run_job` is what runs each cell, locally or as one Dask task: everything a cell's numbers depend on
is in its config. A process keeps what cells share between jobs: the model (one at a time), one
hypothesis's pairs encoded at every searched position, and the fast path's layer caches of those
pairs, built in one forward pass for the layers coming up. None of it changes a cell's numbers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, caches_or_plain
from das_lib.method.interventions import BoundlessDASIntervention, save_intervention
from das_lib.method.seeds import split_seeds
from das_lib.method.sites import Site, layer_module
from das_lib.method.training import PlainForward, TrainConfig, set_seed, train_intervention, unintervened_iia
from das_lib.models.load import load_model
from das_lib.pricetag.game import get_hypothesis, majority_rate_of, sample_game, sample_pairs
from das_lib.pricetag.task import PriceTagTask, task_accuracy
from das_lib.runs.cache import LastOne
from das_lib.runs.spec import run_identity
from das_lib.runs.store import Store

ALIGNMENT = "alignment"  # file stem of a cell's alignment in its record folder (.safetensors + .json)


@dataclass
class _HypothesisData:
    """A hypothesis's train and test pairs, encoded at every searched position ((N, k) positions)."""

    roles: list[str]
    train: InterchangeData
    test: InterchangeData
    dummy: float  # majority-label rate of the test pairs: a dummy classifier's IIA
    unintervened: float  # IIA of leaving the base run alone: the model's own base answers vs the labels


class Runner:
    """Runs the jobs of one model in one process, keeping what cells share: model, data, layer caches."""

    def __init__(self, name: str, dtype: str, device: str, loaded: tuple[nn.Module, Any] | None = None):
        # `loaded`: the (model, tokenizer) that load_model(name, device, dtype) gave the caller already,
        # used as it is: a second copy of a large model would not fit beside it on one GPU
        self.model, self.tokenizer = loaded if loaded is not None else load_model(name, device, dtype)
        self.identity = run_identity(name, dtype, device)
        self.device = next(self.model.parameters()).device
        self.data = LastOne()  # one hypothesis's data at a time: cells run grouped by hypothesis
        self.shared = LastOne()  # one hypothesis's fast-path caches: layer -> CachedForward, or None

    def task(self, settings: dict[str, Any]) -> PriceTagTask:
        return PriceTagTask(self.tokenizer, settings["template"], settings["variant"], settings["context"])

    def hypothesis_data(self, config: dict[str, Any]) -> tuple[str, _HypothesisData]:
        key = repr((config["task"], config["hypothesis"], config["data"]))
        return key, self.data.get(key, lambda: self._make_data(config))

    def _make_data(self, config: dict[str, Any]) -> _HypothesisData:
        task, d = self.task(config["task"]), config["data"]
        roles = task.searched_roles()
        train_seed, test_seed = split_seeds(d["seed"], 2)
        train = sample_pairs(config["hypothesis"], d["n_train"], train_seed)
        test = sample_pairs(config["hypothesis"], d["n_test"], test_seed)
        train_data = task.interchange_data(train, roles).to(self.device)
        test_data = task.interchange_data(test, roles).to(self.device)
        if d.get("shuffled_labels"):  # the control: the same pairs, their labels permuted
            train_data, test_data = train_data.shuffled(train_seed), test_data.shuffled(test_seed)
        return _HypothesisData(roles, train_data, test_data, majority_rate_of(test), unintervened_iia(self.model, test_data))

    def shared_forward(self, key: str, data: _HypothesisData, layer: int, layers: Sequence[int] = ()) -> CachedForward | None:
        """The fast-path cache of `data` at `layer` for all positions, or None when the fast path cannot run.

        The caches of `layers` (the layers the caller asks for next) are built with it, in one forward
        pass over the data; only a layer not held, or another hypothesis's data, builds anew."""
        held = self.shared.full and self.shared.key[0] == key and layer in self.shared.value
        if not held:
            wanted = tuple(sorted({layer, *layers}))
            self.shared.get((key, wanted), lambda: self._caches(data, layer, wanted))
        return self.shared.value[layer]

    def _caches(self, data: _HypothesisData, layer: int, layers: Sequence[int]) -> dict[int, CachedForward | None]:
        return caches_or_plain(self.model, layers, [data.train, data.test])

    def alignment(self, config: dict[str, Any], folder: Path, layers: Sequence[int] = ()) -> dict[str, Any]:
        """Train the cell's Boundless DAS alignment, save it in `folder`, and return the results
        (`layers`: the other layers coming up for this hypothesis, cached together with this one)."""
        key, data = self.hypothesis_data(config)
        site = Site.from_dict(config["site"])
        j = data.roles.index(site.position)
        train, test = data.train.column(j), data.test.column(j)
        shared = self.shared_forward(key, data, site.layer, layers)
        train_config = TrainConfig(**config["train"])
        set_seed(train_config.seed)  # the rotation's initialisation depends on the seed too
        d = self.model.config.hidden_size
        n_variables = len(get_hypothesis(config["hypothesis"]).variables)
        device = next(layer_module(self.model, site).parameters()).device
        intervention = BoundlessDASIntervention(d, config["method"]["rank"], n_variables,
                                                orthogonal_map=train_config.orthogonal_map, device=device)
        start_dims = intervention.boundary_dims()
        if shared is not None:
            forward, path = shared.for_position(j, [train, test], site, intervention), "fast (shared cache)"
        else:  # caches_or_plain said why, once
            forward, path = PlainForward(self.model, site, intervention), "plain"
        result = train_intervention(forward, intervention, train, train_config, eval_data=test, progress=False)
        save_intervention(intervention, folder / ALIGNMENT, meta={"config": config})
        return {
            "iia": result.iia, "dummy": data.dummy, "iia_unintervened": data.unintervened,
            "boundary_dims": intervention.boundary_dims(),
            "boundary_dims_start": start_dims, "curves": result.curves, "seconds": result.seconds,
            "path": path, "device": str(device), "alignment": ALIGNMENT,
        }

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
    """The layers of the cells in `configs` that share `config`'s pairs (same task, hypothesis and data)."""
    same = (config.get("task"), config.get("hypothesis"), config.get("data"))
    return sorted({c["site"]["layer"] for c in configs if c.get("kind") == "alignment"
                   and (c.get("task"), c.get("hypothesis"), c.get("data")) == same})


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
