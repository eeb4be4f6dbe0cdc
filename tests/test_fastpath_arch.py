"""The fast path on each architecture it runs (tests/conftest.py: a tiny Llama and a tiny Gemma 3), against the plain path.

Gemma 3 is the case the fast path was not written for: sliding-window and global layers with their own masks
and rotary bases, a window (4 tokens) shorter than the prompts (10), soft-capped logits. The checks here are the
plain path's logits, loss and gradients, at the first, a sliding, a global and a middle layer, for the last
token and an earlier one, in left-padded batches; and the controls that show a missing window is seen.
"""
import copy
import warnings
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from conftest import GEMMA_LAYER_TYPES, GEMMA_WINDOW, TINY_VOCAB, TINY_WIDTH, tiny_gemma
from test_fastpath import D, N, T, V, loss_and_grads, make_data  # the Llama-only tests' random prompts and loss
from das_lib.method.fastpath import CachedForward, FastPathMismatch, PlainPathWarning, make_forward, shared_caches
from das_lib.method.fastpath_checks import relative_error
from das_lib.method.interventions import BoundlessDASIntervention, DASIntervention
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, train_intervention

assert (V, D) == (TINY_VOCAB, TINY_WIDTH) and T > GEMMA_WINDOW  # the window hides keys from the later queries


def left_padding(n: int = N, every: int = 1) -> torch.Tensor:
    """An attention mask with 0..2 padded tokens on the left of every `every`-th row."""
    mask = torch.ones(n, T, dtype=torch.long)
    for i in range(0, n, every):
        mask[i, : i % 3] = 0
    return mask


def assert_same_as_plain(model, site: Site, intervention, data, forward=None) -> float:
    """The fast path's logits, loss and gradients are the plain path's; their logits' relative error."""
    forward = forward or CachedForward(model, site, intervention, [data])
    lf, loss_f, grads_f = loss_and_grads(forward, intervention, data)
    lp, loss_p, grads_p = loss_and_grads(PlainForward(model, site, intervention), intervention, data)
    assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
    assert loss_f == pytest.approx(loss_p, abs=1e-5)
    assert any(g.abs().max() > 0 for g in grads_p)  # the comparison below is not vacuous
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_f, grads_p))
    return relative_error(lf, lp)


# (architecture, site layer): the first layer, a middle one; for Gemma 3 (layers: sliding, sliding, global,
# sliding, global) the first (sliding), a sliding one, a global one (the middle) and the sliding one below the top
SITES = [("llama", 0), ("llama", 1), ("gemma3", 0), ("gemma3", 1), ("gemma3", 2), ("gemma3", 3)]


@pytest.mark.parametrize("position", [T - 1, T - 4], ids=["last", "earlier"])
@pytest.mark.parametrize("architecture,layer", SITES, ids=[f"{a}-L{l}" for a, l in SITES])
def test_fast_equals_plain_on_each_architecture(tiny_models, architecture, layer, position):
    model = tiny_models[architecture]
    data = make_data(torch.full((N,), position), mask=left_padding())
    torch.manual_seed(3)
    intervention = BoundlessDASIntervention(D, n_variables=1)
    intervention.temperature = 2.0
    fast = CachedForward(model, Site(layer, "x"), intervention, [data])
    assert assert_same_as_plain(model, Site(layer, "x"), intervention, data, fast) < 1e-5
    if architecture == "gemma3":  # the sliding layers' mask and the global layers' are kept apart
        layout = fast.stores[0].layout
        kinds = {GEMMA_LAYER_TYPES[j]: k for j, k in layout.mask_kind.items()}
        assert layout.n_masks == len(set(kinds.values())) == len({GEMMA_LAYER_TYPES[j] for j in layout.mask_kind})
        assert len(layout.rotary_widths) == len(set(GEMMA_LAYER_TYPES[layer + 1 :]))  # a rotary base per layer type


def test_the_sliding_window_is_applied_and_a_fast_path_without_it_is_refused(tiny_models):
    model = tiny_models["gemma3"]
    data = make_data(torch.full((N,), T - 4), mask=left_padding())
    fast = CachedForward(model, Site(0, "x"), DASIntervention(D, 4), [data])
    store, layout = fast.stores[0], fast.stores[0].layout
    sliding, full = layout.mask_kind[1], layout.mask_kind[2]
    assert sliding != full
    # the window changes the model's own answers (so the checks above could fail)
    wide = copy.deepcopy(model)
    wide.config.sliding_window = 4 * T
    with torch.no_grad():
        assert relative_error(wide(**data.base).logits[:, -1], model(**data.base).logits[:, -1]) > 1e-3
    # the sliding layers given the global layers' mask: the self-check refuses the result
    no_window = replace(store, masks=[store.masks[full] if k == sliding else m for k, m in enumerate(store.masks)])
    with pytest.raises(FastPathMismatch, match="relative error"):
        fast._check(no_window, data, fast.check_reference, noise=fast.check_result["model_noise"])


@pytest.mark.parametrize("window", [GEMMA_WINDOW, 4 * T], ids=["window<prompt", "window>prompt"])
def test_chunks_with_and_without_padding_share_one_layout(window):
    # passes over unpadded chunks give sliding and global layers the same mask (none when the window is longer
    # than the prompt), a padded chunk two: the cache must keep them apart wherever one pass did
    model = tiny_gemma(sliding_window=window)
    mask = torch.ones(N, T, dtype=torch.long)
    mask[-8:] = left_padding(8)
    data = make_data(torch.full((N,), T - 3), mask=mask)
    intervention = DASIntervention(D, 5)
    forward = CachedForward(model, Site(1, "x"), intervention, [data], chunk_size=8)
    assert forward.stores[0].layout.n_masks == 2
    assert_same_as_plain(model, Site(1, "x"), intervention, data, forward)


def test_soft_capped_logits_and_eager_attention():
    capped = tiny_gemma(final_logit_softcapping=2.0)
    with torch.no_grad():
        capped.lm_head.weight.mul_(50.0)  # logits beyond the cap, so that it acts
    eager = tiny_gemma()
    eager.set_attn_implementation("eager")  # masks in its additive form
    data = make_data(torch.full((N,), T - 2), mask=left_padding())
    for model in (capped, eager):
        assert_same_as_plain(model, Site(1, "x"), DASIntervention(D, 4), data)
    with torch.no_grad():
        logits = CachedForward(capped, Site(1, "x"), DASIntervention(D, 4), [data])(data)
        raw = F.linear(capped.model.norm(capped.model(**data.base).last_hidden_state[:, -1]), capped.lm_head.weight)
    assert logits.abs().max() <= 2.0 < raw.abs().max()


def test_several_layers_from_one_pass_and_the_site_strategy_on_gemma(tiny_models):
    model = tiny_models["gemma3"]
    columns = torch.stack([torch.full((N,), T - 4), torch.full((N,), T - 1)], dim=1)
    everything = make_data(columns, mask=left_padding(every=2))
    caches = shared_caches(model, [0, 2, 3], [everything])
    for layer, j in ((0, 0), (2, 1), (3, 0)):
        column = replace(everything, base_pos=columns[:, j], source_pos=columns[:, j])
        intervention = DASIntervention(D, 5)
        forward = caches[layer].for_position(j, [column], Site(layer, f"col{j}"), intervention)
        assert_same_as_plain(model, Site(layer, f"col{j}"), intervention, column, forward)
    data = make_data(torch.full((N,), T - 3), mask=left_padding())
    intervention = DASIntervention(D, 5)
    site = CachedForward(model, Site(1, "x"), intervention, [data], strategy="site")  # prefix keys recomputed per step
    assert site.plans[0].strategy == "site" and site.stores[0].prefix_hidden is not None
    assert_same_as_plain(model, Site(1, "x"), intervention, data, site)


def test_training_on_gemma_is_the_same_on_both_paths(tiny_models):
    model = tiny_models["gemma3"]
    data, held_out = make_data(torch.full((N,), T - 2), mask=left_padding()), make_data(torch.full((N,), T - 2), seed=2)
    results = []
    for fast in (True, False):
        torch.manual_seed(5)
        intervention = BoundlessDASIntervention(D)
        forward = make_forward(model, Site(2, "x"), intervention, [data, held_out], fast=fast)
        assert isinstance(forward, CachedForward) == fast
        results.append(train_intervention(forward, intervention, data, TrainConfig(steps=5, batch_size=8), held_out, progress=False))
    for a, b in zip(results[0].curves, results[1].curves):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert results[0].iia == results[1].iia


def test_what_the_fast_path_cannot_run_goes_to_the_plain_path_saying_why(tiny_models):
    data = make_data(torch.full((8,), T - 2), mask=left_padding(8))
    flash = copy.deepcopy(tiny_models["gemma3"])
    flash.config._attn_implementation = "flash_attention_2"  # its masks are not tensors the fast path can cut
    with pytest.warns(PlainPathWarning, match="attention implementation 'flash_attention_2'"):
        assert isinstance(make_forward(flash, Site(1, "x"), DASIntervention(D, 4), [data]), PlainForward)
    model = tiny_models["llama"]
    layer = model.model.layers[2]
    handle = layer.register_forward_pre_hook(  # a layer given a tensor the fast path does not know how to cut
        lambda module, args, kwargs: (args, {**kwargs, "extra_bias": torch.zeros(1)}), with_kwargs=True)
    try:
        with pytest.warns(PlainPathWarning, match="'extra_bias'"):
            assert isinstance(make_forward(model, Site(0, "x"), DASIntervention(D, 4), [data]), PlainForward)
    finally:
        handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and without it, the fast path runs, unannounced
        assert isinstance(make_forward(model, Site(0, "x"), DASIntervention(D, 4), [data]), CachedForward)
    positions = replace(data, base={"input_ids": data.base["input_ids"], "position_ids": torch.arange(T).expand(8, -1)})
    with pytest.warns(PlainPathWarning, match="position_ids without an attention_mask"):  # packed sequences?
        assert isinstance(make_forward(model, Site(0, "x"), DASIntervention(D, 4), [positions]), PlainForward)
