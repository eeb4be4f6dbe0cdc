"""Alignment sweeps: Boundless DAS trained at every (hypothesis, layer, position, seed) cell, into a store.

A sweep (`SweepSpec`) is a grid of hypotheses x layers x named token positions x training seeds
with shared training settings. Every cell has a full config: the model pinned by the hash of its
files, the task (template, instruction variant, context), the hypothesis, the site, the
`TrainConfig`, the data sizes and seed, the method and das_lib's version. One record per finished
cell goes to a `Store` under the hash of that config: the IIA, the learned boundary, the training
curves and the alignment file. Re-running skips finished cells, a killed sweep loses only the cells
in flight, and a record is never reused for another config.

Work shared between cells, all of it exact (it only avoids recomputing what does not change):
- in each process the model is loaded once, and each hypothesis's train and test pairs are sampled
  and tokenized once, with the positions of every searched role;
- per hypothesis the fast path caches, in one forward pass over its pairs, the states at every layer
  of the grid for all searched positions together, and every layer, position and seed trains from
  that cache (`fastpath.shared_caches`, `CachedForward.for_position`). Cells therefore run grouped
  by hypothesis.
A cell's numbers do not depend on which other cells run, or where: the shared cache always holds
every searched position of the task. One job (a cell, or the task accuracy) is `das_lib.runs.jobs.run_job`.

Execution is local by default (`Sweep.run()`). On several machines, `Sweep.run(client=...)` hands
the cells to Dask distributed (https://distributed.dask.org), one cell per task; workers load the
model once, keep the caches of the cells they run, and write to the same store, which must be on a
file system every worker sees. With one GPU per worker, e.g. on a cluster:

    dask scheduler --scheduler-file /shared/sched.json                       # once
    CUDA_VISIBLE_DEVICES=0 dask worker --scheduler-file /shared/sched.json \\
        --nthreads 1 --resources "GPU=1"                                      # once per GPU

    sweep = Sweep(spec, "/shared/runs/sweep", device="cuda")
    sweep.run(client=Client(scheduler_file="/shared/sched.json"), gpu=True)   # one GPU per cell

and on one machine `Client(LocalCluster(n_workers=2, threads_per_worker=1))`.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

import das_lib
from das_lib.method.interventions import load_intervention
from das_lib.method.metrics import normalised_or_nan
from das_lib.method.sites import Site
from das_lib.models.load import default_template, load_config, load_tokenizer
from das_lib.pricetag.task import REFERENCE_GAME, PriceTagTask, position_table
from das_lib.runs.distributed import run_on_dask
from das_lib.runs.jobs import Runner, layers_of, run_job, runner_for
from das_lib.runs.spec import Cell, SweepSpec, run_identity
from das_lib.runs.store import Store

SHRINK_RATIO = 0.5  # a boundary "shrank" when it ended below this share of its starting size


class Sweep:
    """A sweep's cells, their configs and records in a store, and how to run them."""

    def __init__(self, spec: SweepSpec, store: str | Path | Store, device: str = "cpu",
                 loaded: tuple[nn.Module, Any] | None = None):
        """`loaded`: the (model, tokenizer) that `load_model(spec.model, device, spec.dtype)` gave the caller,
        to run the cells on instead of loading a second copy."""
        self.spec, self.device, self.loaded = spec, device, loaded
        self.store = store if isinstance(store, Store) else Store(store)
        tokenizer = load_tokenizer(spec.model)  # the grid is planned without loading the weights
        self.identity = run_identity(spec.model, spec.dtype, device)
        template = spec.template or default_template(tokenizer)
        self.task = PriceTagTask(tokenizer, template, spec.variant, spec.context)
        self.task_settings = {"template": template, "variant": spec.variant, "context": spec.context}
        self.roles = self.task.searched_roles()
        n_layers = load_config(spec.model).num_hidden_layers
        self.layers = list(range(n_layers)) if spec.layers is None else list(spec.layers)
        self.positions = self.roles if spec.positions is None else list(spec.positions)
        bad_layers = [l for l in self.layers if not 0 <= l < n_layers]
        bad_positions = [p for p in self.positions if p not in self.roles]
        if bad_layers or bad_positions or not self.layers or not self.positions:
            raise ValueError(
                f"bad sweep grid: layers {bad_layers or self.layers} (the model has layers 0..{n_layers - 1}), "
                f"positions {bad_positions or self.positions} (searched positions: {self.roles})"
            )
        self.tokens = position_table(self.task, REFERENCE_GAME).set_index("role")["token"].to_dict()

    @property
    def runner(self) -> Runner:
        """The model loaded in this process on the sweep's device (loaded on first use)."""
        return runner_for(self.spec.model, self.spec.dtype, self.device, self.loaded)

    # ---- configs --------------------------------------------------------------------------------
    def _base_config(self) -> dict[str, Any]:
        return {"das_lib": das_lib.__version__, "model": self.identity, "task": self.task_settings}

    def config(self, cell: Cell) -> dict[str, Any]:
        """The full config of a cell: everything that determines its numbers, hashed into its record key."""
        return {
            **self._base_config(), "kind": "alignment", "hypothesis": cell.hypothesis, "site": cell.site().as_dict(),
            "method": {"name": "boundless", "rank": self.spec.rank},
            "train": replace(self.spec.train, seed=cell.seed).as_dict(),
            "data": {"pool": True, "n_train": self.spec.n_train, "n_val": self.spec.n_val, "n_test": self.spec.n_test,
                     "seed": self.spec.data_seed},
        }

    def task_config(self) -> dict[str, Any]:
        """The config of the model's task-accuracy measurement."""
        return {**self._base_config(), "kind": "task_accuracy", "n_games": self.spec.n_task, "seed": self.spec.data_seed}

    # ---- cells ----------------------------------------------------------------------------------
    def grid(self) -> list[Cell]:
        """Every (hypothesis, layer, position, seed) of the grid, grouped so that cells sharing caches run together."""
        return [Cell(h, l, p, s) for h in self.spec.hypotheses for l in self.layers for p in self.positions for s in self.spec.seeds]

    def best_sites(self) -> dict[str, Site]:
        """The site of highest validation IIA (first seed) of each hypothesis, once its grid is finished: chosen
        on the validation pairs, so that the test pairs it is reported on played no part in choosing it."""
        best = {}
        for h in self.spec.hypotheses:
            cells = [Cell(h, l, p, self.spec.seeds[0]) for l in self.layers for p in self.positions]
            records = [self.store.get(self.config(c)) for c in cells]
            if all(r is not None for r in records):
                k = int(np.argmax([r["results"]["val_iia"] for r in records]))  # first of equals: grid order
                best[h] = cells[k].site()
        return best

    def extra_cells(self) -> list[Cell]:
        """The extra seeds at the best site of each hypothesis whose grid is finished."""
        return [Cell(h, s.layer, s.position, seed) for h, s in self.best_sites().items()
                for seed in self.spec.best_site_seeds if seed not in self.spec.seeds]

    def cells(self) -> list[Cell]:
        """The grid, then the extra seeds."""
        return self.grid() + self.extra_cells()

    def record(self, cell: Cell) -> dict[str, Any] | None:
        """The finished record of `cell`, or None."""
        return self.store.get(self.config(cell))

    def finished(self, cells: list[Cell]) -> list[tuple[Cell, dict[str, Any]]]:
        """(cell, record) for each of `cells` that has a record, in order."""
        return [(cell, record) for cell in cells if (record := self.record(cell)) is not None]

    # ---- running --------------------------------------------------------------------------------
    def run(self, client: Any = None, gpu: bool = False, progress: bool = True) -> dict[str, int]:
        """Run every unfinished cell (grid first, then the best-site seeds) and the task accuracy.

        Local by default; with a Dask `client`, one task per cell (with `gpu`, each asks for a worker
        resource GPU=1). Returns how many cells ran and how many were already in the store.
        """
        if self.store.get(self.task_config()) is None:
            self._execute([self.task_config()], client, gpu, progress=False)
        counts = {"ran": 0, "reused": 0}
        # Locally each hypothesis's best-site seeds run right after its grid, while its pairs and layer
        # caches are still in memory; on Dask all grid cells go first, so that the workers share them out.
        groups = [(h,) for h in self.spec.hypotheses] if client is None else [tuple(self.spec.hypotheses)]
        extra_seeds = [s for s in self.spec.best_site_seeds if s not in self.spec.seeds]
        bar = tqdm(total=len(self.grid()) + len(extra_seeds) * len(self.spec.hypotheses), desc="sweep", unit="cell",
                   disable=not progress or client is not None)
        for group in groups:
            for phase in (self.grid, self.extra_cells):  # the best sites are known once the grid is finished
                configs = [self.config(c) for c in phase() if c.hypothesis in group]
                todo = [c for c in configs if self.store.get(c) is None]
                counts["ran"] += len(todo)
                counts["reused"] += len(configs) - len(todo)
                bar.update(len(configs) - len(todo))
                self._execute(todo, client, gpu, progress, bar)
        bar.close()
        return counts

    def _execute(self, configs: list[dict[str, Any]], client: Any, gpu: bool, progress: bool, bar: Any = None) -> None:
        if client is None:
            self._run_local(configs, bar)
        else:
            run_on_dask(run_job, configs, client, str(self.store.root.resolve()), self.device, gpu, progress,
                        key=lambda c: f"das-{self.store.folder(c).name}")

    def _run_local(self, configs: list[dict[str, Any]], bar: Any = None) -> None:
        if configs:
            self.runner  # noqa: B018  (held for run_job: the caller's loaded model, or one load for all cells)
        for config in configs:
            run_job(config, str(self.store.root), self.device, layers_of(configs, config))
            if bar is not None:
                bar.update()

    # ---- results --------------------------------------------------------------------------------
    def recorded_task_accuracy(self) -> float:
        """The model's task accuracy as the sweep recorded it (run the sweep first)."""
        record = self.store.get(self.task_config())
        if record is None:
            raise KeyError("the task accuracy is not in the store yet: run the sweep first (Sweep.run())")
        return record["results"]["task_accuracy"]

    def frame(self) -> pd.DataFrame:
        """One row per finished cell: site, seed, token text, IIA, the dummy's and the unintervened model's IIA,
        normalised IIA, learned boundary."""
        task_acc = self.recorded_task_accuracy()
        if task_acc <= 0.5:
            warnings.warn(f"the model's task accuracy {task_acc:.3f} is not above chance: normalised IIA is undefined (NaN)", stacklevel=2)
        rows = []
        for cell, record in self.finished(self.cells()):
            r = record["results"]
            rows.append({
                **asdict(cell), "token": self.tokens[cell.position], "iia": r["iia"], "val_iia": r["val_iia"],
                "dummy": r["dummy"], "unintervened": r["iia_unintervened"], "val_unintervened": r["val_unintervened"],
                "normalised": normalised_or_nan(r["iia"], task_acc, r["dummy"]),
                "boundary_dims": float(sum(r["boundary_dims"])), "boundary_dims_start": float(sum(r["boundary_dims_start"])),
                "correct": r["correct"]["test"], "none_correct": r["unintervened_correct"]["test"],
                "changed": r["changed"], "variable": r["variable"], "hash": record["hash"],
            })
        return pd.DataFrame(rows)

    def curves(self, shrink_ratio: float = SHRINK_RATIO) -> pd.DataFrame:
        """Training curves of every finished cell (first seed), with `shrank`: did the boundary end below
        `shrink_ratio` times its starting size."""
        frames = []
        for cell, record in self.finished(self.grid()):
            r = record["results"]
            curve = pd.DataFrame(r["curves"])[["step", "batch_iia", "boundary_dims"]]
            shrank = boundary_shrank(sum(r["boundary_dims"]), sum(r["boundary_dims_start"]), shrink_ratio)
            frames.append(curve.assign(run=str(cell), hypothesis=cell.hypothesis, shrank="shrank" if shrank else "did not shrink"))
        return pd.concat(frames, ignore_index=True)

    def load_alignment(self, cell: Cell) -> tuple[nn.Module, dict[str, Any]]:
        """The learned intervention of `cell` and its record (config: task settings, site, hypothesis)."""
        record = self.record(cell)
        if record is None:
            raise KeyError(f"cell {cell} is not in the store {self.store.root}: run the sweep first")
        return load_alignment(self.store, record)


def boundary_shrank(end_dims: Any, start_dims: Any, ratio: float = SHRINK_RATIO) -> Any:
    """Did a boundary end below `ratio` times its starting size (numbers, or columns of a frame)?"""
    return end_dims < ratio * start_dims


def load_alignment(store: Store, record: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The intervention saved with an alignment record, and the record."""
    intervention, _ = load_intervention(store.root / record["hash"] / record["results"]["alignment"])
    return intervention, record


def alignments(store: Store) -> pd.DataFrame:
    """Every alignment in a store: model, task settings, hypothesis, site, seed, IIA, record hash."""
    rows = []
    for record in store.records():
        c = record["config"]
        if c.get("kind") != "alignment":
            continue
        rows.append({"model": c["model"]["name"], **c["task"], "hypothesis": c["hypothesis"], "layer": c["site"]["layer"],
                     "position": c["site"]["position"], "seed": c["train"]["seed"], "steps": c["train"]["steps"],
                     "iia": record["results"]["iia"], "hash": record["hash"]})
    return pd.DataFrame(rows)
