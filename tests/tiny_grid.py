"""The tiny grid the engine's tests share (tests/conftest.py runs it once per session), and what they compare.

Two candidates (one contains the other) x 2 layers x 2 positions on the 4-layer stand-in, one grid seed, then
one extra seed and one extra data seed at each candidate's chosen site: 8 grid cells + 2 x (1 + 1 x 2) = 14.
"""
from __future__ import annotations

from typing import Any

from das_lib.method.training import TrainConfig
from das_lib.runs.grid import Grid, GridSpec
from das_lib.runs.sweep import task_settings

TINY = dict(model="standin", candidates=("left", "left_right"), layers=(0, 1), positions=("resp_colon", "last"),
            seeds=(0,), extra_seeds=(1,), extra_data_seeds=(1,), train=TrainConfig(steps=4, batch_size=16),
            n_train=32, n_val=64, n_test=64, n_task=16)  # 64: enough changeable pairs for a normalised score
GRID_CELLS, CELLS = 8, 14
DETERMINISTIC = ("outcomes", "majority", "boundary_dims", "boundary_dims_start", "curves")


def tiny_spec(**changes: Any) -> GridSpec:
    """The tiny grid's spec, with `changes` to its fields."""
    return GridSpec(task_settings=task_settings("standin"), **{**TINY, **changes})


def recorded(grid: Grid) -> dict:
    """What a grid recorded per cell that a rerun must reproduce (not the seconds it took, nor the path)."""
    return {cell: {k: grid.record(cell)["results"][k] for k in DETERMINISTIC} for cell in grid.cells()}
