"""Llama-family decoder layers run on a suffix of positions, attending to cached keys and values.

The fast path (`das_lib.method.fastpath`) runs only the layers above the site, and only on the
positions from the first intervened one on; the positions before it are read through their keys and
values, which the intervention cannot change. This module is that computation, written out from the
layers' own weights so that nothing else of the model runs: rotary embeddings, one decoder layer on a
suffix, and the stack of layers above the site with the causal and padding masks it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Attention:
    """The shape of a model's attention that the layers below need (the same in every layer)."""

    head_dim: int
    scaling: float
    gqa: bool  # fewer key/value heads than query heads
    qk_norm: bool  # Qwen3 normalises queries and keys per head

    @classmethod
    def of(cls, attn: nn.Module) -> "Attention":
        """Read the shape from one attention module of a Llama-family model."""
        head_dim = attn.head_dim
        return cls(head_dim=head_dim, scaling=getattr(attn, "scaling", head_dim**-0.5),
                   gqa=attn.q_proj.out_features != attn.k_proj.out_features, qk_norm=hasattr(attn, "q_norm"))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotation of rotary embeddings: (x1, x2) -> (-x2, x1) over the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, heads, S, head_dim) with tables (B, S, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def keys_values(attn: nn.Module, shape: Attention, x: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (after rotary) and values (B, kv_heads, S, head_dim) of attention `attn` on normed input x."""
    view = (*x.shape[:2], -1, shape.head_dim)
    k = attn.k_proj(x).view(view)
    if shape.qk_norm:
        k = attn.k_norm(k)
    return rotary(k.transpose(1, 2), cos, sin), attn.v_proj(x).view(view).transpose(1, 2)


def decoder_layer(layer: nn.Module, shape: Attention, hidden: torch.Tensor, k_prefix: torch.Tensor,
                  v_prefix: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                  last_only: bool, kv_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder layer on the suffix: (output, keys, values of `hidden`'s positions). With
    `last_only` only the answer position's output is computed; with `kv_only` only the keys and values."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    k, v = keys_values(attn, shape, x, cos, sin)
    if kv_only:
        return hidden, k, v
    if last_only:  # the output head reads only the answer position
        hidden, x, cos, sin = hidden[:, -1:], x[:, -1:], cos[:, -1:], sin[:, -1:]
    q = attn.q_proj(x).view(*x.shape[:2], -1, shape.head_dim)
    if shape.qk_norm:
        q = attn.q_norm(q)
    q = rotary(q.transpose(1, 2), cos, sin)
    keys, values = (k, v) if k_prefix.numel() == 0 else (torch.cat([k_prefix, k], dim=2), torch.cat([v_prefix, v], dim=2))
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=shape.scaling, enable_gqa=shape.gqa)
    hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden)), k, v


def pick_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a per-example table, or the one shared row repeated (rotary tables without position ids)."""
    # index_select: several times faster than t[rows] for gathering rows of a cache
    return table.index_select(0, rows) if table.shape[0] > 1 else table.expand(len(rows), -1, -1)


@torch.no_grad()
def prefix_keys_values(layers: Sequence[nn.Module], shape: Attention, hidden: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor, key_mask: torch.Tensor | None,
                       padded: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The keys and values of the prefix positions in `layers`, recomputed from the site's prefix states
    `hidden` (B, P, d). No gradients: the intervention acts at positions >= P, which a causal model's
    prefix never sees. (`padded` is upper_layers'; a one-position prefix needs no mask either way.)"""
    idx = torch.arange(hidden.shape[1], device=hidden.device)
    allowed = idx[None, :] <= idx[:, None]  # causal within the prefix
    if key_mask is not None:  # as in upper_layers: padded keys hidden, a padded query sees itself
        own = idx[None, :] == idx[:, None]
        allowed = ((allowed[None] & key_mask[:, None, :]) | own[None])[:, None]
    # every key is visible to every query only for a one-position prefix with no padding
    mask = None if hidden.shape[1] == 1 else allowed  # one position: it sees itself only, padded or not
    empty = hidden.new_zeros(hidden.shape[0], 0, 0)
    keys, values = [], []
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1  # the last layer's prefix outputs are never read
        hidden, k, v = decoder_layer(layer, shape, hidden, empty, empty, mask, cos, sin, last_only=False, kv_only=last)
        keys.append(k)
        values.append(v)
    return keys, values


def upper_layers(layers: Sequence[nn.Module], shape: Attention, hidden: torch.Tensor, prefix_keys: list[torch.Tensor],
                 prefix_values: list[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                 key_mask: torch.Tensor | None, padded: bool = True) -> torch.Tensor:
    """Run `layers` on the suffix states `hidden` (B, S, d) after a prefix of cached keys and values;
    the last layer's output (B, d) at the answer (last) position. `padded` says, from the host's
    bookkeeping, whether any row of `key_mask` hides a position: the masks are then chosen without
    reading the device (a mask that hides nothing is dropped, as SDPA runs faster without one)."""
    if not layers:  # the site is the last layer
        return hidden[:, -1]
    n_suffix = hidden.shape[1]
    prefix = prefix_keys[0].shape[2] if prefix_keys else 0
    # key j is visible from suffix query i when j is in the prefix or j <= i; padded keys never
    # are, except a padded query's own key (so that no row is empty and nothing becomes NaN).
    q_idx = torch.arange(n_suffix, device=hidden.device)
    k_idx = torch.arange(prefix + n_suffix, device=hidden.device)
    allowed = k_idx[None, :] <= q_idx[:, None] + prefix
    if key_mask is not None:
        own = k_idx[None, :] == q_idx[:, None] + prefix
        allowed = ((allowed[None] & key_mask[:, None, :]) | own[None])[:, None]
    hides = key_mask is not None and padded
    # the last query sees every key unless one is padded; the others see the later keys only
    masks = [allowed if n_suffix > 1 or hides else None, allowed[..., -1:, :] if hides else None]
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        hidden, _, _ = decoder_layer(layer, shape, hidden, prefix_keys[i], prefix_values[i], masks[last], cos, sin, last)
    return hidden[:, -1]
