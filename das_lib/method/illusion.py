"""Is a learned subspace where the model keeps the variable? The illusion check.

Makelov, Lange and Nanda (2023, "Is This the Subspace You Are Looking For?") show that patching a subspace
U can change the answer as the variable would, though U does not hold it: U can mix a *dormant* direction
(the layers above read it, but the site's states never vary along it) with a *disconnected* one (the
states vary along it with the variable, but nothing above reads it). Patching their sum moves the state
along the dormant direction by what the disconnected one carried, and the layers above read that.

The check, for one variable's subspace U (d x k, orthonormal columns; `learned_subspace` reads it from a
trained intervention) at a site, from two things measured once per site (`site_spaces`):

- the *natural spread*: the covariance of the site's states over a pool of prompts (bases and sources).
  A direction is *active* when the states' variance along it exceeds ACTIVE_SHARE of the mean
  per-dimension variance s^2 (trace / d), else dormant.
- the *read space* R: from the per-prompt gradients g of the answer margin (logit of the first answer
  token minus the second) with respect to the site's state, through the layers above, at the pool's base
  prompts: the right singular vectors u of the gradients along which a move of one typical per-dimension
  standard deviation s changes the margin, in RMS over the prompts, by more than READ_SHARE of the
  margin's own spread (its standard deviation over the prompts): RMS(g . u) s > READ_SHARE x sd(margin).
  (Each direction is judged on its own scale, so one strongly read direction does not crowd out the
  others, as a share of the gradients' total energy would.)

`parts` splits U two ways, each part re-orthonormalised: *connected* = U projected into R, *disconnected*
= U projected out of R (Makelov et al.'s row-space and null-space parts: orthogonal to each other, and
together they contain U); *active* = U's directions of variance above the share, *dormant* = the rest
(inside U: orthogonal, spanning U); and *read_and_active* = the active directions of the connected part:
what the layers above read and the inputs move. A direction of U whose projection into a part is shorter
than MIN_NORM is left out of that part: re-orthonormalised, the faint shadow of a large U in R would
otherwise become whole directions of R that U barely touches (and carry other variables). `diagnose` patches each part alone (h_base + P (h_source
- h_base), P the projector onto the part) on test pairs, with its gain over doing nothing (pair by pair,
paired-bootstrap interval); the gain of U's top-m variance directions, m = 1, 2, 4, ..., k (the
dose-response); and how far the patched states leave the natural ones: their energy in the pool's
dormant directions over that of the pool's own states (1: as natural).

`reading` states the verdict by this rule (intervals at `level`, 95% by default):
- "no effect": U's gain interval does not lie above 0; there is nothing to explain;
- "illusion": U's gain interval lies above 0, but read_and_active's does not: the directions that the
  layers above read and the inputs move do not, on their own, change the answers distinguishably;
- "partial": both lie above 0, and U beats read_and_active on the same pairs (the interval of their
  paired difference lies above 0): part of U's effect comes from elsewhere;
- "passes": both lie above 0, and U does not beat read_and_active.

The data name the task's two answer tokens (`InterchangeData.answers`, as a task's interchange_data encodes them): the
margin is the first one's logit minus the second's, and a pair's answer is the more likely of the two
(das_lib.method.readout), as the book reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from das_lib.method import layer_cache
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, make_forward
from das_lib.method.interventions import RotatedSpaceIntervention
from das_lib.method.sites import Site, capture
from das_lib.method.stats import binomial_interval, paired_difference
from das_lib.method.training import InterventionForward, PlainForward, correct_pairs

READ_SHARE = 0.02  # read: a move of one typical standard deviation along it moves the margin by this share of its spread
ACTIVE_SHARE = 0.1  # active: variance above this share of the mean per-dimension variance of the site's states
MIN_NORM = 0.5  # a direction of U whose projection into a part is shorter than this (under a quarter of its energy) is left out of it
PARTS = ("whole", "connected", "disconnected", "active", "dormant", "read_and_active")


def learned_subspace(intervention: RotatedSpaceIntervention, variable: int = 0) -> torch.Tensor:
    """(d, k) float64, orthonormal columns: the rotated dims the intervention swaps for `variable`, in the layer's
    coordinates. For Boundless DAS, the dims inside its learned boundary (mask >= 0.5): the mask of the dim on a
    block's lower edge is sigmoid(0) = 0.5 at every temperature, so the intervention swaps half of it; it is
    counted in (das_lib.method.subspaces.subspace, with mask > 0.5, leaves it out)."""
    if not isinstance(intervention, RotatedSpaceIntervention):
        raise TypeError(f"a learned subspace needs a rotated-space intervention (DAS, Boundless DAS), got "
                        f"{type(intervention).__name__}")
    if not 0 <= variable < intervention.n_variables:
        raise ValueError(f"variable must be in 0..{intervention.n_variables - 1}, got {variable}")
    with torch.no_grad():
        weight = intervention.rotation.weight.detach()
        mask = intervention.mask(torch.tensor([variable], device=weight.device))[0]
        basis = weight[mask >= 0.5].double().cpu().T.contiguous()
    if basis.shape[1] == 0:
        raise ValueError(f"variable {variable}'s mask selects no rotated dimension at temperature "
                         f"{getattr(intervention, 'temperature', '?')}; train it to the end (low temperature) first")
    return basis


def check_basis(basis: torch.Tensor, d: int, name: str = "U") -> torch.Tensor:
    """`basis` as (d, k) float64 on the CPU, refused unless its columns are orthonormal."""
    if basis.dim() != 2 or basis.shape[0] != d:
        raise ValueError(f"{name} must be a (d, k) basis with d = {d} (the site's width), got shape {tuple(basis.shape)}")
    basis = basis.detach().double().cpu()
    eye = torch.eye(basis.shape[1], dtype=basis.dtype, device=basis.device)
    error = (basis.T @ basis - eye).abs().max().item() if basis.numel() else 0.0
    if error > 1e-4:
        raise ValueError(f"{name}'s columns are not orthonormal (max |U^T U - I| = {error:.2g}); orthonormalise it first "
                         "(torch.linalg.qr)")
    return basis


class FixedSubspace(nn.Module):
    """Interchange inside a fixed subspace: base + P (source - base), P the projector onto `basis`'s columns
    (a (d, 0) basis patches nothing)."""

    def __init__(self, basis: torch.Tensor):
        super().__init__()
        self.register_buffer("basis", basis.detach().float())

    def forward(self, base: torch.Tensor, source: torch.Tensor, variable: torch.Tensor | None = None) -> torch.Tensor:
        b = self.basis
        return base + ((((source - base).to(b.dtype)) @ b) @ b.T).to(base.dtype)


class _Probe(nn.Module):
    """Adds a zero `delta` to the base states of one batch (made on the call, of their shape), so that the
    answer's gradient with respect to them can be taken with respect to it."""

    delta: torch.Tensor | None = None

    def forward(self, base: torch.Tensor, source: torch.Tensor, variable: torch.Tensor | None = None) -> torch.Tensor:
        self.delta = torch.zeros_like(base, requires_grad=True)
        return base + self.delta


def _with(forward: InterventionForward, intervention: nn.Module) -> InterventionForward:
    """The same forward (and its caches) with another intervention."""
    if isinstance(forward, CachedForward):
        return forward.with_intervention(intervention)
    if isinstance(forward, PlainForward):
        return PlainForward(forward.model, forward.site, intervention)
    raise TypeError(f"cannot swap the intervention of a {type(forward).__name__}")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_answers(data: InterchangeData, name: str) -> None:
    """Refuse data that do not name exactly two answer tokens (their labels are among them: InterchangeData checks)."""
    if data.answers is None or data.answers.numel() != 2:
        got = "none" if data.answers is None else data.answers.tolist()
        raise ValueError(f"the {name} pairs must name the task's two answer tokens (InterchangeData.answers), got {got}: "
                         "encode them with the task's interchange_data, or name them with data.read_over(ids)")


def site_states(model: nn.Module, site: Site, data: InterchangeData, batch_size: int = 128,
                forward: InterventionForward | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, source) states at the site, each (N, d) float64 on the CPU: read from `forward`'s cache where it
    is the fast path (the layer cache a grid holds), else captured by a forward pass to the site."""
    data.check_position(site.position)
    if isinstance(forward, CachedForward):
        return tuple(t.double().cpu() for t in layer_cache.site_vectors(*forward.find(data)))
    out: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.select(slice(start, start + batch_size))
            out[0].append(capture(model, site, batch.base, batch.base_pos).double().cpu())
            out[1].append(capture(model, site, batch.source, batch.source_pos).double().cpu())
    return torch.cat(out[0]), torch.cat(out[1])


def margin_gradients(forward: InterventionForward, data: InterchangeData,
                     batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradients (N, d), margins (N,)), float64: each base prompt's answer margin (the logit of the data's first
    answer token minus the second's) and its gradient with respect to the prompt's state at the forward's site,
    through the layers above."""
    _check_answers(data, "gradient")
    probe, grads, values = _Probe(), [], []
    probed = _with(forward, probe)
    for start in range(0, len(data), batch_size):
        logits = probed(data.select(slice(start, start + batch_size)))
        margin = logits[:, 0].float() - logits[:, 1].float()  # logits over data.answers (das_lib.method.readout)
        grads.append(torch.autograd.grad(margin.sum(), probe.delta)[0].double().cpu())  # rows are independent
        values.append(margin.detach().double().cpu())
    return torch.cat(grads), torch.cat(values)


@dataclass
class SiteSpaces:
    """What the check needs of one site, measured once for every subspace there."""

    mean: torch.Tensor  # (d,) mean natural state
    covariance: torch.Tensor  # (d, d) of the natural states
    gradients: torch.Tensor  # (N, d) margin gradients, one per base prompt of the pool
    margin_spread: float  # standard deviation of the margin over those prompts
    read: torch.Tensor  # (d, r) the read space's orthonormal basis
    read_share: float
    active_share: float

    @property
    def d(self) -> int:
        return self.mean.shape[0]

    def mean_variance(self) -> float:
        """The mean per-dimension variance of the natural states (trace / d)."""
        return float(torch.trace(self.covariance)) / self.d

    def dormant_space(self) -> torch.Tensor:
        """(d, q): the pool's principal directions of variance at most active_share x the mean variance."""
        values, vectors = torch.linalg.eigh(self.covariance)
        return vectors[:, values <= self.active_share * self.mean_variance()]

    def variance_along(self, direction: torch.Tensor) -> float:
        """The natural states' variance along a direction, over the mean per-dimension variance (active: above
        active_share)."""
        u = direction / direction.norm()
        return float(u @ self.covariance @ u) / self.mean_variance()

    def read_along(self, direction: torch.Tensor) -> float:
        """How much a move of one typical standard deviation along a direction moves the margin, in RMS over the
        prompts, over the margin's spread (read: above read_share)."""
        u = direction / direction.norm()
        return float((self.gradients @ u).pow(2).mean().sqrt()) * self.mean_variance() ** 0.5 / self.margin_spread


def site_spaces(model: nn.Module, site: Site, pool: InterchangeData, read_share: float = READ_SHARE, active_share: float = ACTIVE_SHARE, fast: bool = True,
                batch_size: int = 128, forward: InterventionForward | None = None) -> SiteSpaces:
    """The natural spread (the pool's base and source states) and the read space (margin gradients at the pool's
    base prompts) at `site`; `forward`: one that serves `pool` at `site` already (its caches are used)."""
    _check_answers(pool, "pool")
    if not read_share > 0 or not active_share > 0:
        raise ValueError(f"read_share and active_share must be > 0, got {read_share}, {active_share}")
    if len(pool) < 2:
        raise ValueError(f"the pool needs at least 2 pairs to measure a spread, got {len(pool)}")
    pool = pool.to(_device(model))
    base, source = site_states(model, site, pool, batch_size, forward)
    states = torch.cat([base, source])
    centred = states - states.mean(0)
    covariance = centred.T @ centred / (len(states) - 1)
    forward = make_forward(model, site, _Probe(), [pool], fast=fast) if forward is None else forward
    gradients, values = margin_gradients(forward, pool, batch_size)
    spread = float(values.std())
    if spread == 0:
        raise ValueError("the margin is the same on every prompt of the pool: draw a pool whose answers differ")
    _, s, vh = torch.linalg.svd(gradients, full_matrices=False)
    typical = (float(torch.trace(covariance)) / states.shape[1]) ** 0.5
    read = vh[s / len(gradients) ** 0.5 * typical > read_share * spread].T.contiguous()
    return SiteSpaces(states.mean(0), covariance, gradients, spread, read, read_share, active_share)


def orthonormal_part(vectors: torch.Tensor, min_norm: float = MIN_NORM) -> torch.Tensor:
    """(d, j): an orthonormal basis of the span of `vectors`' columns, leaving out singular directions shorter
    than `min_norm`."""
    if vectors.shape[1] == 0:
        return vectors
    left, s, _ = torch.linalg.svd(vectors, full_matrices=False)
    return left[:, s > min_norm].contiguous()


def split(basis: torch.Tensor, space: torch.Tensor, min_norm: float = MIN_NORM) -> tuple[torch.Tensor, torch.Tensor]:
    """(inside, outside): `basis` projected into the span of `space`'s orthonormal columns and out of it, each
    re-orthonormalised (leaving out directions shorter than `min_norm`). The two are orthogonal; with min_norm 0
    they together contain `basis`."""
    inside = space @ (space.T @ basis)
    return orthonormal_part(inside, min_norm), orthonormal_part(basis - inside, min_norm)


def variance_directions(basis: torch.Tensor, spaces: SiteSpaces) -> tuple[torch.Tensor, torch.Tensor]:
    """(directions (d, k), variances (k,)): `basis`'s principal directions of natural variance, largest first,
    with their variance over the mean per-dimension variance."""
    if basis.shape[1] == 0:
        return basis, torch.zeros(0, dtype=basis.dtype, device=basis.device)
    values, vectors = torch.linalg.eigh(basis.T @ spaces.covariance @ basis)
    order = values.argsort(descending=True)
    return basis @ vectors[:, order], values[order].clamp(min=0) / spaces.mean_variance()


def parts(basis: torch.Tensor, spaces: SiteSpaces, min_norm: float = MIN_NORM) -> dict[str, torch.Tensor]:
    """U and its parts (PARTS), each a (d, j) orthonormal basis (j may be 0)."""
    basis = check_basis(basis, spaces.d)
    connected, disconnected = split(basis, spaces.read, min_norm)
    directions, variances = variance_directions(basis, spaces)
    active = variances > spaces.active_share
    c_directions, c_variances = variance_directions(connected, spaces)
    return {"whole": basis, "connected": connected, "disconnected": disconnected, "active": directions[:, active],
            "dormant": directions[:, ~active], "read_and_active": c_directions[:, c_variances > spaces.active_share]}


@dataclass
class Diagnosis:
    """What `diagnose` measured: one row per part (`table`), the dose-response (`dose`), per-pair correctness."""

    table: pd.DataFrame  # part, dims, share, iia, iia_low, iia_high, gain, gain_low, gain_high, off_manifold
    dose: pd.DataFrame  # m, variance, iia, gain, gain_low, gain_high, off_manifold
    correct: dict[str, np.ndarray]  # per part (and "none": doing nothing): was each test pair's answer its label
    level: float

    def row(self, part: str) -> pd.Series:
        """The table's row of `part`."""
        rows = self.table[self.table.part == part]
        if rows.empty:
            raise KeyError(f"no part {part!r}; the parts are {list(self.table.part)}")
        return rows.iloc[0]


@dataclass
class TestRun:
    """What every subspace patched on one set of test pairs at a site shares: the forward (fast path or plain, its
    intervention swapped for each part) and the pairs' (base, source) states at the site."""

    forward: InterventionForward
    base_states: torch.Tensor  # (N, d) float64, row i of the pairs' dataset at row_ids[i]
    source_states: torch.Tensor
    origin: str  # the pairs' InterchangeData.origin
    row_ids: np.ndarray

    def rows(self, test: InterchangeData) -> np.ndarray:
        """The rows of these states that hold `test`'s pairs (a dataset drawn from the same pairs)."""
        where = {int(i): r for r, i in enumerate(self.row_ids)}
        if test.origin != self.origin or any(int(i) not in where for i in test.row_ids()):
            raise ValueError("the test pairs are not drawn from the pairs of this TestRun: make one of them (test_run)")
        return np.array([where[int(i)] for i in test.row_ids()])


def test_run(model: nn.Module, site: Site, pairs: InterchangeData, fast: bool = True,
             forward: InterventionForward | None = None) -> TestRun:
    """The `TestRun` of `pairs` at `site`: datasets drawn from `pairs` (the same origin) share its cache
    (`forward`'s, where it serves `pairs` at `site` already)."""
    pairs = pairs.to(_device(model))
    nothing = FixedSubspace(torch.zeros(model.config.hidden_size, 0, dtype=torch.float64, device=_device(model)))
    forward = make_forward(model, site, nothing, [pairs], fast=fast) if forward is None else _with(forward, nothing)
    return TestRun(forward, *site_states(model, site, pairs, forward=forward), pairs.origin, pairs.row_ids())


def diagnose(model: nn.Module, site: Site, basis: torch.Tensor, test: InterchangeData, spaces: SiteSpaces,
             references: Mapping[str, torch.Tensor] | None = None, fast: bool = True, level: float = 0.95,
             seed: int = 0, min_norm: float = MIN_NORM, run: TestRun | None = None) -> Diagnosis:
    """Patch U (`basis`) and each of its parts alone on `test` (see the module docstring). `references`: named
    (d, j) orthonormal bases (e.g. a planted subspace); U's part inside and outside each is patched too. `run`: the
    `test_run` of the pairs `test` was drawn from (its rows' states are taken from it), made here when not given."""
    _check_answers(test, "test")
    test = test.to(_device(model))
    named = parts(basis, spaces, min_norm)
    for name, reference in (references or {}).items():
        named[f"inside {name}"], named[f"outside {name}"] = split(named["whole"], check_basis(reference, spaces.d, name),
                                                                  min_norm)
    whole = named["whole"]
    nothing = whole[:, :0]
    run = test_run(model, site, test, fast) if run is None else run
    rows = run.rows(test)
    forward = _with(run.forward, FixedSubspace(nothing).to(_device(model)))
    base_states, source_states = run.base_states[rows], run.source_states[rows]
    dormant = spaces.dormant_space()
    natural = float(torch.diagonal(dormant.T @ spaces.covariance @ dormant).sum())  # the pool's energy there

    def answers(part: torch.Tensor) -> np.ndarray:
        """Was each test pair's answer its label, with `part` patched (an empty part patches nothing)."""
        if part.shape[1] == 0 and "none" in correct:
            return correct["none"]
        return correct_pairs(_with(forward, FixedSubspace(part).to(_device(model))), test).numpy()

    def off_manifold(part: torch.Tensor) -> float:
        """The patched states' energy in the pool's dormant directions over the pool's own."""
        patched = base_states + (source_states - base_states) @ part @ part.T
        energy = float(((patched - spaces.mean) @ dormant).pow(2).sum(1).mean())
        return energy / natural if natural > 0 else float("nan")

    correct: dict[str, np.ndarray] = {}
    correct["none"] = answers(nothing)
    rows = [_row("none", 0, 0.0, correct["none"], correct["none"], off_manifold(nothing), level, seed)]
    for name, part in named.items():
        correct[name] = answers(part)
        share = float((part.T @ whole).pow(2).sum()) / whole.shape[1]  # how much of U's energy lies in the part
        rows.append(_row(name, part.shape[1], share, correct[name], correct["none"], off_manifold(part), level, seed))
    directions, variances = variance_directions(whole, spaces)
    dose = []
    for m in _doses(whole.shape[1]):
        hits = correct["whole"] if m == whole.shape[1] else answers(directions[:, :m])
        gain, low, high = paired_difference(hits, correct["none"], level=level, seed=seed)
        dose.append({"m": m, "variance": float(variances[m - 1]), "iia": float(hits.mean()), "gain": gain,
                     "gain_low": low, "gain_high": high, "off_manifold": off_manifold(directions[:, :m])})
    return Diagnosis(pd.DataFrame(rows), pd.DataFrame(dose), correct, level)


def _doses(k: int) -> list[int]:
    """1, 2, 4, ... below k, then k."""
    doses = [1 << i for i in range(k.bit_length()) if 1 << i < k]
    return doses + [k]


def _row(part: str, dims: int, share: float, hits: np.ndarray, none: np.ndarray, ratio: float, level: float,
         seed: int) -> dict:
    low, high = binomial_interval(int(hits.sum()), len(hits), level)
    gain, gain_low, gain_high = paired_difference(hits, none, level=level, seed=seed)
    return {"part": part, "dims": dims, "share": share, "iia": float(hits.mean()), "iia_low": low, "iia_high": high,
            "gain": gain, "gain_low": gain_low, "gain_high": gain_high, "off_manifold": ratio}


def reading(diagnosis: Diagnosis, seed: int = 0) -> dict[str, object]:
    """The verdict by the module docstring's rule, with the numbers it rests on."""
    whole, faithful = diagnosis.row("whole"), diagnosis.row("read_and_active")
    beyond, low, high = paired_difference(diagnosis.correct["whole"], diagnosis.correct["read_and_active"],
                                          level=diagnosis.level, seed=seed)
    if whole.gain_low <= 0:
        verdict = "no effect"
    elif faithful.gain_low <= 0:
        verdict = "illusion"
    else:
        verdict = "partial" if low > 0 else "passes"
    return {"verdict": verdict, "gain": float(whole.gain), "gain_interval": (float(whole.gain_low), float(whole.gain_high)),
            "read_and_active_gain": float(faithful.gain),
            "read_and_active_interval": (float(faithful.gain_low), float(faithful.gain_high)),
            "read_and_active_dims": int(faithful.dims), "beyond_read_and_active": beyond,
            "beyond_interval": (low, high), "level": diagnosis.level}
