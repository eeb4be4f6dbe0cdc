"""Reusing a sweep's alignments: look them up in a Store by what made them, say which are missing, and
evaluate them on the robustness settings.

Alignments are looked up by the model's identity (its files' hashes and dtype) and the standard task
settings (`standard_match`). A cell trained from several seeds or configs keeps its record of highest
IIA, as the paper kept the best of three seeds.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from das_lib import paper
from das_lib.method.training import TrainConfig
from das_lib.pricetag.game import HYPOTHESES
from das_lib.runs import robustness
from das_lib.runs.store import Store
from das_lib.runs.spec import SweepSpec, run_identity
from das_lib.runs.sweep import Sweep


HOW_TO_MAKE = "the sweep chapter (book/05_sweep.ipynb) with this store, model and dtype"


class MissingAlignments(LookupError):
    """The store lacks alignments the robustness table needs."""


def alignment_table(
    store: Store,
    match: Mapping[str, Any],
    hypotheses: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The alignment used at each (hypothesis, layer, position): among the store's Boundless DAS records
    whose config has every (key, value) of `match` (e.g. the model identity and the standard task
    settings), the one of highest validation IIA (the best of seeds, chosen as a sweep chooses, not on its
    test pairs; ties: the first in store order).

    Columns: hypothesis, layer, position, seed, steps, iia (as recorded: on the sweep's test pairs), val_iia,
    candidates (matching records for that cell), hash, alignment (file stem in the record's folder).
    """
    candidates: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for record in store.records():
        c = record["config"]
        if c.get("kind") != "alignment" or c.get("method", {}).get("name") != "boundless":
            continue
        if any(c.get(k) != json_value(v) for k, v in match.items()):
            continue
        key = (c["hypothesis"], int(c["site"]["layer"]), c["site"]["position"])
        if key[0] not in hypotheses or (layers is not None and key[1] not in layers) or (positions is not None and key[2] not in positions):
            continue
        candidates.setdefault(key, []).append({
            "hypothesis": key[0], "layer": key[1], "position": key[2], "seed": c["train"]["seed"],
            "steps": c["train"]["steps"], "iia": float(record["results"]["iia"]),
            "val_iia": float(record["results"]["val_iia"]), "hash": record["hash"],
            "alignment": record["results"]["alignment"],
        })
    rows = []
    for key in sorted(candidates):
        found = candidates[key]
        best = max(range(len(found)), key=lambda i: (found[i]["val_iia"], -i))  # first of equals
        rows.append({**found[best], "candidates": len(found)})
    columns = ["hypothesis", "layer", "position", "seed", "steps", "iia", "val_iia", "candidates", "hash", "alignment"]
    return pd.DataFrame(rows, columns=columns)


def json_value(value: Any) -> Any:
    """`value` as it reads back from a record's JSON (tuples become lists)."""
    if isinstance(value, Mapping):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def needed_grid(table: pd.DataFrame, layers: Sequence[int] | None, positions: Sequence[str] | None) -> tuple[list[int], list[str]]:
    """The grid to evaluate: the given layers and positions, or (for None) those the store holds for any hypothesis."""
    layers = sorted(set(table["layer"].astype(int))) if layers is None else list(layers)
    positions = list(dict.fromkeys(table["position"])) if positions is None else list(positions)
    return layers, positions


def missing_cells(table: pd.DataFrame, hypotheses: Sequence[str], layers: Sequence[int], positions: Sequence[str]) -> list[tuple[str, int, str]]:
    """The (hypothesis, layer, position) cells of the grid that `table` has no alignment for."""
    have = set(zip(table["hypothesis"], table["layer"].astype(int), table["position"]))
    return [(h, l, p) for h in hypotheses for l in layers for p in positions if (h, l, p) not in have]


def require_alignments(
    table: pd.DataFrame, hypotheses: Sequence[str], layers: Sequence[int], positions: Sequence[str], command: str = HOW_TO_MAKE
) -> None:
    """Raise MissingAlignments naming the missing cells and how to make them, unless every cell has one."""
    if not layers or not positions:
        raise MissingAlignments(
            f"the store holds no alignment of {list(hypotheses)} for this model and the standard task. "
            f"Run the sweep chapter first:\n  {command}\nor rerun this chapter with train_missing=True"
        )
    missing = missing_cells(table, hypotheses, layers, positions)
    if missing:
        shown = ", ".join(f"{h} L{l}@{p}" for h, l, p in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise MissingAlignments(
            f"the store lacks {len(missing)} of the {len(hypotheses) * len(layers) * len(positions)} alignments "
            f"needed ({shown}). Make them with the sweep chapter:\n  {command}\n"
            "or rerun this chapter with train_missing=True"
        )


def alignment_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per hypothesis: how many cells, over which layers and positions, trained how long, from which seeds,
    and their recorded IIA (on the sweep's test pairs)."""
    rows = []
    for h, sub in table.groupby("hypothesis", sort=False):
        rows.append({"hypothesis": HYPOTHESES[h].title, "cells": len(sub), "layers": sorted(set(sub["layer"].astype(int))),
                     "positions": sub["position"].nunique(), "training steps": sorted(set(sub["steps"].astype(int))),
                     "seeds kept": sorted(set(sub["seed"].astype(int))), "records per cell (max)": int(sub["candidates"].max()),
                     "max recorded IIA": float(sub["iia"].max()), "mean recorded IIA": float(sub["iia"].mean())})
    return pd.DataFrame(rows).set_index("hypothesis")


def standard_match(model: str, dtype: str, template: str, device: str = "cpu") -> dict[str, Any]:
    """What a sweep record's config must hold to be reused here: this model's files, dtype and kind of
    device, and the standard task (the yes/no instruction without context) in `template`."""
    return {"model": run_identity(model, dtype, device),
            "task": {"template": template, "variant": "yesno", "context": None}}


def train_missing(
    store: Store, model: str, template: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
    positions: Sequence[str] | None, steps: int, n_train: int, n_test: int, seed: int, dtype: str, device: str,
    loaded: tuple[Any, Any] | None = None,
) -> dict[str, int]:
    """Train (with das_lib.runs.sweep) every alignment of this grid the store lacks, on the standard task in
    `template`; returns how many ran and how many were reused."""
    spec = SweepSpec(  # validation pairs, half as many as the test pairs, choose the seed kept at a site
        model=model, hypotheses=tuple(hypotheses), layers=None if layers is None else tuple(layers),
        positions=None if positions is None else tuple(positions), seeds=(seed,), train=TrainConfig(steps=steps),
        n_train=n_train, n_test=n_test, n_val=max(2, n_test // 2), data_seed=seed, template=template, dtype=dtype,
    )
    return Sweep(spec, store, device, loaded).run(progress=False)


def reuse_alignments(
    store: str, model: str, dtype: str, template: str, hypotheses: Sequence[str],
    layers: Sequence[int] | None = None, positions: Sequence[str] | None = None,
    train: Mapping[str, Any] | None = None, device: str = "cpu", command: str = HOW_TO_MAKE,
    loaded: tuple[Any, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The alignments to reuse (`alignment_table` of the standard task) and where they came from: how many
    were trained here ("trained") and how many the store already held ("reused").

    With `train` (keyword arguments of `train_missing`: steps, n_train, n_test, seed) the alignments the
    store lacks are trained first; without, a missing one raises MissingAlignments with `command`,
    what makes it (the chapter gives the papermill command line). `loaded`: the caller's (model, tokenizer),
    trained on instead of loading a second copy.
    """
    root = Store(store)
    match = standard_match(model, dtype, template, device)
    table = alignment_table(root, match, hypotheses, layers, positions)
    needed = needed_grid(table, layers, positions)
    counts = {"trained": 0, "reused": len(table)}
    if train is not None and (not all(needed) or missing_cells(table, hypotheses, *needed)):
        ran = train_missing(root, model, template, hypotheses, layers, positions, dtype=dtype, device=device,
                            loaded=loaded, **train)
        counts = {"trained": ran["ran"], "reused": ran["reused"]}
        table = alignment_table(root, match, hypotheses, layers, positions)
        needed = needed_grid(table, layers, positions)
    require_alignments(table, hypotheses, *needed, command)
    return table, counts


def robustness_of(sweep: Sweep, kinds: Sequence[str], n_pairs: int, n_task: int, max_screened: int,
                  contexts: Sequence[str] = paper.CONTEXTS) -> robustness.RobustnessResult:
    """The sweep's own alignments (every hypothesis a setting of `kinds` needs, at the sweep's layers and
    positions) reused without retraining on the robustness settings `kinds`, with the paper's fixed
    brackets and `contexts`; `n_pairs` pairs and `n_task` games per setting, seeded by the sweep's data seed."""
    spec = sweep.spec
    settings = robustness.make_settings(kinds, paper.BRACKETS["seen"], paper.BRACKETS["unseen"], contexts)
    hypotheses = [h for h in spec.hypotheses if any(s.hypothesis == h for s in settings)]
    aligned, _ = reuse_alignments(str(sweep.store.root), spec.model, spec.dtype, sweep.task.template, hypotheses,
                                  list(sweep.layers), list(sweep.positions), None, sweep.device)
    return robustness.evaluate_settings(sweep.runner.model, sweep.runner.tokenizer, sweep.task.template, settings,
                                        sweep.store, aligned, n_pairs, n_task, spec.data_seed, max_screened)
