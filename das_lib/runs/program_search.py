"""The search over programs: the grid engine (das_lib.runs.grid) over a task's generated family of causal models.

The data. Pairs chosen to separate the family's label functions (das_lib.runs.pools, `separate`): train,
validation and test pairs, no pair in two. Candidates with the same labels on all three splits form a group
(das_lib.method.separation), and only its first member is trained: its results are every member's. Groups
with a variable that carries the whole answer (its swap gives the source's own answer on every pair) are set
aside: every program computes the answer.

The search. A scan trains the groups of the task's hand-written hypotheses at the scanned sites; the `top`
sites where one of them scores best on validation are kept, and every group is trained there. Each group's
site is then chosen on validation, the groups are ranked by their *validation* score (the mean over a
program's variables of its gain divided by its ceiling: das_lib.method.outcome), and the leading groups are
trained again from more seeds at their sites. The test pairs report the ranking's numbers, with intervals,
and the set of groups they do not separate from the first (das_lib.runs.findings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from das_lib.method.outcome import candidate_score
from das_lib.method.separation import Separation, carries_output, group, label_functions
from das_lib.method.training import TrainConfig
from das_lib.models.load import load_config, load_tokenizer
from das_lib.models.standin import planted_for
from das_lib.runs import committed, findings, pools, protocol
from das_lib.runs.grid import Cell, Grid, GridSpec
from das_lib.runs.store import Store
from das_lib.runs.sweep import task_settings
from das_lib.tasks import DEFAULT_TASK, make_task


@dataclass(frozen=True)
class SearchSpec:
    """A search: the model, the training budget, the data design and the family's settings."""

    model: str = "standin"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150, batch_size=32))
    n_train: int = 512
    n_val: int = 256
    n_test: int = 512
    pool_factor: int = 4  # each split is chosen from a random pool this many times its size
    separating_share: float = 0.05  # each two label functions differ on at least this share of a split (if they can)
    seeds: tuple[int, ...] = (0,)  # every group at every searched site
    lead_seeds: tuple[int, ...] = (1,)  # the leading groups again, at their chosen sites
    leading: int = 4  # how many groups lead (by validation score)
    data_seed: int = 0
    family: dict[str, Any] = field(default_factory=lambda: {"n_brackets": 60, "thresholds": [500]})  # Task.family settings
    rank: int | None = None
    dtype: str = "float32"
    task: str = DEFAULT_TASK  # das_lib.tasks name: its `family` is searched

    def separate(self) -> dict[str, Any]:
        """The design's `separate`: the family (its verification games drawn from the data seed) and the selection."""
        return {"family": {**self.family, "seed": self.data_seed}, "pool_factor": self.pool_factor,
                "share": self.separating_share}


class ProgramSearch:
    """The groups of a task's family, searched on one model into a store (see the module docstring)."""

    def __init__(self, spec: SearchSpec, store: str | Path | Store, device: str = "cpu", progress: bool = True):
        self.spec, self.device, self.progress = spec, device, progress
        self.store = store if isinstance(store, Store) else Store(store)
        self.task = make_task(spec.task, load_tokenizer(spec.model), task_settings(spec.model, spec.task))
        self.design = spec.separate()
        self.family = self.task.family(self.design["family"])

    def _grid(self, candidates: Sequence[str], layers: Sequence[int], positions: Sequence[str],
              seeds: Sequence[int] | None = None, extra: Sequence[int] = ()) -> Grid:
        s = self.spec
        spec = GridSpec(model=s.model, task=s.task, task_settings=task_settings(s.model, s.task), candidates=tuple(candidates),
                        layers=tuple(layers), positions=tuple(positions), seeds=tuple(seeds or s.seeds),
                        extra_seeds=tuple(extra), train=s.train, rank=s.rank, n_train=s.n_train, n_val=s.n_val,
                        n_test=s.n_test, data_seed=s.data_seed, separate=s.separate(), n_task=0, dtype=s.dtype)
        return Grid(spec, self.store, self.device, progress=self.progress)

    # ---- the groups -----------------------------------------------------------------------------
    @cached_property
    def pairs(self) -> dict[str, list]:
        """The design's pairs per split."""
        return pools.pairs(self.task, pools.design(self.spec.n_train, self.spec.n_val, self.spec.n_test,
                                                    self.spec.data_seed, self.design))

    @cached_property
    def separation(self) -> Separation:
        """The family's groups on all three splits: candidates no pair of this search can tell apart."""
        joined = [p for s in pools.SPLITS for p in self.pairs[s]]
        return group({c.key: label_functions(c, joined) for c in self.family})

    @cached_property
    def answer_groups(self) -> list[str]:
        """Groups with a variable whose swap gives the source's own answer on every pair: not searched."""
        reference = self.family[0].model
        outputs = [reference.predict(source) for s in pools.SPLITS for _, source in self.pairs[s]]
        return [g.key for g in self.separation.groups if carries_output(g, self.separation, outputs)]

    def groups(self) -> list[str]:
        """The representative of every searched group."""
        return [g.key for g in self.separation.groups if g.key not in self.answer_groups]

    @cached_property
    def paper_groups(self) -> dict[str, str]:
        """Representative -> key of the task's hypothesis in its group (found by its labels on the test pairs)."""
        test = self.pairs["test"]
        by_labels = {tuple(sorted(label_functions(h, test))): key for key, h in self.task.hypotheses().items()}
        out = {}
        for c in self.family:
            key = by_labels.get(tuple(sorted(label_functions(c, test))))
            group_key = self.separation.group_of(c.key).key
            if key is not None and key not in out.values() and group_key in self.groups():
                out[group_key] = key
        return out

    def inert_groups(self) -> list[str]:
        """Groups whose every variable's swap never changes the causal model's output on these pairs (an unused
        variable): the control that can gain nothing."""
        joined = [p for s in pools.SPLITS for p in self.pairs[s]]
        factual = tuple(self.family[0].model.predict(b) for b, _ in joined)
        return [g.key for g in self.separation.groups if g.key in self.groups()
                and all(self.separation.functions[i] == factual for i in g.functions)]

    def planted_group(self) -> str | None:
        """The group of the program planted in the model (its record's meta), or None."""
        planted = planted_for(self.spec.model)
        if planted is None:
            return None
        key = planted[1]["hypothesis"]
        mine = {v: k for k, v in self.paper_groups.items()}
        return mine.get(key) or self.separation.group_of(key).key

    def title(self, key: str) -> str:
        """A group's name: its variables and, in brackets, its formula; the task's hypothesis in it, if any."""
        c = self.grid_candidate(key)
        hypothesis = self.paper_groups.get(key)
        return f"{c.title} [{key.split(' | ')[0]}]" + (f" ({self.task.hypotheses()[hypothesis].title})" if hypothesis else "")

    def grid_candidate(self, key: str) -> Any:
        return pools.candidate(self.task, key, self.design)

    def groups_frame(self) -> pd.DataFrame:
        """One row per group: its representative's variables and formula, how many candidates it holds, the task's
        hypothesis in it, whether it is searched, and how many test pairs tell it from the group closest to it."""
        test = self.pairs["test"]
        signature = {g.key: list(zip(*label_functions(self.grid_candidate(g.key), test))) for g in self.separation.groups}
        rows = []
        for g in self.separation.groups:
            apart = {h.key: sum(a != b for a, b in zip(signature[g.key], signature[h.key]))
                     for h in self.separation.groups if h.key != g.key and len(h.functions) == len(g.functions)}
            closest = min(apart, key=apart.get) if apart else None
            rows.append({"group": self.grid_candidate(g.key).title, "formula": g.key.split(" | ")[0],
                         "candidates": len(g.members), "paper": self.task.hypotheses()[self.paper_groups[g.key]].title
                         if g.key in self.paper_groups else "", "searched": g.key not in self.answer_groups,
                         "closest group": self.title(closest) if closest else "", "test pairs apart": apart.get(closest, 0)})
        return pd.DataFrame(rows)

    # ---- running --------------------------------------------------------------------------------
    def scan(self, layers: Sequence[int], positions: Sequence[str]) -> Grid:
        """The hand-written hypotheses' groups at every scanned site, run."""
        grid = self._grid(tuple(self.paper_groups), layers, positions)
        grid.run()
        return grid

    def top_sites(self, scan: Grid, k: int) -> list[tuple[int, str]]:
        """The `k` scanned sites where one of the hypotheses' groups scores best on validation."""
        frame = scan.runs()
        frame = frame.assign(score=[float(candidate_score(o.correct, o.none, o.changed)) for o in frame["val"]])
        best = frame.groupby(["layer", "position", "candidate"], sort=False)["score"].mean().groupby(level=[0, 1], sort=False).max()
        return [(int(l), str(p)) for l, p in best.sort_values(ascending=False, kind="stable").index[:k]]  # noqa: E741

    def search(self, sites: Sequence[tuple[int, str]]) -> Grid:
        """Every group at the layers x positions of `sites`, run; then the leading groups (by validation score)
        from `lead_seeds` at their chosen sites. Returns the grid of the leading groups' extra runs and all."""
        layers, positions = sorted({l for l, _ in sites}), list(dict.fromkeys(p for _, p in sites))  # noqa: E741
        every = self._grid(self.groups(), layers, positions)
        every.run()
        self.every = every
        runs = every.runs()
        chosen = protocol.choose_sites(runs)
        leading = protocol.order(runs, chosen)[: self.spec.leading]
        lead = self._grid(leading, layers, positions, extra=self.spec.lead_seeds)
        lead.run()
        return every

    def leading_grid(self, every: Grid) -> Grid:
        """The grid whose extra runs are the leading groups' (after `search`)."""
        runs = every.runs()
        leading = protocol.order(runs, protocol.choose_sites(runs))[: self.spec.leading]
        return self._grid(leading, every.spec.layers, every.spec.positions, extra=self.spec.lead_seeds)

    def finding(self, every: Grid, exclude: Sequence[str] = ()) -> findings.Finding:
        """The search's finding: every group's runs, the leading ones' extra seeds included; with `exclude`, over a
        space without those groups (e.g. the planted program's: what does the search crown when the truth is not
        among the candidates?)."""
        lead = self.leading_grid(every)
        runs = pd.concat([every.runs(), lead.runs(lead.extra_cells())], ignore_index=True)
        functions = {g.key: list(g.functions) for g in self.separation.groups}
        return findings.finding(every, [g for g in self.groups() if g not in exclude], runs, functions)


def spec_of(model: str, budget: Sequence[int], n_val: int, n_test: int, pool_factor: int, separating_share: float,
            seeds: tuple[int, ...], lead_seeds: tuple[int, ...], leading: int, data_seed: int, n_brackets: int,
            thresholds: Sequence[int], dtype: str) -> SearchSpec:
    """A chapter's search of `model` at `budget` (steps, batch size, training pairs)."""
    steps, batch, n_train = budget
    return SearchSpec(model, TrainConfig(steps=steps, batch_size=batch), n_train=n_train, n_val=n_val, n_test=n_test,
                      pool_factor=pool_factor, separating_share=separating_share, seeds=seeds, lead_seeds=lead_seeds,
                      leading=leading, data_seed=data_seed, family={"n_brackets": n_brackets, "thresholds": list(thresholds)},
                      dtype=dtype)


def scan_sites(model: str, layers: Sequence[int], positions: Sequence[str], task: str = DEFAULT_TASK
               ) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The layers ([]: every layer of `model`) and positions a scan covers, refusing what the model does not have."""
    n_layers = load_config(model).num_hidden_layers
    roles = make_task(task, load_tokenizer(model), task_settings(model, task)).searched_roles()
    bad_layers = [l for l in layers if not 0 <= l < n_layers]  # noqa: E741
    bad_positions = [p for p in positions if p not in roles]
    if bad_layers or bad_positions or not positions:
        raise ValueError(f"cannot scan {model!r} at layers {bad_layers or list(layers)} and positions "
                         f"{bad_positions or list(positions)}: it has layers 0..{n_layers - 1} and positions {roles}")
    return tuple(layers) or tuple(range(n_layers)), tuple(positions)


def run_search(search: ProgramSearch, sites: tuple[Sequence[int], Sequence[str]], top: int, fresh: bool = False
               ) -> tuple[Grid, findings.Finding]:
    """The scan of `sites` (layers, positions), every group at the `top` sites, and the finding (into the search's
    store, emptied first if `fresh`)."""
    if fresh:
        search.store.clear()
    scan = search.scan(*sites)
    return scan, search.finding(search.search(search.top_sites(scan, top)))


def page_inputs(search: ProgramSearch, finding: findings.Finding) -> tuple:
    """(finding, titles, the paper's hypothesis per group, the planted group, the inert groups): what a page states."""
    papers = {k: search.task.hypotheses()[h].title for k, h in search.paper_groups.items()}
    return finding, {k: search.title(k) for k in finding.order}, papers, search.planted_group(), search.inert_groups()


def ranking_inputs(search: ProgramSearch, finding: findings.Finding) -> tuple:
    """(finding, titles, the paper's hypothesis per group, the groups every ranking shows: the paper's and the inert)."""
    f, titles, papers, _, inert = page_inputs(search, finding)
    return f, titles, papers, [*papers, *inert]


def scan_table(scans: dict[str, tuple[ProgramSearch, Grid]]) -> pd.DataFrame:
    """The validation score of the paper's hypotheses at every scanned site, one row per (model, site)."""
    frames = []
    for name, (search, scan) in scans.items():
        runs = scan.runs()
        runs = runs.assign(score=[float(candidate_score(o.correct, o.none, o.changed)) for o in runs["val"]],
                           hypothesis=[search.task.hypotheses()[search.paper_groups[c]].title for c in runs["candidate"]])
        table = runs.pivot_table(index="site", columns="hypothesis", values="score", aggfunc="mean", sort=False)
        frames.append(table.assign(model=name).reset_index().set_index(["model", "site"]))
    return pd.concat(frames)


def verification(search: ProgramSearch, finding: findings.Finding, store_name: str, scratch: str) -> pd.DataFrame:
    """Retrain the first group's and the best paper group's chosen cells and check them against the committed ones
    (`committed.verify`); without a committed store, say that every cell was trained by this run."""
    keys = list(dict.fromkeys([finding.first, *[k for k in finding.order if k in search.paper_groups][:1]]))
    cells = [Cell(k, finding.sites[k].layer, finding.sites[k].position, search.spec.seeds[0], search.spec.data_seed) for k in keys]
    if not store_name:
        return pd.DataFrame({"cell": [search.title(c.candidate) for c in cells],
                             "verified": "trained by this run: nothing committed to check"}).set_index("cell")
    return committed.verify(search.every, cells, scratch).round(3)
