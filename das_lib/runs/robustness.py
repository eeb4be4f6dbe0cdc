"""Robustness of learned alignments: reuse them, without retraining, on new inputs, contexts and instructions.

The paper's second result: an alignment Boundless DAS learned on the standard yes/no games keeps its
IIA when the games change (a fixed bracket), when an irrelevant sentence is prepended to the
instruction, when the instruction becomes its True/False sibling, and on the inputs the model gets
right or wrong. Here each such *setting* is a `Setting`; `evaluate_settings` evaluates every
alignment of a sweep store on the setting's counterfactual pairs (inference only) and sums up each
setting's grid as the paper does: max IIA, Pearson r with the grid the alignments were trained on,
and the variance of IIA over the grid.

The alignments come from a sweep's store (das_lib.runs.reuse finds them); the paper's rows are in
das_lib.paper.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from das_lib import paper
from das_lib.method.counterfactual import CounterfactualPair
from das_lib.method.fastpath import caches_or_plain
from das_lib.method.interventions import load_intervention
from das_lib.method.seeds import screening_seed, setting_seed
from das_lib.method.sites import Site, layer_module
from das_lib.method.training import PlainForward, evaluate, unintervened_iia
from das_lib.pricetag.game import HYPOTHESES, get_hypothesis, majority_rate_of, parse_bracket, price, sample_game, sample_pairs
from das_lib.pricetag.task import PriceTagTask, model_answers, task_accuracy
from das_lib.runs.grids import COLUMNS, grid_stats, iia_grid
from das_lib.runs.store import Store

# A longer irrelevant passage (not in the stand-in's training pool of contexts).
LONG_CONTEXT = (
    "Last spring the town library moved into the old railway station. Volunteers carried thousands of "
    "books across the square, and the mayor cut a ribbon made of recycled paper. Visitors now read under "
    "the tall arched windows while freight trains rumble past on the new line behind the building."
)
DEFAULT_CONTEXTS = (*paper.CONTEXTS, LONG_CONTEXT)

# ---------------------------------------------------------------------------------------------
# Settings

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
    paper: str | None = None  # row of paper.ROBUSTNESS to compare with, if the paper has one
    short: str = ""  # the title of its heatmap panel (default: the title)

    def __post_init__(self) -> None:
        get_hypothesis(self.hypothesis)
        if self.answers not in (None, *ANSWER_FILTERS):
            raise ValueError(f"setting {self.key!r}: answers must be None, 'correct' or 'incorrect', got {self.answers!r}")
        if self.paper is not None and self.paper not in paper.ROBUSTNESS:
            raise KeyError(f"setting {self.key!r}: {self.paper!r} is not a row of paper.ROBUSTNESS")

    def task(self, tokenizer: PreTrainedTokenizerBase, template: str) -> PriceTagTask:
        """The setting's prompts: the standard template with its instruction variant and context."""
        return PriceTagTask(tokenizer, template, self.variant, self.context)


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def make_settings(
    kinds: Sequence[str] = SETTING_KINDS,
    bracket_seen: str = paper.BRACKETS["seen"],
    bracket_unseen: str = paper.BRACKETS["unseen"],
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
            row = f"fixed bracket {name} ({which})"
            out.append(Setting(f"fixed_{which}", f"fixed bracket {name} ({which})", "left", bracket=bracket,
                               paper=row if row in paper.ROBUSTNESS else None, short=f"bracket {name} ({which})"))
    if "context" in kinds:
        for i, text in enumerate(contexts, start=1):
            row = f'irrelevant context "{text}"'
            out.append(Setting(f"context_{i}", f'irrelevant context "{_short(text)}"', "left_right", context=text,
                               paper=row if row in paper.ROBUSTNESS else None, short=f'"{_short(text, 36)}"'))
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
        pairs = sample_pairs(hypothesis, size, screening_seed(seed, round_))
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
    fast: bool = True, loaded: dict[str, nn.Module] | None = None,
) -> pd.DataFrame:
    """IIA of every alignment in `alignments` (rows of `alignment_table`) on `pairs` under `task`.

    The model runs once over the pairs for all layers and positions (fast path); returns one row per
    cell: hypothesis, layer, position, iia, path. `loaded` keeps the alignments loaded (by record hash)
    for the next call: every setting evaluates the same ones.
    """
    device = next(model.parameters()).device
    hidden_size = model.config.hidden_size
    positions = list(dict.fromkeys(alignments["position"]))
    data = task.interchange_data(pairs, positions).to(device)
    rows = []
    layers = sorted(int(l) for l in alignments["layer"].unique())
    caches = caches_or_plain(model, layers, [data]) if fast else dict.fromkeys(layers)  # one forward pass for all layers
    for layer, group in alignments.groupby("layer", sort=True):
        shared = caches[int(layer)]
        for row in group.itertuples(index=False):
            j = positions.index(row.position)
            column, site = data.column(j), Site(int(layer), row.position)
            intervention = _load(store, row, hidden_size, next(layer_module(model, site).parameters()).device, loaded)
            if shared is not None:
                forward, path = shared.for_position(j, [column], site, intervention), "fast"
            else:
                forward, path = PlainForward(model, site, intervention), "plain"
            rows.append({"hypothesis": row.hypothesis, "layer": int(layer), "position": row.position,
                         "iia": evaluate(forward, column), "path": path})
    return pd.DataFrame(rows)




def _load(store: Store, row: Any, hidden_size: int, device: torch.device, loaded: dict[str, nn.Module] | None) -> nn.Module:
    """The alignment of a row of `alignment_table`, built on `device`, from `loaded` when it is there."""
    if loaded is not None and row.hash in loaded:
        return loaded[row.hash]
    try:
        intervention, _ = load_intervention(store.root / row.hash / row.alignment, hidden_size, device)
    except (RuntimeError, KeyError, ValueError) as err:  # a file written by another version of das_lib.method.interventions
        raise RuntimeError(
            f"cannot load the alignment of {row.hypothesis} L{row.layer}@{row.position} from {store.root / row.hash}: "
            f"{err}. It was probably saved by another version of das_lib; delete that folder (or the whole "
            "store) and train it again (train_missing=True, or the sweep chapter)"
        ) from err
    if loaded is not None:
        loaded[row.hash] = intervention.eval()
    return intervention.eval()


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
    come from seeds.setting_seed(seed), never from a sweep's own training or test seeds).
    Task accuracy is measured on `n_task` games drawn as the paper does (with the setting's bracket);
    for the answer-filtered settings, on the games of the kept pairs. "no intervention" is the IIA of
    leaving the model alone on the setting's pairs (the baseline every IIA of the row is read against).
    """
    if n_pairs < 2 or n_pairs % 2:
        raise ValueError(f"n_pairs must be an even number >= 2 (pairs are balanced Yes/No), got {n_pairs}")
    start, cpu_start = time.perf_counter(), time.process_time()
    positions = list(dict.fromkeys(alignments["position"]))
    cells, rows, screened_cache, accuracy_cache, loaded = [], [], {}, {}, {}
    for s in settings:
        task = s.task(tokenizer, template)
        pairs, screened = _setting_pairs(s, model, task, n_pairs, setting_seed(seed), max_screened, screened_cache)
        reference = iia_grid(alignments[alignments["hypothesis"] == s.hypothesis], positions=positions)
        row: dict[str, Any] = {"setting": s.title, "hypothesis": s.hypothesis, "pairs": len(pairs), "screened": screened}
        if pairs:
            grid_rows = evaluate_grid(model, task, pairs, alignments[alignments["hypothesis"] == s.hypothesis], store, fast, loaded)
            cells.append(grid_rows.assign(setting=s.key))
            if s.answers is None:  # settings that share prompts and games (the standard rows) share the number
                key = (s.variant, s.context, s.bracket)
                if key not in accuracy_cache:
                    rng = random.Random(seed)
                    accuracy_cache[key] = task_accuracy(model, task, [sample_game(rng, s.bracket) for _ in range(n_task)])
                accuracy = accuracy_cache[key]
            else:
                accuracy = task_accuracy(model, task, [p.base for p in pairs] + [p.source for p in pairs])
            device = next(model.parameters()).device
            none = unintervened_iia(model, task.interchange_data(pairs, positions[0]).to(device))
            row.update({"dummy": majority_rate_of(pairs), "task acc": accuracy, "no intervention": none,
                        **grid_stats(iia_grid(grid_rows, positions=positions), reference)})
        else:
            row.update({"dummy": float("nan"), "task acc": float("nan"), "no intervention": float("nan"),
                        **dict.fromkeys(COLUMNS, float("nan"))})
        theirs = paper.ROBUSTNESS.get(s.paper) if s.paper else None
        row.update({f"paper {c}": (theirs[i] if theirs else float("nan")) for i, c in enumerate(COLUMNS)})
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index([s.key for s in settings], name="key"))
    all_cells = pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=["setting", "hypothesis", "layer", "position", "iia", "path"])
    return RobustnessResult(list(settings), all_cells, alignments, table, time.perf_counter() - start,
                            time.process_time() - cpu_start, positions)
