"""What pins a model for a record: its name, the hash of every file it is read from, its dtype and device kind."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from das_lib.models.load import model_source
from das_lib.runs.store import file_hash

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt")


def model_identity(name: str) -> dict[str, Any]:
    """What pins a model: its name and the hash of every weight, config and tokenizer file it is read from.

    A hub id that is not a local path is pinned by its name only (its files are the hub's to change).
    Each file is hashed once per process while its size and modification time stay the same (a 7B
    model's 13 GB are not read again for every sweep, runner and lookup).
    """
    source, gguf_file = model_source(name)
    path = Path(source) / gguf_file if gguf_file else Path(source)
    if path.is_file():
        return {"name": name, "files": {path.name: _hash_once(path)}}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        return {"name": name, "files": {p.name: _hash_once(p) for p in files}}
    return {"name": name, "files": None}


def _hash_once(path: Path) -> str:
    stat = path.stat()
    return _file_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return file_hash(path)  # size and mtime are part of the key: a changed file is hashed again


def run_identity(name: str, dtype: str, device: str) -> dict[str, Any]:
    """What a record's numbers depend on of where they ran: the model (`model_identity`), its dtype and the
    kind of device ('cpu', 'cuda', 'mps': float rounding differs between them, so a GPU sweep never
    reuses a CPU record, nor the reverse)."""
    return {**model_identity(name), "dtype": dtype, "device": torch.device(device).type}
