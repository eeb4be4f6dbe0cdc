"""Tables the chapters show: what sweeps found side by side, and the command line that runs a chapter.

An IIA means something only beside the IIA of leaving the model alone (many counterfactual labels
equal the base's own answer), so the findings tables carry the gain, IIA - no-intervention IIA.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from das_lib import paper
from das_lib.models.standin import planted_for
from das_lib.pricetag.game import HYPOTHESES
from das_lib.runs.scaling import rotation_footprint
from das_lib.runs.sweep import boundary_shrank, summary


def sweep_command(store: str, model: str, dtype: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
                  positions: Sequence[str] | None, device: str = "cpu") -> str:
    """The papermill command (run from the repository root) that makes the sweep chapter train these
    alignments into `store` (given as an absolute path: a chapter resolves it from its own folder)."""
    grid = {"hypotheses": list(hypotheses), "layers": list(layers or []), "positions": list(positions or [])}
    yaml = "{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in grid.items()) + "}"
    return (f"papermill book/05_sweep.ipynb /tmp/05_sweep.ipynb -p store {Path(store).resolve()} -p model {model} "
            f"-p dtype {dtype} -p device {device} -y '{yaml}'")


def hypothesis_table(frame: pd.DataFrame, task_acc: float) -> pd.DataFrame:
    """`sweep.summary` of a sweep's frame with the gain over no intervention and the best site's layer and
    position, indexed by hypothesis key."""
    table = summary(frame, task_acc)
    table.index = [next(k for k, h in HYPOTHESES.items() if h.title == title) for title in table.index]
    first = frame[frame["seed"] == frame["seed"].min()]
    best = first.loc[first.groupby("hypothesis", sort=False)["iia"].idxmax()].set_index("hypothesis")  # as summary picks it
    return table.assign(gain=table["max IIA"] - table["unintervened"], layer=best["layer"].astype(int), position=best["position"])


def side_by_side(tables: Mapping[str, pd.DataFrame], paper_name: str = "Alpaca 7B (paper)") -> pd.DataFrame:
    """One row per hypothesis; per model (a `hypothesis_table` each) its max IIA, gain and best site, then
    the paper's max IIA (the paper reports no IIA of doing nothing, so no gain is shown for it)."""
    hypotheses = list(dict.fromkeys(h for t in tables.values() for h in t.index))
    columns = {}
    for name, table in tables.items():
        t = table.reindex(hypotheses)
        columns[(name, "max IIA")] = t["max IIA"]
        columns[(name, "gain")] = t["gain"]
        columns[(name, "best site")] = t["best site"]
    columns[(paper_name, "max IIA")] = pd.Series({h: paper.MAX_IIA[h] for h in hypotheses})
    out = pd.DataFrame(columns)
    out.index = [HYPOTHESES[h].title for h in hypotheses]
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


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


def _grid_ends(frame: pd.DataFrame) -> pd.DataFrame:
    """The grid of the first (lowest) seed, as `hypothesis_table` reads it, with whether each cell's
    boundary shrank (`sweep.boundary_shrank`) and its gain over no intervention."""
    frame = frame[frame["seed"] == frame["seed"].min()]
    return frame.assign(shrank=boundary_shrank(frame["boundary_dims"], frame["boundary_dims_start"]),
                        gain=frame["iia"] - frame["unintervened"])


def boundary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per hypothesis and whether the learned boundary shrank, over the first seed's grid: cells, mean and
    max IIA, max gain over no intervention, mean learned subspace size."""
    return _grid_ends(frame).groupby(["hypothesis", "shrank"], sort=False).agg(
        cells=("iia", "size"), mean_iia=("iia", "mean"), max_iia=("iia", "max"), max_gain=("gain", "max"),
        mean_dims=("boundary_dims", "mean"))


def boundary_values(frame: pd.DataFrame) -> dict[str, float]:
    """The numbers of `boundary_table` a chapter's prose states: over the first seed's grid, how many cells
    there are, how many ended with a boundary that shrank, and the mean width at the start and the end."""
    ends = _grid_ends(frame)
    return {"boundary_cells": int(len(ends)), "boundary_cells_shrank": int(ends["shrank"].sum()),
            "width_start": float(ends["boundary_dims_start"].mean()), "width_end": float(ends["boundary_dims"].mean())}


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


def baselines(frame: pd.DataFrame) -> pd.DataFrame:
    """Per hypothesis of a sweep's frame: the dummy's IIA (always the majority label) and the IIA of no
    intervention, on its test pairs."""
    return frame.groupby("hypothesis", sort=False)[["dummy", "unintervened"]].first().rename(
        columns={"dummy": "dummy (majority label)", "unintervened": "IIA with no intervention"})


# The columns of `findings_table`: the raw IIA, what doing nothing scores, the gain, then the paper's.
FINDINGS_COLUMNS = ["best site", "max IIA", "unintervened", "gain", "paper (Alpaca 7B)", "normalised",
                    "mean over seeds", "std over seeds", "seeds"]


def findings_table(table: pd.DataFrame) -> pd.DataFrame:
    """A `hypothesis_table` as a chapter shows it: by hypothesis title, FINDINGS_COLUMNS."""
    return table.rename(index={k: HYPOTHESES[k].title for k in table.index})[FINDINGS_COLUMNS]


def findings_values(table: pd.DataFrame) -> dict[str, float | str]:
    """The numbers of a `hypothesis_table` a chapter's prose names: per hypothesis key h, `max_iia_h`, `gain_h`,
    `std_iia_h`, `paper_iia_h` and `best_site_h`; and `winner` (the title of the hypothesis of largest gain),
    `winner_key` (its key), `winner_site` and `best_gain`."""
    out: dict[str, float | str] = {}
    for h, row in table.iterrows():
        out |= {f"max_iia_{h}": float(row["max IIA"]), f"gain_{h}": float(row["gain"]),
                f"std_iia_{h}": float(row["std over seeds"]), f"paper_iia_{h}": float(row["paper (Alpaca 7B)"]),
                f"best_site_{h}": str(row["best site"])}
    winner = table["gain"].idxmax()
    return out | {"winner": HYPOTHESES[winner].title, "winner_key": str(winner), "winner_site": str(table.loc[winner, "best site"]),
                  "best_gain": float(table.loc[winner, "gain"])}


def planted_site(model: str) -> str | None:
    """Where the model's mechanism was planted ("L1 last"), or None for a model nobody planted one in."""
    planted = planted_for(model)
    return None if planted is None else f"L{planted[1]['site']['layer']} {planted[1]['site']['position']}"
