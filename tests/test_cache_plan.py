"""The fast path's cache strategies (das_lib.method.cache_plan) are all exact, and the plan fits the budget."""
import pytest
import torch
from dataclasses import replace
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.method.cache_plan import STRATEGIES, CacheShape, plan_cache
from das_lib.method.fastpath import CachedForward, shared_cache
from das_lib.method.interventions import BoundlessDASIntervention, DASIntervention
from das_lib.method.sites import Site
from das_lib.method.data import InterchangeData
from das_lib.method.training import PlainForward, TrainConfig, evaluate, train_intervention

V, D, T, N = 40, 32, 10, 16
SMALL = dict(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL)).eval().requires_grad_(False)


def make_data(positions: torch.Tensor, seed: int = 1, padded: bool = False) -> InterchangeData:
    g = torch.Generator().manual_seed(seed)
    n = len(positions)
    base = {"input_ids": torch.randint(0, V, (n, T), generator=g)}
    source = {"input_ids": torch.randint(0, V, (n, T), generator=g)}
    if padded:
        mask = torch.ones(n, T, dtype=torch.long)
        for i in range(n):
            mask[i, : i % 3] = 0  # left padding of 0..2 tokens
        base["attention_mask"], source["attention_mask"] = mask, mask.clone()
    return InterchangeData(base, source, positions, positions.clone(), torch.zeros(n, dtype=torch.long),
                           torch.randint(0, V, (n,), generator=g))


def logits_loss_grads(forward, intervention, data):
    intervention.zero_grad()
    logits = forward(data)
    F.cross_entropy(logits, data.labels).backward()
    return logits.detach(), [p.grad.clone() for p in intervention.parameters()]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layer", [0, 1])
def test_every_strategy_equals_the_plain_path(llama, strategy, layer):
    single = torch.tensor([T - 1 - i % 4 for i in range(N)])
    for positions, d in [(single, D), (torch.stack([single - 2, single], dim=1), 2 * D)]:
        data = make_data(positions, padded=True)
        torch.manual_seed(3)
        intervention = BoundlessDASIntervention(d, r=8)
        intervention.temperature = 1.0
        fast = CachedForward(llama, Site(layer, "x"), intervention, [data], strategy=strategy)
        assert [p.strategy for p in fast.plans] == [strategy]
        assert len(fast.stores) == (0 if strategy == "batch" else 1)
        if strategy == "site":  # the site's prefix states are kept, not the keys and values above it
            assert fast.stores[0].prefix_hidden is not None and not fast.stores[0].keys
        plain = PlainForward(llama, Site(layer, "x"), intervention)
        lf, grads_f = logits_loss_grads(fast, intervention, data)
        lp, grads_p = logits_loss_grads(plain, intervention, data)
        assert torch.allclose(lf, lp, atol=1e-5, rtol=0)
        assert any(g.abs().max() > 0 for g in grads_p)
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads_f, grads_p))
        assert evaluate(fast, data) == evaluate(plain, data)


def test_training_is_the_same_under_every_strategy(llama):
    data, held_out = make_data(torch.full((N,), T - 2)), make_data(torch.full((N,), T - 2), seed=2)
    config = TrainConfig(steps=4, batch_size=8, seed=0)
    runs = []
    for strategy in (*STRATEGIES, "plain"):
        torch.manual_seed(5)
        intervention = BoundlessDASIntervention(D)
        forward = (PlainForward(llama, Site(1, "x"), intervention) if strategy == "plain"
                   else CachedForward(llama, Site(1, "x"), intervention, [data, held_out], strategy=strategy))
        runs.append(train_intervention(forward, intervention, data, config, held_out, progress=False))
    for run in runs[:-1]:
        assert [c["loss"] for c in run.curves] == pytest.approx([c["loss"] for c in runs[-1].curves], abs=1e-5)
        assert run.iia == runs[-1].iia


def test_auto_takes_the_cheapest_step_that_fits_and_prints_the_plan(llama):
    data = make_data(torch.full((N,), T - 2))
    probe = CachedForward(llama, Site(0, "x"), DASIntervention(D, 4))
    sizes = {s: probe.cache_bytes(data, s) for s in STRATEGIES}
    assert sizes["full"] > sizes["site"] > sizes["batch"] == 0  # 2 layers above the site: keys+values > states
    for budget, expected in [(sizes["full"], "full"), (sizes["full"] - 1, "site"), (sizes["site"] - 1, "batch")]:
        with pytest.warns(UserWarning, match="not caching") if expected == "batch" else _no_warning():
            fast = CachedForward(llama, Site(0, "x"), DASIntervention(D, 4), [data], max_cache_bytes=budget)
        assert fast.plans[0].strategy == expected
        assert sum(s.nbytes() for s in fast.stores) <= budget
        assert f"-> {expected}" in fast.plan_report() and "does not fit" in fast.plan_report() or expected == "full"


class _no_warning:
    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_a_shared_site_cache_serves_every_position(llama):
    columns = torch.stack([torch.full((N,), T - 1), torch.tensor([T - 3 - i % 4 for i in range(N)])], dim=1)
    everything = make_data(columns, padded=True)
    probe = CachedForward(llama, Site(0), None)
    budget = probe.cache_bytes(everything, "site")  # 2 layers above the site: the site's states fit, the keys and values do not
    shared = shared_cache(llama, 0, [everything], max_cache_bytes=budget)
    assert shared is not None and shared.plans[0].strategy == "site"
    for j in range(2):
        column = replace(everything, base_pos=columns[:, j], source_pos=columns[:, j])
        intervention = DASIntervention(D, 5)
        forward = shared.for_position(j, [column], Site(0, f"col{j}"), intervention)
        lf, _ = logits_loss_grads(forward, intervention, column)
        lp, _ = logits_loss_grads(PlainForward(llama, Site(0, f"col{j}"), intervention), intervention, column)
        assert torch.allclose(lf, lp, atol=1e-5, rtol=0)


def test_the_paper_budget_at_7b_needs_the_site_strategy_on_one_gpu():
    # 20,000 training + 1,000 test pairs of 82 tokens, the 13 last positions searched, site at layer 0 of 32
    shape = CacheShape(n_examples=21000, length=82, prefix=82 - 13, hidden_size=4096, kv_width=4096, n_upper=31)
    assert shape.bytes("full") > 700e9 and 10e9 < shape.bytes("site") < 20e9
    plan = plan_cache(shape, budget=40 * 2**30)
    assert plan.strategy == "site" and "-> site" in str(plan)


def test_bad_plans_are_refused(llama):
    with pytest.raises(ValueError, match="unknown cache strategy"):
        CachedForward(llama, Site(1, "x"), DASIntervention(D, 4), strategy="most")
    with pytest.raises(ValueError, match="max_cache_bytes"):
        CachedForward(llama, Site(1, "x"), DASIntervention(D, 4), max_cache_bytes=-1)
    with pytest.raises(ValueError, match="prefix"):
        CacheShape(n_examples=1, length=10, prefix=10, hidden_size=8, kv_width=8, n_upper=1)
    with pytest.raises(ValueError, match="budget"):
        plan_cache(CacheShape(1, 10, 5, 8, 8, 1), budget=-5)
