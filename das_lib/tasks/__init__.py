"""Tasks by name: a record's config names its task this way, so that the grid engine and the runs never
import one (das_lib.method.task says what a task provides).

A task is registered with the path of a class that takes (tokenizer, **settings): adding one is a line here.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from transformers import PreTrainedTokenizerBase

from das_lib.method.task import Task

TASKS = {"pricetag": "das_lib.tasks.pricetag.task:PriceTagTask", "mcqa": "das_lib.tasks.mcqa.task:MCQATask"}  # name -> "module:class"


def make_task(name: str, tokenizer: PreTrainedTokenizerBase, settings: Mapping[str, Any]) -> Task:
    """The task registered as `name` for `tokenizer`, with its prompt `settings` (a `Task.settings()`)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)} (das_lib.tasks.TASKS)")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(tokenizer, **settings)
