"""Sweeps run elsewhere (on a GPU) and committed with das_lib, to be shown beside a chapter's own run.

`save(frame, name, about)` writes a sweep's frame (one row per cell: the `Sweep.frame` columns, per-pair
results included) and what ran it to das_lib/assets/runs/NAME.json; `load(name)` reads it back, or None
when no such run was committed. A chapter says which run each figure comes from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

RUNS_DIR = Path(__file__).resolve().parents[1] / "assets" / "runs"


def save(frame: pd.DataFrame, path: str | Path, about: dict[str, Any]) -> Path:
    """Write `frame` and `about` (device, date, parameters, task accuracy...) as one JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"about": about, "frame": json.loads(frame.to_json(orient="records"))}, indent=1))
    return path


def load(name: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The committed run `name` (das_lib/assets/runs/NAME.json): its frame and what ran it, or None."""
    path = RUNS_DIR / f"{name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return pd.DataFrame(data["frame"]), data["about"]


def about(sweep: Any, seconds: float) -> dict[str, Any]:
    """What ran a sweep, as `save` records it: the device, torch, the model's task accuracy, the grid's size,
    the training budget and pair counts, and the sweep's seconds."""
    import torch

    spec = sweep.spec
    device = torch.cuda.get_device_name(0) if str(sweep.runner.device).startswith("cuda") else str(sweep.runner.device)
    return {"device": device, "torch": torch.__version__, "task_accuracy": sweep.recorded_task_accuracy(),
            "layers": len(sweep.layers), "positions": len(sweep.positions), "steps": spec.train.steps,
            "batch_size": spec.train.batch_size, "orthogonal_map": spec.train.orthogonal_map, "n_train": spec.n_train,
            "n_val": spec.n_val, "n_test": spec.n_test,
            "sweep_seconds": seconds}
