"""An on-disk store of finished work: one record per finished cell, keyed by a hash of its config.

A record is a folder `<root>/<hash>/` holding `record.json` (the full config, its hash, the results)
and any files the cell wrote (e.g. the learned alignment). `record.json` is written last and
atomically, so a cell killed mid-way leaves no record and is simply run again; a record is reused
only when its stored config equals the requested one exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping


def canonical(config: Mapping[str, Any]) -> str:
    """The config as canonical JSON (sorted keys), the text that is hashed."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a config."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (to pin a record to the exact model weights it used)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


class Store:
    """Records of finished cells under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, config: Mapping[str, Any]) -> Path:
        """Where the cell with this config keeps its files."""
        return self.root / config_hash(config)

    def get(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The finished record for exactly this config, or None."""
        path = self.folder(config) / "record.json"
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if canonical(record["config"]) != canonical(json.loads(canonical(config))):
            return None  # a hash collision or an edited file: never reuse another config's result
        return record

    def put(self, config: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
        """Write the record of a finished cell (atomically, after its files)."""
        folder = self.folder(config)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"hash": config_hash(config), "config": json.loads(canonical(config)), "results": dict(results)}
        tmp = folder / f"record.json.tmp{os.getpid()}-{threading.get_ident()}"
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=float))
        os.replace(tmp, folder / "record.json")
        return record

    def discard(self, config: Mapping[str, Any]) -> None:
        """Remove a cell's record and files."""
        shutil.rmtree(self.folder(config), ignore_errors=True)

    def clear(self) -> int:
        """Remove every cell folder (named by a config hash) and return how many; other files are left alone."""
        folders = [p for p in self.root.iterdir() if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name)]
        for folder in folders:
            shutil.rmtree(folder)
        return len(folders)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every finished record in the store."""
        for path in sorted(self.root.glob("*/record.json")):
            yield json.loads(path.read_text())

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/record.json"))
