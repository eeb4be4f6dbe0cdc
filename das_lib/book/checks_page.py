"""The checks a finding stands on, as a page shows them: the model's accuracy, the budget the positive control
vouches for, the nulls, the convergence of training, the committed cells this build retrained, and the
finding figure's rows. The library computes them (das_lib.runs.calibration, controls, committed); only this
module words them.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from das_lib.book.findings_page import with_interval
from das_lib.method.outcome import Outcome
from das_lib.method.sites import Site
from das_lib.runs import committed, controls, protocol
from das_lib.runs.findings import Finding
from das_lib.runs.grid import Cell, Grid
from das_lib.runs.robustness import RobustnessResult

CHECKS = {"first": "planted program first", "site": "at the planted site", "variables": "each variable realised",
          "search": "first among programs"}


def titles(grid: Grid, candidates: Sequence[str]) -> dict[str, str]:
    """Each candidate's readable name."""
    return {c: grid.candidate(c).title for c in candidates}


def model_values(record: Mapping[str, Any] | None, accuracy: Mapping[str, float], n_task: int) -> dict[str, Any]:
    """The model's accuracy over the answer tokens and the vocabulary, and a sentence on its fine-tuning record."""
    if record is None:
        sentence = "This model has no fine-tuning record in its folder (it was not fine-tuned by das_lib)."
    else:
        c = record["config"]
        sentence = (f"The adapter was trained for {c['steps']} steps of {c['batch_size']} fresh games "
                    f"({record['train_seconds'] / 60:.1f} minutes of wall time, {record['train_cpu_seconds']:.0f} CPU-seconds).")
    return {"training_sentence": sentence, "task_acc": accuracy["task_accuracy"],
            "task_acc_vocabulary": accuracy["task_accuracy_vocabulary"], "task_majority": accuracy["majority"],
            "n_task": n_task}


def accuracy_table(record: Mapping[str, Any] | None, accuracy: Mapping[str, float]) -> pd.DataFrame:
    """The model's accuracy on fresh games as this chapter reads it, and, from its fine-tuning record, per setting."""
    rows = {"fresh games, over the answer tokens (this book's reading)": accuracy["task_accuracy"],
            "fresh games, over the whole vocabulary (the paper's)": accuracy["task_accuracy_vocabulary"],
            "fresh games: always the more common answer": accuracy["majority"]}
    if record is not None:
        rows |= {f"fine-tuning record: {k}": v for k, v in record["accuracy"].items()}
    return pd.Series(rows, name="accuracy").to_frame()


def ladder_table(ladder: pd.DataFrame) -> pd.DataFrame:
    """`calibration.calibrate`'s table as a page shows it: per budget, each check and the planted program's score."""
    out = pd.DataFrame({"steps x batch": [f"{s} x {b}" for s, b in zip(ladder["steps"], ladder["batch"])],
                        "training pairs": ladder["n_train"], "site found": ladder["found_site"],
                        **{name: ladder[key].map({True: "yes", False: "no"}) for key, name in CHECKS.items()},
                        "planted program's score [95%]": [with_interval(*r) for r in
                                                          ladder[["score", "score low", "score high"]].itertuples(index=False)],
                        "passed": ladder["passed"].map({True: "yes", False: "no"})})
    return out.set_index("steps x batch")


def budget_values(ladder: pd.DataFrame, budget: Sequence[int], forced: bool = False) -> dict[str, Any]:
    """What the prose says of the calibration: the budget used, where the control passed, and the limit on every
    verdict when it did not pass at the budget used."""
    passed = ladder[ladder["passed"]]
    at = ladder[(ladder["steps"] == budget[0]) & (ladder["batch"] == budget[1]) & (ladder["n_train"] == budget[2])]
    vouched = bool(len(at)) and bool(at["passed"].iloc[0])
    if passed.empty:
        sentence = f"passes at none of the {len(ladder)} budgets tried."
    else:
        first = passed.iloc[0]
        sentence = f"first passes every check at {first['steps']} steps of {first['batch']} pairs on {first['n_train']} training pairs."
    limit = ("the control passed at this budget, so it vouches for what the search finds and misses here." if vouched else
             "**the control did not pass at this budget, so nothing below is vouched for: a hypothesis found nowhere "
             "may have been missed, and one found may be an artefact the control would have exposed.**")
    if forced:
        limit = "this budget was set by the parameter `budget`, not calibrated; " + limit
    return {"steps": budget[0], "batch": budget[1], "n_train": budget[2], "sentence": sentence, "limit": limit,
            "vouched": "yes" if vouched else "no"}


def curves_with_control(curve: pd.DataFrame, ladder: pd.DataFrame, control: str, planted: str) -> pd.DataFrame:
    """The model's budget curve beside the control's planted program at each budget of the ladder."""
    rows = ladder.assign(model=control, candidate=planted)[["model", "steps", "batch", "n_train", "candidate",
                                                            "score", "score low", "score high"]]
    return pd.concat([curve, rows], ignore_index=True)


def curve_values(curve: pd.DataFrame, candidate: str, budget: Sequence[int]) -> dict[str, float]:
    """The candidate's score at the budget used and at the largest budget tried, with their intervals."""
    mine = curve[curve["candidate"] == candidate]
    used = mine[(mine["steps"] == budget[0]) & (mine["batch"] == budget[1])].iloc[0]
    largest = mine.loc[(mine["steps"] * mine["batch"]).idxmax()]
    return {"used": float(used["score"]), "used_low": float(used["score low"]), "used_high": float(used["score high"]),
            "largest": float(largest["score"]), "largest_low": float(largest["score low"]),
            "largest_high": float(largest["score high"]),
            "largest_budget": f"{int(largest['steps'])} x {int(largest['batch'])}"}


def null_row(name: str, finding: Finding, key: str | None = None) -> dict[str, Any]:
    """A null as one row: a finding's candidate `key` (default its first) at its chosen site, on the test pairs."""
    key = key or finding.first
    t = finding.table.loc[key]
    return {"null": name, "hypothesis": key, "site": t["site"], "score": float(t["score"]), "low": float(t["score low"]),
            "high": float(t["score high"]), "none": float(t["none"]), "majority": float(t["majority"])}


def outcome_row(name: str, key: str, site: str, outcome: Outcome) -> dict[str, Any]:
    """A null that is one evaluation (an `Outcome` on the test pairs, e.g. the whole-state swap) as one row, its
    interval over the pairs."""
    runs = pd.DataFrame([{"candidate": key, "layer": 0, "position": "x", "seed": 0, "data_seed": 0, "test": outcome, "majority": 0.0}])
    t = protocol.report(runs, {key: Site(0, "x")}, [key]).loc[key]
    return {"null": name, "hypothesis": key, "site": site, "score": float(t["score"]), "low": float(t["score low"]),
            "high": float(t["score high"]), "none": float(t["none"]), "majority": float("nan")}


def subspaces_row(name: str, finding: Finding, subspaces: pd.DataFrame) -> dict[str, Any]:
    """The random subspaces as one row: their 95th percentile (the interval: their range)."""
    p95 = float(np.percentile(subspaces["score"], 95))
    return {"null": name, "hypothesis": finding.first, "site": finding.table.loc[finding.first, "site"], "score": p95,
            "low": float(subspaces["score"].min()), "high": float(subspaces["score"].max()), "none": float("nan"),
            "majority": float("nan")}


def null_table(finding: Finding, rows: Sequence[Mapping[str, Any]], titles: Mapping[str, str]) -> pd.DataFrame:
    """The finding's first hypothesis beside each null (`null_row`, `outcome_row`, `subspaces_row`): site, test
    score with its interval, the IIA of doing nothing and the majority rate."""
    mine = null_row("finding", finding)
    out = pd.DataFrame([mine, *rows])
    return pd.DataFrame({"null": out["null"], "hypothesis": [titles.get(h, h) for h in out["hypothesis"]], "site": out["site"],
                         "score [95%]": [with_interval(v, lo, hi) for v, lo, hi in zip(out["score"], out["low"], out["high"])],
                         "no intervention": out["none"], "majority label": out["majority"]}).set_index("null")


def null_values(rows: Sequence[Mapping[str, Any]], null_grid: Grid, subspaces: pd.DataFrame) -> dict[str, Any]:
    """The numbers the nulls' prose states: per null row i, `score_i` with `_low`, `_high` (rows by their order:
    keys `random_weights`, `control`, ... given as `name` slugs), the random network's task accuracy and majority."""
    out: dict[str, Any] = {"task_acc": null_grid.task_accuracy(), "task_majority": null_grid.task_record()["majority"],
                           "draws": len(subspaces), "subspace_max": float(subspaces["score"].max()),
                           "subspace_p95": float(np.percentile(subspaces["score"], 95)),
                           "subspace_learned": float(subspaces["learned"].iloc[0])}
    for row in rows:
        slug = "".join(ch if ch.isalnum() else "_" for ch in row["null"].lower()).strip("_")
        out |= {f"{slug}": row["score"], f"{slug}_low": row["low"], f"{slug}_high": row["high"], f"{slug}_none": row["none"]}
    return out


def verification(read: Sequence[tuple[Grid, Finding]], store_name: str, scratch: str,
                 study: RobustnessResult | None = None) -> pd.DataFrame:
    """Retrain from scratch the chosen cell (first seed, first pool) of every candidate of each (grid, finding) in
    `read` (the model's hypotheses, its control task, the positive control's) and check each against the committed
    one (`committed.verify`, one fresh scratch store per grid); without a committed store, say that every cell was
    trained by this build. A robustness `study` of the first grid read back from its store is checked too
    (`committed.verify_study`)."""
    tables = [] if study is None or not store_name else [committed.verify_study(read[0][0], study).round(3)]
    by_grid: dict[int, tuple[Grid, list[Cell]]] = {}  # the findings of one grid are retrained together (shared caches)
    for grid, finding in read:
        kept = by_grid.setdefault(id(grid), (grid, []))[1]
        kept += [c for c in (Cell(c, s.layer, s.position, grid.spec.seeds[0], grid.spec.data_seed)
                             for c, s in finding.sites.items()) if c not in kept]
    for i, (grid, cells) in enumerate(by_grid.values()):
        if not store_name:
            tables.append(pd.DataFrame({"cell": [f"{grid.spec.model}: {c.candidate} L{c.layer} {c.position}" for c in cells],
                                        "verified": "trained by this build: nothing committed to check"}).set_index("cell"))
            continue
        table = committed.verify(grid, cells, f"{scratch}/{i}").round(3)
        tables.append(table.rename(index=lambda cell: f"{grid.spec.model}: {cell}"))
    return pd.concat(tables)


def committed_note(name: str, seeded: int, read: Mapping[str, bool] | None = None) -> str:
    """Where the committed cells came from (its manifest), or that this run used none; and which studies of `read`
    (name -> read back from the store) this run did not evaluate itself."""
    about = committed.manifest(name) if name else None
    stored = [study for study, back in (read or {}).items() if back]
    read_back = f"; {' and '.join(stored)} read back from the store, not evaluated by this run" if stored else ""
    if not name or about is None:
        return "this run used no committed store" + read_back
    return (f"{seeded} records copied into this run's store; made on {about['date']} on {about['machine']} in "
            f"{about['hours']:.1f} hours by `{about['command']}`" + read_back)


def finding_rows(finding: Finding, titles: Mapping[str, str], nulls: Sequence[Mapping[str, Any]], control: Finding,
                 control_titles: Mapping[str, str]) -> pd.DataFrame:
    """The rows of the finding figure: each variable's normalised gain at its hypothesis's site, each null (rows of
    `null_row` and its kin), and the positive control's planted variables, with their intervals."""
    rows = []
    for (c, v), r in finding.variables.iterrows():
        label = titles.get(c, c) if len(finding.variables.loc[c]) == 1 else f"{titles.get(c, c)}: {v}"
        rows.append({"label": label, "value": r["normalised"], "low": r["normalised low"], "high": r["normalised high"],
                     "group": "hypotheses (model)"})
    for n in nulls:
        rows.append({"label": n["null"], "value": n["score"], "low": n["low"], "high": n["high"], "group": "nulls"})
    for (c, v), r in control.variables.loc[[control.first]].iterrows():
        rows.append({"label": f"planted stand-in: {control_titles.get(c, c)}: {v}", "value": r["normalised"],
                     "low": r["normalised low"], "high": r["normalised high"], "group": "positive control"})
    return pd.DataFrame(rows).set_index("label")


def planted_values(model: str, finding: Finding, titles: Mapping[str, str]) -> dict[str, str]:
    """What the prose says of a planted model's search: the planted program and site, the site chosen for it on
    validation, and whether each of its variables is realised there ("none (not planted)" for other models)."""
    truth = controls.planted(model)
    if truth is None or truth["candidate"] not in finding.sites:
        none = "none (nothing planted, or not searched)"
        return {"planted": none, "planted_site": none, "planted_found": none, "planted_realised": none}
    key, site = truth["candidate"], finding.sites[truth["candidate"]]
    realised = finding.realised(key)
    return {"planted": titles.get(key, key), "planted_site": f"L{truth['layer']} {truth['position']}",
            "planted_found": f"L{site.layer} {site.position}",
            "planted_realised": ", ".join(f"{v} {'yes' if ok else 'no'}" for v, ok in realised.items())}


def summary_table(finding: Finding, titles: Mapping[str, str], nulls: Sequence[Mapping[str, Any]], control: Finding,
                  control_titles: Mapping[str, str]) -> pd.DataFrame:
    """The landing page's small table: each hypothesis at its chosen site and which of its variables are realised,
    each null's score, and the positive control's planted program, with test scores and intervals."""
    def row(name: str, f: Finding, key: str) -> dict[str, str]:
        t, realised = f.table.loc[key], f.realised(key)
        held = [v for v, ok in realised.items() if ok]
        return {"": name, "site": t["site"], "score [95%]": with_interval(t["score"], t["score low"], t["score high"]),
                "variables realised": f"{len(held)} of {len(realised)}" + (f" ({', '.join(held)})" if held else "")}

    rows = [row(titles.get(c, c), finding, c) for c in finding.order]
    rows += [{"": f"null: {n['null']}", "site": n["site"], "score [95%]": with_interval(n["score"], n["low"], n["high"]),
              "variables realised": ""} for n in nulls]
    rows.append(row(f"positive control: {control_titles.get(control.first, control.first)}", control, control.first))
    return pd.DataFrame(rows).set_index("")


NULL_NAMES = {"random weights": "random weights", "control task": "control task", "left_shifted": "left shifted",
              "right_shifted": "right shifted", "amount_copy": "input copy", "matched": "matched control",
              "whole": "whole-state swap", "subspaces": "random subspaces"}


def nulls_of(finding: Finding, random_weights: Finding, control_task: Finding, artefact: Finding, whole: Outcome,
             subspaces: pd.DataFrame) -> list[dict[str, Any]]:
    """Every null of chapter 8 as rows (`null_row`, `outcome_row`, `subspaces_row`), in a fixed order and naming."""
    rows = [null_row(NULL_NAMES["random weights"], random_weights), null_row(NULL_NAMES["control task"], control_task)]
    for key in artefact.sites:
        name = NULL_NAMES["matched"] if key.startswith("control_") else NULL_NAMES.get(key, key)
        rows.append(null_row(name, artefact, key))
    site = finding.table.loc[finding.first, "site"]
    rows.append(outcome_row(NULL_NAMES["whole"], finding.first, site, whole))
    rows.append(subspaces_row(NULL_NAMES["subspaces"], finding, subspaces))
    return rows


def illusion_table(illusions: pd.DataFrame, planted: pd.DataFrame, titles: Mapping[str, str]) -> pd.DataFrame:
    """`illusion_check.check`'s rows as a page shows them: per variable, U's size and gain, the gains of its read and
    active part and of its disconnected part, with intervals, and the verdict; the planted control's rows after."""
    rows = []
    for frame, owner in ((illusions, "model"), (planted, "planted stand-in")):
        for (c, v), r in frame.iterrows():
            rows.append({"model": owner, "hypothesis": titles.get(c, c), "variable": v, "site": r["site"],
                         "U dims": int(r["U dims"]),
                         "U gain [95%]": with_interval(r["whole gain"], r["whole gain low"], r["whole gain high"]),
                         "read and active": f"{int(r['read_and_active dims'])} dims, " + with_interval(
                             r["read_and_active gain"], r["read_and_active gain low"], r["read_and_active gain high"]),
                         "disconnected": f"{int(r['disconnected dims'])} dims, " + with_interval(
                             r["disconnected gain"], r["disconnected gain low"], r["disconnected gain high"]),
                         "verdict": r["verdict"]})
    return pd.DataFrame(rows).set_index(["model", "hypothesis", "variable"])


def illusion_values(illusions: pd.DataFrame, planted: pd.DataFrame, first: str) -> dict[str, str]:
    """The verdicts the prose states: the first hypothesis's (per variable) and the planted control's."""
    def words(frame: pd.DataFrame) -> str:
        return "; ".join(f"{v}: {r['verdict']}" for (_, v), r in frame.iterrows())
    return {"verdict": words(illusions.loc[[first]]), "planted_verdict": words(planted),
            "all_pass": "yes" if (illusions["verdict"] == "passes").all() else "no"}
