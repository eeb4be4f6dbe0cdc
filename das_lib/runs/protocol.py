"""Choosing on validation pairs, reporting on test pairs: the one protocol every grid is read with.

From a grid's runs (`Grid.runs()`: one row per cell with its validation and test `Outcome`):

- `choose_sites`: each candidate's site is the one of highest mean *validation* score over its grid runs;
- `order`: candidates ranked by their validation score at their chosen site (the winner, the runner-up, a
  whole ranking: all chosen on validation);
- `report`: at the chosen site, every run (training seeds x data seeds) scored on its *test* pairs, which
  played no part in any choice, with a 95% interval from a bootstrap over pairs (within each data seed's
  pool) and training seeds, and the range of the runs beside it;
- `variables`: the same per variable of each candidate: IIA, gain over doing nothing, its ceiling, the
  normalised gain, recall of predicted changes and the false-change rate (das_lib.method.outcome);
- `margin`: the test difference of two candidates' scores on the same pairs, with its paired interval;
- `top_set`: the candidates the test pairs do not separate from the first, by a max-statistic bootstrap
  (simultaneous over the candidates compared): a set, not a name, when the data do not separate them.

A candidate's score is the mean over its variables of the gain divided by its ceiling (1 - the IIA of doing
nothing), so that predicting many changes earns nothing by itself; the raw score (the sum of the gains) is
reported beside it (`kind="raw"`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from das_lib.method.outcome import SCORES, candidate_score, variable_scores
from das_lib.method.sites import Site

LEVEL = 0.95  # every interval the book reports
N_BOOT = 2000
BOOT_SEED = 0
# (S, V, P) correct, (1, V, P) none and changed, (B, P) pair weights or None -> ([B,] S[, ...])
Stat = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


def _site(row: pd.Series) -> Site:
    return Site(int(row["layer"]), str(row["position"]))


def _score_of(kind: str) -> Stat:
    return lambda c, n, ch, w: candidate_score(c, n, ch, kind, w)


def choose_sites(runs: pd.DataFrame, kind: str = "score") -> dict[str, Site]:
    """Per candidate, the site of highest mean validation score over its runs in `runs` (the grid: its seeds on
    the grid's data seed); the first in the grid's order on a tie."""
    out = {}
    for candidate, rows in runs.groupby("candidate", sort=False):
        scores = rows.assign(value=[float(candidate_score(o.correct, o.none, o.changed, kind)) for o in rows["val"]])
        by_site = scores.groupby(["layer", "position"], sort=False)["value"].mean()
        best = by_site.fillna(-np.inf).idxmax()  # first of equals in grid order (groupby keeps it)
        out[candidate] = Site(int(best[0]), str(best[1]))
    return out


def at_sites(runs: pd.DataFrame, sites: Mapping[str, Site]) -> pd.DataFrame:
    """The runs of each candidate at its site in `sites` (all seeds and data seeds there)."""
    wanted = {(c, s.layer, s.position) for c, s in sites.items()}
    keep = [key in wanted for key in zip(runs["candidate"], runs["layer"].astype(int), runs["position"].astype(str))]
    return runs[keep]


@dataclass
class Evidence:
    """One candidate's runs at one site on one split, per data seed: correct (S, V, P), none and changed (V, P)."""

    candidate: str
    by_data: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, rows: pd.DataFrame, split: str) -> "Evidence":
        """The evidence of `rows` (one candidate at one site) on `split`."""
        by_data = {}
        for data_seed, group in rows.groupby("data_seed"):
            outcomes = list(group[split])
            by_data[int(data_seed)] = (np.stack([o.correct for o in outcomes]), outcomes[0].none, outcomes[0].changed)
        return cls(str(rows["candidate"].iloc[0]), by_data)

    def runs(self) -> int:
        return sum(c.shape[0] for c, _, _ in self.by_data.values())


def bootstrap(evidences: Sequence[Evidence], stat: Stat, n_boot: int = N_BOOT, seed: int = BOOT_SEED
              ) -> tuple[np.ndarray, np.ndarray]:
    """`stat` of each evidence, averaged over its runs and data seeds: the point (K, ...) and `n_boot` replicates
    (n_boot, K, ...), resampling pairs within each data seed (the same pairs for every evidence: comparisons are
    paired) and each evidence's training seeds. Only the data seeds all evidences share are used."""
    common = sorted(set.intersection(*(set(e.by_data) for e in evidences)))
    if not common:
        raise ValueError(f"the candidates {[e.candidate for e in evidences]} share no data seed: nothing to compare on")
    rng = np.random.default_rng(seed)
    points, replicates = [], []
    for g in common:
        n_pairs = {e.by_data[g][0].shape[-1] for e in evidences}
        if len(n_pairs) != 1:
            raise ValueError(f"the candidates were scored on different pairs of data seed {g} ({sorted(n_pairs)} pairs)")
        n = n_pairs.pop()
        draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
        weights = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)  # the same for all
        point_g, boot_g = [], []
        for e in evidences:
            correct, none, changed = e.by_data[g]
            point_g.append(stat(correct, none[None], changed[None], None).mean(0))  # (S, ...) -> mean over runs
            values = stat(correct, none[None], changed[None], weights)  # (B, S, ...)
            values = np.broadcast_to(values, (n_boot, correct.shape[0]) + values.shape[2:])
            seeds = rng.integers(0, correct.shape[0], size=(n_boot, correct.shape[0]))
            picked = np.take_along_axis(values, seeds.reshape(seeds.shape + (1,) * (values.ndim - 2)), axis=1)
            boot_g.append(picked.mean(1))
        points.append(np.stack(point_g))
        replicates.append(np.stack(boot_g, axis=1))
    return np.mean(points, axis=0), np.mean(replicates, axis=0)


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis (NaN replicates ignored; NaN where all are: a score with no room
    to gain on these pairs)."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(replicates, tail, axis=0), np.nanpercentile(replicates, 100 - tail, axis=0)


def _evidences(runs: pd.DataFrame, sites: Mapping[str, Site], candidates: Sequence[str], split: str) -> list[Evidence]:
    chosen = at_sites(runs, sites)
    missing = [c for c in candidates if not (chosen["candidate"] == c).any()]
    if missing:
        raise KeyError(f"no runs of {missing} at their chosen sites")
    return [Evidence.of(chosen[chosen["candidate"] == c], split) for c in candidates]


def order(runs: pd.DataFrame, sites: Mapping[str, Site], kind: str = "score") -> list[str]:
    """The candidates by their validation score at their chosen site, best first (ties: the given order)."""
    candidates = list(sites)
    points, _ = bootstrap(_evidences(runs, sites, candidates, "val"), _score_of(kind), n_boot=1)
    keyed = sorted(range(len(candidates)), key=lambda i: (-np.nan_to_num(points[i], nan=-np.inf), i))
    return [candidates[i] for i in keyed]


def report(runs: pd.DataFrame, sites: Mapping[str, Site], candidates: Sequence[str] | None = None,
           split: str = "test") -> pd.DataFrame:
    """Per candidate (index) at its chosen site, on `split`: the score and the raw score with their intervals, the
    range of the runs' scores, how many runs (seeds x data seeds) and pairs, and the majority-label rate."""
    candidates = list(candidates or sites)
    evidences = _evidences(runs, sites, candidates, split)
    rows: dict[str, dict] = {c: {} for c in candidates}
    point, reps = bootstrap(evidences, lambda c, n, ch, w: np.stack([candidate_score(c, n, ch, k, w) for k in ("score", "raw")], -1))
    low, high = interval(reps)
    for i, c in enumerate(candidates):
        for k, kind in enumerate(("score", "raw")):
            rows[c] |= {kind: point[i][k], f"{kind} low": low[i][k], f"{kind} high": high[i][k]}
    chosen = at_sites(runs, sites)
    for e in evidences:
        here = chosen[chosen["candidate"] == e.candidate]
        per_run = [float(candidate_score(o.correct, o.none, o.changed)) for o in here[split]]
        rows[e.candidate] |= {"iia": float(np.mean([o.correct.mean() for o in here[split]])),
                              "none": float(np.mean([o.none.mean() for o in here[split]])),
                              "site": str(sites[e.candidate]).replace("@", " "), "layer": sites[e.candidate].layer,
                              "position": sites[e.candidate].position, "variables": here[split].iloc[0].variables,
                              "runs": e.runs(), "data seeds": len(e.by_data), "pairs": here[split].iloc[0].pairs,
                              "runs min": min(per_run), "runs max": max(per_run), "majority": here["majority"].mean()}
    return pd.DataFrame(rows).T.infer_objects()


def _all_scores(c: np.ndarray, n: np.ndarray, ch: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    per = variable_scores(c, n, ch, w)
    shape = np.broadcast_shapes(*(v.shape for v in per.values()))
    return np.stack([np.broadcast_to(per[name], shape) for name in SCORES], axis=-1)  # (..., V, len(SCORES))


def variables(runs: pd.DataFrame, sites: Mapping[str, Site], names: Mapping[str, Sequence[str]],
              split: str = "test") -> pd.DataFrame:
    """One row per (candidate, variable) at the chosen site, on `split`: every score of `SCORES` (outcome.py) with
    the 95% interval of the IIA, the gain, the normalised gain and the recall (`names`: each candidate's variables)."""
    rows = []
    for c in sites:  # one candidate at a time: candidates have different numbers of variables
        point, reps = bootstrap(_evidences(runs, sites, [c], split), _all_scores)
        low, high = interval(reps)
        for v, variable in enumerate(names[c]):
            row = {"candidate": c, "variable": variable, "site": str(sites[c]).replace("@", " ")}
            for k, name in enumerate(SCORES):
                row[name] = point[0][v][k]
                if name in ("iia", "gain", "normalised", "recall"):
                    row[f"{name} low"], row[f"{name} high"] = low[0][v][k], high[0][v][k]
            rows.append(row)
    return pd.DataFrame(rows).set_index(["candidate", "variable"])


def margin(runs: pd.DataFrame, sites: Mapping[str, Site], first: str, second: str, kind: str = "score",
           split: str = "test") -> tuple[float, float, float]:
    """`first`'s score minus `second`'s on the same `split` pairs: (mean, low, high), a paired bootstrap."""
    point, reps = bootstrap(_evidences(runs, sites, [first, second], split), _score_of(kind))
    low, high = interval(reps[:, 0] - reps[:, 1])
    return float(point[0] - point[1]), float(low), float(high)


def top_set(runs: pd.DataFrame, sites: Mapping[str, Site], first: str, others: Sequence[str], kind: str = "score",
            split: str = "test", level: float = LEVEL) -> list[str]:
    """`first` and those of `others` the `split` pairs do not separate from it: k stays unless its difference from
    `first` lies above 0 with simultaneous `level` lower bounds over all k (a studentised max-statistic bootstrap,
    so that the noisiest candidates do not set the bound for all)."""
    others = [k for k in others if k != first]
    if not others:
        return [first]
    point, reps = bootstrap(_evidences(runs, sites, [first, *others], split), _score_of(kind))
    gaps, gaps_boot = point[0] - point[1:], reps[:, :1] - reps[:, 1:]  # (K,), (B, K)
    with warnings.catch_warnings():  # a candidate whose score is undefined on every replicate adds nothing
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanstd(gaps_boot, axis=0)
    spread = np.where(spread > 0, spread, np.inf)  # a gap that never varies is exactly known
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        worst = np.nanmax((gaps_boot - gaps[None, :]) / spread[None, :], axis=1)  # the worst standardised overshoot
        critical = float(np.nanpercentile(worst, 100 * level))
    # a candidate with no score (no pair it could gain on) is not among those the data fail to separate from the first
    return [first] + [k for k, gap, sd in zip(others, gaps, spread)
                      if np.isfinite(gap) and not gap - critical * np.nan_to_num(sd, posinf=0.0) > 0]
