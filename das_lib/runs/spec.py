"""What a sweep is: its grid of cells with shared settings, and the identity that pins its model."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from das_lib.method.sites import Site
from das_lib.method.training import TrainConfig
from das_lib.models.load import model_source
from das_lib.pricetag.game import CONTROLS, HYPOTHESES
from das_lib.runs.store import file_hash

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt")


@dataclass(frozen=True, order=True)
class Cell:
    """One alignment of a sweep: a hypothesis at a site (layer, named position), trained from one seed."""

    hypothesis: str
    layer: int
    position: str
    seed: int

    def site(self) -> Site:
        return Site(self.layer, self.position)


@dataclass(frozen=True)
class SweepSpec:
    """A grid of cells with shared settings; `seeds` train every cell, `best_site_seeds` only the best
    site of each hypothesis (found from the first seed), to measure the spread over seeds there."""

    model: str = "standin"  # das_lib.models.load.load_model name: "standin", "smollm2", a path or hub id
    hypotheses: tuple[str, ...] = tuple(HYPOTHESES)
    layers: tuple[int, ...] | None = None  # None: every layer
    positions: tuple[str, ...] | None = None  # None: every searched position of the task
    seeds: tuple[int, ...] = (0,)
    best_site_seeds: tuple[int, ...] = ()
    train: TrainConfig = field(default_factory=TrainConfig)  # its seed is replaced by each cell's seed
    n_train: int = 1024
    n_test: int = 512
    n_val: int = 256  # validation pairs: every choice (site, seed) is made on them, never on the test pairs
    n_task: int = 1000  # games on which the model's task accuracy (the upper bound) is measured
    data_seed: int = 0
    rank: int | None = None  # rotated dims of Boundless DAS; None: a full d x d rotation
    template: str | None = None  # None: the model's own (models.default_template)
    variant: str = "yesno"
    context: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        problems = []
        bad = [h for h in self.hypotheses if h not in HYPOTHESES and h not in CONTROLS]
        if not self.hypotheses or bad:
            problems.append(f"hypotheses must be a non-empty list of {list(HYPOTHESES)} or the control task "
                            f"{list(CONTROLS)} (bad: {bad})")
        if not self.seeds:
            problems.append("give at least one seed")
        for name in ("n_train", "n_test"):
            if getattr(self, name) < 2 or getattr(self, name) % 2:
                problems.append(f"{name} must be an even number >= 2 (pairs are balanced Yes/No), got {getattr(self, name)}")
        if self.n_val < 1:
            problems.append(f"n_val must be >= 1 (the validation pairs choose the site and the seed), got {self.n_val}")
        if self.n_task < 1:
            problems.append(f"n_task must be >= 1, got {self.n_task}")
        if problems:
            raise ValueError("bad SweepSpec: " + "; ".join(problems))


def spec_from_params(values: Mapping[str, Any]) -> SweepSpec:
    """The sweep a chapter's parameters describe (chapter 8's names; `layers` [] for every layer), so that a
    script splitting that sweep over processes (benchmarks/gpu_sweep_workers.py) trains the chapter's cells."""
    v = values
    return SweepSpec(
        model=v["model"], hypotheses=tuple(v["hypotheses"]), layers=tuple(v["layers"]) or None,
        positions=tuple(v["positions"]), seeds=tuple(v["seeds"]), best_site_seeds=tuple(v["best_site_seeds"]),
        train=TrainConfig(steps=v["steps"], batch_size=v["batch_size"], orthogonal_map=v["orthogonal_map"]),
        n_train=v["n_train"], n_val=v["n_val"], n_test=v["n_test"], n_task=v["n_task"], data_seed=v["data_seed"],
        dtype=v["dtype"])


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
