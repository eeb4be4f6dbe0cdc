"""The fast path (das_lib.method.fastpath) must give the plain path's logits, loss, gradients and IIA."""
import copy
import warnings
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F
from transformers import (
    GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
    MistralConfig, MistralForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM,
)

from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import (
    CachedForward, FastPathMismatch, FastPathUnavailable, PlainPathWarning, caches_or_plain, make_forward, shared_caches,
)
from das_lib.method.fastpath_checks import CHECK_FACTOR, CHECK_FLOOR, check_tolerance, self_disagreement
from das_lib.method.interventions import BoundlessDASIntervention, DASIntervention
from das_lib.method.sites import Site, capture
from das_lib.method.training import PlainForward, TrainConfig, evaluate, train_intervention

V, D, T, N = 40, 32, 10, 24
SMALL = dict(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return frozen(LlamaForCausalLM(LlamaConfig(**SMALL)))


def make_data(positions: torch.Tensor, seed: int = 1, mask: torch.Tensor | None = None, n_variables: int = 1) -> InterchangeData:
    g = torch.Generator().manual_seed(seed)
    n = len(positions)
    base = {"input_ids": torch.randint(0, V, (n, T), generator=g)}
    source = {"input_ids": torch.randint(0, V, (n, T), generator=g)}
    if mask is not None:
        base["attention_mask"], source["attention_mask"] = mask, mask
    variable = torch.randint(0, n_variables, (n,), generator=g)
    return InterchangeData(base, source, positions, positions.clone(), variable, torch.randint(0, V, (n,), generator=g))


def interventions(d: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(3)
    boundless = BoundlessDASIntervention(d, n_variables=2)
    boundless.temperature = 2.0
    low_rank = BoundlessDASIntervention(d, r=8)
    low_rank.temperature = 1.0
    return {"das": DASIntervention(d, 6), "boundless": boundless, "low_rank": low_rank}


def loss_and_grads(forward, intervention, data) -> tuple[torch.Tensor, float, list[torch.Tensor]]:
    intervention.zero_grad()
    logits = forward(data)
    loss = F.cross_entropy(logits, data.labels)
    loss.backward()
    return logits.detach(), loss.item(), [p.grad.clone() for p in intervention.parameters()]


@pytest.mark.parametrize("kind", ["das", "boundless", "low_rank"])
@pytest.mark.parametrize("position", [T - 1, T - 4])
@pytest.mark.parametrize("layer", [0, 1])
def test_fast_equals_plain(llama, kind, position, layer):
    data = make_data(torch.full((N,), position), n_variables=2 if kind == "boundless" else 1)
    intervention = interventions(D)[kind]
    site = Site(layer, "x")
    fast, plain = CachedForward(llama, site, intervention, [data]), PlainForward(llama, site, intervention)
    lf, loss_f, grads_f = loss_and_grads(fast, intervention, data)
    lp, loss_p, grads_p = loss_and_grads(plain, intervention, data)
    assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
    assert loss_f == pytest.approx(loss_p, abs=1e-5)
    assert any(g.abs().max() > 0 for g in grads_p)  # the comparison below is not vacuous
    for gf, gp in zip(grads_f, grads_p):
        assert torch.allclose(gf, gp, atol=1e-5, rtol=1e-4)
    assert evaluate(fast, data) == evaluate(plain, data)


def test_unintervened_fast_logits_equal_the_model(llama):
    data = make_data(torch.full((N,), T - 3))
    same = InterchangeData(data.base, data.base, data.base_pos, data.base_pos, data.variable, data.labels)
    fast = CachedForward(llama, Site(1, "x"), DASIntervention(D, 6), [same])  # source = base: no change
    with torch.no_grad():
        assert torch.allclose(fast(same), llama(**same.base).logits[:, -1], atol=1e-5, rtol=0)


def test_varied_positions_several_positions_and_left_padding(llama):
    mask = torch.ones(N, T, dtype=torch.long)
    for i in range(N):
        mask[i, : i % 3] = 0  # left padding of 0..2 tokens
    single = torch.tensor([T - 1 - i % 5 for i in range(N)])
    several = torch.stack([single - 2, single], dim=1)  # two positions intervened together
    for positions, d in [(single, D), (several, 2 * D)]:
        data = make_data(positions, mask=mask)
        intervention = DASIntervention(d, 5)
        fast, plain = CachedForward(llama, Site(1, "x"), intervention, [data]), PlainForward(llama, Site(1, "x"), intervention)
        lf, loss_f, grads_f = loss_and_grads(fast, intervention, data)
        lp, loss_p, grads_p = loss_and_grads(plain, intervention, data)
        assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_f, grads_p))


def test_one_cache_serves_every_position_of_a_layer(llama):
    mask = torch.ones(N, T, dtype=torch.long)
    mask[::2, :2] = 0
    columns = torch.stack([torch.full((N,), T - 1), torch.tensor([T - 3 - i % 4 for i in range(N)])], dim=1)
    everything = make_data(columns, mask=mask)
    shared = CachedForward(llama, Site(1), None, [everything])
    for j in range(2):
        column = replace(everything, base_pos=columns[:, j], source_pos=columns[:, j])
        intervention = DASIntervention(D, 5)
        forward = shared.for_position(j, [column], Site(1, f"col{j}"), intervention)
        assert forward.stores[0].suffix is shared.stores[0].suffix  # shared, not copied
        lf, _, grads_f = loss_and_grads(forward, intervention, column)
        lp, _, grads_p = loss_and_grads(PlainForward(llama, Site(1, f"col{j}"), intervention), intervention, column)
        assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_f, grads_p))
    for other in (make_data(columns[:, 0], seed=5), replace(everything, base_pos=columns[:, 1], source_pos=columns[:, 1])):
        with pytest.raises(FastPathMismatch, match="not in this cache"):  # other examples, or another column
            shared.for_position(0, [other], Site(1, "x"), DASIntervention(D, 5))


@pytest.mark.parametrize("padded", [False, True])
def test_caches_of_several_layers_from_one_pass_equal_the_plain_path(llama, padded):
    # one forward pass caches layers 0 and 1 together; a later position (the same in every row) then runs
    # with a longer prefix, which must change nothing but the work done
    mask = None
    if padded:
        mask = torch.ones(N, T, dtype=torch.long)
        mask[::2, :2] = 0
    columns = torch.stack([torch.full((N,), T - 4), torch.full((N,), T - 1)], dim=1)
    everything = make_data(columns, mask=mask)
    caches = shared_caches(llama, [0, 1], [everything])
    assert set(caches) == {0, 1} and caches[0].stores[0].keys[1] is caches[1].stores[0].keys[0]  # shared, not copied
    for layer, j in ((0, 0), (0, 1), (1, 1)):
        column = replace(everything, base_pos=columns[:, j], source_pos=columns[:, j])
        intervention = DASIntervention(D, 5)
        forward = caches[layer].for_position(j, [column], Site(layer, f"col{j}"), intervention)
        assert forward.stores[0].prefix_len == int(columns[0, j])  # every position before it is in the prefix
        lf, _, grads_f = loss_and_grads(forward, intervention, column)
        lp, _, grads_p = loss_and_grads(PlainForward(llama, Site(layer, f"col{j}"), intervention), intervention, column)
        assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_f, grads_p))


def test_caches_of_several_layers_that_do_not_fit_are_refused_saying_why(llama):
    data = make_data(torch.full((N,), T - 2))
    with pytest.raises(FastPathUnavailable, match="over the fast path's budget of 0.0 MiB"):
        shared_caches(llama, [0, 1], [data], max_cache_bytes=1024)
    with pytest.warns(PlainPathWarning, match="using the plain path .*budget"):  # told, not silent
        assert caches_or_plain(llama, [0, 1], [data], max_cache_bytes=1024) == {0: None, 1: None}


def test_training_is_the_same_on_both_paths(llama):
    data, held_out = make_data(torch.full((N,), T - 2)), make_data(torch.full((N,), T - 2), seed=2)
    config = TrainConfig(steps=6, batch_size=8, seed=0)
    results = []
    for fast in (True, False):
        torch.manual_seed(5)
        intervention = BoundlessDASIntervention(D)
        forward = make_forward(llama, Site(1, "x"), intervention, [data, held_out], fast=fast)
        assert isinstance(forward, CachedForward) == fast
        results.append(train_intervention(forward, intervention, data, config, held_out, progress=False))
    for a, b in zip(results[0].curves, results[1].curves):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert results[0].iia == results[1].iia


def test_batches_outside_the_cached_data_are_exact(llama):
    cached, other = make_data(torch.full((N,), T - 1)), make_data(torch.full((8,), T - 2), seed=9)
    intervention = DASIntervention(D, 4)
    fast = CachedForward(llama, Site(1, "x"), intervention, [cached])
    plain = PlainForward(llama, Site(1, "x"), intervention)
    with torch.no_grad():
        assert torch.allclose(fast(other), plain(other), atol=1e-5, rtol=0)
    assert fast.cache_bytes(cached) <= fast.stores[0].nbytes()
    with pytest.warns(UserWarning, match="not caching"):
        tight = CachedForward(llama, Site(1, "x"), intervention, [cached], max_cache_bytes=1000)
    assert not tight.stores
    with torch.no_grad():
        assert torch.allclose(tight(cached), plain(cached), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls,config_cls", [(MistralForCausalLM, MistralConfig), (Qwen2ForCausalLM, Qwen2Config)])
def test_other_llama_family_models(cls, config_cls):
    torch.manual_seed(0)
    model = frozen(cls(config_cls(**SMALL)))
    data = make_data(torch.full((8,), T - 2))
    intervention = DASIntervention(D, 6)
    forward = make_forward(model, Site(1, "x"), intervention, [data])
    assert isinstance(forward, CachedForward)
    with torch.no_grad():
        assert torch.allclose(forward(data), PlainForward(model, Site(1, "x"), intervention)(data), atol=1e-5, rtol=0)


def test_gpt2_and_neox_use_the_plain_path():
    torch.manual_seed(0)
    models = [
        GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_positions=32)),
        GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=32)),
    ]
    data = make_data(torch.full((6,), T - 1))
    for model in models:
        frozen(model)
        with pytest.warns(UserWarning, match="plain path"):
            forward = make_forward(model, Site(1, "x"), DASIntervention(D, 4), [data])
        assert isinstance(forward, PlainForward)
        with torch.no_grad():
            changed = forward(data)
            same = model(**data.base).logits[:, -1]
        assert changed.shape == (6, V) and not torch.allclose(changed, same)  # the hook did intervene


def test_missing_layer_or_position_is_refused_with_the_range(llama):
    data = make_data(torch.full((4,), T - 1))
    with pytest.raises(IndexError, match=r"layers 0\.\.2"):
        make_forward(llama, Site(7, "x"), DASIntervention(D, 4), [data])
    with pytest.raises(IndexError, match=rf"positions 0\.\.{T - 1}"):  # where the data is made, on the CPU
        make_data(torch.full((4,), T + 3))
    beyond = make_data(torch.full((4,), T - 1))
    beyond.base_pos, beyond.source_pos = beyond.base_pos + 4, beyond.source_pos + 4
    beyond.positions_checked = False  # as for data made on a GPU: checked where it is used
    with pytest.raises(IndexError, match=rf"positions 0\.\.{T - 1}"):
        PlainForward(llama, Site(1, "x"), DASIntervention(D, 4))(beyond)
    with pytest.raises(IndexError, match=rf"positions 0\.\.{T - 1}"):
        CachedForward(llama, Site(1, "x"), DASIntervention(D, 4), [beyond])


def test_right_padding_is_refused(llama):
    mask = torch.ones(4, T, dtype=torch.long)
    mask[:, -2:] = 0
    data = make_data(torch.full((4,), T - 3), mask=mask)
    with pytest.raises(ValueError, match="pad on the left"):
        CachedForward(llama, Site(1, "x"), DASIntervention(D, 4), [data])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(make_forward(llama, Site(1, "x"), DASIntervention(D, 4), [data]), PlainForward)


# ---- the self-check at depth: 32 layers in bfloat16 ---------------------------------------------

@pytest.fixture(scope="module")
def deep_bf16() -> tuple[LlamaForCausalLM, InterchangeData, dict]:
    """A 32-layer narrow Llama in bfloat16 whose attention depends on position (queries and keys scaled up,
    as in a trained model: at the default initialisation attention is nearly uniform and a wrong rotary
    offset changes almost nothing), 8 padded prompts intervened three tokens before the end, and the fast
    path's caches of them at every layer (one pass; a refusal at any layer raises FastPathMismatch)."""
    from das_lib.models.shape7b import alpaca_7b_config, random_model
    model = random_model(alpaca_7b_config(32, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                          intermediate_size=128, vocab_size=256), torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    g = torch.Generator().manual_seed(0)
    n, length = 8, 31
    ids = torch.randint(3, 256, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[:3, :4] = 0
    pos = torch.full((n,), length - 3)
    data = InterchangeData({"input_ids": ids, "attention_mask": mask}, {"input_ids": ids.flip(0), "attention_mask": mask.flip(0)},
                           pos, pos.clone(), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    return model, data, shared_caches(model, list(range(32)), [data])


def test_the_bf16_self_check_passes_the_exact_fast_path_at_every_layer_of_32(deep_bf16):
    _, _, caches = deep_bf16
    assert sorted(caches) == list(range(32))
    for layer, cache in caches.items():
        result = cache.check_result
        assert result["error"] <= result["tolerance"] and result["model_noise"] > 0, (layer, result)


def test_the_bf16_self_check_passes_a_fast_path_that_only_rounds_differently(deep_bf16):
    model, data, caches = deep_bf16
    # the fast path runs the model's own layers: under eager attention they compute the same function as the
    # reference (SDPA), rounded in another order (bfloat16 products, softmax in float32)
    model.set_attn_implementation("eager")
    try:
        for layer in range(0, 32, 3):
            cache = copy.copy(caches[layer])
            cache._check(cache.stores[0], data, cache.check_reference, noise=cache.check_result["model_noise"])
            assert 0 < cache.check_result["error"] <= cache.check_result["tolerance"], (layer, cache.check_result)
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("layer", [0, 8, 16])
@pytest.mark.parametrize("mismatch", ["shifted position", "rotary offset", "missing layer"])
def test_the_bf16_self_check_refuses_a_real_mismatch(deep_bf16, layer, mismatch):
    _, data, caches = deep_bf16
    cache = copy.copy(caches[layer])
    store = cache.stores[0]
    if mismatch == "shifted position":  # each position gets its neighbour's state
        store = replace(store, suffix=torch.roll(store.suffix, 1, dims=1))
    elif mismatch == "rotary offset":  # the suffix rotated as one position later
        store = replace(store, cos=torch.roll(store.cos, 1, dims=1), sin=torch.roll(store.sin, 1, dims=1))
    else:  # the last layer above the site skipped
        cache.upper = cache.upper[:-1]
        store = replace(store, keys=store.keys[:-1], values=store.values[:-1])
    with pytest.raises(FastPathMismatch, match="relative error"):
        cache._check(store, data, cache.check_reference, noise=cache.check_result["model_noise"])


def test_the_check_tolerance_is_a_small_multiple_of_the_models_own_disagreement():
    assert check_tolerance(0.02, torch.bfloat16) == pytest.approx(CHECK_FACTOR * 0.02)
    assert check_tolerance(0.0, torch.bfloat16) == CHECK_FLOOR[torch.bfloat16]  # never below the dtype's rounding
    assert check_tolerance(1e-7, torch.float32) == CHECK_FLOOR[torch.float32]
    assert 2 <= CHECK_FACTOR <= 4  # above: a rotary offset at layer 16 passes; below: the other rounding order fails


def test_the_self_check_switches_attention_without_transformers_5s_setter(llama, monkeypatch):
    """transformers 4.x (pyvene's environment in `make bench`) has no `set_attn_implementation`; the self-check
    then sets the config field its attention reads at every call, and measures what the setter measures."""
    data = make_data(torch.full((N,), T - 1))
    reference = capture(llama, Site(SMALL["num_hidden_layers"] - 1), data.base, data.base_pos)
    with_setter = self_disagreement(llama, data, reference)
    monkeypatch.delattr(PreTrainedModel, "set_attn_implementation", raising=False)
    assert not hasattr(llama, "set_attn_implementation")
    without_setter = self_disagreement(llama, data, reference)
    assert without_setter == with_setter > 0  # eager rounds otherwise than SDPA: the switch took effect
    assert llama.config._attn_implementation == "sdpa"  # and was undone
