"""The training record a shipped model keeps beside its weights: what made it and how well it plays."""
from __future__ import annotations

import json
from pathlib import Path


def write_record(folder: Path | str, name: str, record: dict) -> Path:
    """Write `record` as JSON to `folder`/`name`."""
    path = Path(folder) / name
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_record(folder: Path | str, name: str, rebuild: str) -> dict:
    """The record `folder`/`name`; a missing one names the command (`rebuild`) that makes it."""
    path = Path(folder) / name
    if not path.exists():
        raise FileNotFoundError(f"no training record at {path}; rebuild it with `{rebuild}`")
    return json.loads(path.read_text())
