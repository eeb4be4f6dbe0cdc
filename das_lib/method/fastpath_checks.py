"""Whether the fast path may run (`fast_path_problem`) and how its self-check judges what it computed
(`relative_error` against the model's own forward pass, within `check_tolerance` of the model's own
rounding, measured by `self_disagreement`)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from das_lib.method.data import InterchangeData
from das_lib.method.sites import Site, capture, find_layers, layer_module

# The architectures whose decoder layers the fast path runs (das_lib.method.decoder_layers), each checked against
# the plain forward in tests/test_fastpath.py; any other may well work, but is not run until it is checked.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # those whose masks the fast path cuts (flash and flex take none)


class FastPathUnavailable(RuntimeError):
    """The fast path cannot run here; the message says why."""


class FastPathMismatch(FastPathUnavailable):
    """The fast path did not reproduce the model's own forward pass on a cached dataset."""


# The self-check's criterion. The fast path computes the same function as the model in another order,
# so in a low-precision dtype it differs from the model's own forward pass by rounding, which grows with
# the depth above the site. The scale of that rounding is measured on the model itself: its answer
# states under two attention implementations (SDPA and eager), which the fast path may exceed by at
# most CHECK_FACTOR; CHECK_FLOOR keeps the bound above the dtype's rounding where the two agree exactly.
# Errors are relative L2 norms per row (the largest over the checked rows), so that one outlying
# coordinate of a 4096-wide bfloat16 state does not decide, while a shifted position, a wrong rotary
# offset or a missing layer (errors of order 1e-1 to 1) are refused (tests/test_fastpath.py).
CHECK_FACTOR = 3.0
CHECK_FLOOR = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest over rows of |ours - reference| / |reference| (L2 norms of the last axis, in float32)."""
    ours, reference = ours.float(), reference.float()
    return ((ours - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-30)).max().item()


def self_disagreement(model: nn.Module, data: InterchangeData, reference: torch.Tensor) -> float:
    """How far the model's own last-layer answer states on `data`'s bases move when its attention runs
    in another implementation (eager instead of SDPA, or back): its rounding at this dtype and depth."""
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    other = "eager" if current != "eager" else "sdpa"
    last = Site(len(find_layers(model)) - 1)
    positions = torch.full((len(data),), data.base["input_ids"].shape[1] - 1, dtype=torch.long, device="cpu")
    _set_attention(model, other)
    try:
        with torch.no_grad():
            theirs = capture(model, last, data.base, positions)
    finally:
        _set_attention(model, current)
    return relative_error(theirs, reference)


def _set_attention(model: nn.Module, implementation: str) -> None:
    """Switch `model`'s attention to `implementation` ("sdpa" or "eager") under transformers 5.x or 4.x."""
    if hasattr(model, "set_attn_implementation"):  # transformers 5.x
        model.set_attn_implementation(implementation)
        return
    # transformers 4.x (4.48 on) has no setter, but its attention layers and mask builder read the config's
    # field at every call; a submodule may hold its own copy of the config, so every one is set.
    configs = {id(m.config): m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}
    for config in configs.values():
        config._attn_implementation = implementation


def check_tolerance(noise: float, dtype: torch.dtype) -> float:
    """The largest relative error the self-check accepts, given the model's own disagreement `noise`."""
    return max(CHECK_FACTOR * noise, CHECK_FLOOR.get(dtype, CHECK_FLOOR[torch.bfloat16]))


def fast_path_problem(model: nn.Module, site: Site, data: Iterable[InterchangeData] = ()) -> str | None:
    """Why the fast path cannot run this model, site or data (None when it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of the supported types {SUPPORTED_MODEL_TYPES}"
    body = getattr(model, "model", None)
    if not hasattr(body, "norm") or model.get_output_embeddings() is None:
        return f"{type(model).__name__} does not have a decoder's layout (model.norm, an output head)"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        return (f"attention implementation {implementation!r} is not one of {ATTENTION_IMPLEMENTATIONS} "
                "(load the model with attn_implementation='sdpa')")
    layer_module(model, site)  # refuses a layer that does not exist
    for index, layer in enumerate(find_layers(model)[site.layer + 1 :], start=site.layer + 1):
        # the model's own layers only: a wrapper may change what a layer computes in ways no check here sees
        if not type(layer).__module__.startswith("transformers.") or not hasattr(
                getattr(getattr(layer, "self_attn", None), "k_proj", None), "out_features"):
            return (f"decoder layer {index} is a {type(layer).__name__}, not one of transformers' own decoder layers "
                    "with self_attn.k_proj (a wrapped or edited layer runs on the plain path)")
    for d in data:
        if d.base_pos is None or d.source_pos is None:
            return "the data has no token positions (the fast path intervenes at token positions)"
        if any(not (t.dtype in (torch.long, torch.int, torch.bool)) for t in [*d.base.values(), *d.source.values()]):
            return "model inputs other than integer tensors (input_ids, attention_mask, position_ids) are not supported"
        mask = d.base.get("attention_mask")
        if mask is not None and not bool(mask[:, -1].all()):
            return "some base inputs are padded on the right; the answer is read at the last token, so pad on the left"
        if mask is None and "position_ids" in d.base:  # transformers would read them as packed sequences
            return "position_ids without an attention_mask are not supported; give the attention_mask too"
    return None
