"""What interchange data can tell apart: candidates grouped by their counterfactual labels, and pairs that
separate the groups.

A candidate (a causal model and the variables it intervenes on) is, for an interchange experiment, its
*label functions*: for each of its variables, the counterfactual output of every (base, source) pair
when that variable takes the source's value. Two candidates with the same label functions on the pairs
of an experiment give it the same training and test data, so no interchange intervention on those
pairs can prefer one to the other: they form one *group*, and training one member trains them all.
Among the groups that remain, some differ on few pairs of a random draw; `separating_pairs` picks
pairs so that every two label functions that differ somewhere differ on enough of them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from das_lib.method.programs import Candidate

Pair = tuple[Mapping[str, Any], Mapping[str, Any]]  # (base inputs, source inputs)


def label_functions(candidate: Candidate, pairs: Sequence[Pair]) -> tuple[tuple[Any, ...], ...]:
    """For each variable of `candidate`, its counterfactual label on every pair (by running its causal model)."""
    return tuple(tuple(candidate.model.interchange(b, s, (v,)) for b, s in pairs) for v in candidate.variables)


@dataclass(frozen=True)
class Group:
    """Candidates whose label functions agree on the pairs (as sets: the order of the variables aside)."""

    members: tuple[str, ...]  # candidate keys, in the family's order; the first is the representative
    functions: tuple[int, ...]  # index of each variable's label function in `Separation.functions`

    @property
    def key(self) -> str:
        return self.members[0]


@dataclass(frozen=True)
class Separation:
    """Groups of candidates on a set of pairs, and the distinct label functions they are made of."""

    groups: tuple[Group, ...]
    functions: tuple[tuple[Any, ...], ...]  # distinct label functions over the pairs

    def group_of(self, key: str) -> Group:
        """The group holding candidate `key`."""
        for g in self.groups:
            if key in g.members:
                return g
        raise KeyError(f"candidate {key!r} is in no group; candidates: {[m for g in self.groups for m in g.members]}")


def group(labels: Mapping[str, Sequence[Sequence[Any]]]) -> Separation:
    """Group candidates (key -> their `label_functions`, in the family's order) by their label functions; a
    group's first member represents it."""
    functions: dict[tuple[Any, ...], int] = {}
    by_signature: dict[tuple[int, ...], list[str]] = {}
    for key, fs in labels.items():
        ids = tuple(functions.setdefault(tuple(f), len(functions)) for f in fs)
        by_signature.setdefault(tuple(sorted(ids)), []).append(key)
    if not functions or not next(iter(functions)):
        raise ValueError("no candidates or no pairs to tell candidates apart on")
    groups = tuple(Group(tuple(members), signature) for signature, members in by_signature.items())
    return Separation(groups, tuple(functions))


def carries_output(group: Group, separation: "Separation", outputs: Sequence[Any]) -> bool:
    """Does a variable of `group` carry the whole output: is one of its label functions the source's own output
    (`outputs`, pair by pair)? Every program computes its output, so such a group tells no program from another."""
    return tuple(outputs) in {separation.functions[i] for i in group.functions}


def restrict(labels: Mapping[str, Sequence[Sequence[Any]]], pairs: Sequence[int]) -> dict[str, tuple[tuple[Any, ...], ...]]:
    """The label functions on the pairs at indices `pairs` only."""
    return {key: tuple(tuple(f[i] for i in pairs) for f in fs) for key, fs in labels.items()}


def separated_counts(functions: Sequence[Sequence[Any]]) -> np.ndarray:
    """(F, F) array: on how many pairs label functions i and j differ."""
    codes = _codes(functions)
    return (codes[:, :, None] != codes[:, None, :]).sum(0)


def _codes(functions: Sequence[Sequence[Any]]) -> np.ndarray:
    """(P, F) integer codes of the labels (equal labels, equal codes)."""
    values: dict[Any, int] = {}
    return np.array([[values.setdefault(label, len(values)) for label in f] for f in functions], dtype=np.int64).T


def separating_pairs(functions: Sequence[Sequence[Any]], n: int, min_separating: int, seed: int) -> list[int]:
    """Indices of `n` pairs of a pool (the columns of `functions`, one label function per row) on which every
    two functions that differ somewhere in the pool differ at least `min_separating` times (or on every
    pool pair where they differ, if fewer), the rest drawn at random from the pool.

    Greedy: each step takes the pool pair that separates most of the function pairs still short of
    `min_separating`; ties go to the pool's random order, so a seed gives one selection."""
    codes = _codes(functions)
    n_pool = codes.shape[0]
    if not 1 <= n <= n_pool:
        raise ValueError(f"cannot choose {n} pairs from a pool of {n_pool}; draw a larger pool")
    order = np.array(random.Random(seed).sample(range(n_pool), n_pool))
    differ = codes[order][:, :, None] != codes[order][:, None, :]  # (P, F, F), pool in random order
    need = np.minimum(differ.sum(0), min_separating)
    chosen: list[int] = []
    taken = np.zeros(n_pool, dtype=bool)
    while len(chosen) < n and need.any():
        score = (differ & (need > 0)).sum((1, 2))
        score[taken] = -1
        best = int(score.argmax())
        if score[best] <= 0:
            break
        chosen.append(best)
        taken[best] = True
        need = np.maximum(need - differ[best], 0)
    chosen += [i for i in range(n_pool) if not taken[i]][: n - len(chosen)]
    return [int(order[i]) for i in chosen]
