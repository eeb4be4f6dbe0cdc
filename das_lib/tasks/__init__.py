"""Tasks by name: a record's config names its task this way, so that the grid engine and the runs never
import one (das_lib.method.task says what a task provides).

A task is registered with the path of a class that takes (tokenizer, **settings): adding one is a line here.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from transformers import PreTrainedTokenizerBase

from das_lib.method.task import Task

TASKS = {"pricetag": "das_lib.tasks.pricetag.task:PriceTagTask", "mcqa": "das_lib.tasks.mcqa.task:MCQATask"}  # name -> "module:class"
DEFAULT_TASK = "pricetag"  # the paper's task: what a grid runs unless it names another


def make_task(name: str, tokenizer: PreTrainedTokenizerBase, settings: Mapping[str, Any]) -> Task:
    """The task registered as `name` for `tokenizer`, with its prompt `settings` (a `Task.settings()`)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)} (das_lib.tasks.TASKS)")
    module, _, cls = TASKS[name].partition(":")
    task = getattr(importlib.import_module(module), cls)
    known = [f.name for f in dataclasses.fields(task) if f.init and f.name != "tokenizer"]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise TypeError(f"task {name!r} has no setting {unknown}; its settings are {known}")
    return task(tokenizer, **settings)


def standard_settings(name: str, tokenizer: PreTrainedTokenizerBase, **settings: Any) -> dict[str, Any]:
    """The full settings (`Task.settings()`) of the task `name` for `tokenizer`: its defaults, with `settings`."""
    return make_task(name, tokenizer, settings).settings()
