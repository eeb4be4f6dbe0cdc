"""What the method needs of a task: causal models to test, pairs of inputs, prompts with named token
positions, and the answer tokens.

A task is anything with these methods (a `typing.Protocol`: no base class to inherit). The grid engine
(das_lib.runs.grid) names a task only by its registered name and settings (das_lib.tasks), so the
method and the runs never import a task: a new one is a folder that provides these, plus a name in the
registry.
"""
from __future__ import annotations

import random
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import nn

from das_lib.method.counterfactual import CounterfactualPair
from das_lib.method.data import InterchangeData
from das_lib.method.programs import Candidate

Inputs = Mapping[str, Any]  # one input of the task's causal models, e.g. {"lb": 549, "ub": 849, "amount": 712}


class Task(Protocol):
    """A task for one tokenizer and prompt format."""

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

    def sample_input(self, rng: random.Random) -> Inputs:
        """One input from the task's own distribution (for the model's task accuracy)."""

    def answer_id(self, value: Any) -> int:
        """The token id of an output value of the causal models."""

    def answer_tensor(self) -> torch.Tensor:
        """(A,) the token ids of every answer: what a model's answer is read over (das_lib.method.readout)."""

    def interchange_data(self, pairs: Sequence[CounterfactualPair], role: str | Sequence[str]) -> InterchangeData:
        """The pairs as tensors at `role` (one, or several as (N, k) positions), answers read over `answer_tensor`."""

    def accuracy(self, model: nn.Module, inputs: Sequence[Inputs]) -> dict[str, float]:
        """The share of `inputs` the model answers right, over the answer tokens ("answers") and over the whole
        vocabulary ("vocabulary")."""
