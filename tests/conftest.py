"""Fixtures shared by the grid engine's tests: the tiny grid of tests/tiny_grid.py, run once per session.

Tests that change a store work on a copy of the finished one (`copy_store`), so that every test sees the grid
as one uninterrupted run left it.
"""
from __future__ import annotations

import shutil
from typing import Callable

import pytest
import torch

from das_lib.runs.grid import Grid
from tiny_grid import CELLS, tiny_spec


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory) -> Grid:
    """The tiny grid run to the end into its own store, on one thread (a tiny model gains nothing from more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grid = Grid(tiny_spec(), tmp_path_factory.mktemp("tiny-store"), progress=False)
        assert grid.run() == {"ran": CELLS, "reused": 0}
    finally:
        torch.set_num_threads(threads)
    return grid


@pytest.fixture
def copy_store(tiny_grid, tmp_path) -> Callable[[str], Grid]:
    """Makes a copy of the finished tiny grid's store and returns a new Grid of the same spec reading it."""

    def copy(name: str = "copy") -> Grid:
        root = tmp_path / name
        shutil.copytree(tiny_grid.store.root, root, ignore=shutil.ignore_patterns("locks"))
        return Grid(tiny_grid.spec, root, progress=False)

    return copy


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (more threads only add synchronisation), as Dask workers do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
