"""The hypothesis sweep: the grid engine (das_lib.runs.grid) over a task's hand-written hypotheses.

This is the paper's design (chapters 5 and 8): every hypothesis at every site of a grid of layers and
token positions, from a few seeds, on one pool of random pairs that every hypothesis labels. `sweep_spec`
builds the grid from the chapters' parameters; `frame` flattens a grid's runs into one row per cell for
heatmaps and tables; choosing and reporting is das_lib.runs.protocol's, through das_lib.runs.findings.

On several machines the grid's cells go to Dask distributed (`Grid.run(client=...)`, one task per cell,
writing to a store every worker sees). With one GPU per worker, e.g. on a cluster:

    dask scheduler --scheduler-file /shared/sched.json                       # once
    CUDA_VISIBLE_DEVICES=0 dask worker --scheduler-file /shared/sched.json \\
        --nthreads 1 --resources "GPU=1"                                      # once per GPU

    grid = Grid(spec, "/shared/runs/sweep", device="cuda")
    grid.run(client=Client(scheduler_file="/shared/sched.json"), gpu=True)    # one GPU per cell
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, Sequence

import pandas as pd

from das_lib.method.outcome import candidate_score, variable_scores
from das_lib.method.training import TrainConfig
from das_lib.models.load import default_template, load_config, load_tokenizer
from das_lib.runs.grid import Grid, GridSpec
from das_lib.tasks import DEFAULT_TASK, make_task, standard_settings

SHRINK_RATIO = 0.5  # a boundary "shrank" when it ended below this share of its starting size


def task_settings(model: str, task: str = DEFAULT_TASK, template: str | None = None, **settings: Any) -> dict[str, Any]:
    """The settings of `task`'s prompts on `model`: the model's own template (load.default_template) unless one is
    given, the task's defaults, and `settings`."""
    tokenizer = load_tokenizer(model)
    return standard_settings(task, tokenizer, template=template or default_template(tokenizer), **settings)


def sweep_spec(model: str, hypotheses: Sequence[str], layers: Sequence[int] = (), positions: Sequence[str] = (),
               task: str = DEFAULT_TASK, **settings: Any) -> GridSpec:
    """The grid of `task`'s `hypotheses` at `layers` ([]: every layer of the model) x `positions` ([]: every
    searched position of its prompts); `settings` are the other fields of `GridSpec` (seeds, train, n_train, ...)
    and the task's own settings (the game's `template`, `variant`, `context`)."""
    grid_fields = {f.name for f in fields(GridSpec)}
    prompts = task_settings(model, task, **{k: settings.pop(k) for k in list(settings) if k not in grid_fields})
    if not layers:
        layers = range(load_config(model).num_hidden_layers)
    if not positions:
        positions = make_task(task, load_tokenizer(model), prompts).searched_roles()
    return GridSpec(model=model, task=task, task_settings=prompts, candidates=tuple(hypotheses), layers=tuple(layers),
                    positions=tuple(positions), **settings)


def spec_from_params(values: Mapping[str, Any], budget: Sequence[int] | None = None) -> GridSpec:
    """The sweep a chapter's parameters describe (chapters 6 and 8's names) at `budget` (steps, batch size, training
    pairs; default the parameter `budget`), so that a script splitting that sweep over processes
    (benchmarks/gpu_sweep_workers.py) trains the chapter's cells."""
    v = values
    steps, batch_size, n_train = budget if budget is not None else v["budget"]
    layers = v["layers"] or strided(load_config(v["model"]).num_hidden_layers, v.get("layer_stride", 1))
    return sweep_spec(v["model"], v["hypotheses"], layers, v["positions"], seeds=tuple(v["seeds"]),
                      extra_seeds=tuple(v["extra_seeds"]), extra_data_seeds=tuple(v["extra_data_seeds"]),
                      train=TrainConfig(steps=steps, batch_size=batch_size, orthogonal_map=v.get("orthogonal_map") or None),
                      n_train=n_train, n_val=v["n_val"], n_test=v["n_test"], n_task=v["n_task"],
                      data_seed=v["data_seed"], dtype=v["dtype"])


def strided(n_layers: int, stride: int) -> list[int]:
    """Every `stride`-th of `n_layers` layers from the first, and the last: the paper's layout (stride 5)."""
    if stride < 1:
        raise ValueError(f"a layer stride must be >= 1, got {stride}")
    return sorted({*range(0, n_layers, stride), n_layers - 1})


def frame(grid: Grid, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell of `runs` (default: every cell of the grid): candidate, site, seeds, and on the test pairs
    (validation: `val_` columns) the IIA, the IIA of doing nothing, the gain, the score (mean normalised gain over
    the variables) and the raw score (summed gain), with the majority rate and the learned boundary's width."""
    runs = grid.runs() if runs is None else runs
    rows = []
    for _, r in runs.iterrows():
        row = {k: r[k] for k in ("candidate", "layer", "position", "seed", "data_seed", "site", "majority",
                                 "boundary_dims", "boundary_dims_start", "hash")}
        for split, prefix in (("test", ""), ("val", "val_")):
            o = r[split]
            per = variable_scores(o.correct, o.none, o.changed)
            row |= {f"{prefix}iia": float(o.correct.mean()), f"{prefix}unintervened": float(o.none.mean()),
                    f"{prefix}gain": float(per["gain"].mean()), f"{prefix}score": float(candidate_score(o.correct, o.none, o.changed)),
                    f"{prefix}raw": float(candidate_score(o.correct, o.none, o.changed, "raw"))}
        rows.append(row)
    return pd.DataFrame(rows)


def boundary_shrank(end_dims: Any, start_dims: Any, ratio: float = SHRINK_RATIO) -> Any:
    """Did a boundary end below `ratio` times its starting size (numbers, or columns of a frame)?"""
    return end_dims < ratio * start_dims
