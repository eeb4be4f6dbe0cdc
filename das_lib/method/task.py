"""What the method needs of a task: causal models to test, pairs of inputs, prompts with named token
positions, and the answer tokens.

A task is anything with these methods (a `typing.Protocol`: no base class to inherit). The grid engine
(das_lib.runs.grid) names a task only by its registered name and settings (das_lib.tasks), so the
method and the runs never import a task: a new one is a folder that provides these, plus a name in the
registry.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from das_lib.method.counterfactual import CounterfactualPair, make_pair
from das_lib.method.data import InterchangeData
from das_lib.method.programs import Candidate

Inputs = Mapping[str, Any]  # one input of the task's causal models, e.g. {"lb": 549, "ub": 849, "amount": 712}


class Task(Protocol):
    """A task for one tokenizer and prompt format."""

    tokenizer: PreTrainedTokenizerBase

    def settings(self) -> dict[str, Any]:
        """Plain data that fixes the prompts (a record's config holds it): template, variant, ..."""

    def searched_roles(self) -> list[str]:
        """The token roles a grid may search, in prompt order."""

    def hypotheses(self) -> Mapping[str, Candidate]:
        """The hand-written causal models to align, by key."""

    def controls(self) -> Mapping[str, Candidate]:
        """Control tasks (labels no mechanism explains), aligned like hypotheses but never a finding, by key."""

    def family(self, settings: Mapping[str, Any]) -> Sequence[Candidate]:
        """A generated family of causal models (empty if the task has none), fixed by `settings`."""

    def sample_pair(self, rng: random.Random) -> tuple[Inputs, Inputs]:
        """A (base, source) pair of inputs: the pool every candidate labels."""

    def sample_pairs(self, hypothesis: str, n: int, seed: int) -> list[CounterfactualPair]:
        """`n` pairs labelled by `hypothesis`'s causal model, as the task draws them to train one alignment."""

    def pairs_table(self, pairs: Sequence[CounterfactualPair]) -> pd.DataFrame:
        """One row per pair, as a reader reads it: at least "base", "source", "variable" and "counterfactual"."""

    def sample_input(self, rng: random.Random) -> Inputs:
        """One input from the task's own distribution (for the model's task accuracy)."""

    def answer_id(self, value: Any) -> int:
        """The token id of an output value of the causal models."""

    def answer_tensor(self) -> torch.Tensor:
        """(A,) the token ids of every answer: what a model's answer is read over (das_lib.method.readout)."""

    def interchange_data(self, pairs: Sequence[CounterfactualPair], role: str | Sequence[str]) -> InterchangeData:
        """The pairs as tensors at `role` (one, or several as (N, k) positions), answers read over `answer_tensor`."""

    def readings(self, model: nn.Module, inputs: Sequence[Inputs], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) bool each: does the model answer each input right, read over the answer tokens, and read over the
        whole vocabulary (the paper's reading)."""


ANSWER_FILTERS = ("correct", "incorrect")


@dataclass(frozen=True)
class Variant:
    """A variant of a task on which learned alignments are reused without retraining (the paper's robustness
    settings): some of the task's settings changed (its prompts, or the inputs it draws), optionally only the pairs
    whose base and source the model answers both right (`answers="correct"`) or not (`"incorrect"`).

    `hypothesis` names whose alignments it reuses. `kind` groups variants made alike (their statistics are also
    averaged together), `figure` the group of heatmaps its panel is drawn in, `paper` the row of the paper's table
    it is compared with (das_lib.paper.ROBUSTNESS), `short` its panel's title (default: the title).
    """

    key: str
    title: str
    hypothesis: str
    kind: str
    changes: tuple[tuple[str, Any], ...] = ()
    answers: str | None = None
    figure: str = ""
    paper: str | None = None
    short: str = ""

    def __post_init__(self) -> None:
        if self.answers not in (None, *ANSWER_FILTERS):
            raise ValueError(f"variant {self.key!r}: answers must be None, 'correct' or 'incorrect', got {self.answers!r}")

    def settings(self, standard: Mapping[str, Any]) -> dict[str, Any]:
        """The task's settings under this variant: the `standard` ones with its changes."""
        return {**standard, **dict(self.changes)}


def factual_answers(task: Task, inputs: Sequence[Inputs]) -> list[Any]:
    """The right answer to each input: the output of the task's causal models (every hypothesis computes it)."""
    reference = next(iter(task.hypotheses().values())).model
    return [reference.predict(x) for x in inputs]


def majority_rate(task: Task, inputs: Sequence[Inputs]) -> float:
    """The accuracy of always giving the most common right answer of `inputs`."""
    answers = factual_answers(task, inputs)
    return max(answers.count(a) for a in set(answers)) / len(answers)


def accuracy(task: Task, model: nn.Module, inputs: Sequence[Inputs]) -> dict[str, float]:
    """The share of `inputs` the model answers right, over the answer tokens ("answers") and over the whole
    vocabulary ("vocabulary"), and the accuracy of always giving the inputs' most common answer ("majority")."""
    ours, vocabulary = task.readings(model, inputs)
    return {"answers": ours.float().mean().item(), "vocabulary": vocabulary.float().mean().item(),
            "majority": majority_rate(task, inputs)}


def labelled_pairs(task: Task, hypothesis: str, n: int, seed: int) -> list[CounterfactualPair]:
    """`n` pairs from the task's pool sampler, labelled by running `hypothesis`'s causal model (one of the task's
    hypotheses or controls), pair i intervening on its variable i mod (number of variables)."""
    candidates = {**task.hypotheses()}
    h = candidates[hypothesis] if hypothesis in candidates else task.controls()[hypothesis]
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        base, source = task.sample_pair(rng)
        v = i % len(h.variables)
        pairs.append(make_pair(h.model, base, source, (h.variables[v],), variable_index=v))
    return pairs
