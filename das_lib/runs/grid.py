"""One grid engine: Boundless DAS trained for every (candidate, site, seed) cell, into a resumable store.

A grid (`GridSpec`) is candidates (causal models of a task) x layers x named token positions x training
seeds, with one training budget and one data design (das_lib.runs.pools). Every candidate labels the same
pool of pairs, split into training, validation and test pairs. The hypothesis sweep of chapters 5 and 8 and
the search over programs of chapter 9 are this grid with other candidates (das_lib.runs.sweep,
das_lib.runs.program_search); choosing and reporting is das_lib.runs.protocol's, once for both.

Cells. Every cell has a full config: the model pinned by the hash of its files, the task (registered name
and prompt settings), the candidate, the site, the `TrainConfig` with the cell's seed, the data design with
its seed, the method and das_lib's version. One record per finished cell goes to a `Store` under the hash
of that config, with its `Outcome` on the validation and test pairs and its alignment file. Re-running
skips finished cells; a killed run loses only the cells in flight; a record is never reused for another
config; a damaged record is set aside and its cell run again.

Two phases. The grid's cells (every candidate at every site, from `seeds`, on the design's `data_seed`)
come first. Once a candidate's grid is finished its site is chosen on the validation pairs
(protocol.choose_sites), and there it is trained again from `extra_seeds` and, with every seed, on the
pools of `extra_data_seeds` (new pairs, new training data): what the reported intervals cover.

Sharing. Cells run grouped by pool and layer: a process caches the pool's states at the coming layers in
one forward pass (das_lib.runs.jobs), and every candidate, position and seed trains from it. Two processes
running one grid on one store share its cells: a cell is claimed before it runs and skipped by the other,
which then waits for its record (Store.claim / Store.wait_for). On several machines, `Grid.run(client=...)`
hands the cells to Dask distributed, one task per cell, writing to a store every worker sees.

Reading. `Grid.runs()` gives one row per cell with its outcomes; it refuses, naming them, when cells of the
grid have no record, so that nothing is ever chosen or reported from a grid that is not all there.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

import das_lib
from das_lib.method.outcome import Outcome
from das_lib.method.programs import Candidate
from das_lib.method.sites import Site
from das_lib.method.training import TrainConfig
from das_lib.models.load import load_config, load_tokenizer
from das_lib.runs import pools, protocol
from das_lib.runs.distributed import run_on_dask
from das_lib.runs.identity import run_identity
from das_lib.runs.jobs import Runner, layers_of, run_job, runner_for
from das_lib.runs.store import Store
from das_lib.tasks import DEFAULT_TASK, make_task


READ_LOG = "DAS_LIB_READ_LOG"  # environment variable: a file each alignment read back is listed in (book.stores)
T = TypeVar("T")  # what a study (Grid.study) computes


class IncompleteGrid(LookupError):
    """Cells of a grid have no record: nothing may be chosen or reported from it yet."""


@dataclass(frozen=True, order=True)
class Cell:
    """One alignment: a candidate at a site (layer, named position), trained from one seed on one data seed's pool."""

    candidate: str
    layer: int
    position: str
    seed: int
    data_seed: int = 0

    def site(self) -> Site:
        return Site(self.layer, self.position)


def _distinct(name: str, values: tuple, problems: list[str]) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        problems.append(f"{name} lists {repeated} more than once")


@dataclass(frozen=True)
class GridSpec:
    """A grid of cells with one budget and one data design (see the module docstring)."""

    model: str
    task_settings: Mapping[str, Any]  # the task's prompt settings (a `Task.settings()`)
    candidates: tuple[str, ...]
    layers: tuple[int, ...]
    positions: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    extra_seeds: tuple[int, ...] = ()  # trained at each candidate's chosen site
    extra_data_seeds: tuple[int, ...] = ()  # pools trained on at each chosen site, with every seed
    train: TrainConfig = field(default_factory=TrainConfig)  # its seed is each cell's
    rank: int | None = None  # rotated dims of Boundless DAS; None: a full d x d rotation
    n_train: int = 1024
    n_val: int = 256
    n_test: int = 512
    data_seed: int = 0
    separate: Mapping[str, Any] | None = None  # pools.design's `separate`: pairs chosen to separate a family
    task: str = DEFAULT_TASK  # das_lib.tasks name
    n_task: int = 1000  # inputs the model's task accuracy is measured on (0: not measured)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("candidates", "layers", "positions", "seeds"):
            if not getattr(self, name):
                problems.append(f"give at least one of {name}")
            _distinct(name, tuple(getattr(self, name)), problems)
        _distinct("extra_seeds", tuple(self.extra_seeds), problems)
        _distinct("extra_data_seeds", tuple(self.extra_data_seeds), problems)
        both = sorted(set(self.seeds) & set(self.extra_seeds))
        if both:
            problems.append(f"seeds {both} are both grid seeds and extra seeds")
        if self.data_seed in self.extra_data_seeds:
            problems.append(f"data seed {self.data_seed} is the grid's own and an extra data seed")
        if self.n_task < 0:
            problems.append(f"n_task must be >= 0 (0: not measured), got {self.n_task}")
        try:
            pools.design(self.n_train, self.n_val, self.n_test, self.data_seed, self.separate)
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise ValueError("bad grid: " + "; ".join(problems))

    def design(self, data_seed: int) -> dict[str, Any]:
        """The data design of `data_seed` (plain data)."""
        return pools.design(self.n_train, self.n_val, self.n_test, data_seed, self.separate)


class Grid:
    """A grid's cells, their configs and records in a store, how to run them, and its runs as a table."""

    def __init__(self, spec: GridSpec, store: str | Path | Store, device: str = "cpu",
                 loaded: tuple[nn.Module, Any] | None = None, progress: bool = True):
        """`loaded`: the (model, tokenizer) that `load_model(spec.model, device, spec.dtype)` gave the caller, to run
        the cells on instead of loading a second copy."""
        self.spec, self.device, self.loaded, self.progress = spec, device, loaded, progress
        self.store = store if isinstance(store, Store) else Store(store)
        tokenizer = load_tokenizer(spec.model)  # the grid is planned without loading the weights
        self.task = make_task(spec.task, tokenizer, spec.task_settings)
        self.identity = run_identity(spec.model, spec.dtype, device)
        self._labels: dict[tuple, np.ndarray] = {}
        n_layers, roles = load_config(spec.model).num_hidden_layers, self.task.searched_roles()
        bad_layers = [l for l in spec.layers if not 0 <= l < n_layers]  # noqa: E741
        bad_positions = [p for p in spec.positions if p not in roles]
        unknown = []
        for c in spec.candidates:
            try:
                pools.candidate(self.task, c, spec.separate)
            except KeyError:
                unknown.append(c)
        if unknown:
            raise ValueError(f"bad grid: candidates {unknown} are not the task's (its hypotheses: {list(self.task.hypotheses())}; "
                             f"controls: {list(self.task.controls())}; or a member of the family its design separates)")
        if bad_layers or bad_positions:
            raise ValueError(f"bad grid for {spec.model!r}: layers {bad_layers or list(spec.layers)} (it has layers "
                             f"0..{n_layers - 1}), positions {bad_positions or list(spec.positions)} (its searched "
                             f"positions: {roles})")

    @property
    def runner(self) -> Runner:
        """The model loaded in this process on the grid's device (loaded on first use)."""
        return runner_for(self.spec.model, self.spec.dtype, self.device, self.loaded)

    # ---- configs --------------------------------------------------------------------------------
    def _base_config(self) -> dict[str, Any]:
        return {"das_lib": das_lib.__version__, "model": self.identity,
                "task": {"name": self.spec.task, "settings": self.task.settings()}}

    def config(self, cell: Cell) -> dict[str, Any]:
        """The full config of a cell: everything that determines its numbers, hashed into its record key."""
        return {**self._base_config(), "kind": "cell", "candidate": cell.candidate, "site": cell.site().as_dict(),
                "method": {"name": "boundless", "rank": self.spec.rank},
                "train": replace(self.spec.train, seed=cell.seed).as_dict(), "data": self.spec.design(cell.data_seed)}

    def task_config(self) -> dict[str, Any]:
        """The config of the model's task-accuracy measurement."""
        return self.study_config("task_accuracy", n_games=self.spec.n_task, seed=self.spec.data_seed)

    def study_config(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The config of another job on the grid's model and task (`kind`, and what fixes its numbers), for a record
        in the grid's store beside its cells."""
        return {**self._base_config(), "kind": kind, **fields}

    def study(self, config: Mapping[str, Any], compute: Callable[[], T], as_results: Callable[[T], Mapping[str, Any]],
              from_results: Callable[[Mapping[str, Any]], T]) -> tuple[T, bool]:
        """A study kept as a record in the grid's store (`config`: a `study_config`): read back where it was recorded,
        else computed and recorded; returns it and whether it was read back."""
        record = self.store.get(config)
        if record is not None:
            return from_results(record["results"]), True
        value = compute()
        self.store.put(config, as_results(value))
        return value, False

    # ---- cells ----------------------------------------------------------------------------------
    def grid_cells(self, candidates: tuple[str, ...] | None = None) -> list[Cell]:
        """Every (candidate, layer, position, seed) of the grid on its data seed, grouped by layer (shared caches)."""
        s = self.spec
        return [Cell(c, l, p, seed, s.data_seed) for l in s.layers for c in (candidates or s.candidates)  # noqa: E741
                for p in s.positions for seed in s.seeds]

    def chosen_sites(self) -> dict[str, Site]:
        """Each candidate's site chosen on validation, for the candidates whose grid is finished."""
        finished = [c for c in self.spec.candidates if all(self.record(cell) for cell in self.grid_cells((c,)))]
        if not finished:
            return {}
        return protocol.choose_sites(self.runs(self.grid_cells(tuple(finished))))

    def extra_cells(self) -> list[Cell]:
        """The extra seeds and data seeds at each chosen site."""
        s, out = self.spec, []
        for candidate, site in self.chosen_sites().items():
            out += [Cell(candidate, site.layer, site.position, seed, s.data_seed) for seed in s.extra_seeds]
            out += [Cell(candidate, site.layer, site.position, seed, d) for d in s.extra_data_seeds
                    for seed in (*s.seeds, *s.extra_seeds)]
        return out

    def cells(self) -> list[Cell]:
        """The grid, then the extra runs at the chosen sites (known once the grid is finished)."""
        return self.grid_cells() + self.extra_cells()

    def candidate(self, key: str) -> Candidate:
        """The candidate `key`: a hypothesis of the task, or a member of the family the design separates."""
        return pools.candidate(self.task, key, self.spec.separate)

    def labels(self, key: str, split: str = "test", data_seed: int | None = None) -> np.ndarray:
        """(V, N) the counterfactual label tokens of candidate `key`'s variables on a split of the pool (without
        the model: the pairs and the causal model fix them)."""
        key_ = (key, split, self.spec.data_seed if data_seed is None else data_seed)
        if key_ not in self._labels:
            design = self.spec.design(key_[2])
            self._labels[key_] = pools.labels(self.task, self.candidate(key), pools.pairs(self.task, design)[split])[0]
        return self._labels[key_]

    def record(self, cell: Cell) -> dict[str, Any] | None:
        """The finished record of `cell`, or None."""
        return self.store.get(self.config(cell))

    # ---- running --------------------------------------------------------------------------------
    def run(self, client: Any = None, gpu: bool = False) -> dict[str, int]:
        """Run every unfinished cell (the grid first, then the extra runs at the chosen sites) and the task
        accuracy. Local by default; with a Dask `client`, one task per cell (with `gpu`, each asks for a worker
        resource GPU=1). Returns how many cells ran here and how many were already in the store."""
        counts = {"ran": 0, "reused": 0}
        n_extra = len(self.spec.candidates) * (len(self.spec.extra_seeds) + len(self.spec.extra_data_seeds)
                                               * (len(self.spec.seeds) + len(self.spec.extra_seeds)))
        bar = tqdm(total=len(self.grid_cells()) + n_extra, desc="grid", unit="cell",
                   disable=not self.progress or client is not None)
        with self.store.using():
            self._execute([self.task_config()] if self.spec.n_task else [], client, gpu, None)
            for phase in (self.grid_cells, self.extra_cells):  # the chosen sites are known once the grid is finished
                configs = [self.config(c) for c in phase()]
                todo = [c for c in configs if self.store.get(c) is None]
                bar.update(len(configs) - len(todo))
                counts["reused"] += len(configs) - len(todo)
                counts["ran"] += self._execute(todo, client, gpu, bar)
        bar.close()
        return counts

    def _execute(self, configs: list[dict[str, Any]], client: Any, gpu: bool, bar: Any) -> int:
        """Run `configs` (here, claiming each, or on Dask); returns how many ran here."""
        if not configs:
            return 0
        if client is not None:
            run_on_dask(run_job, configs, client, str(self.store.root.resolve()), self.device, gpu, self.progress,
                        key=lambda c: f"das-{self.store.folder(c).name}")
            return len(configs)
        self.runner  # noqa: B018  (the caller's loaded model, or one load for all cells)

        def run(config: Mapping[str, Any]) -> None:
            run_job(dict(config), str(self.store.root), self.device, layers_of(configs, config))
            if bar is not None:
                bar.update()

        return len(self.store.share(configs, run))  # cells another process holds are waited for, not run twice

    def measure_task(self) -> dict[str, float]:
        """Run the model's task-accuracy job alone (unless recorded) and return `task_record`."""
        with self.store.using():
            self._execute([self.task_config()], None, False, None)
        return self.task_record()

    # ---- reading --------------------------------------------------------------------------------
    def task_record(self) -> dict[str, float]:
        """The model's task accuracy as the grid recorded it: over the answer tokens (`task_accuracy`), over the
        whole vocabulary (`task_accuracy_vocabulary`), and the share of the more common answer (`majority`)."""
        record = self.store.get(self.task_config())
        if record is None:
            raise IncompleteGrid(f"the task accuracy of {self.spec.model!r} is not in the store {self.store.root}: run the grid")
        return record["results"]

    def task_accuracy(self, vocabulary: bool = False) -> float:
        """The model's recorded task accuracy (over the answer tokens, or the whole vocabulary)."""
        return self.task_record()["task_accuracy_vocabulary" if vocabulary else "task_accuracy"]

    def runs(self, cells: list[Cell] | None = None) -> pd.DataFrame:
        """One row per cell of `cells` (default: all of `cells()`): the cell, its site, its validation and test
        `Outcome`s, majority rates and learned boundary. Refuses (IncompleteGrid), naming them, if cells have no record."""
        cells = self.cells() if cells is None else cells
        rows, missing = [], []
        for cell in cells:
            record = self.record(cell)
            if record is None:
                missing.append(cell)
                continue
            r = record["results"]
            rows.append({**asdict(cell), "site": f"L{cell.layer} {cell.position}",
                         **{s: Outcome.from_dict(r["outcomes"][s]) for s in pools.HELD_OUT},
                         "majority": r["majority"]["test"], "boundary_dims": float(sum(r["boundary_dims"])),
                         "boundary_dims_start": float(sum(r["boundary_dims_start"])), "hash": record["hash"]})
        if missing:
            shown = ", ".join(f"{c.candidate} L{c.layer} {c.position} seed {c.seed} data {c.data_seed}" for c in missing[:6])
            raise IncompleteGrid(f"{len(missing)} of {len(cells)} cells of the grid have no record in {self.store.root} "
                                 f"({shown}{', ...' if len(missing) > 6 else ''}): run the grid (Grid.run) before reading it")
        return pd.DataFrame(rows)

    def curves(self) -> pd.DataFrame:
        """Training curves of every grid cell (first seed): step, batch IIA, boundary width."""
        frames = []
        for cell in self.grid_cells():
            if cell.seed != self.spec.seeds[0] or (record := self.record(cell)) is None:
                continue
            curve = pd.DataFrame(record["results"]["curves"])[["step", "batch_iia", "boundary_dims"]]
            frames.append(curve.assign(run=f"{cell.candidate} L{cell.layer} {cell.position}", candidate=cell.candidate))
        return pd.concat(frames, ignore_index=True)

    def load_alignment(self, cell: Cell) -> tuple[nn.Module, dict[str, Any]]:
        """The learned intervention of `cell` and its record; a missing or unreadable file is set aside with its
        record (so that the cell is trained again) and reported with its path."""
        from das_lib.method.interventions import load_intervention

        record = self.record(cell)
        if record is None:
            raise IncompleteGrid(f"cell {cell} is not in the store {self.store.root}: run the grid first")
        if record["results"]["alignment"] is None:
            raise IncompleteGrid(f"the alignment of {cell} was not kept (a committed store keeps the files of the cells "
                                 f"its chapter reads back): train it again into a fresh store")
        path = self.store.root / record["hash"] / record["results"]["alignment"]
        if os.environ.get(READ_LOG):  # a run making a committed store lists the alignments it reads back
            with open(os.environ[READ_LOG], "a") as log:
                log.write(record["hash"] + "\n")
        try:
            intervention, _ = load_intervention(path, self.runner.model.config.hidden_size, self.runner.device)
        except Exception as err:  # noqa: BLE001  (any unreadable file: named, set aside, rerun)
            self.store.set_aside(self.config(cell), f"its alignment {path} cannot be read ({err})")
            raise IncompleteGrid(f"the alignment of {cell} at {path} cannot be read ({err}); its record was set aside: "
                                 "run the grid again to retrain it") from err
        return intervention, record
