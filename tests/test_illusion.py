"""The illusion check: its pieces on a tiny random Llama, its rule, and its calibration on the planted stand-in
(the planted subspace passes, an illusion built on purpose is flagged)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.method import illusion, illusory
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, make_forward, shared_cache
from das_lib.method.fastpath_checks import fast_path_problem
from das_lib.method.interventions import BoundlessDASIntervention, DASIntervention, NeuronIntervention
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward
from das_lib.models.load import load_model
from das_lib.models.standin.planted import load_planted
from das_lib.tasks.pricetag.game import sample_pairs
from das_lib.tasks.pricetag.task import PriceTagTask

V, D, T, N = 40, 16, 6, 96
ANSWERS = (3, 7)


def projector(basis: torch.Tensor) -> torch.Tensor:
    return basis @ basis.T


def orthonormal(basis: torch.Tensor, atol: float = 1e-8) -> bool:
    return torch.allclose(basis.T @ basis, torch.eye(basis.shape[1], dtype=basis.dtype), atol=atol)


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer Llama, random prompts with labels among two answer tokens, and its spaces at L0@last."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    data = InterchangeData(
        base={"input_ids": torch.randint(0, V, (N, T), generator=g)},
        source={"input_ids": torch.randint(0, V, (N, T), generator=g)},
        base_pos=torch.full((N,), T - 1), source_pos=torch.full((N,), T - 1), variable=torch.zeros(N, dtype=torch.long),
        labels=torch.tensor(ANSWERS)[torch.randint(0, 2, (N,), generator=g)], roles=("last",),
        answers=torch.tensor(ANSWERS))
    site = Site(0, "last")
    return model, site, data, illusion.site_spaces(model, site, data)


def random_basis(k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(D, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def test_parts_are_orthogonal_and_cover_u(tiny):
    _, _, _, measured = tiny
    assert 0 < measured.read.shape[1] <= D and orthonormal(measured.read)
    # a smaller read space and a higher bar for "active" than measured, so that every part is a proper one
    spaces = dataclasses.replace(measured, read=measured.read[:, :6], active_share=1.0)
    u = random_basis(5, seed=2)
    named = illusion.parts(u, spaces, min_norm=1e-9)  # every direction kept: the exact algebra
    assert list(named) == list(illusion.PARTS)
    assert all(orthonormal(p) for p in named.values())
    c, dc, a, dm = named["connected"], named["disconnected"], named["active"], named["dormant"]
    assert c.shape[1] == dc.shape[1] == 5 and 0 < a.shape[1] < 5  # a generic U straddles the read space
    assert (c.T @ dc).abs().max() < 1e-8 and (a.T @ dm).abs().max() < 1e-8
    assert torch.allclose((projector(c) + projector(dc)) @ u, u, atol=1e-8)  # together they contain U
    assert a.shape[1] + dm.shape[1] == 5 and torch.allclose(projector(a) + projector(dm), projector(u), atol=1e-8)
    assert torch.allclose(projector(c) @ spaces.read @ spaces.read.T, projector(c), atol=1e-8)  # inside the read space
    ra = named["read_and_active"]
    assert torch.allclose(projector(c) @ ra, ra, atol=1e-8)
    assert all(spaces.variance_along(ra[:, j]) > spaces.active_share for j in range(ra.shape[1]))
    # the default leaves out the shadows of U's directions (under a quarter of their energy in the part)
    assert illusion.parts(u, spaces)["connected"].shape[1] <= c.shape[1]


def test_fixed_subspace_patches_what_the_learned_intervention_patches():
    torch.manual_seed(3)
    base, source = torch.randn(8, D), torch.randn(8, D)
    das = DASIntervention(D, 3)
    u = illusion.learned_subspace(das, 0)
    assert u.shape == (D, 3) and orthonormal(u, atol=1e-6)  # a float32 rotation
    assert torch.allclose(illusion.FixedSubspace(u)(base, source), das(base, source), atol=1e-5)
    boundless = BoundlessDASIntervention(D, n_variables=2)
    with torch.no_grad():
        boundless.boundaries.copy_(torch.tensor([0.45, 0.8]))  # 3.6 and 6.4 dims
    boundless.temperature = 0.01  # trained to the end: a hard mask
    for v, dims in ((0, 4), (1, 7)):  # boundaries at 3.6 and 6.4 dims of each block of 8: dims 0-3 and 8-14
        u = illusion.learned_subspace(boundless, v)
        assert u.shape[1] == dims
        # the block's first dim sits on the boundary's lower edge: Boundless DAS swaps half of it, the subspace all
        edge = boundless.rotation.weight[8 * v].detach()
        half = 0.5 * ((source - base) @ edge)[:, None] * edge
        expected = boundless(base, source, torch.full((8,), v)) + half
        assert torch.allclose(illusion.FixedSubspace(u)(base, source), expected, atol=1e-5)
    assert torch.equal(illusion.FixedSubspace(torch.zeros(D, 0))(base, source), base)  # an empty part patches nothing


def test_margin_gradients_are_the_same_on_both_paths_and_match_a_finite_difference(tiny):
    model, site, data, spaces = tiny
    nothing = illusion.FixedSubspace(torch.zeros(D, 0))  # margin_gradients puts its own probe in its place
    fast = make_forward(model, site, nothing, [data])
    assert isinstance(fast, CachedForward)
    plain, margins = illusion.margin_gradients(PlainForward(model, site, nothing), data)
    assert torch.allclose(illusion.margin_gradients(fast, data)[0], plain, atol=1e-5)
    assert torch.allclose(spaces.gradients, plain, atol=1e-5)
    step = 1e-3 * spaces.mean_variance() ** 0.5 * spaces.read[:, 0]  # small beside the states' own spread
    with torch.no_grad():
        logits = PlainForward(model, site, ShiftBy(step))(data)  # over the two answers: (N, 2)
    shifted = (logits[:, 0] - logits[:, 1]).double()
    assert torch.allclose(shifted - margins, plain @ step, atol=1e-3 * margins.abs().max())


class ShiftBy(torch.nn.Module):
    def __init__(self, step: torch.Tensor):
        super().__init__()
        self.step = step.float()

    def forward(self, base, source, variable=None):
        return base + self.step


def test_bad_input_is_refused(tiny):
    model, site, data, spaces = tiny
    with pytest.raises(ValueError, match="not orthonormal"):
        illusion.parts(torch.ones(D, 2), spaces)
    with pytest.raises(ValueError, match="site's width"):
        illusion.parts(random_basis(2, 0)[:-1], spaces)
    with pytest.raises(ValueError, match="two answer tokens"):
        illusion.diagnose(model, site, random_basis(2, 0), data.read_over(None), spaces)
    with pytest.raises(ValueError, match="two answer tokens"):
        illusion.site_spaces(model, site, data.read_over(torch.tensor([*ANSWERS, 9])))
    with pytest.raises(TypeError, match="rotated-space"):
        illusion.learned_subspace(NeuronIntervention(D, [0, 1]))
    with pytest.raises(ValueError, match="orthogonal"):
        illusory.illusory_direction(spaces.read[:, 0], spaces.read[:, 0])


def synthetic(hits: dict[str, list[int]]) -> illusion.Diagnosis:
    """A Diagnosis made of given per-pair correctness (no model): for the rule alone."""
    none = np.array(hits.pop("none"), bool)
    correct = {"none": none, **{k: np.array(v, bool) for k, v in hits.items()}}
    rows = [illusion._row(k, 1, 1.0, v, none, 1.0, 0.95, 0) for k, v in correct.items()]
    import pandas as pd

    return illusion.Diagnosis(pd.DataFrame(rows), pd.DataFrame(), correct, 0.95)


def test_the_reading_rule_can_give_each_verdict():
    n = 200
    none, good, half = [0] * n, [1] * n, [1] * (n // 2) + [0] * (n // 2)
    cases = {"no effect": {"none": none, "whole": none, "read_and_active": none},
             "illusion": {"none": none, "whole": good, "read_and_active": none},
             "passes": {"none": none, "whole": good, "read_and_active": good},
             "partial": {"none": none, "whole": good, "read_and_active": half}}
    for verdict, hits in cases.items():
        assert illusion.reading(synthetic(hits))["verdict"] == verdict
    assert illusion._doses(1) == [1] and illusion._doses(4) == [1, 2, 4] and illusion._doses(12) == [1, 2, 4, 8, 12]


# --- calibration on the planted stand-in (benchmarks/illusion_calibration.py prints the full table) -----------

@pytest.fixture(scope="module")
def standin():
    """The stand-in at its planted site: spaces from 128 pool pairs, 256 left-boundary test pairs."""
    torch.set_num_threads(1)
    model, tokenizer = load_model("standin")
    planted, meta = load_planted()
    task = PriceTagTask(tokenizer, "standin")
    site = Site(meta["site"]["layer"], meta["site"]["position"])
    pool_pairs = sample_pairs("left_right", 128, seed=3)
    pool = task.interchange_data(pool_pairs, site.position)
    test = task.interchange_data(sample_pairs("left", 256, seed=7), site.position)
    spaces = illusion.site_spaces(model, site, pool)
    states = torch.cat(illusion.site_states(model, site, pool))
    games = [p.base for p in pool_pairs] + [p.source for p in pool_pairs]  # in the order of site_states
    left = torch.tensor([g["amount"] >= g["lb"] for g in games])
    return model, site, pool, test, spaces, states, left, illusion.learned_subspace(planted, 0)


def test_the_planted_subspace_passes(standin):
    model, site, _, test, spaces, _, _, planted = standin
    diagnosis = illusion.diagnose(model, site, planted, test, spaces)
    verdict = illusion.reading(diagnosis)
    assert verdict["verdict"] == "passes", diagnosis.table
    assert verdict["read_and_active_interval"][0] > 0.2  # the faithful part does what the whole does
    for part in ("disconnected", "dormant"):  # no better than doing nothing, and well below U
        row = diagnosis.row(part)
        assert row.gain_low <= 0 and row.gain_high < diagnosis.row("whole").gain_low, diagnosis.table


def test_test_pairs_shared_by_several_subspaces_give_the_same_diagnosis(standin):
    model, site, _, test, spaces, _, _, planted = standin
    half = test.select(np.arange(0, len(test), 2))  # drawn from the shared pairs, as a candidate's variable is
    shared = illusion.diagnose(model, site, planted, half, spaces, run=illusion.test_run(model, site, test))
    alone = illusion.diagnose(model, site, planted, half, spaces)
    assert shared.table.equals(alone.table) and shared.dose.equals(alone.dose)
    with pytest.raises(ValueError, match="not drawn from the pairs"):
        illusion.diagnose(model, site, planted, half, spaces, run=illusion.test_run(model, site, half.select(np.arange(8))))


def test_states_and_diagnosis_read_from_a_held_layer_cache_equal_a_fresh_run(standin):
    """The grid's way: one cache over the pool and the test pairs serves the spread, the states and every patch."""
    model, site, pool, test, spaces, _, _, planted = standin
    held = make_forward(model, site, illusion.FixedSubspace(torch.zeros(model.config.hidden_size, 0)), [pool, test])
    assert isinstance(held, CachedForward)
    for data in (pool, test):
        for cached, captured in zip(illusion.site_states(model, site, data, forward=held), illusion.site_states(model, site, data)):
            assert torch.allclose(cached, captured, rtol=1e-5, atol=1e-5)
    from_cache = illusion.site_spaces(model, site, pool, forward=held)
    assert torch.allclose(from_cache.covariance, spaces.covariance, rtol=1e-4, atol=1e-6)
    assert from_cache.read.shape == spaces.read.shape
    shared = illusion.diagnose(model, site, planted, test, spaces, run=illusion.test_run(model, site, test, forward=held))
    alone = illusion.diagnose(model, site, planted, test, spaces)
    assert np.array_equal(shared.correct["whole"], alone.correct["whole"]) and shared.table.part.equals(alone.table.part)
    assert np.allclose(shared.table.off_manifold, alone.table.off_manifold, rtol=1e-3)


def test_states_read_from_a_grid_s_cache_of_every_position_are_each_position_s(standin):
    """A grid caches its pool at all its positions at once; each position's view gives that position's states."""
    model, _, pool, _, _, _, _, _ = standin
    task, layer = PriceTagTask(load_model("standin")[1], "standin"), 1
    roles = task.searched_roles()[:3] + ["last"]
    data = task.interchange_data(sample_pairs("left", 24, seed=5), roles)
    shared = shared_cache(model, layer, [data])
    for j, role in enumerate(roles):
        column = data.column(j)
        view = shared.for_position(j, [column], Site(layer, role), illusion.FixedSubspace(torch.zeros(model.config.hidden_size, 0)))
        cached, captured = illusion.site_states(model, Site(layer, role), column, forward=view), illusion.site_states(model, Site(layer, role), column)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(cached, captured)), role


def test_an_illusion_built_on_purpose_is_flagged(standin):
    model, site, pool, test, spaces, states, left, planted = standin
    a, b, v = illusory.construct(states, left, spaces)
    dormant, disconnected = illusory.profile(a, spaces, states, left), illusory.profile(b, spaces, states, left)
    assert dormant["variance"] < 0.05 and dormant["read"] > spaces.read_share  # read, never varying
    assert disconnected["read"] < spaces.read_share and disconnected["read_space_share"] < 1e-9  # never read ...
    assert disconnected["decoding"] > 0.8  # ... but it tells the left boundary's two values apart
    copy = illusory.amplified_copy(model, site, a, 9.0, spaces)  # the stand-in reads a too weakly (benchmarks/README)
    assert "not one of transformers' own decoder layers" in fast_path_problem(copy, site)  # wrapped layer: refused
    copy_spaces = illusion.site_spaces(copy, site, pool, fast=False)  # the copy runs on the plain path
    diagnosis = illusion.diagnose(copy, site, v, test, copy_spaces, fast=False)
    assert illusory.profile(a, copy_spaces, states, left)["read"] > 5 * dormant["read"]
    verdict = illusion.reading(diagnosis)
    assert verdict["verdict"] == "illusion", diagnosis.table
    assert verdict["gain_interval"][0] > 0.15  # the illusion works: patching v moves the answers
    for part in ("connected", "disconnected"):  # ... and neither of its parts alone does
        row = diagnosis.row(part)
        assert row.gain_low <= 0 and row.gain_high < verdict["gain_interval"][0], diagnosis.table
