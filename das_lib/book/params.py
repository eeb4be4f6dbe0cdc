"""Validation of a chapter's parameters: stop early with a message that says what to change."""
from __future__ import annotations

from typing import Any, Iterable

import torch


class ParameterError(ValueError):
    """A chapter parameter has a value the chapter cannot run with."""


def positive_int(name: str, value: Any) -> int:
    """`value` as an int >= 1, or a ParameterError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"parameter {name!r} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """`value` as an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ParameterError(f"parameter {name!r} must be an integer >= 0, got {value!r}")
    return value


def positive_float(name: str, value: Any) -> float:
    """`value` as a float > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ParameterError(f"parameter {name!r} must be a positive number, got {value!r}")
    return float(value)


def one_of(name: str, value: Any, options: Iterable[Any]) -> Any:
    """`value` if it is one of `options`."""
    options = list(options)
    if value not in options:
        raise ParameterError(f"parameter {name!r} must be one of {options}, got {value!r}")
    return value


def subset_of(name: str, values: Any, options: Iterable[Any]) -> list:
    """`values` as a non-empty list whose items are all in `options`."""
    options = list(options)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ParameterError(f"parameter {name!r} must be a list, got {values!r}")
    values = list(values)
    bad = [v for v in values if v not in options]
    if not values or bad:
        raise ParameterError(f"parameter {name!r} must be a non-empty list drawn from {options}; bad: {bad or 'empty list'}")
    return values


def device(name: str, value: Any) -> str:
    """A torch device string that exists on this machine ('cpu', 'cuda', 'cuda:1', 'mps', 'auto')."""
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ParameterError(f"parameter {name!r}: unknown device {value!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"parameter {name!r} is {value!r} but no CUDA GPU is visible here; use 'cpu' or 'auto'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError(f"parameter {name!r} is {value!r} but MPS is not available here; use 'cpu' or 'auto'")
    return str(dev)


def dtype(name: str, value: Any) -> torch.dtype:
    """A torch floating dtype named 'float32', 'bfloat16' or 'float16'."""
    options = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return options[one_of(name, value, options)]
