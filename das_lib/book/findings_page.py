"""A finding (das_lib.runs.findings) as a page shows it: its tables, the values its prose glues, and the words of
its verdict. The library computes the finding; only this module words it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from das_lib import paper
from das_lib.book.report import MISSING
from das_lib.method.outcome import MIN_CHANGEABLE
from das_lib.runs.findings import Finding


def interval(low: float, high: float, signed: bool = False) -> str:
    """A 95% interval as a page shows it: "[0.812, 0.903]" (signed: "[+0.02, +0.11]")."""
    spec = "+.3f" if signed else ".3f"
    return f"[{low:{spec}}, {high:{spec}}]"


def with_interval(value: float, low: float, high: float, signed: bool = True) -> str:
    """"+0.412 [+0.361, +0.460]"; MISSING where there is no value (too few pairs could change)."""
    if not np.isfinite(value):
        return MISSING
    return f"{value:{'+.3f' if signed else '.3f'}} {interval(low, high, signed)}"


def candidate_table(finding: Finding, titles: Mapping[str, str], paper_iia: bool = False) -> pd.DataFrame:
    """One row per candidate in the finding's order (chosen on validation): its site, its score and raw score on
    the test pairs with their 95% intervals, its IIA beside doing nothing and the majority rate, its runs and their
    range, and (with `paper_iia`) the paper's max IIA for Alpaca 7B."""
    t = finding.table
    out = pd.DataFrame({
        "rank": range(1, len(t) + 1), "site (validation)": t["site"],
        "score [95%]": [with_interval(*r) for r in t[["score", "score low", "score high"]].itertuples(index=False)],
        "summed gain [95%]": [with_interval(*r) for r in t[["raw", "raw low", "raw high"]].itertuples(index=False)],
        "IIA": t["iia"].map("{:.3f}".format), "no intervention": t["none"].map("{:.3f}".format),
        "majority label": t["majority"].map("{:.3f}".format),
        "runs (seeds x pools)": [f"{int(r)} ({int(d)} pools)" for r, d in zip(t["runs"], t["data seeds"])],
        "runs: min-max": [f"{lo:+.3f} to {hi:+.3f}" for lo, hi in zip(t["runs min"], t["runs max"])]})
    if paper_iia:
        out["paper (Alpaca 7B) max IIA"] = [paper.MAX_IIA.get(c, float("nan")) for c in t.index]
    out.index = [titles.get(c, c) for c in t.index]
    return out


def variable_table(finding: Finding, titles: Mapping[str, str]) -> pd.DataFrame:
    """One row per variable of each candidate at its chosen site, on the test pairs: IIA, doing nothing, the gain and
    its ceiling, the normalised gain, the recall of predicted changes, the false-change rate, and whether the
    variable is realised (its gain's 95% interval lies above 0)."""
    v = finding.variables
    rows = []
    for (candidate, variable), r in v.iterrows():
        rows.append({"candidate": titles.get(candidate, candidate), "variable": variable, "site": r["site"],
                     "IIA [95%]": with_interval(r["iia"], r["iia low"], r["iia high"], signed=False),
                     "no intervention": f"{r['none']:.3f}", "gain [95%]": with_interval(r["gain"], r["gain low"], r["gain high"]),
                     "ceiling": f"{r['ceiling']:.3f}",
                     "normalised [95%]": with_interval(r["normalised"], r["normalised low"], r["normalised high"]),
                     "recall of changes [95%]": with_interval(r["recall"], r["recall low"], r["recall high"], signed=False),
                     "false changes": f"{r['false_change']:.3f}", "realised": "yes" if r["gain low"] > 0 else "no"})
    return pd.DataFrame(rows).set_index(["candidate", "variable"])


def _names(keys: Sequence[str], titles: Mapping[str, str]) -> str:
    names = [titles.get(k, k) for k in keys]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def verdict(finding: Finding, titles: Mapping[str, str]) -> str:
    """What the finding says, in words a page can print in bold: the named candidate with what it subsumes, or the
    set the test pairs do not separate."""
    first = finding.first
    where = str(finding.sites[first]).replace("@", " ")
    realised = finding.realised(first)
    held = [v for v, ok in realised.items() if ok]
    if finding.named is None:
        return f"cannot tell apart: {_names(finding.top, titles)} (at their own sites)"
    text = f"{titles.get(first, first)} at {where}"
    if len(realised) > 1:
        text += (": all its variables realised" if len(held) == len(realised) else
                 f": only {_names(held, {})} realised" if held else ": none of its variables realised")
    if finding.subsumes[first]:
        text += f", containing {_names(finding.subsumes[first], titles)}"
    return text


def values(finding: Finding, titles: Mapping[str, str]) -> dict[str, Any]:
    """The numbers and words a chapter's prose glues: `first`, `first_key`, `first_site`, `first_score` (+ `_low`,
    `_high`), `second`, `margin` (+ interval), `verdict`, `named`, `top`, `n_top`, `n_candidates`; per candidate
    key c: `score_c`, `score_low_c`, `score_high_c`, `site_c`, `iia_c`, `none_c`; per variable v of c: `gain_c_v`
    and its interval, `realised_c_v` ("yes"/"no")."""
    t, first = finding.table, finding.first
    out: dict[str, Any] = {
        "first": titles.get(first, first), "first_key": first, "first_site": t.loc[first, "site"],
        "first_score": float(t.loc[first, "score"]), "first_score_low": float(t.loc[first, "score low"]),
        "first_score_high": float(t.loc[first, "score high"]), "verdict": verdict(finding, titles),
        "named": titles.get(finding.named, finding.named) if finding.named else "none (the data do not separate them)",
        "top": _names(finding.top, titles), "n_top": len(finding.top), "n_candidates": len(t)}
    if finding.second is not None and finding.margin is not None:
        m, low, high = finding.margin
        out |= {"second": titles.get(finding.second, finding.second), "margin": m, "margin_low": low, "margin_high": high,
                "margin_verdict": "separates them" if low > 0 else "does not separate them"}
    for c, row in t.iterrows():
        out |= {f"score_{c}": float(row["score"]), f"score_low_{c}": float(row["score low"]),
                f"score_high_{c}": float(row["score high"]), f"site_{c}": row["site"], f"iia_{c}": float(row["iia"]),
                f"none_{c}": float(row["none"]), f"raw_{c}": float(row["raw"]), f"rank_{c}": finding.order.index(c) + 1}
    for (c, v), row in finding.variables.iterrows():
        out |= {f"gain_{c}_{v}": float(row["gain"]), f"gain_low_{c}_{v}": float(row["gain low"]),
                f"gain_high_{c}_{v}": float(row["gain high"]), f"realised_{c}_{v}": "yes" if row["gain low"] > 0 else "no",
                f"recall_{c}_{v}": float(row["recall"])}
    return out


def ranking_table(finding: Finding, titles: Mapping[str, str], papers: Mapping[str, str], keep: Sequence[str] = (),
                  top: int = 10) -> pd.DataFrame:
    """The first `top` candidates of the finding's order and those in `keep` (e.g. the task's hypotheses, an inert
    control): rank (chosen on validation), name, the task's hypothesis in it (`papers`), site, validation and test
    score with its interval, the summed gain with its interval, and the plain and raw ranks beside."""
    order = finding.order
    rows = order[:top] + sorted((k for k in set(keep) & set(order[top:])), key=order.index)
    t = finding.table.loc[rows]
    val = finding.validation.groupby(level=0)["normalised"].mean()  # the validation score: mean normalised gain
    return pd.DataFrame({
        "rank": [order.index(k) + 1 for k in rows], "candidate": [titles.get(k, k) for k in rows],
        "paper": [papers.get(k, "") for k in rows], "site": t["site"].tolist(),
        "validation score": [f"{val[k]:+.3f}" if np.isfinite(val.get(k, np.nan)) else MISSING for k in rows],
        "test score [95%]": [with_interval(*r) for r in t[["score", "score low", "score high"]].itertuples(index=False)],
        "summed gain [95%]": [with_interval(*r) for r in t[["raw", "raw low", "raw high"]].itertuples(index=False)],
        "own-score rank": [finding.plain_order.index(k) + 1 for k in rows],
        "summed-gain rank": [finding.raw_order.index(k) + 1 for k in rows],
        "majority label": t["majority"].map("{:.3f}".format).tolist()}).set_index("rank")


def search_values(finding: Finding, titles: Mapping[str, str], papers: Mapping[str, str], planted: str | None,
                  inert: Sequence[str]) -> dict[str, Any]:
    """What a chapter states of one search over programs: the first (chosen on validation) and its test score, the
    runner-up and the margin, the set the test pairs do not separate from the first, the planted program's rank
    (if any), the inert group's rank and score, and the best program the task's hypotheses do not hold against the
    best of them (each chosen on validation, among how many), with the paired difference of their test scores."""
    t, first, order = finding.table, finding.first, finding.order
    out: dict[str, Any] = {"groups": len(order), "first": titles[first], "first_site": t.loc[first, "site"],
                           "first_score": float(t.loc[first, "score"]), "first_score_low": float(t.loc[first, "score low"]),
                           "first_score_high": float(t.loc[first, "score high"]), "verdict": verdict(finding, titles),
                           "top": _names(finding.top, titles), "n_top": len(finding.top),
                           "first_kind": f"the paper's {papers[first]}" if first in papers else "a program the paper did not consider"}
    if finding.second is not None and finding.margin is not None:
        m, low, high = finding.margin
        out |= {"second": titles[finding.second], "margin": m, "margin_low": low, "margin_high": high,
                "margin_verdict": "separates them" if low > 0 else "does not separate them"}
    if planted is not None and planted in order:
        out |= {"planted": titles[planted], "planted_rank": order.index(planted) + 1, "planted_site": t.loc[planted, "site"]}
    for key in [k for k in inert if k in order][:1]:
        below = order[order.index(key) + 1:]
        score, low, high = (float(t.loc[key, k]) for k in ("score", "score low", "score high"))
        out |= {"inert": titles[key], "inert_rank": order.index(key) + 1,
                "inert_score_text": f"a score of {score:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite(score) else
                                    f"no score (fewer than {MIN_CHANGEABLE} of its test pairs can change their answer)",
                "below_inert": len(below), "below_inert_aligned": int((t.loc[below, "score low"] > 0).sum()) if below else 0}
    paper_keys = [k for k in order if k in papers]
    # a new program that is a part of the best paper program it is listed with is no rival to it (findings.py)
    new_keys = [k for k in order if k not in papers and (not paper_keys or k not in finding.subsumes[paper_keys[0]])]
    if paper_keys and new_keys:
        best_paper, best_new = paper_keys[0], new_keys[0]
        m, low, high = finding.compare(best_new, best_paper)
        out |= {"best_paper": papers[best_paper], "best_paper_rank": order.index(best_paper) + 1, "n_paper": len(paper_keys),
                "best_new": titles[best_new], "best_new_rank": order.index(best_new) + 1, "n_new": len(new_keys),
                "new_vs_paper": m, "new_vs_paper_low": low, "new_vs_paper_high": high,
                "new_verdict": "a program the paper did not consider fits better" if low > 0 else
                               "no program the paper did not consider fits better than its best hypothesis"}
    return {k: v.item() if hasattr(v, "item") else v for k, v in out.items()}


def baselines(frame: pd.DataFrame, titles: Mapping[str, str]) -> pd.DataFrame:
    """Per hypothesis of a sweep's frame (`sweep.frame`), on its test pairs: the IIA of always giving the majority
    label, and the IIA of leaving the model alone (the same at every site)."""
    first = frame.groupby("candidate", sort=False)[["majority", "unintervened"]].first()
    first.index = [titles.get(c, c) for c in first.index]
    return first.rename(columns={"majority": "dummy (majority label)", "unintervened": "IIA with no intervention"})


def misspecified_values(full: Finding, missing: Finding, planted: str, titles: Mapping[str, str]) -> dict[str, Any]:
    """What the prose says when the planted program is taken out of the space: what the search then crowns, its score
    beside the planted program's in the full search, the set the test pairs do not separate from it, and whether
    the crowned program shares a variable with the planted one (contains it, is contained in it, or neither)."""
    crowned, t = missing.first, missing.table
    relation = ("holds every variable of the planted program" if planted in full.contains.get(crowned, []) else
                "is a part of the planted program" if crowned in full.contains.get(planted, []) else
                "shares no variable with the planted program")
    return {"crowned": titles.get(crowned, crowned), "crowned_site": t.loc[crowned, "site"],
            "crowned_score": float(t.loc[crowned, "score"]), "crowned_score_low": float(t.loc[crowned, "score low"]),
            "crowned_score_high": float(t.loc[crowned, "score high"]), "relation": relation,
            "planted_score": float(full.table.loc[planted, "score"]), "top": _names(missing.top, titles),
            "n_top": len(missing.top), "verdict": verdict(missing, titles)}
