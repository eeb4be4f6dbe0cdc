"""The pairs a grid trains and scores on: one pool per data design, split three ways, labelled by each candidate.

A design (plain data, part of every cell's config) fixes the pairs: how many per split, the data seed,
and how they are drawn:

- at random (`separate` None): each split draws its (base, source) pairs from the task's pair sampler with
  its own seed (`method.seeds.split_seeds`), so that no draw repeats another's by accident;
- chosen to separate a family of candidates (`separate` = {"family": settings of `Task.family`,
  "pool_factor": k, "share": s}): each split is chosen from a random pool k times its size, first the pairs
  that tell apart label functions of the family that few pool pairs tell apart
  (`das_lib.method.separation.separating_pairs`), then random ones; no pair is in two splits.

Every candidate labels the same pairs by running its causal model (`labels`), so candidates compare pair
by pair. The pairs depend on the task, the design and the family, never on which candidates or sites a
grid trains.
"""
from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np

from das_lib.method.programs import Candidate
from das_lib.method.seeds import split_seeds
from das_lib.method.separation import group, label_functions, separating_pairs
from das_lib.method.task import Inputs, Task

SPLITS = ("train", "val", "test")  # training, choosing (validation), reporting (test)
HELD_OUT = ("val", "test")
Pair = tuple[Inputs, Inputs]
_MADE: OrderedDict[str, dict[str, list[Pair]]] = OrderedDict()  # the last few designs' pairs, made once per process


def design(n_train: int, n_val: int, n_test: int, seed: int, separate: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A design as plain data (what a cell's config holds), refusing sizes no split can have."""
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 2}
    if bad or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"a data design needs at least 2 pairs per split and a seed >= 0, got {bad or sizes}, seed {seed!r}")
    if separate is not None:
        missing = {"family", "pool_factor", "share"} - set(separate)
        if missing or separate["pool_factor"] < 1 or not 0 <= separate["share"] <= 1:
            raise ValueError(f"separate needs family, pool_factor >= 1 and share in [0, 1]; got {dict(separate)}")
        separate = {"family": dict(separate["family"]), "pool_factor": separate["pool_factor"], "share": separate["share"]}
    return {**sizes, "seed": seed, "separate": separate}


def pairs(task: Task, spec: Mapping[str, Any]) -> dict[str, list[Pair]]:
    """The design's pairs per split (made once per process for the last few designs)."""
    key = json.dumps({"task": task.settings(), "design": spec}, sort_keys=True)
    if key not in _MADE:
        _MADE[key] = _separating(task, spec) if spec["separate"] else _random(task, spec)
        while len(_MADE) > 4:
            _MADE.popitem(last=False)
    return _MADE[key]


def _random(task: Task, spec: Mapping[str, Any]) -> dict[str, list[Pair]]:
    out = {}
    for name, seed in zip(SPLITS, split_seeds(spec["seed"], len(SPLITS))):
        rng = random.Random(seed)
        out[name] = [task.sample_pair(rng) for _ in range(spec[f"n_{name}"])]
    return out


def _separating(task: Task, spec: Mapping[str, Any]) -> dict[str, list[Pair]]:
    family, factor, share = task.family(spec["separate"]["family"]), spec["separate"]["pool_factor"], spec["separate"]["share"]
    out, seen = {}, set()
    for name, seed in zip(SPLITS, split_seeds(spec["seed"], len(SPLITS))):
        rng, size = random.Random(seed), spec[f"n_{name}"]
        pool = [p for p in (task.sample_pair(rng) for _ in range(size * factor)) if pair_key(p) not in seen]
        functions = group({c.key: label_functions(c, pool) for c in family}).functions
        chosen = separating_pairs(functions, size, math.ceil(share * size), seed)
        out[name] = [pool[i] for i in chosen]
        seen |= {pair_key(pool[i]) for i in chosen}
    return out


def pair_key(pair: Pair) -> tuple:
    """A (base, source) pair as a hashable key."""
    return tuple(sorted(pair[0].items())) + tuple(sorted(pair[1].items()))


def candidate(task: Task, key: str, separate: Mapping[str, Any] | None) -> Candidate:
    """The candidate `key`: one of the task's hypotheses or control tasks, or a member of the family a design
    separates."""
    for named in (task.hypotheses(), task.controls()):
        if key in named:
            return named[key]
    members = {c.key: c for c in task.family(separate["family"])} if separate else {}
    if key not in members:
        raise KeyError(f"candidate {key!r} is neither a hypothesis or control of the task "
                       f"({[*task.hypotheses(), *task.controls()]}) nor in the family of the data design")
    return members[key]


def labels(task: Task, candidate: Candidate, split_pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """(V, N) the answer token of each variable's counterfactual label on every pair (by running the causal
    model), and (N,) the token of the causal model's own answer on each base."""
    functions = label_functions(candidate, split_pairs)
    ids = np.array([[task.answer_id(value) for value in f] for f in functions], dtype=np.int64)
    factual = np.array([task.answer_id(candidate.model.predict(base)) for base, _ in split_pairs], dtype=np.int64)
    return ids, factual


def family_labels(task: Task, candidates: Sequence[Candidate], split_pairs: Mapping[str, Sequence[Pair]]
                  ) -> dict[str, tuple[tuple, ...]]:
    """Every candidate's label functions over all splits' pairs joined (train, val, test in order): what tells
    candidates apart on this design (`das_lib.method.separation.group`)."""
    joined = [p for s in SPLITS for p in split_pairs[s]]
    return {c.key: label_functions(c, joined) for c in candidates}

