"""What the fast path caches of one dataset at a site's layer, and the one forward pass that builds it.

For a site at layer l and intervened positions >= P, a `LayerCache` holds the base run's layer-l
outputs at positions P..T-1, the source run's vectors at the site, and the keys and values of
positions < P in the layers above (or, for the "site" strategy of `das_lib.method.cache_plan`, the
site's prefix states to recompute them from), with what the model's forward pass gave those layers
(their attention masks and rotary tables: `das_lib.method.decoder_layers`). `build` makes the caches of
several layers from one pass over the data; `column_view` serves one position of a cache built at several.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from das_lib.method import decoder_layers
from das_lib.method.data import InterchangeData
from das_lib.method.decoder_layers import Layout
from das_lib.method.sites import Captured, capture_layers, find_layers, main_output


@dataclass
class LayerCache:
    """Cached tensors of one dataset; row i belongs to the example whose key is mapped to i."""

    index: dict[bytes, int]
    prefix_len: int  # P: positions < P are only read through the cached keys and values
    suffix: torch.Tensor  # (N, T - P, d) base layer-l outputs at positions P..T-1
    source: torch.Tensor  # (N, d) or (N, k*d) source vectors at the site
    keys: list[torch.Tensor]  # per layer above the site: (N, kv_heads, P or T, head_dim), positions >= P unused; empty for "site"
    values: list[torch.Tensor]
    cos: torch.Tensor  # (N or 1, T - P, W) rotary tables of the suffix positions, every rotary kind side by side (Layout)
    sin: torch.Tensor
    masks: list[torch.Tensor]  # per mask kind (Layout): (N or 1, 1, T, T) bool, True where a query sees a key
    hides: list[np.ndarray | None]  # per mask kind, on the host: does row i's last query have a key hidden (None: no row)
    positions: dict[str, torch.Tensor]  # the layers' per-position arguments: position ids (N or 1, T), ... (T,)
    layout: Layout  # which mask and rotary kind each layer above the site reads
    inputs_index: dict[bytes, int]  # the same rows keyed by inputs only (see `column_view`)
    base_pos: torch.Tensor  # (N,) or (N, k) the positions the cache was built for
    source_pos: torch.Tensor
    # strategy "site": the site's layer outputs (N, P, d) at positions < P and their rotary tables,
    # from which each step recomputes the keys and values above the site (None for "full")
    prefix_hidden: torch.Tensor | None = None
    prefix_cos: torch.Tensor | None = None
    prefix_sin: torch.Tensor | None = None
    # Host-side bookkeeping, so that a training step reads nothing back from the device: the dataset
    # (InterchangeData.origin) whose batches are found by their ids, and the row of each of its ids (-1: not cached).
    origin: str | None = None
    row_of_id: np.ndarray | None = None

    def rows_of(self, batch: InterchangeData) -> np.ndarray | None:
        """The (B,) rows of a batch drawn from this cache's dataset, found by its ids on the host; None otherwise."""
        if batch.origin != self.origin or self.row_of_id is None:
            return None
        ids = batch.row_ids()
        if len(ids) and ids.max() >= len(self.row_of_id):
            return None
        rows = self.row_of_id[ids]
        return None if (rows < 0).any() else rows

    def hidden_at_last(self, kind: int, rows: np.ndarray) -> bool:
        """Does mask kind `kind` hide a key from the last query of any of these rows (padding, a sliding window)?"""
        hides = self.hides[kind]
        if hides is None:
            return False
        return bool(hides[0]) if len(hides) == 1 else bool(hides[rows].any())  # one row: shared by every example

    def arguments(self, rows: torch.Tensor, queries: slice, needed: list[bool], cos: torch.Tensor, sin: torch.Tensor,
                  cache: Any, implementation: str, dtype: torch.dtype) -> dict[int, dict[str, Any]]:
        """The arguments of the layers above the site for `rows` and the query positions `queries` (start, stop:
        absolute), which see the keys before `queries.stop`: each layer's mask (in the form of the attention
        `implementation`, only where `needed` by its kind), rotary tables (`cos`, `sin`: those of the queries),
        positions, and `cache`."""
        masks = [decoder_layers.as_mask(pick_rows(m, rows)[:, :, queries, : queries.stop], implementation, dtype)
                 if need else None for m, need in zip(self.masks, needed)]
        widths = self.layout.rotary_widths
        tables = zip(decoder_layers.split_tables(pick_rows(cos, rows), widths),
                     decoder_layers.split_tables(pick_rows(sin, rows), widths))
        positions = {name: (pick_rows(t, rows) if t.dim() == 2 else t)[..., queries] for name, t in self.positions.items()}
        return decoder_layers.layer_arguments(self.layout, masks, list(tables), positions, cache)

    def nbytes(self) -> int:
        """Memory the cached tensors take."""
        tensors = [self.suffix, self.source, self.cos, self.sin, *self.keys, *self.values, *self.masks]
        tensors += [t for t in (self.prefix_hidden, self.prefix_cos, self.prefix_sin) if t is not None]
        tensors += list(self.positions.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def pick_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a per-example table, or its one shared row for every example (a table that does not vary by row)."""
    # index_select: several times faster than t[rows] for gathering rows of a cache
    return table.index_select(0, rows) if table.shape[0] > 1 else table


def row_keys(data: InterchangeData, positions: bool = True) -> list[bytes]:
    """One exact key per example: the bytes of its base and source inputs (and positions)."""
    n = len(data)
    parts = [data.base[k] for k in sorted(data.base)] + [data.source[k] for k in sorted(data.source)]
    parts += [data.base_pos, data.source_pos] if positions else []
    flat = torch.cat([p.reshape(n, -1).to(torch.int64).cpu() for p in parts], dim=1).numpy()
    return [row.tobytes() for row in flat]


def id_table(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A host lookup table: table[ids[i]] = rows[i], -1 for every id not given."""
    table = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
    table[ids] = rows
    return table


def longer_prefix(cache: LayerCache) -> LayerCache:
    """`cache` with every position before the intervened one moved into the prefix, when that position is
    the same in every row and the keys and values of those positions are cached: exact, since in a
    causal model the intervention cannot change them, and each step then runs fewer positions."""
    first = int(cache.base_pos.min())
    shift = first - cache.prefix_len
    if (shift <= 0 or cache.prefix_hidden is not None or not cache.keys or not bool((cache.base_pos == first).all())
            or any(k.shape[2] < first for k in cache.keys)):
        return cache
    return replace(cache, prefix_len=first, suffix=cache.suffix[:, shift:], cos=cache.cos[:, shift:], sin=cache.sin[:, shift:])


def site_vectors(cache: LayerCache, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, source), each (len(rows), d): the rows' states at the cached site (one position per example),
    the base's read from the suffix, which starts at the first intervened position."""
    if cache.base_pos.dim() != 1:
        raise ValueError("the cache holds several positions per example: take its column_view first")
    r = torch.as_tensor(rows, dtype=torch.long, device=cache.suffix.device)
    return cache.suffix[r, cache.base_pos.to(r.device)[r] - cache.prefix_len], cache.source[r]


def _cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def cache_argument(model: nn.Module) -> str:
    """The name under which the model's forward takes a transformers cache."""
    names = inspect.signature(model.forward).parameters
    return next((n for n in decoder_layers.CACHE_ARGS if n in names), decoder_layers.CACHE_ARGS[0])


@torch.no_grad()
def build(model: nn.Module, data: InterchangeData, sites: Sequence[int], chunk_size: int = 64, all_keys: bool = False,
          keep_prefix_states: bool = False) -> tuple[dict[int, LayerCache], torch.Tensor]:
    """Run the model once over `data` and keep what the fast step needs at each layer of `sites`, with
    the model's own last-layer output at the answer (to check the fast path against).

    One pass serves every layer: the prefix keys and values of a layer are those of the plain base
    run whichever site lies below it, so the caches of several layers share them (no copies); they are
    the model's own, read from the transformers cache the pass fills. With `all_keys` the keys and values
    of every position are kept, so that `column_view` can serve a later position with a longer prefix (a
    position before the intervened one never changes). With `keep_prefix_states` (strategy "site", one
    layer) the site's prefix states are kept instead of the keys and values above it."""
    layers_all = find_layers(model)
    sites = sorted(set(sites))
    if keep_prefix_states and len(sites) > 1:
        raise ValueError("strategy 'site' caches one layer at a time")
    first_upper = sites[0] + 1
    upper = range(first_upper, len(layers_all))
    prefix, length = int(data.base_pos.min()), data.base["input_ids"].shape[1]
    suffix: dict[int, list[torch.Tensor]] = {l: [] for l in sites}
    source: dict[int, list[torch.Tensor]] = {l: [] for l in sites}
    chunks: dict[str, list] = {"ref": [], "prefix": []}
    keys: list[list[torch.Tensor]] = [[] for _ in upper]
    values: list[list[torch.Tensor]] = [[] for _ in upper]
    recorder = decoder_layers.Recorder(length, data.base["input_ids"].device)
    end = length if all_keys else prefix
    cache_arg = cache_argument(model)
    for start in range(0, len(data), chunk_size):
        batch = data.select(slice(start, start + chunk_size))
        mask = batch.base.get("attention_mask")
        keep = None if mask is None else mask.bool()[..., None]
        arguments: dict[int, dict[str, Any]] = {}

        def hook(module: nn.Module, args: Any, output: Any, j: int) -> None:
            h = main_output(output)
            if keep is not None:  # padded rows never reach a real token; zeros keep them finite
                h = torch.where(keep, h, torch.zeros((), dtype=h.dtype, device=h.device))
            if j == sites[0] and keep_prefix_states:
                chunks["prefix"].append(h[:, :prefix])
            if j in suffix:
                suffix[j].append(h[:, prefix:])
            if j == len(layers_all) - 1:
                chunks["ref"].append(h[:, -1])
                raise Captured

        def take_arguments(module: nn.Module, args: tuple, kwargs: dict[str, Any], j: int) -> None:
            if len(args) != 1:
                raise decoder_layers.UnknownArguments(f"decoder layer {j} is given {len(args)} positional arguments")
            arguments[j] = dict(kwargs)

        handles = [layers_all[j].register_forward_hook(lambda m, a, o, j=j: hook(m, a, o, j)) for j in range(sites[0], len(layers_all))]
        handles += [layers_all[j].register_forward_pre_hook(lambda m, a, k, j=j: take_arguments(m, a, k, j), with_kwargs=True)
                    for j in upper]
        collector = DynamicCache()  # filled by the pass with every layer's keys and values
        try:
            model(**batch.base, **{cache_arg: collector})
        except Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if arguments:
            recorder.add(arguments, len(batch))
        if not keep_prefix_states:
            for i, j in enumerate(upper):
                k, v = decoder_layers.cached(collector, j)
                cut = lambda t: t if end == length else t[:, :, :end].clone()  # noqa: E731  (no view of all T kept)
                keys[i].append(cut(k))
                values[i].append(cut(v))
        for l, vectors in capture_layers(model, sites, batch.source, batch.source_pos).items():
            source[l].append(vectors)
    if keep_prefix_states:  # strategy "site": no keys and values kept, the prefix states instead
        keys_all, values_all = [], []
    else:
        keys_all, values_all = [_cat(k) for k in keys], [_cat(v) for v in values]
    if recorder.rows:
        layout, masks = recorder.layout(), recorder.masks()
        cos, sin = recorder.tables()
        positions = recorder.position_arguments()
    else:  # the site is the last layer: no layer runs above it
        layout, masks, positions = Layout({}, {}, ()), [], {}
        cos = sin = torch.zeros(1, length, 0, device=data.base["input_ids"].device)
    hides = [decoder_layers.hides_last(m) for m in masks]
    common = dict(
        index={key: i for i, key in enumerate(row_keys(data))}, prefix_len=prefix,
        cos=cos[:, prefix:].clone(), sin=sin[:, prefix:].clone(), masks=masks,
        hides=[h if h.any() else None for h in hides], positions=positions, layout=layout,
        origin=data.origin, row_of_id=id_table(data.row_ids(), np.arange(len(data))),
        inputs_index={key: i for i, key in enumerate(row_keys(data, positions=False))},
        base_pos=data.base_pos, source_pos=data.source_pos,
        prefix_hidden=_cat(chunks["prefix"]) if keep_prefix_states else None,
        prefix_cos=cos[:, :prefix].clone() if keep_prefix_states else None,
        prefix_sin=sin[:, :prefix].clone() if keep_prefix_states else None,
    )
    caches = {l: LayerCache(suffix=_cat(suffix[l]), source=_cat(source[l]), keys=keys_all[l + 1 - first_upper :],
                            values=values_all[l + 1 - first_upper :], **common) for l in sites}
    return caches, _cat(chunks["ref"])


def column_view(caches: Sequence[LayerCache], data: InterchangeData, column: int) -> LayerCache | None:
    """A view (no copy) of the cache that holds `data`, at position column `column` of a cache built with
    k positions per example ((N, k) positions); None when no cache holds these examples at those positions."""
    keys = row_keys(data, positions=False)
    for cache in caches:
        rows = [cache.inputs_index.get(k) for k in keys]
        if None in rows or cache.base_pos.dim() != 2 or not 0 <= column < cache.base_pos.shape[1]:
            continue
        rows_t = torch.tensor(rows, dtype=torch.long, device=cache.base_pos.device)
        if not (torch.equal(cache.base_pos[rows_t, column], data.base_pos.to(rows_t.device))
                and torch.equal(cache.source_pos[rows_t, column], data.source_pos.to(rows_t.device))):
            continue
        k = cache.base_pos.shape[1]
        source = cache.source.view(len(cache.source), k, -1)[:, column]
        view = replace(cache, index=dict(zip(row_keys(data), rows)), source=source, inputs_index={},
                       base_pos=cache.base_pos[:, column], source_pos=cache.source_pos[:, column],
                       origin=data.origin, row_of_id=id_table(data.row_ids(), np.asarray(rows, dtype=np.int64)))
        return longer_prefix(view)
    return None
