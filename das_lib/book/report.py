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
from das_lib.pricetag import programs
from das_lib.pricetag.game import get_hypothesis
from das_lib.runs.program_search import ProgramSearch
from das_lib.runs.scaling import rotation_footprint
from das_lib.runs import findings
from das_lib.runs.sweep import boundary_shrank


def sweep_command(store: str, model: str, dtype: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
                  positions: Sequence[str] | None, device: str = "cpu") -> str:
    """The papermill command (run from the repository root) that makes the sweep chapter train these
    alignments into `store` (given as an absolute path: a chapter resolves it from its own folder)."""
    grid = {"hypotheses": list(hypotheses), "layers": list(layers or []), "positions": list(positions or [])}
    yaml = "{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in grid.items()) + "}"
    return (f"papermill book/05_sweep.ipynb /tmp/05_sweep.ipynb -p store {Path(store).resolve()} -p model {model} "
            f"-p dtype {dtype} -p device {device} -y '{yaml}'")


def hypothesis_table(frame: pd.DataFrame, task_acc: float) -> pd.DataFrame:
    """`findings.summary` of a sweep's frame, indexed by hypothesis key: the site chosen on validation and its
    test IIA and gain over doing nothing, each with its 95% interval."""
    return findings.summary(frame, task_acc)


def interval(low: float, high: float, signed: bool = False) -> str:
    """A 95% interval as a page shows it: "[0.812, 0.903]" (signed: "[+0.02, +0.11]")."""
    spec = "+.3f" if signed else ".3f"
    return f"[{low:{spec}}, {high:{spec}}]"


def side_by_side(tables: Mapping[str, pd.DataFrame], paper_name: str = "Alpaca 7B (paper)") -> pd.DataFrame:
    """One row per hypothesis; per model (a `hypothesis_table` each) its test IIA and gain with intervals at the
    site chosen on validation, then the paper's max IIA (the paper reports no IIA of doing nothing, so no
    gain, and no interval)."""
    hypotheses = list(dict.fromkeys(h for t in tables.values() for h in t.index))
    columns = {}
    for name, table in tables.items():
        t = table.reindex(hypotheses)
        columns[(name, "IIA")] = [f"{v:.3f} {interval(lo, hi)}" for v, lo, hi in zip(t["IIA"], t["IIA low"], t["IIA high"])]
        columns[(name, "gain")] = [f"{v:+.3f} {interval(lo, hi, True)}" for v, lo, hi in zip(t["gain"], t["gain low"], t["gain high"])]
        columns[(name, "site")] = t["best site"]
    columns[(paper_name, "max IIA")] = [paper.MAX_IIA.get(h) for h in hypotheses]
    out = pd.DataFrame(columns)
    out.index = [get_hypothesis(h).title for h in hypotheses]
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


def findings_table(table: pd.DataFrame) -> pd.DataFrame:
    """A `hypothesis_table` as a chapter shows it, by hypothesis title: the site chosen on validation, its
    validation IIA, and on the test pairs the IIA and the gain over doing nothing with their 95% intervals,
    the IIA where the label differs from the base's answer, the seeds' spread, and the paper's max IIA."""
    shown = pd.DataFrame({
        "site (validation)": table["best site"], "validation IIA": table["validation IIA"], "test IIA": table["IIA"],
        "95% interval": [interval(lo, hi) for lo, hi in zip(table["IIA low"], table["IIA high"])],
        "no intervention": table["unintervened"], "gain": table["gain"],
        "gain 95% interval": [interval(lo, hi, True) for lo, hi in zip(table["gain low"], table["gain high"])],
        "IIA where the label changes": table["IIA on changed"],
        "seeds: min-max": [f"{lo:.3f}-{hi:.3f} ({int(n)})" for lo, hi, n in
                           zip(table["min over seeds"], table["max over seeds"], table["seeds"])],
        "paper (Alpaca 7B)": table["paper (Alpaca 7B)"]})
    return shown.rename(index={k: get_hypothesis(k).title for k in table.index})


def findings_values(table: pd.DataFrame, frame: pd.DataFrame | None = None) -> dict[str, float | str]:
    """The numbers of a `hypothesis_table` a chapter's prose names: per hypothesis key h, `max_iia_h` (the test
    IIA at the site chosen on validation), `iia_low_h`, `iia_high_h`, `gain_h`, `gain_low_h`, `gain_high_h`,
    `paper_iia_h`, `best_site_h`, and for a hypothesis of several variables `iia_h_v` (on the pairs of variable v); `winner` (the title of the hypothesis of largest gain), `winner_key`,
    `winner_site`, `best_gain` (and its interval); with the sweep's `frame`, the ranking's `runner_up` and
    the `margin` of the winner's gain over it on the same pairs, with `margin_low` and `margin_high`."""
    out: dict[str, float | str] = {}
    for h, row in table.iterrows():
        variables = get_hypothesis(h).variables
        out |= {f"iia_{h}_{v}": float(row[f"IIA {v}"]) for v in variables if len(variables) > 1}  # each variable's pairs
        out |= {f"max_iia_{h}": float(row["IIA"]), f"iia_low_{h}": float(row["IIA low"]), f"iia_high_{h}": float(row["IIA high"]),
                f"gain_{h}": float(row["gain"]), f"gain_low_{h}": float(row["gain low"]), f"gain_high_{h}": float(row["gain high"]),
                f"paper_iia_{h}": float(row["paper (Alpaca 7B)"] if row["paper (Alpaca 7B)"] is not None else "nan"),
                f"best_site_{h}": str(row["best site"])}
    winner = table["gain"].astype(float).idxmax()
    out |= {"winner": get_hypothesis(winner).title, "winner_key": str(winner), "winner_site": str(table.loc[winner, "best site"]),
            "best_gain": float(table.loc[winner, "gain"]), "best_gain_low": float(table.loc[winner, "gain low"]),
            "best_gain_high": float(table.loc[winner, "gain high"])}
    if frame is not None:
        ranked = findings.ranking(frame)
        if "second" in ranked:
            out |= {"runner_up": get_hypothesis(ranked["second"]).title, "margin": ranked["margin"],
                    "margin_low": ranked["margin_low"], "margin_high": ranked["margin_high"]}
    return out


def planted_site(model: str) -> str | None:
    """Where the model's mechanism was planted ("L1 last"), or None for a model nobody planted one in."""
    planted = planted_for(model)
    return None if planted is None else f"L{planted[1]['site']['layer']} {planted[1]['site']['position']}"


def nulls_table(nulls: pd.DataFrame) -> pd.DataFrame:
    """`controls.nulls` as a chapter shows it: site, test IIA and gain with their 95% intervals, and the finding's
    gain minus the null's, on the same pairs, with its interval."""
    def gap(row: pd.Series) -> str:
        if pd.isna(row.get("difference")):
            return MISSING
        return f"{row['difference']:+.3f} {interval(row['difference low'], row['difference high'], True)}"
    return pd.DataFrame({
        "site": nulls["site"],
        "test IIA": [f"{v:.3f} {interval(lo, hi)}" for v, lo, hi in zip(nulls["IIA"], nulls["IIA low"], nulls["IIA high"])],
        "no intervention": [f"{v:.3f}" for v in nulls["unintervened"]],
        "gain": [f"{v:+.3f} {interval(lo, hi, True)}" for v, lo, hi in zip(nulls["gain"], nulls["gain low"], nulls["gain high"])],
        "finding's gain minus this": [gap(r) for _, r in nulls.iterrows()]}, index=nulls.index)


def nulls_values(nulls: pd.DataFrame) -> dict[str, float | bool]:
    """The numbers of `controls.nulls` a chapter's prose names, per null k (control_task, random_weights,
    random_subspace): `k_gain`, `k_gain_low`, `k_gain_high`, `k_gap` (the finding's gain minus it), `k_gap_low`,
    `k_gap_high`, `k_beaten` (the gap's interval lies above 0); and `beats_all_nulls`."""
    out: dict[str, float | bool] = {}
    for name, row in nulls.drop(index="finding").iterrows():
        key = name.replace(" ", "_")
        out |= {f"{key}_gain": float(row["gain"]), f"{key}_gain_low": float(row["gain low"]),
                f"{key}_gain_high": float(row["gain high"]), f"{key}_gap": float(row["difference"]),
                f"{key}_gap_low": float(row["difference low"]), f"{key}_gap_high": float(row["difference high"]),
                f"{key}_beaten": bool(row["difference low"] > 0)}
    return out | {"beats_all_nulls": all(v for k, v in out.items() if k.endswith("_beaten"))}


def cross_table(iia: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """`crosscheck.cross_matrix` as a chapter shows it: each cell's IIA and, in brackets, on how many test pairs."""
    shown = iia.copy().astype(object)
    for r in iia.index:
        for c in iia.columns:
            shown.loc[r, c] = MISSING if pairs.loc[r, c] == 0 else f"{iia.loc[r, c]:.2f} ({int(pairs.loc[r, c])})"
    return shown


# ---------------------------------------------------------------------------------------------
# Chapter 9: the search over programs


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def ranking_for_page(table: pd.DataFrame, keep: Sequence[str] = (), top: int = 10) -> pd.DataFrame:
    """The first `top` groups of a `ProgramSearch.ranking` and the groups `keep` (e.g. the paper's, the unused
    variable's), as a page shows them: rank, variables, formula, the paper's name, site, IIA with its 95%
    interval, the IIA of always giving the majority label and of doing nothing, and the gain with its 95%
    interval."""
    rows = list(table.index[:top]) + sorted((k for k in set(keep) & set(table.index[top:])), key=table.index.get_loc)
    t = table.loc[rows]
    return pd.DataFrame({
        "rank": t["rank"], "variables": [k.split(programs.SEP)[1] for k in rows], "formula": [k.split(programs.SEP)[0] for k in rows],
        "paper": t["paper"],
        "site": t["site"], "IIA [95%]": [_interval(*r) for r in t[["iia", "iia_low", "iia_high"]].itertuples(index=False)],
        "majority label": t["majority"].map("{:.3f}".format), "no intervention": t["unintervened"].map("{:.3f}".format),
        "gain [95%]": [_interval(*r) for r in t[["gain", "gain_low", "gain_high"]].itertuples(index=False)],
    }).set_index("rank")


def search_values(search: ProgramSearch) -> dict[str, Any]:
    """What a chapter states of one model's search: the first two groups and the margin between them on the
    same test pairs, the unused variable's rank and gain, the planted program's rank (if any), and the best
    program the paper did not consider against the best of its four: the paired difference of their gains
    (`new_vs_paper`) and whether its interval lies above 0 (`verdict`)."""
    table = search.ranking()
    first, second = table.index[0], table.index[1]
    m, low, high = search.margin(first, second)
    row = lambda key: table.loc[key]  # noqa: E731
    out: dict[str, Any] = {
        "groups": len(table), "sites": ", ".join(sorted(set(table["site"]))),
        "first": row(first)["title"], "first_site": row(first)["site"],
        "first_gain": row(first)["gain"], "first_gain_low": row(first)["gain_low"], "first_gain_high": row(first)["gain_high"],
        "first_iia": row(first)["iia"], "second": row(second)["title"],
        "second_gain": row(second)["gain"], "margin": m, "margin_low": low, "margin_high": high,
        "margin_verdict": "excludes 0" if low > 0 else "includes 0",
    }
    unused = search.unused_group()
    below = table[table["rank"] > row(unused)["rank"]]
    out |= {"unused_rank": int(row(unused)["rank"]), "unused_gain": row(unused)["gain"],
            "unused_gain_low": row(unused)["gain_low"], "unused_gain_high": row(unused)["gain_high"],
            "below_unused": len(below), "below_unused_aligned": int((below["gain_low"] > 0).sum())}
    planted = search.planted_group()
    if planted is not None:
        out |= {"planted": row(planted)["title"], "planted_rank": int(row(planted)["rank"]), "planted_site": row(planted)["site"]}
    papers, new = table[table["paper"] != ""], table[table["paper"] == ""]
    best_paper, best_new = papers.index[0], new.index[0]
    m, low, high = search.margin(best_new, best_paper)
    out |= {"best_paper": row(best_paper)["paper"], "best_paper_rank": int(row(best_paper)["rank"]),
            "best_paper_gain": row(best_paper)["gain"], "best_new": row(best_new)["title"],
            "best_new_rank": int(row(best_new)["rank"]), "best_new_gain": row(best_new)["gain"],
            "new_vs_paper": m, "new_vs_paper_low": low, "new_vs_paper_high": high,
            "first_kind": f"one of the paper's four, {row(first)['paper']}" if row(first)["paper"] else "a program the paper did not consider",
            "verdict": "a program the paper did not consider fits better" if low > 0 else "none of them beats the four"}
    return {k: v.item() if hasattr(v, "item") else v for k, v in out.items()}  # numpy scalars as plain numbers


def groups_values(groups: pd.DataFrame) -> dict[str, int]:
    """What a chapter states of a `ProgramSearch.groups_frame`: groups, those holding several candidates, the
    groups set aside because a variable carries the whole answer, and the fewest test pairs apart."""
    return {"groups": len(groups), "groups_merged": int((groups["candidates"] > 1).sum()),
            "candidates_merged": int(groups.loc[groups["candidates"] > 1, "candidates"].sum()),
            "answer_groups": int((~groups["searched"]).sum()), "searched_groups": int(groups["searched"].sum()),
            "fewest_apart": int(groups["test pairs apart"].min())}


def scan_table(scans: Mapping[str, ProgramSearch]) -> pd.DataFrame:
    """Validation gain of the paper's four hypotheses at every scanned site, one column per model (name -> scan)."""
    frames = []
    for name, scan in scans.items():
        gains = scan.site_gains().rename(index=lambda k: scan.paper_groups().get(k, k))
        frames.append(gains.T.assign(model=name).reset_index().set_index(["model", "site"]))
    return pd.concat(frames)
