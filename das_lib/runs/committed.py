"""Finished cells committed with das_lib, for the chapters whose evidence costs more than a build affords, and
the check every build makes of them.

A committed store (das_lib/assets/stores/NAME) is an ordinary `Store` that one documented command made
(`python -m das_lib.book.stores regenerate NAME`; its `manifest.json` says when, how and in how long), kept
with the alignment files of the cells a chapter reads back and the records of all others. A chapter run
with the store's own parameters finds its cells there (`seed` copies them into the chapter's working store,
so a run with other parameters trains its own), and then retrains some of them from scratch into a fresh
store (`verify`): the headline cell and each hypothesis's chosen cell. A recomputed cell whose test score
falls outside the committed cell's 95% interval fails the build (`CommittedMismatch`), and the chapter says
which numbers this build recomputed. A study read back from the store (a robustness study, das_lib.runs.reuse)
has one of its settings evaluated again in the build (`verify_study`), and fails it alike.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from das_lib.method.outcome import Outcome, candidate_score
from das_lib.method.stats import binomial_interval
from das_lib.runs import protocol, robustness
from das_lib.runs.grid import Cell, Grid
from das_lib.runs.jobs import run_job
from das_lib.runs.store import Store

STORES = Path(__file__).resolve().parents[1] / "assets" / "stores"
MANIFEST = "manifest.json"


class CommittedMismatch(AssertionError):
    """A cell retrained by this build scores outside the committed cell's interval."""


def path(name: str) -> Path:
    """Where the committed store `name` lives."""
    return STORES / name


def manifest(name: str) -> dict[str, Any] | None:
    """How the committed store `name` was made (command, date, machine, seconds), or None if there is none."""
    file = path(name) / MANIFEST
    return json.loads(file.read_text()) if file.exists() else None


def seed(root: str | Path, name: str) -> int:
    """Copy the records (and kept files) of the committed store `name` that the store tree at `root` lacks, each to the
    same place under `root` (a chapter's stores may nest: a control's, a null's); returns how many were copied."""
    source, root = path(name), Path(root)
    if not source.is_dir() or (root.exists() and source.resolve() == root.resolve()):
        return 0
    copied = 0
    for record in sorted(source.rglob("record.json")):
        folder = record.parent
        target = root / folder.relative_to(source)
        if "damaged" not in folder.parts and not (target / "record.json").exists():
            shutil.copytree(folder, target, dirs_exist_ok=True)
            copied += 1
    return copied


def clear_tree(root: str | Path) -> int:
    """Empty every store in the tree at `root` (a chapter's store and those nested in it); returns the records removed."""
    return sum(Store(folder).clear() for folder in {p.parent.parent for p in Path(root).rglob("record.json")})


def prune(root: str | Path, keep: Iterable[str]) -> int:
    """Delete the alignment files of every record under `root` but those whose hash is in `keep` (their records stay,
    marked `alignment: None`); returns how many were deleted."""
    keep, deleted = set(keep), 0
    for folder in sorted(p.parent for p in Path(root).rglob("record.json")):
        if folder.name in keep:
            continue
        record = json.loads((folder / "record.json").read_text())
        stem = record["results"].get("alignment")
        if stem is None:
            continue
        for suffix in (".safetensors", ".json"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)
        record["results"]["alignment"] = None
        (folder / "record.json").write_text(json.dumps(record, indent=1, sort_keys=True))
        deleted += 1
    return deleted


def verify(grid: Grid, cells: Iterable[Cell], scratch: str | Path) -> pd.DataFrame:
    """Retrain `cells` of `grid` from scratch into the fresh store `scratch` and compare each with its record in the
    grid's store: one row per cell with the committed test gain (IIA minus doing nothing, summed over the
    candidate's variables) and its 95% interval (over pairs) and the recomputed gain. Raises CommittedMismatch, naming the cells, if a recomputed score lies outside its interval."""
    fresh = Store(scratch)
    fresh.clear()
    again = Grid(grid.spec, fresh, grid.device, grid.loaded, progress=False)
    rows, cells = [], list(cells)
    layers = sorted({c.layer for c in cells})  # cached together in one pass over the pool, for every cell below
    for cell in cells:
        committed = grid.record(cell)
        if committed is None:
            raise KeyError(f"cell {cell} has no record in {grid.store.root} to verify")
        grid.runner  # noqa: B018  (the grid's model, loaded once for the cells retrained here)
        run_job(again.config(cell), str(fresh.root), grid.device, layers)
        mine, theirs = (Outcome.from_dict(r["results"]["outcomes"]["test"]) for r in (again.record(cell), committed))
        runs = pd.DataFrame([{"candidate": cell.candidate, "layer": cell.layer, "position": cell.position, "seed": 0,
                              "data_seed": 0, "test": theirs, "majority": 0.0}])
        table = protocol.report(runs, {cell.candidate: cell.site()}, [cell.candidate])
        # the raw gain (summed over variables): defined even where too few pairs can change for a normalised score
        score = float(candidate_score(mine.correct, mine.none, mine.changed, "raw"))
        low, high = float(table.loc[cell.candidate, "raw low"]), float(table.loc[cell.candidate, "raw high"])
        rows.append({"cell": f"{cell.candidate} L{cell.layer} {cell.position} seed {cell.seed}",
                     "committed": float(table.loc[cell.candidate, "raw"]), "low": low, "high": high,
                     "recomputed": score, "within": low <= score <= high,
                     "same answers": float((mine.correct == theirs.correct).mean())})
    out = pd.DataFrame(rows).set_index("cell")
    bad = out.index[~out["within"]].tolist()
    if bad:
        raise CommittedMismatch(f"retrained cells {bad} score outside the committed cells' 95% intervals "
                                f"({out.loc[bad, ['committed', 'low', 'high', 'recomputed']].to_dict('index')}): the "
                                "committed store no longer matches this code; regenerate it (das_lib.book.stores)")
    return out


def verify_study(grid: Grid, result: robustness.RobustnessResult) -> pd.DataFrame:
    """Evaluate again, in this process, the first setting of a study read back from a store (`result.stored`) that
    needs no screening, with its hypothesis's chosen alignment, and compare its IIA with the stored one: one row with
    the stored IIA, its exact 95% interval and the recomputed IIA. Raises CommittedMismatch outside the interval;
    an empty table for a study this process evaluated itself."""
    if not result.stored:
        return pd.DataFrame(columns=["committed", "low", "high", "recomputed", "within"]).rename_axis("cell")
    setting = next(s for s in result.settings if s.answers is None and s.key in result.outcomes)
    cell = result.alignments.chosen[setting.hypothesis]
    one = robustness.Alignments({setting.hypothesis: cell}, {setting.hypothesis: [cell]}, {},
                                {cell: result.alignments.interventions[cell]}, result.alignments.trained.iloc[:0])
    checks = result.checks.loc[setting.key]
    again = robustness.evaluate_settings(grid.runner.model, grid.runner.tokenizer, grid.spec.task, grid.task.settings(),
                                         [setting], one, int(checks["pairs"]), int(checks["games"]), grid.spec.data_seed, 2)
    stored, recomputed = result.outcomes[setting.key][cell].correct, again.outcomes[setting.key][cell].correct
    low, high = binomial_interval(int(stored.sum()), stored.size)
    row = {"committed": float(stored.mean()), "low": low, "high": high, "recomputed": float(recomputed.mean())}
    name = f"robustness, {setting.title}: {cell.candidate} L{cell.layer} {cell.position} seed {cell.seed}"
    out = pd.DataFrame([{**row, "within": low <= row["recomputed"] <= high}], index=pd.Index([name], name="cell"))
    if not out["within"].all():
        raise CommittedMismatch(f"the stored study's IIA on {setting.title!r} ({row}) is not what this build computes: "
                                "regenerate the committed store (das_lib.book.stores)")
    return out
