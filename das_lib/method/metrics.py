"""Interchange intervention accuracy (IIA), its normalisation, and grid statistics."""
from __future__ import annotations

import numpy as np
import torch


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool on the CPU: does each row's argmax over the last axis equal its label."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions for {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise ValueError("cannot compute an accuracy over zero examples")
    return logits.argmax(-1).cpu() == labels.cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax over the last axis equals the label."""
    return correct(logits, labels).float().mean().item()


def normalised_iia(iia: float, task_acc: float, dummy_acc: float) -> float:
    """(IIA - dummy) / (task accuracy - dummy): 0 is a majority-label guesser, 1 the model's own accuracy."""
    if task_acc <= dummy_acc:
        raise ValueError(
            f"cannot normalise: task accuracy {task_acc:.3f} is not above the dummy rate {dummy_acc:.3f}, "
            "so the model does not solve the task better than guessing"
        )
    return (iia - dummy_acc) / (task_acc - dummy_acc)


def normalised_or_nan(iia: float, task_acc: float, dummy_acc: float) -> float:
    """`normalised_iia`, or NaN where it is undefined (the model is no better than the dummy)."""
    return normalised_iia(iia, task_acc, dummy_acc) if task_acc > dummy_acc else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two grids of equal shape (NaN cells ignored)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"grids differ in size: {a.shape} vs {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 2 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])
