"""The jobs of a grid, run in one process: one cell's alignment, or the model's task accuracy.

`run_job(config, store_root, device)` is what runs each job, locally or as one Dask task: everything its
numbers depend on is in its config (das_lib.runs.grid). A process keeps what cells share between jobs:

- the model (one at a time);
- the pool of its data design (das_lib.runs.pools), encoded once at every searched position: every
  candidate labels the same pairs;
- the fast path's layer caches of that pool, built in one forward pass for the layers coming up and
  shared by every candidate, seed and position at those layers (a cache holds inputs, not labels);
- the model's own answers on the held-out bases (doing nothing), read from a cache.
None of it changes a cell's numbers.

A cell trains one Boundless DAS intervention with one subspace per variable of its candidate, on every
training pair once per variable (each variable swapped alone), and records its `Outcome` on the validation
and test pairs (das_lib.method.outcome), read over the task's answer tokens and, beside it, over the whole
vocabulary.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from das_lib.method.counterfactual import make_pair
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, caches_or_plain
from das_lib.method.interventions import BoundlessDASIntervention, save_intervention
from das_lib.method.outcome import Outcome
from das_lib.method.programs import Candidate
from das_lib.method.sites import Site, layer_module
from das_lib.method.task import Task, accuracy
from das_lib.method.training import (
    InterventionForward, PlainForward, TrainConfig, answer_tokens_under, answers_both_ways, set_seed, train_intervention,
)
from das_lib.models.load import load_model
from das_lib.runs import pools
from das_lib.runs.cache import LastOne
from das_lib.runs.identity import run_identity
from das_lib.runs.store import Store, canonical
from das_lib.tasks import make_task

ALIGNMENT = "alignment"  # file stem of a cell's alignment in its record folder (.safetensors + .json)


@dataclass
class Pool:
    """A design's pairs, encoded at every searched position ((N, k) positions) on the model's device, and the
    model's own answers on the held-out bases (over the answer tokens, and over the vocabulary)."""

    roles: list[str]
    pairs: dict[str, list]
    encoded: dict[str, InterchangeData]
    answers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def data_key(config: Mapping[str, Any]) -> str:
    """What names a config's pool (its task and data design) in the runner's memory: canonical JSON, so that a
    config read back from a record (keys sorted) finds what the grid's own config made."""
    return canonical({name: config[name] for name in ("task", "data")})


def candidate_data(pool: InterchangeData, label_ids: np.ndarray) -> InterchangeData:
    """The pool's examples once per variable of a candidate (all of variable 0, then 1, ...), each with the
    variable's index and the token id of its counterfactual label on that pair ((V, N) `label_ids`)."""
    n_vars, n = label_ids.shape
    if n != len(pool):
        raise ValueError(f"every variable needs one label per pool example ({len(pool)}); got {n}")
    device = pool.labels.device
    data = pool.select(np.tile(np.arange(n), n_vars))
    labels = torch.from_numpy(label_ids.reshape(-1)).to(device)
    return data.relabelled(torch.arange(n_vars, device=device).repeat_interleave(n), labels, None)


def unintervened(model: nn.Module, caches: dict[int, CachedForward | None], column: int,
                 data: Iterable[InterchangeData], role: str) -> InterventionForward:
    """A forward that swaps nothing at `role` (column `column` of `data`, encoded at k positions): from a held cache,
    only the layers above its layer run (exact to float rounding, as the cache's self-check showed); with none,
    the whole model (the plain path)."""
    def keep(base: torch.Tensor, source: torch.Tensor, variable: torch.Tensor) -> torch.Tensor:
        return base

    layer = next((l for l, c in caches.items() if c is not None), None)  # noqa: E741
    if layer is None:
        return PlainForward(model, Site(0, role), keep)
    return caches[layer].for_position(column, data, Site(layer, role), keep)


class Runner:
    """Runs the jobs of one model in one process, keeping what cells share: model, pool, layer caches."""

    def __init__(self, name: str, dtype: str, device: str, loaded: tuple[nn.Module, Any] | None = None):
        # `loaded`: the (model, tokenizer) that load_model(name, device, dtype) gave the caller already,
        # used as it is: a second copy of a large model would not fit beside it on one GPU
        self.model, self.tokenizer = loaded if loaded is not None else load_model(name, device, dtype)
        self.identity = run_identity(name, dtype, device)
        self.device = next(self.model.parameters()).device
        self.pools = LastOne()  # the pool of the design at hand
        self.caches = LastOne()  # its fast-path caches: layer -> CachedForward, or None
        self._tasks: dict[str, Task] = {}

    def task(self, config: Mapping[str, Any]) -> Task:
        """The config's task (registered name and settings) for this model's tokenizer."""
        key = canonical(config["task"])
        if key not in self._tasks:
            self._tasks[key] = make_task(config["task"]["name"], self.tokenizer, config["task"]["settings"])
        return self._tasks[key]

    def candidate(self, config: Mapping[str, Any]) -> Candidate:
        """The config's candidate: one of the task's hypotheses, or a member of the family its design separates."""
        return pools.candidate(self.task(config), config["candidate"], config["data"]["separate"])

    # ---- the pool -------------------------------------------------------------------------------------
    def pool(self, config: Mapping[str, Any]) -> Pool:
        """The pool of the config's design, encoded once for every candidate."""
        return self.pools.get(data_key(config), lambda: self._encode(config))

    def _encode(self, config: Mapping[str, Any]) -> Pool:
        task = self.task(config)
        roles, split_pairs = task.searched_roles(), pools.pairs(task, config["data"])
        reference = next(iter(task.hypotheses().values()))  # any labels: each candidate puts its own on these inputs
        encoded = {s: task.interchange_data([make_pair(reference.model, b, src, reference.variables[:1])
                                             for b, src in split_pairs[s]], roles).to(self.device) for s in pools.SPLITS}
        return Pool(roles, split_pairs, encoded)

    def layer_caches(self, config: Mapping[str, Any], layer: int, layers: Sequence[int] = ()) -> CachedForward | None:
        """The fast-path cache of the config's pool at `layer` for all positions, or None where the fast path
        cannot run. The caches of `layers` (those the caller asks for next) are built with it in one forward
        pass over the pool; only a layer not held, or another pool, builds anew."""
        key, pool = data_key(config), self.pool(config)
        held = self.caches.full and self.caches.key[0] == key and layer in self.caches.value
        if not held:
            wanted = tuple(sorted({layer, *layers}))
            self.caches.get((key, wanted), lambda: caches_or_plain(self.model, wanted, [pool.encoded[s] for s in pools.SPLITS]))
        return self.caches.value[layer]

    def base_answers(self, config: Mapping[str, Any], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) the model's own answers on the split's bases, over the answer tokens and over the vocabulary: from
        a held cache at the last position swapping nothing (the layers above the site only: exact to float
        rounding, as the cache's self-check showed), else from a full forward pass."""
        pool = self.pool(config)
        if split not in pool.answers:
            j = pool.roles.index("last") if "last" in pool.roles else len(pool.roles) - 1
            held = self.caches.value if self.caches.full and self.caches.key[0] == data_key(config) else {}
            forward = unintervened(self.model, held or {}, j, [pool.encoded[s].column(j) for s in pools.SPLITS], pool.roles[j])
            pool.answers[split] = answers_both_ways(forward, pool.encoded[split].column(j))
        return pool.answers[split]

    def targets(self, config: Mapping[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
        """(V, N) the candidate's counterfactual label tokens on the split, and (N,) its own answer on each base."""
        return pools.labels(self.task(config), self.candidate(config), self.pool(config).pairs[split])

    # ---- a cell ---------------------------------------------------------------------------------------
    def forward_for(self, config: Mapping[str, Any], intervention: nn.Module, data: Sequence[InterchangeData],
                    layers: Sequence[int] = ()) -> tuple[Any, str]:
        """The forward of `intervention` at the config's site over `data` (drawn from the pool's column of the
        site's position): the shared cache's fast path, or the plain path where it cannot run."""
        site = Site.from_dict(config["site"])
        j = self.pool(config).roles.index(site.position)
        shared = self.layer_caches(config, site.layer, layers)
        if shared is None:  # caches_or_plain said why, once
            return PlainForward(self.model, site, intervention), "plain"
        return shared.for_position(j, list(data), site, intervention), "fast (shared cache)"

    def cell(self, config: Mapping[str, Any], folder: Path, layers: Sequence[int] = ()) -> dict[str, Any]:
        """Train the cell's alignment, save it in `folder`, and return its results (`layers`: the layers coming up
        next, cached together with this one)."""
        pool, site = self.pool(config), Site.from_dict(config["site"])
        j = pool.roles.index(site.position)
        targets = {s: self.targets(config, s) for s in pools.SPLITS}
        data = {s: candidate_data(pool.encoded[s].column(j), targets[s][0]) for s in pools.SPLITS}
        train_config = TrainConfig(**config["train"])
        set_seed(train_config.seed)  # the rotation's initialisation depends on the seed too
        n_variables = targets["train"][0].shape[0]
        device = next(layer_module(self.model, site).parameters()).device
        intervention = BoundlessDASIntervention(self.model.config.hidden_size, config["method"]["rank"], n_variables,
                                                orthogonal_map=train_config.orthogonal_map, device=device)
        start_dims = intervention.boundary_dims()
        forward, path = self.forward_for(config, intervention, [data[s] for s in pools.SPLITS], layers)
        result = train_intervention(forward, intervention, data["train"], train_config, progress=False)
        save_intervention(intervention, folder / ALIGNMENT, meta={"config": dict(config)})
        outcomes = {s: self.outcome(config, forward, data[s], targets[s], s).as_dict() for s in pools.HELD_OUT}
        return {"outcomes": outcomes, "majority": {s: majority_rate(targets[s][0]) for s in pools.HELD_OUT},
                "boundary_dims": intervention.boundary_dims(), "boundary_dims_start": start_dims,
                "curves": result.curves, "seconds": result.seconds, "path": path, "device": str(device),
                "alignment": ALIGNMENT}

    def outcome(self, config: Mapping[str, Any], forward: Any, data: InterchangeData,
                targets: tuple[np.ndarray, np.ndarray], split: str) -> Outcome:
        """The `Outcome` of `forward` on `candidate_data` of the split (every pair once per variable)."""
        labels, factual = torch.from_numpy(targets[0]), torch.from_numpy(targets[1])
        n_vars, n = labels.shape
        ours, vocab = (t.view(n_vars, n) for t in answers_both_ways(forward, data))
        none, vocab_none = self.base_answers(config, split)
        return Outcome(correct=(ours == labels).numpy(), none=(none[None, :] == labels).numpy(),
                       changed=(labels != factual[None, :]).numpy(), vocab_correct=(vocab == labels).numpy(),
                       vocab_none=(vocab_none[None, :] == labels).numpy())

    def predictions(self, config: Mapping[str, Any], intervention: nn.Module, split: str = "test") -> torch.Tensor:
        """(V, N) the answer tokens on the pool's `split` under `intervention` at the config's site, each variable
        swapped alone on every pair (as its cell was scored)."""
        pool, site = self.pool(config), Site.from_dict(config["site"])
        j = pool.roles.index(site.position)
        labels = self.targets(config, split)[0]
        data = candidate_data(pool.encoded[split].column(j), labels)
        forward, _ = self.forward_for(config, intervention, [data])
        return answer_tokens_under(forward, data).view(labels.shape[0], -1)

    def measure_task_accuracy(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The model's accuracy on the factual task (the upper bound of IIA), over the answer tokens and over the
        whole vocabulary, and the accuracy of always giving the more common answer."""
        task, rng = self.task(config), random.Random(config["seed"])
        inputs = [task.sample_input(rng) for _ in range(config["n_games"])]
        measured = accuracy(task, self.model, inputs)
        return {"task_accuracy": measured["answers"], "task_accuracy_vocabulary": measured["vocabulary"],
                "majority": measured["majority"]}


def majority_rate(label_ids: np.ndarray) -> float:
    """Share of the most common label over all of a candidate's (V, N) labels: the IIA of always giving it."""
    _, counts = np.unique(label_ids, return_counts=True)
    return float(counts.max() / label_ids.size)


_RUNNER = LastOne()  # one model in memory per process: the runner of the last (model, dtype, device)


def runner_for(model: str, dtype: str, device: str, loaded: tuple[nn.Module, Any] | None = None) -> Runner:
    """The runner of (model, dtype, device) in this process, loading the model unless it is the one held
    (or `loaded`, the caller's own copy of it)."""
    return _RUNNER.get((model, dtype, device), lambda: Runner(model, dtype, device, loaded))


def layers_of(configs: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> list[int]:
    """The layers of the cells in `configs` that share `config`'s pool (same task and design)."""
    if config.get("kind") != "cell":
        return []
    key = data_key(config)
    return sorted({c["site"]["layer"] for c in configs if c.get("kind") == "cell" and data_key(c) == key})


def run_job(config: dict[str, Any], store_root: str, device: str, layers: Sequence[int] = ()) -> dict[str, Any]:
    """Run one job (a cell, or the task accuracy) unless its record exists; returns the record.

    This is the function each Dask task runs: everything its numbers depend on is in `config`; `layers` only
    says which layer caches to build together (the same numbers either way).
    """
    store = Store(store_root)
    record = store.get(config)
    if record is not None:
        return record
    runner = runner_for(config["model"]["name"], config["model"]["dtype"], device)
    if runner.identity != config["model"]:
        raise ValueError(
            f"the model {config['model']['name']!r} loaded here has other files than the grid asked for "
            f"({runner.identity['files']} vs {config['model']['files']}): give every worker the same model files")
    if config["kind"] == "cell":
        results = runner.cell(config, store.folder(config), layers)
    else:
        results = runner.measure_task_accuracy(config)
    return store.put(config, results)
