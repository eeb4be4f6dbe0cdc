"""The hypotheses side by side on the same pairs: each chosen alignment scored against every hypothesis's labels.

Every hypothesis of a sweep labels the same test pairs (one pool), and on many of them two hypotheses
predict the same counterfactual answer: there an alignment that follows either scores the same. Only
the pairs where two hypotheses disagree tell them apart. `cross_matrix` runs each alignment chosen on
validation (`findings.chosen`), once per variable it holds, on the test pairs, and scores its answers
against the labels of every hypothesis and variable, on the pairs where the row's and the column's labels
differ (on the diagonal: on every pair). An alignment that realises its own variable scores high on its
diagonal and low against the others where they disagree; one that scores as high against another
hypothesis's labels there follows that hypothesis instead.
"""
from __future__ import annotations

import pandas as pd
import torch

from das_lib.pricetag.game import get_hypothesis
from das_lib.runs.findings import chosen
from das_lib.runs.spec import Cell
from das_lib.runs.sweep import Sweep


def _name(hypothesis: str, variable: str) -> str:
    h = get_hypothesis(hypothesis)
    return h.title if len(h.variables) == 1 else f"{h.title} ({variable})"


def cross_matrix(sweep: Sweep, hypotheses: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(IIA, pairs): rows, each chosen alignment with one of its variables intervened on every test pair;
    columns, each hypothesis's labels for one of its variables; a cell, the row's IIA against the column's
    labels on the test pairs where the row's own labels and the column's differ (the diagonal: all pairs),
    and how many pairs that is."""
    picks = chosen(sweep.frame())
    hypotheses = hypotheses or [h for h in picks.index]
    runner = sweep.runner
    answers: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    for h in hypotheses:
        row = picks.loc[h]
        intervention, record = sweep.load_alignment(Cell(h, int(row["layer"]), str(row["position"]), int(row["seed"])))
        intervention = intervention.to(runner.device).eval()
        for v, variable in enumerate(get_hypothesis(h).variables):
            name = _name(h, variable)
            answers[name] = runner.predictions(record["config"], intervention, variable=v)
            labels[name] = runner.labels(record["config"], h, v)
    iia, pairs = {}, {}
    for r, answer in answers.items():
        for c, label in labels.items():
            where = torch.ones_like(label, dtype=torch.bool) if r == c else labels[r] != label
            pairs[(r, c)] = int(where.sum())
            iia[(r, c)] = float((answer[where] == label[where]).float().mean()) if where.any() else float("nan")
    shape = lambda values: pd.Series(values).unstack().reindex(index=list(answers), columns=list(labels))  # noqa: E731
    return shape(iia), shape(pairs)
