"""Shared fixtures: a tiny random model of each architecture the fast path runs, without a tokenizer or a download.

Llama (one kind of layer) and Gemma 3 (sliding-window and global layers with their own rotary bases, normalised
queries and keys, four norms per layer, scaled embeddings): both small enough that a test builds their caches
in milliseconds, with attention sharpened as in a trained model (at the default initialisation attention is
nearly uniform, and a wrong mask or rotary offset would change almost nothing). Gemma's window (4 tokens) is
shorter than the tests' prompts, so that the sliding window really hides keys.

And the grid engine's tests' tiny grid (tests/tiny_grid.py), run once per session; tests that change a store
work on a copy of the finished one (`copy_store`), so that every test sees the grid as one uninterrupted run left it.
"""
from __future__ import annotations

import shutil
from typing import Callable

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from das_lib.runs.grid import Grid
from tiny_grid import CELLS, tiny_spec

TINY_VOCAB, TINY_WIDTH = 40, 32
GEMMA_LAYER_TYPES = ("sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention")
GEMMA_WINDOW = 4


def tiny_llama(**overrides) -> LlamaForCausalLM:
    """A frozen random Llama: 3 layers, width 32, 4 query and 2 key/value heads, a 40-token vocabulary."""
    config = dict(vocab_size=TINY_VOCAB, hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return _frozen(LlamaForCausalLM(LlamaConfig(**{**config, **overrides})))


def tiny_gemma(**overrides) -> Gemma3ForCausalLM:
    """A frozen random Gemma 3: 5 layers (sliding, sliding, global, sliding, global), width 32, head size 8, a
    4-token sliding window with rotary base 10,000 and global layers with base 1,000,000, a 40-token vocabulary."""
    config = dict(vocab_size=TINY_VOCAB, hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=len(GEMMA_LAYER_TYPES),
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                  layer_types=list(GEMMA_LAYER_TYPES), sliding_window=GEMMA_WINDOW, max_position_embeddings=64)
    torch.manual_seed(0)
    return _frozen(Gemma3ForCausalLM(Gemma3TextConfig(**{**config, **overrides})))


def sharpen(model: torch.nn.Module, factor: float = 4.0) -> torch.nn.Module:
    """Scale every layer's queries and keys by `factor`. Gemma normalises them per head, so that its attention
    logits reach sqrt(head_dim) / scale already: there the queries and keys are scaled by sqrt(factor) (through
    their norms, whose weight w scales by 1 + w), as much as float32 leaves the gradients exact to 1e-4."""
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            if hasattr(attn, "q_norm"):
                attn.q_norm.weight.fill_(factor**0.5 - 1.0)
                attn.k_norm.weight.fill_(factor**0.5 - 1.0)
            else:
                attn.q_proj.weight.mul_(factor)
                attn.k_proj.weight.mul_(factor)
    return model


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with sharpened attention, in eval mode with no gradients."""
    return sharpen(model).eval().requires_grad_(False)


ARCHITECTURES = {"llama": tiny_llama, "gemma3": tiny_gemma}


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, torch.nn.Module]:
    """Every architecture's tiny model, by name ("llama", "gemma3")."""
    return {name: build() for name, build in ARCHITECTURES.items()}


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory) -> Grid:
    """The tiny grid run to the end into its own store, on one thread (a tiny model gains nothing from more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grid = Grid(tiny_spec(), tmp_path_factory.mktemp("tiny-store"), progress=False)
        assert grid.run() == {"ran": CELLS, "reused": 0}
    finally:
        torch.set_num_threads(threads)
    return grid


@pytest.fixture
def copy_store(tiny_grid, tmp_path) -> Callable[[str], Grid]:
    """Makes a copy of the finished tiny grid's store and returns a new Grid of the same spec reading it."""

    def copy(name: str = "copy") -> Grid:
        root = tmp_path / name
        shutil.copytree(tiny_grid.store.root, root, ignore=shutil.ignore_patterns("locks"))
        return Grid(tiny_grid.spec, root, progress=False)

    return copy


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (more threads only add synchronisation), as Dask workers do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
