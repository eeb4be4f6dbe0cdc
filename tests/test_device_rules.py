"""Device bugs and host synchronisations caught on a CPU-only machine (tests/device_rules.py says how).

A GPU crashed at das_lib's first fast-path call because `CachedForward._check` made row numbers with
`torch.arange(n)` (on the CPU) and indexed CUDA tensors with them; and each training step read the
device back 14 times. These tests hold both down without a GPU; tests/test_cuda.py checks them on one.
"""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from das_lib.method import fastpath
from das_lib.method.data import InterchangeData
from das_lib.method.fastpath import CachedForward, caches_or_plain
from das_lib.method.interventions import BoundlessDASIntervention, load_intervention, save_intervention
from das_lib.method.sites import Site
from das_lib.method.training import PlainForward, TrainConfig, evaluate, train_intervention, unintervened_iia
from device_rules import FACTORIES, PACKAGE, FactoryGuard, HostReads

V, D, T, N = 40, 32, 12, 64
THE_ARANGE_BUG = """
def rows_for_the_check(data, n=8):
    return torch.arange(min(n, len(data)))
"""


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def padded_data(seed: int = 1) -> InterchangeData:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(N, T, dtype=torch.long)
    mask[::3, :2] = 0  # some rows padded on the left, as the price-tagging prompts are
    ids = lambda: torch.randint(0, V, (N, T), generator=g)  # noqa: E731
    pos = torch.full((N,), T - 3)
    return InterchangeData({"input_ids": ids(), "attention_mask": mask}, {"input_ids": ids(), "attention_mask": mask},
                           pos, pos.clone(), torch.randint(0, 2, (N,), generator=g), torch.randint(0, V, (N,), generator=g))


def factory_calls_without_device(source: str) -> list[int]:
    """Lines of `source` that call a torch factory (tests/device_rules.FACTORIES) without device=."""
    names = {f.__name__ for f in FACTORIES}
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
            and not any(k.arg == "device" for k in node.keywords)]


def test_the_guards_catch_the_arange_bug_and_a_host_read():
    namespace = {"torch": torch}
    exec(compile(THE_ARANGE_BUG, str(Path(fastpath.__file__)), "exec"), namespace)  # as if in das_lib
    with FactoryGuard() as guard:
        namespace["rows_for_the_check"]([0] * 12)
        torch.arange(3)  # the test's own call is not the library's
    assert guard.violations == ["das_lib/method/fastpath.py:3: torch.arange(...) without device="]
    assert factory_calls_without_device(THE_ARANGE_BUG) == [3]
    assert factory_calls_without_device(THE_ARANGE_BUG.replace("len(data)))", "len(data)), device=d)")) == []
    namespace = {"torch": torch}
    exec(compile("def read(t):\n    return t.sum().item() + len(t.tolist())\n", str(Path(fastpath.__file__)), "exec"), namespace)
    with HostReads() as reads:
        namespace["read"](torch.ones(3))
        torch.ones(1).item()
    assert reads.reads == ["das_lib/method/fastpath.py:2"] * 2


def test_every_factory_call_of_the_library_names_its_device():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             for line in factory_calls_without_device(path.read_text())]
    assert found == [], "tensors made without device= land on the CPU and crash a GPU run: " + ", ".join(found)


@pytest.mark.parametrize("strategy", ["full", "site"])
def test_training_and_evaluation_make_no_tensor_without_a_device(llama, tmp_path, strategy):
    data = padded_data()
    train, test = data.select(np.arange(48)), data.select(np.arange(48, N))
    torch.manual_seed(0)
    with FactoryGuard() as guard:
        intervention = BoundlessDASIntervention(D, n_variables=2, device="cpu")
        fast = CachedForward(llama, Site(1, "x"), intervention, [train, test], strategy=strategy)
        train_intervention(fast, intervention, train, TrainConfig(steps=3, batch_size=8, eval_every=2), test, progress=False)
        train_intervention(PlainForward(llama, Site(1, "x"), intervention), intervention, train,
                           TrainConfig(steps=2, batch_size=8), test, progress=False)
        two = data.select(np.arange(16))
        two = InterchangeData(two.base, two.source, torch.stack([two.base_pos, two.base_pos + 2], 1),
                              torch.stack([two.source_pos, two.source_pos + 2], 1), two.variable, two.labels)
        caches = caches_or_plain(llama, [0, 2], [two])  # two layers and two positions from one pass
        evaluate(caches[2].for_position(1, [two.column(1)], Site(2, "x"), intervention), two.column(1))
        unintervened_iia(llama, test)
        save_intervention(intervention, tmp_path / "a")
        load_intervention(tmp_path / "a", device="cpu")
    assert guard.violations == []


class StepReads:
    """The host reads (HostReads) made during each training step: a step starts where the forward is called."""

    def __init__(self, forward, reads: HostReads):
        self.forward, self.reads, self.starts = forward, reads, []

    def __call__(self, batch):
        self.starts.append(len(self.reads.reads))
        return self.forward(batch)

    def per_step(self) -> list[int]:
        ends = self.starts[1:] + [len(self.reads.reads)]
        return [end - start for start, end in zip(self.starts, ends)]


@pytest.mark.parametrize("path", ["fast", "plain"])
def test_a_training_step_reads_the_device_at_most_twice(llama, path):
    data = padded_data()
    torch.manual_seed(0)
    intervention = BoundlessDASIntervention(D, n_variables=2)
    site = Site(1, "x")
    forward = CachedForward(llama, site, intervention, [data]) if path == "fast" else PlainForward(llama, site, intervention)
    with HostReads() as reads:
        counted = StepReads(forward, reads)
        steps = 40  # 5 epochs of 8 batches: new batch orders, and statistics read every 16 steps
        train_intervention(counted, intervention, data, TrainConfig(steps=steps, batch_size=8), progress=False)
    per_step = counted.per_step()
    assert len(per_step) == steps
    assert max(per_step) <= 2, f"host reads per step: {per_step} at {reads.reads}"
    assert sum(per_step) <= 2 * (steps // 16 + 1) + steps // 8 + 2  # the batched statistics and one per new order
