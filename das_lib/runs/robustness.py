"""Robustness of learned alignments: reuse them, without retraining, on variants of the task.

The paper's second result: an alignment Boundless DAS learned on the standard yes/no games keeps its
IIA when the games change (a fixed bracket), when an irrelevant sentence is prepended to the
instruction, when the instruction becomes its True/False sibling, and on the inputs the model gets
right or wrong. Here each such *setting* is a `Variant` of the task (das_lib.method.task: the task's
settings changed, the pairs optionally filtered by the model's answers; a task's own settings are made in its
folder, das_lib.tasks.<name>.variants), and `evaluate_settings` runs a grid's
alignments (inference only) on the setting's pairs, as the grid scored them: every pair once per variable
of the alignment's candidate (that variable swapped alone), read over the setting's own answer tokens,
into an `Outcome` per alignment (das_lib.method.outcome).

Which alignments: for each hypothesis, the cell chosen on validation (das_lib.runs.reuse: at the site a
`Finding` chose, the seed of highest validation score), every run at that site (training seeds x data
seeds: the spread beside the chosen one), and optionally every cell of the grid (the paper's heatmaps and
its statistics of a whole grid). What each setting's pairs can mean is measured beside them: the model's
accuracy on the setting's games, with its exact interval, and the rate of always giving their more common
answer. A model that answers a setting no better than that has nothing there for an alignment to move, and
its IIAs on the setting mean nothing (das_lib.runs.robustness_table flags them).

Pairs are drawn from seeds.setting_seed(seed), never from a grid's own training or test seeds; settings that
change only the prompt share their pairs, so two rows differ only in what their setting changes. The
paper's rows are in das_lib.paper.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from das_lib.method.counterfactual import make_pair
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import caches_or_plain
from das_lib.method.outcome import Outcome
from das_lib.method.programs import Candidate
from das_lib.method.seeds import screening_seed, setting_games_seed, setting_seed
from das_lib.method.stats import binomial_interval
from das_lib.method.task import Task, Variant, majority_rate
from das_lib.method.training import PlainForward, answers_both_ways
from das_lib.tasks import make_task
from das_lib.runs import pools
from das_lib.runs.grid import Cell
from das_lib.runs.grids import iia_grid
from das_lib.runs.jobs import candidate_data, unintervened

Pair = pools.Pair

def setting_task(task: str, tokenizer: PreTrainedTokenizerBase, standard: Mapping[str, Any], setting: Variant) -> Task:
    """The task `task` (a das_lib.tasks name) under `setting`: its `standard` settings with the setting's changes."""
    return make_task(task, tokenizer, setting.settings(standard))


# ---------------------------------------------------------------------------------------------
# Pairs of a setting


def split_by_answers(pairs: Sequence[Pair], base_ok: Sequence[bool], source_ok: Sequence[bool]) -> tuple[list[Pair], list[Pair]]:
    """(pairs whose base and source the model both answers correctly, the other pairs)."""
    if not len(pairs) == len(base_ok) == len(source_ok):
        raise ValueError(f"{len(pairs)} pairs but {len(base_ok)} base and {len(source_ok)} source answers")
    correct, incorrect = [], []
    for pair, b, s in zip(pairs, base_ok, source_ok):
        (correct if bool(b) and bool(s) else incorrect).append(pair)
    return correct, incorrect


def screen_pairs(model: nn.Module, task: Task, n: int, seed: int, max_screened: int, chunk: int = 512
                 ) -> tuple[dict[str, list[Pair]], int]:
    """Pairs of games split by the model's factual answers, drawn in rounds until both sets ("correct",
    "incorrect") have `n` pairs or `max_screened` pairs were screened.

    Returns ({"correct": [...], "incorrect": [...]}, pairs screened); a set may hold fewer than `n`.
    """
    found: dict[str, list[Pair]] = {"correct": [], "incorrect": []}
    screened, round_ = 0, 0
    while screened < max_screened and any(len(v) < n for v in found.values()):
        size = min(chunk, max_screened - screened)
        rng = random.Random(screening_seed(seed, round_))
        pairs = [task.sample_pair(rng) for _ in range(size)]
        right = task.readings(model, [b for b, _ in pairs] + [s for _, s in pairs])[0]
        correct, incorrect = split_by_answers(pairs, right[:size].tolist(), right[size:].tolist())
        found["correct"] += correct
        found["incorrect"] += incorrect
        screened, round_ = screened + size, round_ + 1
    return {k: v[:n] for k, v in found.items()}, screened


def setting_pairs(setting: Variant, model: nn.Module, task: Task, n: int, seed: int, max_screened: int,
                  screened: dict[Any, Any] | None = None) -> tuple[list[Pair], int]:
    """The setting's pairs (drawn by `task`, the task under the setting, from seeds.setting_seed(seed)) and how many
    pairs were screened to find them (0 when none had to be). `screened` keeps a screening for the next setting
    with the same changes (correct-only and incorrect-only share one)."""
    if setting.answers is None:
        rng = random.Random(setting_seed(seed))
        return [task.sample_pair(rng) for _ in range(n)], 0
    key = setting.changes
    screened = {} if screened is None else screened
    if key not in screened:
        screened[key] = screen_pairs(model, task, n, setting_seed(seed), max_screened)
    found, count = screened[key]
    return found[setting.answers], count


def task_check(model: nn.Module, task: Task, n_games: int, seed: int) -> dict[str, Any]:
    """Does the model answer the task (under a setting: its prompts and inputs) better than chance? Its accuracy on
    `n_games` inputs (over the task's answer tokens) with the exact 95% interval, the rate of always giving the
    inputs' most common answer, and `answers`: the interval's lower end lies above that rate."""
    rng = random.Random(setting_games_seed(seed))
    games = [task.sample_input(rng) for _ in range(n_games)]
    right = int(task.readings(model, games)[0].sum())
    low, high = binomial_interval(right, n_games)
    majority = majority_rate(task, games)
    return {"games": n_games, "task acc": right / n_games, "task acc low": low, "task acc high": high,
            "majority": majority, "answers": bool(low > majority)}


# ---------------------------------------------------------------------------------------------
# Evaluating alignments on a setting (inference only)


@dataclass
class Alignments:
    """What a robustness study reuses, by hypothesis: the cell chosen on validation, every run at its chosen site
    (training seeds x data seeds), the cells the heatmaps show (empty: none), their interventions, and the grid's
    own test IIA of those cells (`trained`: candidate, layer, position, seed, iia)."""

    chosen: dict[str, Cell]
    at_site: dict[str, list[Cell]]
    grid: dict[str, list[Cell]]
    interventions: dict[Cell, nn.Module]
    trained: pd.DataFrame

    def cells(self, hypothesis: str) -> list[Cell]:
        """Every cell of `hypothesis` a setting evaluates, once each."""
        return list(dict.fromkeys([self.chosen[hypothesis], *self.at_site[hypothesis], *self.grid.get(hypothesis, [])]))


def encode_pairs(task: Task, pairs: Sequence[Pair], roles: Sequence[str], device: torch.device) -> InterchangeData:
    """The pairs' prompts at `roles` ((N, k) positions), on `device`; every candidate puts its own labels on them."""
    reference = next(iter(task.hypotheses().values()))
    labelled = [make_pair(reference.model, base, source, reference.variables[:1]) for base, source in pairs]
    return task.interchange_data(labelled, list(roles)).to(device)


def outcomes_on(model: nn.Module, task: Task, pairs: Sequence[Pair], interventions: Mapping[Cell, nn.Module]
                ) -> tuple[dict[Cell, Outcome], dict[str, np.ndarray]]:
    """Each alignment's `Outcome` on `pairs` under `task` (every pair once per variable of its candidate), from
    one pass of the model per layer for all positions (the exact fast path; the plain one where it cannot run),
    and each candidate's (V, N) counterfactual label tokens."""
    device = next(model.parameters()).device
    roles = list(dict.fromkeys(c.position for c in interventions))
    data = encode_pairs(task, pairs, roles, device)
    caches = caches_or_plain(model, sorted({c.layer for c in interventions}), [data])
    none, vocab_none = answers_both_ways(unintervened(model, caches, 0, [data.column(0)], roles[0]), data.column(0))
    labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out = {}
    for cell, intervention in interventions.items():
        if cell.candidate not in labels:
            labels[cell.candidate] = pools.labels(task, pools.candidate(task, cell.candidate, None), pairs)
        ids, factual = (torch.from_numpy(a) for a in labels[cell.candidate])
        j = roles.index(cell.position)
        examples = candidate_data(data.column(j), ids.numpy())
        shared = caches[cell.layer]
        forward = (PlainForward(model, cell.site(), intervention) if shared is None
                   else shared.for_position(j, [examples], cell.site(), intervention))
        ours, vocab = (t.view(*ids.shape) for t in answers_both_ways(forward, examples))
        out[cell] = Outcome(correct=(ours == ids).numpy(), none=(none[None, :] == ids).numpy(),
                            changed=(ids != factual[None, :]).numpy(), vocab_correct=(vocab == ids).numpy(),
                            vocab_none=(vocab_none[None, :] == ids).numpy())
    return out, {k: v[0] for k, v in labels.items()}


@dataclass
class RobustnessResult:
    """Every evaluated alignment's `Outcome` on every setting, what each setting's pairs can mean (`checks`), and
    the alignments reused; das_lib.runs.robustness_table reads the tables from it."""

    settings: list[Variant]
    alignments: Alignments
    outcomes: dict[str, dict[Cell, Outcome]]  # setting key -> cell -> Outcome
    labels: dict[str, np.ndarray]  # setting key -> (V, N) label tokens of the setting's hypothesis
    checks: pd.DataFrame  # per setting key: pairs, screened, games, task acc (low, high), majority, answers
    positions: list[str]
    hypotheses: dict[str, Candidate]  # the task's hypotheses, by key (their titles and variables)
    seconds: float = 0.0  # wall-clock time of the evaluation
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): comparable on a busy machine
    stored: bool = False  # read back from a store's record rather than evaluated in this process
    cells: pd.DataFrame = field(init=False)  # one row per (setting, grid cell): the IIA the heatmaps show

    def __post_init__(self) -> None:
        rows = [{"setting": key, "hypothesis": cell.candidate, "layer": cell.layer, "position": cell.position,
                 "seed": cell.seed, "iia": float(outcome.correct.mean())}
                for key, by_cell in self.outcomes.items() for cell, outcome in by_cell.items()
                if cell in self.alignments.grid.get(cell.candidate, [])]
        self.cells = pd.DataFrame(rows, columns=["setting", "hypothesis", "layer", "position", "seed", "iia"])

    def setting(self, key: str) -> Variant:
        return next(s for s in self.settings if s.key == key)

    def grid(self, key: str) -> pd.DataFrame:
        """The layer x position IIA grid of setting `key` (mean over the grid's seeds)."""
        return iia_grid(self.cells[self.cells["setting"] == key], positions=self.positions)

    def trained_grid(self, hypothesis: str) -> pd.DataFrame:
        """The grid the alignments of `hypothesis` were trained on: their IIA on the grid's own test pairs."""
        trained = self.alignments.trained
        return iia_grid(trained[trained["candidate"] == hypothesis], positions=self.positions)

    def grids(self) -> dict[str, pd.DataFrame]:
        """Every setting's grid with pairs, by title (for heatmaps.heatmap_panels)."""
        return {s.title: self.grid(s.key) for s in self.settings if (self.cells["setting"] == s.key).any()}

    def figure_groups(self) -> dict[str, dict[str, pd.DataFrame]]:
        """The grids in the paper's three groups (new inputs, irrelevant context, instruction and inputs),
        each group led by the grid its alignments were trained on (a few panels per figure: an annotated
        seaborn heatmap redraws its whole figure, so one figure of every panel is slow)."""
        groups: dict[str, dict[str, pd.DataFrame]] = {}
        for s in self.settings:
            if not (self.cells["setting"] == s.key).any():
                continue
            title = self.hypotheses[s.hypothesis].title
            panels = groups.setdefault(s.figure, {f"trained: {title}": self.trained_grid(s.hypothesis)})
            panels[s.short or s.title] = self.grid(s.key)
        return groups


def _cell_key(cell: Cell) -> str:
    return f"{cell.candidate}|{cell.layer}|{cell.position}|{cell.seed}|{cell.data_seed}"


def as_record(result: RobustnessResult) -> dict[str, Any]:
    """What `from_record` needs to give `result` back (plain data for a store's record): every Outcome, the labels,
    the checks and the evaluation's times; the alignments themselves are the grid's cells."""
    return {"outcomes": {k: {_cell_key(c): o.as_dict() for c, o in by_cell.items()} for k, by_cell in result.outcomes.items()},
            "labels": {k: v.tolist() for k, v in result.labels.items()},
            "checks": result.checks.to_dict("split"), "check_types": result.checks.dtypes.astype(str).to_dict(),
            "index_name": result.checks.index.name, "positions": result.positions,
            "seconds": result.seconds, "cpu_seconds": result.cpu_seconds}


def from_record(results: Mapping[str, Any], settings: Sequence[Variant], alignments: Alignments,
                hypotheses: Mapping[str, Candidate]) -> RobustnessResult:
    """The `RobustnessResult` that `as_record` wrote, on the same settings and alignments (`stored`: True)."""
    cells = {_cell_key(c): c for c in alignments.interventions}
    missing = sorted({key for by_cell in results["outcomes"].values() for key in by_cell} - set(cells))
    if missing:
        raise KeyError(f"the stored robustness study evaluated alignments {missing} that were not given")
    # a record's JSON sorts its keys: the settings' and the alignments' own order is restored here
    stored = results["outcomes"]
    outcomes = {s.key: {c: Outcome.from_dict(stored[s.key][_cell_key(c)]) for c in alignments.cells(s.hypothesis)}
                for s in settings if s.key in stored}
    labels = {s.key: np.array(results["labels"][s.key], dtype=np.int64) for s in settings if s.key in stored}
    split = results["checks"]
    checks = pd.DataFrame(split["data"], index=split["index"], columns=split["columns"]).astype(results["check_types"])
    checks.index.name = results["index_name"]
    return RobustnessResult(list(settings), alignments, outcomes, labels, checks, list(results["positions"]), dict(hypotheses),
                            float(results["seconds"]), float(results["cpu_seconds"]), stored=True)


def evaluate_settings(model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, standard: Mapping[str, Any],
                      settings: Sequence[Variant], alignments: Alignments, n_pairs: int, n_games: int, seed: int,
                      max_screened: int) -> RobustnessResult:
    """Every alignment of each setting's hypothesis in `alignments` on `n_pairs` pairs of the task `task` (a
    das_lib.tasks name) under the setting, its `standard` settings changed (inference only), and the model's
    accuracy on `n_games` of the setting's inputs beside their majority rate."""
    if n_pairs < 2 or n_games < 1 or max_screened < 2:
        raise ValueError(f"need n_pairs >= 2, n_games >= 1 and max_screened >= 2; got {n_pairs}, {n_games}, {max_screened}")
    missing = sorted({s.hypothesis for s in settings} - set(alignments.chosen))
    if missing:
        raise KeyError(f"the settings reuse the alignments of {missing}, which were not given (they hold {sorted(alignments.chosen)})")
    start, cpu_start = time.perf_counter(), time.process_time()
    outcomes, labels, checks, screened, known = {}, {}, {}, {}, {}
    for s in settings:
        changed = setting_task(task, tokenizer, standard, s)
        pairs, count = setting_pairs(s, model, changed, n_pairs, seed, max_screened, screened)
        if s.changes not in known:  # settings with the same prompts and inputs share the check
            known[s.changes] = task_check(model, changed, n_games, seed)
        checks[s.key] = {"setting": s.title, "hypothesis": s.hypothesis, "pairs": len(pairs), "screened": count, **known[s.changes]}
        if pairs:
            interventions = {c: alignments.interventions[c] for c in alignments.cells(s.hypothesis)}
            outcomes[s.key], by_candidate = outcomes_on(model, changed, pairs, interventions)
            labels[s.key] = by_candidate[s.hypothesis]
    positions = list(dict.fromkeys(c.position for cells in alignments.grid.values() for c in cells))
    table = pd.DataFrame.from_dict(checks, orient="index").rename_axis("key")
    hypotheses = dict(make_task(task, tokenizer, standard).hypotheses())
    return RobustnessResult(list(settings), alignments, outcomes, labels, table, positions, hypotheses,
                            time.perf_counter() - start, time.process_time() - cpu_start)
