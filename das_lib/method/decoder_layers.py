"""A model's own decoder layers, run on a suffix of positions that attends to cached keys and values.

The fast path (`das_lib.method.fastpath`) runs only the layers above the site, and only on the
positions from the first intervened one on; the positions before it are read through their keys and
values, which the intervention cannot change. Nothing of an architecture is written out here: each
decoder layer is the model's own module, called as the model's forward pass calls it, with
- the arguments that pass gave it (`Layout`, read by a `Recorder`): each layer's attention mask and
  rotary tables (Gemma 3's sliding-window and global layers have their own of both), cut to the rows and
  query positions being run;
- a transformers `DynamicCache` holding the prefix's keys and values, to which the layer's own attention
  appends those of the suffix.
`output_logits` is the model's output head (final norm, output embedding, soft-capping).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache

from das_lib.method.sites import main_output

try:  # transformers 5: a cache is a list of layers
    from transformers.cache_utils import DynamicLayer
except ImportError:  # transformers 4.x (make bench's environment): lists of keys and values
    DynamicLayer = None

CACHE_ARGS = ("cache", "past_key_values", "past_key_value")  # the names a transformers layer takes its cache by
POSITION_ARGS = ("position_ids", "cache_position")  # per-position index tensors, cut to the queries on their last axis


class UnknownArguments(ValueError):
    """The model's forward pass gives its layers an argument the fast path cannot cut to the suffix."""


@dataclass
class Layout:
    """Which attention mask and rotary tables each layer reads (kinds: the distinct objects the model's forward
    pass hands its layers), and the arguments passed unchanged (flags such as use_cache)."""

    mask_kind: dict[int, int]  # layer index -> mask kind
    rotary_kind: dict[int, int]  # layer index -> rotary kind
    rotary_widths: tuple[int, ...]  # width of each kind's tables (they are kept side by side on the last axis)
    cache_arg: str = "cache"
    unchanged: dict[str, Any] = field(default_factory=dict)

    @property
    def n_masks(self) -> int:
        """How many kinds of attention mask the layers read."""
        return len(set(self.mask_kind.values()))


def _kinds(values: dict[int, Any]) -> tuple[dict[int, int], list[Any]]:
    """Number the distinct objects of `values` (by identity) in layer order."""
    ids: dict[int, int] = {}
    first: list[Any] = []
    kinds = {}
    for layer, value in sorted(values.items()):
        if id(value) not in ids:
            ids[id(value)] = len(first)
            first.append(value)
        kinds[layer] = ids[id(value)]
    return kinds, first


def allowed_keys(mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
    """A layer's attention mask as booleans (rows, 1, T, T), True where a query sees a key (None: causal)."""
    if mask is None:  # the model saw nothing to hide beyond causality (SDPA's is_causal)
        return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (length, length):
        raise UnknownArguments(f"an attention mask of shape {tuple(mask.shape)} (expected (batch, 1, {length}, {length}))")
    if mask.dtype == torch.bool:
        return mask
    hidden = torch.finfo(mask.dtype).min  # transformers' eager masks: 0 where seen, the dtype's minimum elsewhere
    if not bool(((mask == 0) | (mask == hidden)).all()):
        raise UnknownArguments("an additive attention mask with values other than 0 and the minimum (a bias)")
    return mask == 0


class Recorder:
    """The arguments a model's forward passes give its layers, chunk after chunk of one dataset (`add`), read as
    one `layout` with each mask kind's allowed keys (`masks`) and each rotary kind's tables (`tables`).

    Layers are of one kind when every pass gave them the same object: a pass over unpadded prompts shorter than
    the window gives Gemma 3's sliding and global layers the same mask (none), a padded one two masks."""

    def __init__(self, length: int, device: torch.device):
        self.length, self.device = length, device
        self.mask_kinds: list[dict[int, int]] = []
        self.rotary_kinds: list[dict[int, int]] = []
        self.allowed: list[list[torch.Tensor]] = []  # per pass, per kind of that pass
        self.rotary: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.positions: list[dict[str, torch.Tensor]] = []
        self.rows: list[int] = []
        self.cache_arg, self.unchanged = "cache", {}

    def add(self, arguments: dict[int, dict[str, Any]], rows: int) -> None:
        """Record one pass's arguments (layer index -> keyword arguments); refuse (UnknownArguments) a tensor
        argument the fast path does not know how to cut to the suffix."""
        masks, rotary, positions = {}, {}, {}
        for layer, kwargs in arguments.items():
            for name, value in kwargs.items():
                if name == "attention_mask":
                    masks[layer] = value
                elif name == "position_embeddings" and isinstance(value, tuple) and len(value) == 2:
                    rotary[layer] = value
                elif name in POSITION_ARGS and isinstance(value, torch.Tensor) and value.shape[-1] == self.length:
                    positions[name] = value
                elif name in CACHE_ARGS:
                    self.cache_arg = name
                elif isinstance(value, (torch.Tensor, tuple, list, dict)):
                    raise UnknownArguments(f"decoder layer {layer} is given {name!r}, which the fast path cannot cut to the suffix")
                elif self.unchanged.setdefault(name, value) != value:
                    raise UnknownArguments(f"decoder layers are given different values of {name!r}")
        if set(rotary) != set(arguments) or set(masks) != set(arguments):
            raise UnknownArguments("decoder layers given no rotary tables (position_embeddings) or no attention_mask")
        kinds, values = _kinds(masks)
        self.mask_kinds.append(kinds)
        self.allowed.append([allowed_keys(m, self.length, self.device) for m in values])
        kinds, values = _kinds(rotary)
        self.rotary_kinds.append(kinds)
        self.rotary.append(values)
        self.positions.append(positions)
        self.rows.append(rows)

    def _final(self, per_pass: list[dict[int, int]]) -> tuple[dict[int, int], list[int]]:
        """Kinds over all passes (layers alike in every pass), numbered in layer order, and the first layer of each."""
        signatures = {layer: tuple(kinds[layer] for kinds in per_pass) for layer in sorted(per_pass[0])}
        order = {sig: i for i, sig in enumerate(dict.fromkeys(signatures.values()))}
        final = {layer: order[sig] for layer, sig in signatures.items()}
        return final, [next(l for l in final if final[l] == k) for k in range(len(order))]

    def layout(self) -> Layout:
        """Which kind of mask and rotary tables each layer reads, over every recorded pass."""
        mask_kind, _ = self._final(self.mask_kinds)
        rotary_kind, layers = self._final(self.rotary_kinds)
        widths = tuple(self.rotary[0][self.rotary_kinds[0][l]][0].shape[-1] for l in layers)
        return Layout(mask_kind, rotary_kind, widths, self.cache_arg, dict(self.unchanged))

    def masks(self) -> list[torch.Tensor]:
        """Each mask kind's allowed keys (rows, 1, T, T) over all passes; one row when every pass was causal only."""
        _, layers = self._final(self.mask_kinds)
        out = []
        for layer in layers:
            parts = [allowed[kinds[layer]] for allowed, kinds in zip(self.allowed, self.mask_kinds)]
            if all(p.shape[0] == 1 for p in parts) and all(torch.equal(p, parts[0]) for p in parts):
                out.append(parts[0])
            else:
                out.append(torch.cat([p.expand(n, -1, -1, -1) for p, n in zip(parts, self.rows)]))
        return out

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin): every rotary kind's tables side by side on the last axis, (rows, T, sum of widths)."""
        _, layers = self._final(self.rotary_kinds)
        cos, sin = [], []
        for tables, kinds in zip(self.rotary, self.rotary_kinds):
            cos.append(torch.cat([tables[kinds[l]][0] for l in layers], dim=-1))
            sin.append(torch.cat([tables[kinds[l]][1] for l in layers], dim=-1))
        if all(c.shape[0] == 1 for c in cos):  # no position ids of the data's own: one row serves every example
            return cos[0], sin[0]
        return torch.cat(cos), torch.cat(sin)

    def position_arguments(self) -> dict[str, torch.Tensor]:
        """The per-position arguments the layers were given (position ids (rows, T), a cache position (T,)), over
        every pass: one row when the data has no positions of its own."""
        out = {}
        for name, first in self.positions[0].items():
            parts = [p[name] for p in self.positions]
            if first.dim() == 1 or all(p.shape[0] == 1 for p in parts):
                out[name] = first
            else:
                out[name] = torch.cat([p.expand(n, -1) for p, n in zip(parts, self.rows)])
        return out


def hides_last(allowed: torch.Tensor) -> np.ndarray:
    """(rows,) on the host: does the last query of each row have a key hidden (padding, a sliding window)?"""
    return ~allowed[:, 0, -1, :].all(dim=-1).cpu().numpy()


def as_mask(allowed: torch.Tensor | None, implementation: str, dtype: torch.dtype) -> torch.Tensor | None:
    """Allowed keys in the form the model's attention implementation takes (SDPA: booleans; eager: additive)."""
    if allowed is None or implementation == "sdpa":
        return allowed
    return torch.where(allowed, torch.zeros((), device=allowed.device, dtype=dtype), torch.finfo(dtype).min)


def layer_arguments(layout: Layout, masks: Sequence[torch.Tensor | None], rotary: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    positions: dict[str, torch.Tensor], cache: DynamicCache | None) -> dict[int, dict[str, Any]]:
    """Each layer's keyword arguments, as the model's forward pass gives them, from the kinds' masks and rotary tables."""
    return {layer: {"attention_mask": masks[layout.mask_kind[layer]], "position_embeddings": rotary[layout.rotary_kind[layer]],
                    **positions, layout.cache_arg: cache, **layout.unchanged} for layer in layout.mask_kind}


def split_tables(table: torch.Tensor, widths: Sequence[int]) -> list[torch.Tensor]:
    """The rotary kinds' tables kept side by side on the last axis, apart (views)."""
    return list(torch.split(table, list(widths), dim=-1))


class _Stored(Exception):
    """Raised by a `SuffixCache` once the layer it stops at has stored its keys and values."""


class SuffixCache(DynamicCache):
    """A DynamicCache that can stop a layer right after it stored its keys and values (`keys_only`)."""

    stop_at: int | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == self.stop_at:
            raise _Stored
        return out


def keys_only(layer: nn.Module, index: int, hidden: torch.Tensor, arguments: dict[str, Any], cache: SuffixCache) -> None:
    """Append the keys and values of `hidden`'s positions in decoder layer `index` to `cache`, computing nothing
    more of the layer (its attention and MLP): the model's own layer, stopped once its cache is updated."""
    cache.stop_at = index
    try:
        layer(hidden, **arguments)
    except _Stored:
        pass
    finally:
        cache.stop_at = None


def prefix_cache(n_layers: int, keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor],
                 empty: torch.Tensor) -> SuffixCache:
    """A cache over `n_layers` layers holding `keys` and `values` (B, kv_heads, P, head_dim) at their layers and
    `empty` (a tensor of no elements, on the device) at the others, which their first update fills."""
    cache = SuffixCache()
    if DynamicLayer is None:  # transformers 4.x: an empty slot is set by the first update, a full one extended
        cache.key_cache = [keys.get(j, empty) for j in range(n_layers)]
        cache.value_cache = [values.get(j, empty) for j in range(n_layers)]
        return cache
    for j in range(n_layers):  # set, not appended with update(): that would copy the prefix
        layer = DynamicLayer()  # (and its own start, torch.tensor([]), is copied from the host)
        layer.keys, layer.values, layer.device, layer.is_initialized = keys.get(j, empty), values.get(j, empty), empty.device, True
        cache.layers.append(layer)
    return cache


def cached(cache: DynamicCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values a DynamicCache holds at `layer`."""
    if DynamicLayer is None:
        return cache.key_cache[layer], cache.value_cache[layer]
    return cache.layers[layer].keys, cache.layers[layer].values


def run_layers(layers: Sequence[tuple[int, nn.Module]], hidden: torch.Tensor, arguments: dict[int, dict[str, Any]]) -> torch.Tensor:
    """The model's own layers `(index, module)` on `hidden` (B, S, d), one after the other."""
    for j, layer in layers:
        hidden = main_output(layer(hidden, **arguments[j]))
    return hidden


@torch.no_grad()
def prefix_keys_values(layers: Sequence[tuple[int, nn.Module]], n_layers: int, hidden: torch.Tensor,
                       arguments: dict[int, dict[str, Any]], cache_arg: str) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """The keys and values of the prefix positions in `layers`, recomputed from the site's prefix states `hidden`
    (B, P, d), with `arguments` cut to the prefix. No gradients: the intervention acts at positions >= P, which a
    causal model's prefix never sees. (The last layer's outputs are never read: it only stores its keys.)"""
    cache = prefix_cache(n_layers, {}, {}, hidden.new_empty(0))
    arguments = {j: {**a, cache_arg: cache} for j, a in arguments.items()}
    hidden = run_layers(layers[:-1], hidden, arguments)
    index, last = layers[-1]
    keys_only(last, index, hidden, arguments[index], cache)
    keys_values = {j: cached(cache, j) for j, _ in layers}
    return {j: kv[0] for j, kv in keys_values.items()}, {j: kv[1] for j, kv in keys_values.items()}


@contextmanager
def shared_kv_heads(device: torch.device) -> Iterator[None]:
    """On the CPU, let transformers' SDPA attention read grouped key/value heads in place (enable_gqa) while a
    mask is given too, as it does without one, instead of copying them once per query head (its choice for the
    CUDA kernels): the same numbers, and a step of SmolLM2 (3 key/value heads for 9) at a 7-token suffix ~10%
    faster (benchmarks/bench_fastpath_arch.py). Outside the context the setting is as it was."""
    if device.type != "cpu":
        yield
        return
    name = "TRANSFORMERS_SDPA_FORCE_GQA"  # read by transformers 5 at every attention call
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def output_logits(model: nn.Module, hidden: torch.Tensor, answers: torch.Tensor | None = None) -> torch.Tensor:
    """The model's output head on the last layer's states (B, d): logits over the vocabulary (B, V), or only the
    rows of the answer tokens `answers` (A,) (das_lib.method.readout): (B, A), the same numbers as the full head's
    columns, without computing the vocabulary's other logits. Final norm, output embedding and, for Gemma-style
    configs, the final soft-capping, as the model's own forward pass."""
    head, normed = model.get_output_embeddings(), model.model.norm(hidden)
    if answers is None:
        logits = head(normed)
    else:
        weight = head.weight.index_select(0, answers.to(head.weight.device))
        bias = None if head.bias is None else head.bias.index_select(0, answers.to(head.bias.device))
        logits = F.linear(normed, weight, bias)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # in the model's order: tanh(logits / cap) * cap
        logits = torch.tanh(logits / cap) * cap
    return logits


def rotary_width(model: nn.Module) -> int:
    """The width of a position's rotary tables, all kinds together (an estimate for the cache plan, before any pass)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    return head_dim * max(1, sum(isinstance(v, dict) for v in rope.values()))  # Gemma 3: one per layer type
