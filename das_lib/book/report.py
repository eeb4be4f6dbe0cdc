"""Tables the chapters show and the values their prose glues: formatting for a page, a sweep's boundaries, chapter
7's costs, and the command line that runs a chapter. A finding's own tables are das_lib.book.findings_page's; the
checks it stands on, das_lib.book.checks_page's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from das_lib.models.standin import planted_for
from das_lib.runs.scaling import rotation_footprint
from das_lib.runs.sweep import boundary_shrank


def sweep_command(store: str, model: str, dtype: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
                  positions: Sequence[str] | None, device: str = "cpu") -> str:
    """The papermill command (run from the repository root) that makes the sweep chapter train these
    alignments into `store` (given as an absolute path: a chapter resolves it from its own folder)."""
    grid = {"hypotheses": list(hypotheses), "layers": list(layers or []), "positions": list(positions or [])}
    yaml = "{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in grid.items()) + "}"
    return (f"papermill book/05_sweep.ipynb /tmp/05_sweep.ipynb -p store {Path(store).resolve()} -p model {model} "
            f"-p dtype {dtype} -p device {device} -y '{yaml}'")


# --- Chapters 1-4: glue a chapter's values in one call ---


def glue_values(prefix: str, values: Mapping[str, object]) -> None:
    """Glue each value under `prefix` + its key (display=False), as a chapter's glue() calls would."""
    from myst_nb import glue  # the book's dependency, not the library's

    for key, value in values.items():
        glue(f"{prefix}{key}", value, display=False)


# ---------------------------------------------------------------------------------------------
# Chapters 5-7: tables as a page shows them (no NaN), the boundary table, and chapter 7's costs

MISSING = "n/a"  # what a table on a page shows where a value does not exist


def for_page(table: pd.DataFrame, digits: int = 3, missing: str = MISSING) -> pd.DataFrame:
    """`table` as text: each float column with at most `digits` decimals (as few as its values need, so
    the paper's 0.90 stays 0.90), and `missing` wherever a value does not exist (NaN or None)."""
    out = table.astype(object).where(table.notna(), missing)
    for column in table.columns:
        values = table[column]
        if not pd.api.types.is_float_dtype(values):
            continue
        known = values.dropna().round(digits)
        places = next((k for k in range(digits + 1) if (known.round(k) == known).all()), digits)
        out[column] = [missing if pd.isna(v) else f"{v:.{places}f}" for v in values]
    return out


FOOTPRINT_LABELS = {"parameters": "trainable values stored", "free": "of which free (moved by training)",
                    "buffers": "buffers", "gradients": "gradients", "adam": "Adam moments",
                    "weight": "rotation materialised per step", "resident": "resident while training"}


def footprint_table(d: int, r: int, bytes_per_value: int = 4) -> pd.DataFrame:
    """`scaling.rotation_footprint` of the full rotation and of rank r at width d side by side, each count
    with its size in MiB (float32 by default); the free values are a count, not more memory, so no size."""
    def cell(kind: str, n: int) -> str:
        return f"{n:,}" if kind == "free" else f"{n:,} ({n * bytes_per_value / 2**20:,.2f} MiB)"
    footprints = {"full rotation (r = d)": rotation_footprint(d), f"low rank (r = {r})": rotation_footprint(d, r)}
    return pd.DataFrame({name: {FOOTPRINT_LABELS[k]: cell(k, n) for k, n in f.items() if k in FOOTPRINT_LABELS}
                         for name, f in footprints.items()})


def estimate_table(estimate: Mapping[str, Any]) -> pd.DataFrame:
    """`scaling.grid_estimate` as the rows a reader reads (every row an estimate, not a measurement)."""
    e = estimate
    rows = {"model parameters": f"{e['model_params']:,}",
            "model weights in bfloat16": f"{e['model_gib_bf16']:.1f} GiB",
            "layers searched": str(e["layers"]), "cells per hypothesis": str(e["grid_cells"]),
            "saved alignments per hypothesis, full rotation": f"{e['grid_full_gib']:.1f} GiB",
            f"saved alignments per hypothesis, r = {e['grid_rank']}": f"{e['grid_low_mib']:.1f} MiB",
            f"GPU time, {e['hypotheses']} hypotheses x {e['grid_cells']} cells x {e['minutes_per_cell']} min":
                f"{e['grid_gpu_hours']:.0f} h"}
    return pd.Series(rows, name="estimate").to_frame()


def planted_site(model: str) -> str | None:
    """Where the model's mechanism was planted ("L1 last"), or None for a model nobody planted one in."""
    planted = planted_for(model)
    return None if planted is None else f"L{planted[1]['site']['layer']} {planted[1]['site']['position']}"


def cross_table(matrix: Any) -> pd.DataFrame:
    """A `crosscheck.CrossMatrix` as a chapter shows it: each cell's IIA with its exact 95% interval and, in
    brackets, on how many test pairs."""
    shown = matrix.iia.copy().astype(object)
    for r in matrix.iia.index:
        for c in matrix.iia.columns:
            n = int(matrix.pairs.loc[r, c])
            shown.loc[r, c] = MISSING if n == 0 else (f"{matrix.iia.loc[r, c]:.2f} [{matrix.low.loc[r, c]:.2f}, "
                                                      f"{matrix.high.loc[r, c]:.2f}] ({n})")
    return shown


# ---------------------------------------------------------------------------------------------
# Chapter 9: the search over programs


def groups_values(groups: pd.DataFrame) -> dict[str, int]:
    """What a chapter states of a `ProgramSearch.groups_frame`: groups, those holding several candidates, the
    groups set aside because a variable carries the whole answer, and the fewest test pairs apart."""
    return {"groups": len(groups), "groups_merged": int((groups["candidates"] > 1).sum()),
            "candidates_merged": int(groups.loc[groups["candidates"] > 1, "candidates"].sum()),
            "answer_groups": int((~groups["searched"]).sum()), "searched_groups": int(groups["searched"].sum()),
            "fewest_apart": int(groups["test pairs apart"].min())}


def shrinking(curves: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """`Grid.curves()` with `shrank`: did each run's boundary end below half its starting size (`sweep.boundary_shrank`)."""
    first = frame[(frame["seed"] == frame["seed"].min()) & (frame["data_seed"] == frame["data_seed"].min())]
    ended = {f"{r.candidate} L{r.layer} {r.position}": bool(boundary_shrank(r.boundary_dims, r.boundary_dims_start))
             for r in first.itertuples()}
    return curves.assign(shrank=curves["run"].map(ended).map({True: "shrank", False: "did not shrink"}))


def _grid_ends(frame: pd.DataFrame) -> pd.DataFrame:
    """The grid of the first seed on the first pool, with whether each cell's boundary shrank."""
    frame = frame[(frame["seed"] == frame["seed"].min()) & (frame["data_seed"] == frame["data_seed"].min())]
    return frame.assign(shrank=boundary_shrank(frame["boundary_dims"], frame["boundary_dims_start"]))


def boundary_table(frame: pd.DataFrame, titles: Mapping[str, str]) -> pd.DataFrame:
    """Per hypothesis and whether the learned boundary shrank, over the first seed's grid: cells, mean and best
    test score, mean IIA, mean learned subspace size."""
    ends = _grid_ends(frame).assign(hypothesis=lambda f: f["candidate"].map(titles))
    return ends.groupby(["hypothesis", "shrank"], sort=False).agg(
        cells=("score", "size"), mean_score=("score", "mean"), best_score=("score", "max"), mean_iia=("iia", "mean"),
        mean_dims=("boundary_dims", "mean"))


def boundary_values(frame: pd.DataFrame) -> dict[str, float]:
    """The numbers of `boundary_table` a chapter's prose states: over the first seed's grid, how many cells there
    are, how many ended with a boundary that shrank, and the mean width at the start and the end."""
    ends = _grid_ends(frame)
    return {"boundary_cells": int(len(ends)), "boundary_cells_shrank": int(ends["shrank"].sum()),
            "width_start": float(ends["boundary_dims_start"].mean()), "width_end": float(ends["boundary_dims"].mean())}


def listed(values: Mapping[str, Any], empty: str = "none") -> dict[str, Any]:
    """`values` with each list or tuple as a page writes it: "a, b and c", or `empty`."""
    def words(items: Sequence[Any]) -> str:
        items = [str(i) for i in items]
        return empty if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return {k: words(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
