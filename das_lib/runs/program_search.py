"""Running the search over programs: one Boundless DAS cell per (group, site), a resumable store, and the
ranking on test pairs.

The data (`das_lib.runs.program_splits`): train, validation and test pairs chosen to separate the
space's label functions. Candidates with the same labels on all three splits form a group, and only the
group's first member is trained (its results are every member's). The pairs and their labels depend on
the whole space, never on which groups or sites a search trains, so a scan over sites and the search
at the chosen sites share their records.

The cells. A cell is one group at one site from one seed; its record (in a `Store`, keyed by the hash
of its full config) holds, for the validation and test pairs, whether each intervened answer and each
unintervened one equals each variable's label. A search killed mid-way loses only the cell in flight.
All cells at one layer train from one fast-path cache of the three splits (`fastpath.shared_caches`):
the model's runs do not depend on the labels.

The ranking. Each group's site is the one of best validation gain; the ranking reports the test pairs
at that site (`das_lib.method.search.ranking`), and the margin of the first over the second on the same
test pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

import das_lib
from das_lib.method.counterfactual import make_pair
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import make_forward, shared_caches
from das_lib.method.search import (
    Outcome, candidate_data, majority_rate, margin, ranking, train_candidate,
)
from das_lib.method.separation import Separation, carries_output, group
from das_lib.method.sites import Site
from das_lib.method.training import TrainConfig, answer_tokens, answer_tokens_under
from das_lib.models.load import default_template, load_config, load_tokenizer
from das_lib.models.standin import planted_for
from das_lib.pricetag import programs
from das_lib.pricetag.game import HYPOTHESES, Hypothesis
from das_lib.pricetag.task import PriceTagTask
from das_lib.runs.cache import LastOne
from das_lib.runs.jobs import runner_for
from das_lib.runs import program_splits
from das_lib.runs.program_splits import SPLITS, Split
from das_lib.runs.spec import model_identity
from das_lib.runs.store import Store


@dataclass
class _Prepared:
    """What every cell of one model and one data config shares: the encoded splits, the fast path's layer
    caches of them, and the model's own answers on their bases."""

    data: dict[str, InterchangeData]
    caches: dict[int, Any] = field(default_factory=dict)
    base: dict[str, torch.Tensor] | None = None


_PREPARED = LastOne()  # one model's prepared data in memory at a time


@dataclass(frozen=True)
class SearchSpec:
    """A search: the model, the sites, which groups (None: all), the training budget and the data."""

    model: str = "standin"  # das_lib.models.load.load_model name
    sites: tuple[tuple[int, str], ...] = ((1, "last"),)  # (layer, token role)
    candidates: tuple[str, ...] | None = None  # keys of candidates whose groups are trained; None: every group
    steps: int = 100
    batch_size: int = 32
    n_train: int = 512
    n_val: int = 256
    n_test: int = 512
    pool_factor: int = 4  # each split is chosen from a random pool this many times its size
    separating_share: float = 0.05  # each two label functions differ on at least this share of a split (if they can)
    seed: int = 0  # training seed
    data_seed: int = 0
    n_brackets: int = 60  # brackets of the games every formula is verified on (programs.verification_games)
    thresholds: tuple[int, ...] = programs.THRESHOLDS
    rank: int | None = None  # rotated dims of Boundless DAS; None: a full rotation
    template: str | None = None  # None: the model's own
    dtype: str = "float32"

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 2:
                problems.append(f"{name} must be >= 2, got {getattr(self, name)}")
        if not self.sites:
            problems.append("give at least one site")
        if self.pool_factor < 1 or not 0 <= self.separating_share <= 1:
            problems.append(f"pool_factor must be >= 1 and separating_share in [0, 1], got {self.pool_factor}, {self.separating_share}")
        if problems:
            raise ValueError("bad SearchSpec: " + "; ".join(problems))

    def data_config(self) -> dict[str, Any]:
        """What fixes the pairs and their labels (not the sites, not the groups trained)."""
        return {"n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test, "pool_factor": self.pool_factor,
                "separating_share": self.separating_share, "seed": self.data_seed,
                "space": {"n_brackets": self.n_brackets, "thresholds": list(self.thresholds)}}


class ProgramSearch:
    """The groups of the game's space of programs, trained at `spec.sites` into a store, and ranked."""

    def __init__(self, spec: SearchSpec, store: str | Path | Store, device: str = "cpu", progress: bool = True):
        self.spec, self.device, self.progress = spec, device, progress
        self.store = store if isinstance(store, Store) else Store(store)
        tokenizer = load_tokenizer(spec.model)
        template = spec.template or default_template(tokenizer)
        self.task = PriceTagTask(tokenizer, template)
        self.task_settings = {"template": template, "variant": "yesno", "context": None}
        self.space = programs.space(spec.n_brackets, spec.data_seed, tuple(spec.thresholds))
        n_layers, roles = load_config(spec.model).num_hidden_layers, self.task.searched_roles()
        bad = [s for s in spec.sites if not (0 <= s[0] < n_layers and s[1] in roles)]
        if bad:
            raise ValueError(f"bad sites {bad}: layers are 0..{n_layers - 1}, positions one of {roles}")
        known = {c.key for c in self.space.candidates}
        unknown = [k for k in spec.candidates or () if k not in known]
        if unknown:
            raise KeyError(f"candidates {unknown} are not in the space; its keys are like {sorted(known)[:3]}")

    # ---- the data ---------------------------------------------------------------------------------
    @property
    def splits(self) -> dict[str, Split]:
        """Train, validation and test pairs, each chosen to separate the space's label functions; no pair in two splits."""
        return program_splits.splits(self.spec.n_train, self.spec.n_val, self.spec.n_test, self.spec.pool_factor,
                       self.spec.separating_share, self.spec.data_seed, self.spec.n_brackets, tuple(self.spec.thresholds))

    @cached_property
    def separation(self) -> Separation:
        """The groups on all three splits: candidates no pair of this search can tell apart."""
        def joined(key: str) -> tuple[tuple[Any, ...], ...]:
            per_split = [self.splits[s].labels[key] for s in SPLITS]
            return tuple(sum((tuple(fs[v]) for fs in per_split), ()) for v in range(len(per_split[0])))

        # the unused variable first, so that it names its group (what the ranking's control reads)
        order = programs.unused_keys(self.space) + [c.key for c in self.space.candidates]
        return group({key: joined(key) for key in dict.fromkeys(order)})

    def candidate(self, key: str) -> Hypothesis:
        """The candidate of the space named `key`."""
        return next(c for c in self.space.candidates if c.key == key)

    def groups(self) -> list[str]:
        """The representative key of every group this search trains: all (or those of `spec.candidates`) but
        the groups with a variable that carries the whole answer (`answer_groups`)."""
        wanted = self.spec.candidates
        keys = [g.key for g in self.separation.groups] if wanted is None else [self.separation.group_of(k).key for k in wanted]
        return [k for k in dict.fromkeys(keys) if k not in self.answer_groups()]

    @cached_property
    def _answer_groups(self) -> list[str]:
        reference = self.space.candidates[0].model
        outputs = [reference.predict(source) for s in SPLITS for _, source in self.splits[s].pairs]
        return [g.key for g in self.separation.groups if carries_output(g, self.separation, outputs)]

    def answer_groups(self) -> list[str]:
        """Groups with a variable whose swap gives the source's own answer on every pair (the answer itself, as
        `(amount-lb)*(ub-amount)` carries it): every program computes the answer, so they are not searched."""
        return self._answer_groups

    # ---- cells ----------------------------------------------------------------------------------
    @cached_property
    def identity(self) -> dict[str, Any]:
        return {**model_identity(self.spec.model), "dtype": self.spec.dtype}

    def config(self, key: str, site: tuple[int, str]) -> dict[str, Any]:
        """The full config of one cell: everything its numbers depend on."""
        train = TrainConfig(steps=self.spec.steps, batch_size=self.spec.batch_size, seed=self.spec.seed)
        return {"das_lib": das_lib.__version__, "model": self.identity, "task": self.task_settings,
                "kind": "program_search", "candidate": key, "variables": list(self.candidate(key).variables),
                "site": Site(*site).as_dict(), "method": {"name": "boundless", "rank": self.spec.rank},
                "train": train.as_dict(), "data": self.spec.data_config()}

    def cells(self) -> list[tuple[str, tuple[int, str]]]:
        """Every (group, site) this search trains, grouped by layer (cells at one layer share a cache)."""
        sites = sorted(self.spec.sites, key=lambda s: s[0])
        return [(key, site) for site in sites for key in self.groups()]

    def record(self, key: str, site: tuple[int, str]) -> dict[str, Any] | None:
        return self.store.get(self.config(key, site))

    # ---- running --------------------------------------------------------------------------------
    def run(self) -> dict[str, int]:
        """Train every cell not in the store yet; returns how many ran and how many were reused."""
        todo = [c for c in self.cells() if self.record(*c) is None]
        if todo:
            runner = runner_for(self.spec.model, self.spec.dtype, self.device)
            prepared = self._prepared(runner, sorted({site[0] for _, site in todo}))
            for key, site in tqdm(todo, desc="search", unit="cell", disable=not self.progress):
                self.store.put(self.config(key, site), self._train(runner, prepared, key, site))
        return {"ran": len(todo), "reused": len(self.cells()) - len(todo)}

    def _prepared(self, runner: Any, layers: Sequence[int]) -> _Prepared:
        """The splits encoded at every searched position, the fast path's caches of `layers` (one forward pass)
        and the model's own answers on the bases. Kept for the next search of the same model and data in this
        process (a scan and the search after it), with the caches of the layers asked for last."""
        key = (repr(self.identity), self.device, repr(self.spec.data_config()), repr(self.task_settings))
        prepared = _PREPARED.get(key, lambda: _Prepared(self._encode(runner)))
        if not set(layers) <= set(prepared.caches):
            prepared.caches = {}  # the old layers' caches go before the new ones are built
            prepared.caches = shared_caches(runner.model, layers, [prepared.data[s] for s in SPLITS])
        if prepared.base is None:
            prepared.base = self._base_answers(runner, prepared)
        return prepared

    def _encode(self, runner: Any) -> dict[str, InterchangeData]:
        ref = self.space.candidates[0]  # any candidate: the labels are replaced by each candidate's
        out = {}
        for s in SPLITS:
            pairs = [make_pair(ref.model, b, src, ref.variables[:1]) for b, src in self.splits[s].pairs]
            out[s] = self.task.interchange_data(pairs, self.task.searched_roles()).to(runner.device)
        return out

    def _base_answers(self, runner: Any, prepared: _Prepared) -> dict[str, torch.Tensor]:
        """The model's own answer on every base: from a cache, swapping nothing at the last position (the layers
        above the site only, exact to float rounding), else from a full forward pass."""
        layer, cache = next(((l, c) for l, c in prepared.caches.items() if c is not None), (None, None))
        if cache is None:
            return {s: answer_tokens(runner.model, prepared.data[s]) for s in SPLITS}
        j = len(self.task.searched_roles()) - 1  # the last token: one position per row above the site
        columns = {s: prepared.data[s].column(j) for s in SPLITS}
        unchanged = cache.for_position(j, list(columns.values()), Site(layer, self.task.searched_roles()[j]),
                                       lambda base, source, variable: base)
        return {s: answer_tokens_under(unchanged, columns[s]) for s in SPLITS}

    def _train(self, runner: Any, prepared: _Prepared, key: str, site: tuple[int, str]) -> dict[str, Any]:
        j = self.task.searched_roles().index(site[1])
        n_vars = len(self.candidate(key).variables)
        sets = {}
        for s in SPLITS:
            ids = [[self.task.answer_id(label) for label in f] for f in self.splits[s].labels[key]]
            sets[s] = (candidate_data(prepared.data[s].column(j), ids), prepared.base[s])
        cache = prepared.caches.get(site[0])
        target = Site(*site)
        if cache is not None:
            forward_for = lambda i: cache.for_position(j, [sets[s][0] for s in SPLITS], target, i)  # noqa: E731
        else:
            forward_for = lambda i: make_forward(runner.model, target, i, [sets[s][0] for s in SPLITS])  # noqa: E731
        train = TrainConfig(steps=self.spec.steps, batch_size=self.spec.batch_size, seed=self.spec.seed)
        result = train_candidate(forward_for, runner.model.config.hidden_size, n_vars, sets["train"][0],
                                 {s: sets[s] for s in ("val", "test")}, train, self.spec.rank)
        return {"outcomes": {s: o.as_dict() for s, o in result["outcomes"].items()},
                "boundary_dims": result["boundary_dims"], "seconds": result["seconds"], "train_iia": result["train_iia"]}

    # ---- results --------------------------------------------------------------------------------
    def outcomes(self, split: str) -> dict[tuple[str, tuple[int, str]], Outcome]:
        """The `Outcome` on `split` ('val' or 'test') of every finished cell."""
        out = {}
        for key, site in self.cells():
            record = self.record(key, site)
            if record is not None:
                out[(key, site)] = Outcome.from_dict(record["results"]["outcomes"][split])
        return out

    def best_sites(self) -> dict[str, tuple[int, str]]:
        """Each trained group's site of highest validation gain (the first in layer, position order on a tie)."""
        val = self.outcomes("val")
        best: dict[str, tuple[int, str]] = {}
        for (key, site), o in val.items():
            if key not in best or o.gains().mean() > val[(key, best[key])].gains().mean():
                best[key] = site
        return best

    def site_gains(self) -> pd.DataFrame:
        """Validation gain of every finished cell: groups (rows) by site (columns)."""
        rows = [{"group": key, "site": f"L{site[0]} {site[1]}", "gain": o.gains().mean()} for (key, site), o in self.outcomes("val").items()]
        return pd.DataFrame(rows).pivot(index="group", columns="site", values="gain")

    def top_sites(self, k: int) -> list[tuple[int, str]]:
        """The `k` sites where some trained group gains most on validation pairs."""
        scores = self.site_gains().max()
        order = sorted(scores.index, key=lambda s: -scores[s])
        by_name = {f"L{s[0]} {s[1]}": s for s in self.spec.sites}
        return [by_name[name] for name in order[:k]]

    def test_outcomes(self) -> dict[str, Outcome]:
        """Each trained group's test `Outcome` at its best validation site."""
        test = self.outcomes("test")
        return {key: test[(key, site)] for key, site in self.best_sites().items()}

    def ranking(self) -> pd.DataFrame:
        """The ranking on test pairs (`search.ranking`) with each group's majority-label rate (the IIA of always
        giving the most common label), label, site, size and paper name."""
        table = ranking(self.test_outcomes())
        sites, paper = self.best_sites(), self.paper_groups()
        return table.assign(
            majority=[majority_rate(self.splits["test"].labels[k]) for k in table.index],
            title=[programs.label(k) for k in table.index],
            site=[f"L{sites[k][0]} {sites[k][1]}" for k in table.index],
            members=[len(self.separation.group_of(k).members) for k in table.index],
            paper=[paper.get(k, "") for k in table.index])

    def margin(self, first: str | None = None, second: str | None = None) -> tuple[float, float, float]:
        """(mean, low, high) of the first's test gain minus the second's on the same pairs (default: ranks 1 and 2)."""
        if first is None or second is None:
            first, second = self.ranking().index[:2]
        outcomes = self.test_outcomes()
        return margin(outcomes[first], outcomes[second])

    def groups_frame(self) -> pd.DataFrame:
        """One row per group: its representative's variables and formula, how many candidates it holds, the
        paper's hypothesis in it, and how many test pairs tell it from the group closest to it."""
        test, paper = self.splits["test"].labels, self.paper_groups()
        signature = {g.key: list(zip(*test[g.key])) for g in self.separation.groups}
        rows = []
        for g in self.separation.groups:
            apart = {h.key: sum(a != b for a, b in zip(signature[g.key], signature[h.key]))
                     for h in self.separation.groups if h.key != g.key and len(h.functions) == len(g.functions)}
            closest = min(apart, key=apart.get) if apart else None
            rows.append({"group": self.candidate(g.key).title, "formula": g.key.split(programs.SEP)[0],
                         "candidates": len(g.members), "paper": paper.get(g.key, ""),
                         "searched": g.key not in self.answer_groups(),
                         "closest group": programs.label(closest) if closest else "",
                         "test pairs apart": apart.get(closest, 0)})
        return pd.DataFrame(rows)

    def planted_group(self) -> str | None:
        """The group of the program planted in the model (its record's meta), or None for a model nobody planted one in."""
        planted = planted_for(self.spec.model)
        if planted is None:
            return None
        key = planted[1]["hypothesis"]
        if key in HYPOTHESES:  # the paper's keys: its member of the space
            key = programs.paper_members(self.space.candidates, self.splits["test"].pairs[:200])[key]
        return self.separation.group_of(key).key

    def unused_group(self) -> str:
        """The group of the candidate whose variable the output never uses (it names its group)."""
        return programs.unused_keys(self.space)[0]

    def reference_groups(self) -> list[str]:
        """The groups every ranking shows beside its first ones: the unused variable's and the paper's four."""
        return [self.unused_group(), *self.paper_groups()]

    def paper_groups(self) -> dict[str, str]:
        """Representative key -> title of the paper's hypothesis in its group, for groups holding one."""
        members = programs.paper_members(self.space.candidates, self.splits["test"].pairs[:200])
        return {self.separation.group_of(key).key: HYPOTHESES[h].title for h, key in members.items()}


def search_model(spec: SearchSpec, scan_sites: Sequence[tuple[int, str]], top: int, store: str | Path,
                 device: str = "cpu", fresh: bool = False, progress: bool = False) -> tuple[ProgramSearch, ProgramSearch]:
    """The chapter's search of one model: a short scan of `scan_sites` with the groups of the paper's four
    hypotheses (as a sweep chooses sites), then every group at the `top` sites where one of them gains most
    on validation pairs. Returns (scan, search); both write to `store` (emptied first if `fresh`)."""
    store = Store(store)
    if fresh:
        store.clear()
    first = ProgramSearch(replace(spec, sites=tuple(scan_sites), candidates=None), store, device, progress)
    scan = ProgramSearch(replace(spec, sites=tuple(scan_sites), candidates=tuple(first.paper_groups())), store, device, progress)
    scan.run()
    search = ProgramSearch(replace(spec, sites=tuple(scan.top_sites(top)), candidates=None), store, device, progress)
    search.run()
    return scan, search


def scan_grid(model: str, layers: Sequence[int], positions: Sequence[str]) -> list[tuple[int, str]]:
    """The sites (layer, role) of `layers` ([]: every layer of `model`) x `positions`, refusing a layer the
    model does not have or a role its prompts do not have."""
    n_layers = load_config(model).num_hidden_layers
    roles = PriceTagTask(tokenizer := load_tokenizer(model), default_template(tokenizer)).searched_roles()
    bad_layers = [l for l in layers if not 0 <= l < n_layers]  # noqa: E741
    bad_positions = [p for p in positions if p not in roles]
    if bad_layers or bad_positions or not positions:
        raise ValueError(f"cannot scan {model!r} at layers {bad_layers or list(layers)} and positions "
                         f"{bad_positions or list(positions)}: it has layers 0..{n_layers - 1} and positions {roles}")
    return [(l, p) for l in (layers or range(n_layers)) for p in positions]  # noqa: E741
