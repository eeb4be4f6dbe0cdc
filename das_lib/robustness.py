"""Robustness of learned alignments: reuse them, without retraining, on new inputs, contexts and instructions.

The paper's second result: an alignment Boundless DAS learned on the standard yes/no games keeps its
IIA when the games change (a fixed bracket), when an irrelevant sentence is prepended to the
instruction, when the instruction becomes its True/False sibling, and on the inputs the model gets
right or wrong. Here each such *setting* is a `Setting`; `evaluate_settings` evaluates every
alignment of a sweep store on the setting's counterfactual pairs (inference only) and sums up each
setting's grid as the paper does: max IIA, Pearson r with the grid the alignments were trained on,
and the variance of IIA over the grid.

Alignments are looked up in a `Store` by what made them (`alignment_table`): the model's identity
(its files' hashes and dtype) and the standard task settings. A cell trained from several seeds or
configs keeps its record of highest IIA, as the paper kept the best of three seeds.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from das_lib.counterfactual import CounterfactualPair
from das_lib.fastpath import shared_cache, shared_caches
from das_lib.interventions import load_intervention
from das_lib.metrics import pearson
from das_lib.plots import iia_grid
from das_lib.pricetag import HYPOTHESES, get_hypothesis, majority_rate_of, parse_bracket, price, sample_game, sample_pairs
from das_lib.sites import Site, layer_module
from das_lib.store import Store
from das_lib.sweep import Sweep, SweepSpec, model_identity
from das_lib.tasks import PriceTagTask, model_answers, task_accuracy
from das_lib.training import InterchangeData, PlainForward, TrainConfig, evaluate

# ---------------------------------------------------------------------------------------------
# The paper's numbers (Alpaca 7B, release analysis): max IIA over the grid, Pearson r of the setting's
# grid with the grid it was trained on, variance of IIA over the grid x 100 (the rows of the two
# hypotheses whose alignments are reused here; sweep.PAPER_MAX_IIA holds every hypothesis's max IIA).
# Source: Wu et al., "Interpretability at Scale: Identifying Causal Mechanisms in Alpaca", NeurIPS 2023
# (arXiv:2305.08809), as gathered in shared/reference/paper-notes.md ("Results to compare against").

PAPER_COLUMNS = ("max IIA", "r", "variance x100")
PAPER_ROBUSTNESS: dict[str, tuple[float, float, float]] = {
    "Left Boundary": (0.90, 1.00, 2.01),
    "Left and Right Boundary": (0.86, 1.00, 1.14),
    "correct-only inputs": (0.88, 0.99, 1.47),
    "incorrect-only inputs": (0.71, 0.84, 0.36),
    "fixed bracket 5.49-8.49 (seen)": (0.94, 0.97, 3.02),
    "fixed bracket 2.51-5.51 (unseen)": (0.95, 0.94, 1.66),
    'irrelevant context "Pricing tag game!"': (0.83, 0.97, 0.94),
    'irrelevant context "Fruitarian Frogs May Be Doing Flowers a Favor"': (0.85, 0.98, 1.04),
    'sibling instruction "say True ... otherwise False"': (0.83, 0.87, 0.93),
}
PAPER_BRACKETS = {"seen": "5.49-8.49", "unseen": "2.51-5.51"}
PAPER_CONTEXTS = ("Pricing tag game!", "Fruitarian Frogs May Be Doing Flowers a Favor")
# A longer irrelevant passage (not in the stand-in's training pool of contexts).
LONG_CONTEXT = (
    "Last spring the town library moved into the old railway station. Volunteers carried thousands of "
    "books across the square, and the mayor cut a ribbon made of recycled paper. Visitors now read under "
    "the tall arched windows while freight trains rumble past on the new line behind the building."
)
DEFAULT_CONTEXTS = (*PAPER_CONTEXTS, LONG_CONTEXT)

# ---------------------------------------------------------------------------------------------
# Settings

# The settings' pairs are drawn from seed + PAIR_SEED_OFFSET: a sweep draws its training and test pairs
# from seeds 2 * data_seed and 2 * data_seed + 1, and the same seed would give largely the same pairs,
# so an alignment would be evaluated on pairs it was trained on.
PAIR_SEED_OFFSET = 1_000_003
SETTING_KINDS = ("standard", "fixed_bracket", "context", "sibling", "correct_only", "incorrect_only")
ANSWER_FILTERS = ("correct", "incorrect")


@dataclass(frozen=True)
class Setting:
    """One robustness setting: how its pairs and prompts differ from the standard ones, and whose alignments it reuses.

    `hypothesis` names the alignments evaluated and the standard grid the setting is compared with
    (the paper: Left Boundary for the fixed-bracket rows, Left and Right Boundary otherwise).
    `answers` keeps only pairs whose base and source games the model answers both correctly
    ("correct"), or not both correctly ("incorrect").
    """

    key: str
    title: str
    hypothesis: str
    bracket: tuple[int, int] | None = None
    context: str | None = None
    variant: str = "yesno"
    answers: str | None = None
    paper: str | None = None  # row of PAPER_ROBUSTNESS to compare with, if the paper has one
    short: str = ""  # the title of its heatmap panel (default: the title)

    def __post_init__(self) -> None:
        get_hypothesis(self.hypothesis)
        if self.answers not in (None, *ANSWER_FILTERS):
            raise ValueError(f"setting {self.key!r}: answers must be None, 'correct' or 'incorrect', got {self.answers!r}")
        if self.paper is not None and self.paper not in PAPER_ROBUSTNESS:
            raise KeyError(f"setting {self.key!r}: {self.paper!r} is not a row of PAPER_ROBUSTNESS")

    def task(self, tokenizer: PreTrainedTokenizerBase, template: str) -> PriceTagTask:
        """The setting's prompts: the standard template with its instruction variant and context."""
        return PriceTagTask(tokenizer, template, self.variant, self.context)


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def make_settings(
    kinds: Sequence[str] = SETTING_KINDS,
    bracket_seen: str = PAPER_BRACKETS["seen"],
    bracket_unseen: str = PAPER_BRACKETS["unseen"],
    contexts: Sequence[str] = DEFAULT_CONTEXTS,
) -> list[Setting]:
    """The settings of the robustness table, in the paper's order, for the given kinds, brackets and contexts."""
    bad = [k for k in kinds if k not in SETTING_KINDS]
    if not kinds or bad:
        raise ValueError(f"setting kinds must be a non-empty list drawn from {list(SETTING_KINDS)}; bad: {bad or 'empty list'}")
    if "context" in kinds and (not contexts or any(not isinstance(c, str) or not c.strip() for c in contexts)):
        raise ValueError(f"contexts must be a non-empty list of non-empty strings, got {list(contexts)!r}")
    out: list[Setting] = []
    if "standard" in kinds:
        for key in ("left", "left_right"):
            title = HYPOTHESES[key].title
            out.append(Setting(f"standard_{key}", f"standard inputs ({title})", key, paper=title, short="standard inputs"))
    if "correct_only" in kinds:
        out.append(Setting("correct_only", "correct-only inputs", "left_right", answers="correct", paper="correct-only inputs"))
    if "incorrect_only" in kinds:
        out.append(Setting("incorrect_only", "incorrect-only inputs", "left_right", answers="incorrect", paper="incorrect-only inputs"))
    if "fixed_bracket" in kinds:
        for which, text in (("seen", bracket_seen), ("unseen", bracket_unseen)):
            bracket = parse_bracket(text)
            name = f"{price(bracket[0])}-{price(bracket[1])}"
            paper = f"fixed bracket {name} ({which})"
            out.append(Setting(f"fixed_{which}", f"fixed bracket {name} ({which})", "left", bracket=bracket,
                               paper=paper if paper in PAPER_ROBUSTNESS else None, short=f"bracket {name} ({which})"))
    if "context" in kinds:
        for i, text in enumerate(contexts, start=1):
            paper = f'irrelevant context "{text}"'
            out.append(Setting(f"context_{i}", f'irrelevant context "{_short(text)}"', "left_right", context=text,
                               paper=paper if paper in PAPER_ROBUSTNESS else None, short=f'"{_short(text, 36)}"'))
    if "sibling" in kinds:
        title = 'sibling instruction "say True ... otherwise False"'
        out.append(Setting("sibling", title, "left_right", variant="truefalse", paper=title, short="say True ... otherwise False"))
    return out


def settings_table(settings: Sequence[Setting]) -> pd.DataFrame:
    """One row per setting: what changes, whose alignments are reused, the paper's row it is compared with."""
    return pd.DataFrame([{
        "key": s.key, "setting": s.title, "alignments of": HYPOTHESES[s.hypothesis].title,
        "bracket": "random" if s.bracket is None else f"{price(s.bracket[0])}-{price(s.bracket[1])}",
        "context": _short(s.context or "", 32), "instruction": s.variant, "inputs": s.answers or "all",
        "in the paper": s.paper is not None,
    } for s in settings]).set_index("key")


# ---------------------------------------------------------------------------------------------
# Alignments in a store


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
    settings), the one of highest IIA (best of seeds; ties: the first in store order).

    Columns: hypothesis, layer, position, seed, steps, iia (as recorded: on the sweep's test pairs),
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
            "steps": c["train"]["steps"], "iia": float(record["results"]["iia"]), "hash": record["hash"],
            "alignment": record["results"]["alignment"],
        })
    rows = []
    for key in sorted(candidates):
        found = candidates[key]
        best = max(range(len(found)), key=lambda i: (found[i]["iia"], -i))  # first of equals
        rows.append({**found[best], "candidates": len(found)})
    columns = ["hypothesis", "layer", "position", "seed", "steps", "iia", "candidates", "hash", "alignment"]
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


def sweep_command(store: str, model: str, dtype: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
                  positions: Sequence[str] | None) -> str:
    """The papermill command (run from the repository root) that makes the sweep chapter train these
    alignments into `store` (given as an absolute path: a chapter resolves it from its own folder)."""
    grid = {"hypotheses": list(hypotheses), "layers": list(layers or []), "positions": list(positions or [])}
    yaml = "{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in grid.items()) + "}"
    return (f"papermill book/05_sweep.ipynb /tmp/05_sweep.ipynb -p store {Path(store).resolve()} -p model {model} "
            f"-p dtype {dtype} -y '{yaml}'")


def require_alignments(
    table: pd.DataFrame, hypotheses: Sequence[str], layers: Sequence[int], positions: Sequence[str], command: str
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


def standard_match(model: str, dtype: str, template: str) -> dict[str, Any]:
    """What a sweep record's config must hold to be reused here: this model's files and dtype, and the
    standard task (the yes/no instruction without context) in `template`."""
    return {"model": {**model_identity(model), "dtype": dtype},
            "task": {"template": template, "variant": "yesno", "context": None}}


def train_missing(
    store: Store, model: str, template: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
    positions: Sequence[str] | None, steps: int, n_train: int, n_test: int, seed: int, dtype: str, device: str,
) -> dict[str, int]:
    """Train (with das_lib.sweep) every alignment of this grid the store lacks, on the standard task in
    `template`; returns how many ran and how many were reused."""
    spec = SweepSpec(
        model=model, hypotheses=tuple(hypotheses), layers=None if layers is None else tuple(layers),
        positions=None if positions is None else tuple(positions), seeds=(seed,), train=TrainConfig(steps=steps),
        n_train=n_train, n_test=n_test, data_seed=seed, template=template, dtype=dtype,
    )
    return Sweep(spec, store, device).run(progress=False)


def reuse_alignments(
    store: str, model: str, dtype: str, template: str, hypotheses: Sequence[str],
    layers: Sequence[int] | None = None, positions: Sequence[str] | None = None,
    train: Mapping[str, Any] | None = None, device: str = "cpu",
) -> tuple[pd.DataFrame, str]:
    """The alignments to reuse (`alignment_table` of the standard task) and a line saying where they came from.

    With `train` (keyword arguments of `train_missing`: steps, n_train, n_test, seed) the alignments the
    store lacks are trained first; without, a missing one raises MissingAlignments with the command
    that makes it.
    """
    root = Store(store)
    match = standard_match(model, dtype, template)
    table = alignment_table(root, match, hypotheses, layers, positions)
    needed = needed_grid(table, layers, positions)
    message = f"reusing {len(table)} alignments from {store}"
    if train is not None and (not all(needed) or missing_cells(table, hypotheses, *needed)):
        counts = train_missing(root, model, template, hypotheses, layers, positions, dtype=dtype, device=device, **train)
        message = f"trained the missing alignments with das_lib.sweep into {store}: {counts['ran']} trained, {counts['reused']} reused"
        table = alignment_table(root, match, hypotheses, layers, positions)
        needed = needed_grid(table, layers, positions)
    require_alignments(table, hypotheses, *needed, sweep_command(store, model, dtype, hypotheses, layers, positions))
    return table, message


# ---------------------------------------------------------------------------------------------
# Pairs of a setting


def split_by_answers(
    pairs: Sequence[CounterfactualPair], base_ok: Sequence[bool], source_ok: Sequence[bool]
) -> tuple[list[CounterfactualPair], list[CounterfactualPair]]:
    """(pairs whose base and source the model both answers correctly, the other pairs)."""
    if not len(pairs) == len(base_ok) == len(source_ok):
        raise ValueError(f"{len(pairs)} pairs but {len(base_ok)} base and {len(source_ok)} source answers")
    correct, incorrect = [], []
    for pair, b, s in zip(pairs, base_ok, source_ok):
        (correct if bool(b) and bool(s) else incorrect).append(pair)
    return correct, incorrect


def screen_pairs(
    model: nn.Module, task: PriceTagTask, hypothesis: str, n: int, seed: int, max_screened: int,
    want: Sequence[str] = ANSWER_FILTERS, chunk: int = 512,
) -> tuple[dict[str, list[CounterfactualPair]], int]:
    """Standard pairs split by the model's factual answers, drawn in rounds until each wanted set
    ("correct", "incorrect") has `n` pairs or `max_screened` pairs were screened.

    Returns ({"correct": [...], "incorrect": [...]}, pairs screened); a set may hold fewer than `n`.
    """
    found: dict[str, list[CounterfactualPair]] = {"correct": [], "incorrect": []}
    screened, round_ = 0, 0
    chunk = max(2, chunk - chunk % 2)
    while screened < max_screened and any(len(found[w]) < n for w in want):
        size = min(chunk, max_screened - screened)
        size -= size % 2
        if size < 2:
            break
        pairs = sample_pairs(hypothesis, size, seed + 7919 * (round_ + 1))  # rounds never reuse the setting's seed
        answers = model_answers(model, task, [p.base for p in pairs] + [p.source for p in pairs])
        correct, incorrect = split_by_answers(pairs, answers[:size].tolist(), answers[size:].tolist())
        found["correct"] += correct
        found["incorrect"] += incorrect
        screened += size
        round_ += 1
    return {w: found[w][:n] for w in found}, screened


# ---------------------------------------------------------------------------------------------
# Evaluating alignments on a setting (inference only)


def evaluate_grid(
    model: nn.Module, task: PriceTagTask, pairs: Sequence[CounterfactualPair], alignments: pd.DataFrame, store: Store,
    fast: bool = True,
) -> pd.DataFrame:
    """IIA of every alignment in `alignments` (rows of `alignment_table`) on `pairs` under `task`.

    The model runs once over the pairs for all layers and positions (fast path); returns one row per
    cell: hypothesis, layer, position, iia, path.
    """
    device = next(model.parameters()).device
    hidden_size = model.config.hidden_size
    positions = list(dict.fromkeys(alignments["position"]))
    data = task.interchange_data(pairs, positions).to(device)
    rows = []
    layers = sorted(int(l) for l in alignments["layer"].unique())
    caches = shared_caches(model, layers, [data]) if fast else dict.fromkeys(layers)  # one forward pass for all layers
    for layer, group in alignments.groupby("layer", sort=True):
        shared = caches[int(layer)]
        if shared is None and fast and len(layers) > 1:  # all layers together may not fit where one does
            shared = shared_cache(model, int(layer), [data])
        for row in group.itertuples(index=False):
            try:
                intervention, _ = load_intervention(store.root / row.hash / row.alignment, hidden_size)
            except (RuntimeError, KeyError, ValueError) as err:  # a file written by another version of das_lib.interventions
                raise RuntimeError(
                    f"cannot load the alignment of {row.hypothesis} L{row.layer}@{row.position} from {store.root / row.hash}: "
                    f"{err}. It was probably saved by another version of das_lib; delete that folder (or the whole "
                    "store) and train it again (train_missing=True, or the sweep chapter)"
                ) from err
            j = positions.index(row.position)
            column, site = data.column(j), Site(int(layer), row.position)
            # on the site's own device (a large model may be spread over several GPUs)
            intervention = intervention.to(next(layer_module(model, site).parameters()).device).eval()
            if shared is not None:
                forward, path = shared.for_position(j, [column], site, intervention), "fast"
            else:
                forward, path = PlainForward(model, site, intervention), "plain"
            rows.append({"hypothesis": row.hypothesis, "layer": int(layer), "position": row.position,
                         "iia": evaluate(forward, column), "path": path})
    return pd.DataFrame(rows)


def grid_stats(grid: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """The paper's columns for a layer x position IIA grid: max IIA, Pearson r with `reference` (the
    grid the alignments were trained on, matched cell by cell), and the variance over the grid x 100."""
    values = grid.to_numpy(float)
    ref = reference.reindex(index=grid.index, columns=grid.columns).to_numpy(float)
    if np.isnan(values).all():
        return {"max IIA": float("nan"), "r": float("nan"), "variance x100": float("nan")}
    return {"max IIA": float(np.nanmax(values)), "r": pearson(values, ref), "variance x100": float(np.nanvar(values) * 100)}


@dataclass
class RobustnessResult:
    """Per-cell IIA of every setting (`cells`), the reference grids, and the summary table (`table`)."""

    settings: list[Setting]
    cells: pd.DataFrame  # setting, hypothesis, layer, position, iia, path
    reference: pd.DataFrame  # the alignments used: hypothesis, layer, position, iia (trained grid), ...
    table: pd.DataFrame  # one row per setting (index: key)
    seconds: float = 0.0  # wall-clock time of the evaluation
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): comparable on a busy machine
    positions: list[str] = field(default_factory=list)

    def grid(self, key: str) -> pd.DataFrame:
        """The layer x position IIA grid of setting `key`."""
        return iia_grid(self.cells[self.cells["setting"] == key], positions=self.positions)

    def trained_grid(self, hypothesis: str) -> pd.DataFrame:
        """The grid the alignments of `hypothesis` were trained on (their IIA recorded by the sweep)."""
        return iia_grid(self.reference[self.reference["hypothesis"] == hypothesis], positions=self.positions)

    def grids(self) -> dict[str, pd.DataFrame]:
        """Every setting's grid with pairs, by title (for plots.heatmap_panels)."""
        return {s.title: self.grid(s.key) for s in self.settings if (self.cells["setting"] == s.key).any()}

    def figure_groups(self) -> dict[str, dict[str, pd.DataFrame]]:
        """The grids in the paper's three groups (new inputs, irrelevant context, instruction and inputs),
        each group led by the grid its alignments were trained on (a few panels per figure: an annotated
        seaborn heatmap redraws its whole figure, so one figure of every panel is slow)."""
        groups: dict[str, dict[str, pd.DataFrame]] = {}
        for s in self.settings:
            if not (self.cells["setting"] == s.key).any():
                continue
            group = ("new inputs" if s.bracket is not None or s.key == "standard_left" else
                     "irrelevant context" if s.context is not None or s.key == "standard_left_right" else
                     "instruction and inputs")
            panels = groups.setdefault(group, {f"trained: {HYPOTHESES[s.hypothesis].title}": self.trained_grid(s.hypothesis)})
            panels[s.short or s.title] = self.grid(s.key)
        order = ("new inputs", "irrelevant context", "instruction and inputs")
        return {g: groups[g] for g in order if g in groups}


def _setting_pairs(
    setting: Setting, model: nn.Module, task: PriceTagTask, n: int, seed: int, max_screened: int,
    screened_cache: dict[str, Any],
) -> tuple[list[CounterfactualPair], int]:
    """The setting's pairs and how many pairs were screened to find them (0 when none had to be)."""
    if setting.answers is None:
        return sample_pairs(setting.hypothesis, n, seed, setting.bracket), 0
    key = (setting.hypothesis, setting.variant, setting.context)
    if key not in screened_cache:  # correct-only and incorrect-only share one screening
        screened_cache[key] = screen_pairs(model, task, setting.hypothesis, n, seed, max_screened)
    found, screened = screened_cache[key]
    return found[setting.answers], screened


def evaluate_settings(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    settings: Sequence[Setting],
    store: Store,
    alignments: pd.DataFrame,
    n_pairs: int,
    n_task: int,
    seed: int,
    max_screened: int,
    fast: bool = True,
) -> RobustnessResult:
    """Evaluate the alignments of each setting's hypothesis on the setting's pairs and sum up each grid.

    Every setting shares `seed`: the pairs of two settings differ only in what the setting changes (pairs
    come from seed + PAIR_SEED_OFFSET, never from a sweep's own training or test seeds).
    Task accuracy is measured on `n_task` games drawn as the paper does (with the setting's bracket);
    for the answer-filtered settings, on the games of the kept pairs.
    """
    if n_pairs < 2 or n_pairs % 2:
        raise ValueError(f"n_pairs must be an even number >= 2 (pairs are balanced Yes/No), got {n_pairs}")
    start, cpu_start = time.perf_counter(), time.process_time()
    positions = list(dict.fromkeys(alignments["position"]))
    cells, rows, screened_cache, accuracy_cache = [], [], {}, {}
    for s in settings:
        task = s.task(tokenizer, template)
        pairs, screened = _setting_pairs(s, model, task, n_pairs, seed + PAIR_SEED_OFFSET, max_screened, screened_cache)
        reference = iia_grid(alignments[alignments["hypothesis"] == s.hypothesis], positions=positions)
        row: dict[str, Any] = {"setting": s.title, "hypothesis": s.hypothesis, "pairs": len(pairs), "screened": screened}
        if pairs:
            grid_rows = evaluate_grid(model, task, pairs, alignments[alignments["hypothesis"] == s.hypothesis], store, fast)
            cells.append(grid_rows.assign(setting=s.key))
            if s.answers is None:  # settings that share prompts and games (the standard rows) share the number
                key = (s.variant, s.context, s.bracket)
                if key not in accuracy_cache:
                    rng = random.Random(seed)
                    accuracy_cache[key] = task_accuracy(model, task, [sample_game(rng, s.bracket) for _ in range(n_task)])
                accuracy = accuracy_cache[key]
            else:
                accuracy = task_accuracy(model, task, [p.base for p in pairs] + [p.source for p in pairs])
            row.update({"dummy": majority_rate_of(pairs), "task acc": accuracy,
                        **grid_stats(iia_grid(grid_rows, positions=positions), reference), "note": ""})
        else:
            row.update({"dummy": float("nan"), "task acc": float("nan"),
                        **dict.fromkeys(PAPER_COLUMNS, float("nan")),
                        "note": f"no {s.answers}-only pairs among {screened} screened pairs: the model answered "
                                f"{'every' if s.answers == 'incorrect' else 'no'} screened pair's base and source correctly"})
        paper = PAPER_ROBUSTNESS.get(s.paper) if s.paper else None
        row.update({f"paper {c}": (paper[i] if paper else float("nan")) for i, c in enumerate(PAPER_COLUMNS)})
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index([s.key for s in settings], name="key"))
    all_cells = pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=["setting", "hypothesis", "layer", "position", "iia", "path"])
    return RobustnessResult(list(settings), all_cells, alignments, table, time.perf_counter() - start,
                            time.process_time() - cpu_start, positions)


# ---------------------------------------------------------------------------------------------
# Reading the table


def comparison(ours: float, theirs: float, tolerance: float = 0.02) -> str:
    """'higher than', 'lower than' or 'about the same as': how `ours` compares with `theirs`."""
    if np.isnan(ours) or np.isnan(theirs):
        return "not comparable with"
    if abs(ours - theirs) <= tolerance:
        return "about the same as"
    return "higher than" if ours > theirs else "lower than"


def headline_numbers(table: pd.DataFrame) -> dict[str, float]:
    """Named numbers of the table for the chapter's prose: for every default setting key k, `corr_k`,
    `max_iia_k`, `task_acc_k`, `var_k`, `paper_corr_k`, ...; and `corr_context`, the mean r over the contexts.
    NaN where a setting was not evaluated, so that every name always exists."""
    keys = list(dict.fromkeys([s.key for s in make_settings()] + list(table.index)))
    columns = {"corr": "r", "max_iia": "max IIA", "var": "variance x100", "task_acc": "task acc", "pairs": "pairs",
               "dummy": "dummy", "screened": "screened"}
    out: dict[str, float] = {}
    for key in keys:
        for name, column in columns.items():
            out[f"{name}_{key}"] = float(table.loc[key, column]) if key in table.index else float("nan")
        for name, column in (("corr", "r"), ("max_iia", "max IIA"), ("var", "variance x100")):
            out[f"paper_{name}_{key}"] = float(table.loc[key, f"paper {column}"]) if key in table.index else float("nan")
    contexts = [k for k in table.index if k.startswith("context_")]
    out["corr_context"] = float(table.loc[contexts, "r"].mean()) if contexts else float("nan")
    out["paper_corr_context"] = float(table.loc[contexts, "paper r"].mean()) if contexts else float("nan")
    return out


# Differences smaller than these count as "about the same" (variance in its x100 units).
TOLERANCE = {"max IIA": 0.02, "r": 0.02, "variance x100": 0.2}


def comparison_table(table: pd.DataFrame, tolerance: Mapping[str, float] = TOLERANCE) -> pd.DataFrame:
    """For each setting with a paper row: is our max IIA / r / variance higher than, lower than or about
    the same as the paper's?"""
    rows = {}
    for _, row in table.iterrows():
        if np.isnan(row["paper r"]):
            continue
        rows[row["setting"]] = {c: comparison(row[c], row[f"paper {c}"], tolerance[c]) for c in PAPER_COLUMNS}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(PAPER_COLUMNS))


def comparison_words(table: pd.DataFrame, tolerance: Mapping[str, float] = TOLERANCE) -> dict[str, str]:
    """`cmp_corr_k`, `cmp_max_iia_k`, `cmp_var_k` for every default setting key k: how our number compares
    with the paper's, in words ("not comparable with" where either is missing)."""
    words = comparison_table(table, tolerance)
    out = {}
    for key in dict.fromkeys([s.key for s in make_settings()] + list(table.index)):
        title = table.loc[key, "setting"] if key in table.index else None
        for column, short in (("r", "corr"), ("max IIA", "max_iia"), ("variance x100", "var")):
            out[f"cmp_{short}_{key}"] = words.loc[title, column] if title in words.index else "not comparable with"
    return out


def agreement(table: pd.DataFrame, tolerance: float = 0.05) -> dict[str, list[str]]:
    """Settings whose r lies within `tolerance` of the paper's ("close"), further ("apart"), or that have no
    r to compare (no paper row, or no r: too few pairs or a constant grid)."""
    out: dict[str, list[str]] = {"close": [], "apart": [], "not comparable": []}
    for _, row in table.iterrows():
        if np.isnan(row["paper r"]) or np.isnan(row["r"]):
            out["not comparable"].append(row["setting"])
        else:
            out["close" if abs(row["r"] - row["paper r"]) <= tolerance else "apart"].append(row["setting"])
    return out


def filtered_sentence(table: pd.DataFrame, key: str) -> str:
    """How many pairs an answer-filtered setting found, in words."""
    if key not in table.index:
        return "the setting was not evaluated"
    row = table.loc[key]
    found = f"{int(row['pairs'])} pairs were found among {int(row['screened'])} screened"
    return found + (", so its row has no IIA" if row["pairs"] == 0 else "")


def training_note(model: str) -> str:
    """What the model met in its own training of the settings' variations (for the book's stand-in, from its
    training record; other models: nothing known here)."""
    if model != "standin":
        return f"what {model} met in its own training is not known here"
    from das_lib.standin import load_record  # only the stand-in has a record

    config = load_record()["config"]
    sibling = config.get("variant_mix", {}).get("truefalse", 0.0) / max(1e-9, sum(config.get("variant_mix", {"yesno": 1}).values()))
    context = config.get("context_rate", 0.0) * (1 - config.get("context_after", 0.0))  # contexts start late
    note = (f"the book's stand-in was trained with the sibling instruction on {sibling:.0%} of its examples and "
            f"with a random irrelevant context on {context:.0%} of them")
    if config.get("iit_rate", 0.0) > 0:
        note += "; its planted mechanism was trained on plain yes/no prompts only, never on these variations"
    return note


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """Our columns next to the paper's, by setting title."""
    columns = ["hypothesis", "pairs", "dummy", "task acc"]
    for c in PAPER_COLUMNS:
        columns += [c, f"paper {c}"]
    return table.set_index("setting")[columns]
