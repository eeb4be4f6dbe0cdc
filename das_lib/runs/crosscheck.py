"""The hypotheses side by side on the same pairs: each chosen alignment scored against every hypothesis's labels.

Every candidate of a grid labels the same test pairs (one pool), and on many of them two candidates predict
the same counterfactual answer: there an alignment that follows either scores the same. Only the pairs
where two disagree tell them apart. `cross_matrix` runs each candidate's cell chosen on validation
(das_lib.runs.reuse.chosen_cell: at the `Finding`'s site, the seed of highest validation score), once per
variable it holds (that variable swapped alone, as the grid scored it), on the test pairs of the grid's data
seed, and scores its answers against the labels of every candidate and variable, on the pairs where the row's
labels and the column's differ (on the diagonal: on every pair), with the exact (Clopper-Pearson) 95%
interval over those pairs and their count. An alignment that realises its own variable scores high on its
diagonal and low against the others where they disagree; one that scores as high against another
candidate's labels there follows that candidate instead.

The answers are read from the cell's record where the task has two answers: read over two answer tokens, an
answer that is not the label is the other token, so the recorded `correct` flags give every answer exactly
(`recorded_answers`; a test checks them against a rerun). A task with more answers runs the alignment again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from das_lib.method.outcome import Outcome
from das_lib.method.stats import binomial_interval
from das_lib.runs.findings import Finding
from das_lib.runs.grid import Cell, Grid
from das_lib.runs.reuse import chosen_cell


@dataclass
class CrossMatrix:
    """Rows: (candidate, variable) alignments; columns: (candidate, variable) labels. Each frame is rows x columns;
    NaN (and 0 pairs) where the row's labels never differ from the column's."""

    iia: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame
    pairs: pd.DataFrame

    def long(self) -> pd.DataFrame:
        """One row per (row, column) cell: its IIA, interval and pairs."""
        return pd.DataFrame([{"row": r, "column": c, "iia": self.iia.loc[r, c], "low": self.low.loc[r, c],
                              "high": self.high.loc[r, c], "pairs": int(self.pairs.loc[r, c])}
                             for r in self.iia.index for c in self.iia.columns]).set_index(["row", "column"])


def name(grid: Grid, candidate: str, variable: str) -> str:
    """A row's or column's name: the candidate's title, and the variable where it has several."""
    c = grid.candidate(candidate)
    return c.title if len(c.variables) == 1 else f"{c.title} ({variable})"


def recorded_answers(grid: Grid, cell: Cell) -> np.ndarray | None:
    """(V, N) the answer tokens of `cell` on the test pairs of its data seed, from its recorded outcome, where the
    task has two answer tokens (a wrong answer is the other one); None where it has more."""
    answers = grid.task.answer_tensor().tolist()
    if len(answers) != 2:
        return None
    correct = Outcome.from_dict(grid.record(cell)["results"]["outcomes"]["test"]).correct
    labels = grid.labels(cell.candidate, "test", cell.data_seed)
    other = np.where(labels == answers[0], answers[1], answers[0])
    return np.where(correct, labels, other)


def cross_matrix(grid: Grid, finding: Finding, candidates: Sequence[str] | None = None) -> CrossMatrix:
    """The matrix of the module docstring over `candidates` (default: every candidate the finding chose a site
    for), in their order, one row and one column per variable."""
    candidates = list(candidates or finding.sites)
    answers, labels = {}, {}
    for c in candidates:
        cell = chosen_cell(grid, finding, c)
        predicted = recorded_answers(grid, cell)
        if predicted is None:
            intervention, record = grid.load_alignment(cell)
            predicted = grid.runner.predictions(record["config"], intervention.eval(), "test").numpy()  # (V, N)
        ids = grid.labels(c, "test", cell.data_seed)
        for v, variable in enumerate(grid.candidate(c).variables):
            answers[name(grid, c, variable)], labels[name(grid, c, variable)] = predicted[v], ids[v]
    values: dict[str, dict[tuple[str, str], float]] = {k: {} for k in ("iia", "low", "high", "pairs")}
    for r, answer in answers.items():
        for col, label in labels.items():
            where = np.ones_like(label, dtype=bool) if r == col else labels[r] != label
            n, k = int(where.sum()), int((answer[where] == label[where]).sum())
            low, high = binomial_interval(k, n) if n else (np.nan, np.nan)
            for key, value in (("iia", k / n if n else np.nan), ("low", low), ("high", high), ("pairs", n)):
                values[key][(r, col)] = value
    frame = lambda v: pd.Series(v).unstack().reindex(index=list(answers), columns=list(labels))  # noqa: E731
    return CrossMatrix(*(frame(values[k]) for k in ("iia", "low", "high", "pairs")))
