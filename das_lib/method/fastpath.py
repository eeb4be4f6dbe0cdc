"""The exact fast path for alignment training on Llama-family decoder LMs (Llama, Mistral, Qwen2/3).

The model is frozen while an intervention is trained, so most of each plain training step repeats
work whose result never changes. For a site at layer l and intervened positions >= P (the first
intervened position of the dataset), `CachedForward` computes once per dataset:

- the source run's vector at the site (the only part of the source run that is used);
- the base run's layer-l outputs at positions P..T-1 (the layers below the site are never rerun);
- the keys and values of positions < P in the layers above the site: in a causal model they do not
  depend on the intervention, so they are those of the plain base run (a prefix key/value cache).

Each step then runs the layers above the site on positions P..T-1 only, attending to the cached
prefix, and the output head at the answer (last) position only. Nothing is approximated: the
logits equal the full model's to float rounding, and `CachedForward` checks that against the
model's own forward pass whenever it caches a dataset.

When that cache does not fit the memory budget (`max_cache_bytes`), `strategy` chooses what is kept
instead (`das_lib.cache_plan`): "site" keeps the site's layer outputs at every position and recomputes
the prefix's keys and values above the site without gradients every step; "batch" keeps nothing and
runs the frozen model on each batch. `CachedForward.plans` says what was chosen, `plan_report()` prints it.

Other architectures (GPT-2, GPT-NeoX, ...) use `PlainForward`: `make_forward` picks the path.
`shared_cache` builds one cache at a layer for data encoded at every position of a grid, which
`CachedForward.for_position` then serves position by position (sweeps and the robustness study).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from das_lib.method.cache_plan import CachePlan, CacheShape, check_strategy, plan_cache
from das_lib.method.data import InterchangeData
from das_lib.method.sites import Captured as _Captured, Site, capture_layers, find_layers, layer_module, main_output as _main_output, select_positions, write_positions
from das_lib.method.training import InterventionForward, PlainForward

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class FastPathMismatch(RuntimeError):
    """The fast path did not reproduce the model's own forward pass on a cached dataset."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (B, heads, S, hd) with cos/sin (B, S, hd)."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def fast_path_problem(model: nn.Module, site: Site, data: Iterable[InterchangeData] = ()) -> str | None:
    """Why the fast path cannot run this model, site or data (None when it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of the supported Llama-family types {SUPPORTED_MODEL_TYPES}"
    body = getattr(model, "model", None)
    if not all(hasattr(body, name) for name in ("norm", "rotary_emb")) or model.get_output_embeddings() is None:
        return f"{type(model).__name__} does not have the Llama layout (model.norm, model.rotary_emb, an output head)"
    layer_module(model, site)  # refuses a layer that does not exist
    for layer in find_layers(model)[site.layer + 1 :]:
        attn = getattr(layer, "self_attn", None)
        if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or not all(
            hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm", "mlp")
        ):
            return f"decoder layer {type(layer).__name__} does not have the Llama layout"
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None):
        return "logit soft-capping is not supported"
    window = getattr(config, "sliding_window", None)
    windowed = window is not None and getattr(config, "use_sliding_window", True)
    for d in data:
        if d.base_pos is None or d.source_pos is None:
            return "the data has no token positions (the fast path intervenes at token positions)"
        if any(not (t.dtype in (torch.long, torch.int, torch.bool)) for t in [*d.base.values(), *d.source.values()]):
            return "model inputs other than integer tensors (input_ids, attention_mask, position_ids) are not supported"
        mask = d.base.get("attention_mask")
        if mask is not None and not bool(mask[:, -1].all()):
            return "some base inputs are padded on the right; the answer is read at the last token, so pad on the left"
        if windowed and d.base["input_ids"].shape[1] > window:
            return f"inputs longer than the sliding attention window ({window}) are not supported"
    return None


@dataclass
class _Store:
    """Cached tensors of one dataset; row i belongs to the example whose key is mapped to i."""

    index: dict[bytes, int]
    prefix_len: int  # P: positions < P are only read through the cached keys and values
    suffix: torch.Tensor  # (N, T - P, d) base layer-l outputs at positions P..T-1
    source: torch.Tensor  # (N, d) or (N, k*d) source vectors at the site
    keys: list[torch.Tensor]  # per layer above the site: (N, kv_heads, P or T, head_dim), positions >= P unused; empty for "site"
    values: list[torch.Tensor]
    cos: torch.Tensor  # (N or 1, T - P, head_dim) rotary embedding of the suffix positions
    sin: torch.Tensor
    key_mask: torch.Tensor | None  # (N, T) bool, None when nothing is padded
    inputs_index: dict[bytes, int]  # the same rows keyed by inputs only (see `for_position`)
    base_pos: torch.Tensor  # (N,) or (N, k) the positions the cache was built for
    source_pos: torch.Tensor
    # strategy "site": the site's layer outputs (N, P, d) at positions < P and their rotary tables,
    # from which each step recomputes the keys and values above the site (None for "full")
    prefix_hidden: torch.Tensor | None = None
    prefix_cos: torch.Tensor | None = None
    prefix_sin: torch.Tensor | None = None

    def nbytes(self) -> int:
        tensors = [self.suffix, self.source, self.cos, self.sin, *self.keys, *self.values]
        tensors += [t for t in (self.prefix_hidden, self.prefix_cos, self.prefix_sin) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def _row_keys(data: InterchangeData, positions: bool = True) -> list[bytes]:
    """One exact key per example: the bytes of its base and source inputs (and positions)."""
    n = len(data)
    parts = [data.base[k] for k in sorted(data.base)] + [data.source[k] for k in sorted(data.source)]
    parts += [data.base_pos, data.source_pos] if positions else []
    flat = torch.cat([p.reshape(n, -1).to(torch.int64).cpu() for p in parts], dim=1).numpy()
    return [row.tobytes() for row in flat]


def _longer_prefix(store: _Store) -> _Store:
    """`store` with every position before the intervened one moved into the prefix, when that position is
    the same in every row and the keys and values of those positions are cached: exact, since in a
    causal model the intervention cannot change them, and each step then runs fewer positions."""
    first = int(store.base_pos.min())
    shift = first - store.prefix_len
    if (shift <= 0 or store.prefix_hidden is not None or not store.keys or not bool((store.base_pos == first).all())
            or any(k.shape[2] < first for k in store.keys)):
        return store
    return replace(store, prefix_len=first, suffix=store.suffix[:, shift:], cos=store.cos[:, shift:], sin=store.sin[:, shift:])


def _cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class CachedForward:
    """Intervened answer logits computed from per-dataset caches (see the module docstring).

    Datasets given at construction (or later to `prepare`) are cached, up to `max_cache_bytes` in all,
    by `strategy` ("auto": the cheapest step of "full", "site", "batch" that fits; see
    das_lib.cache_plan); a batch that is not part of one cached dataset is cached on the fly for that
    call only.
    """

    def __init__(
        self,
        model: nn.Module,
        site: Site,
        intervention: nn.Module | None,
        data: Iterable[InterchangeData] = (),
        max_cache_bytes: int = 4 * 2**30,
        chunk_size: int = 64,
        strategy: str = "auto",
    ):
        data = list(data)
        self.strategy = check_strategy(strategy)
        if max_cache_bytes < 0:
            raise ValueError(f"max_cache_bytes must be >= 0, got {max_cache_bytes}")
        problem = fast_path_problem(model, site, data)
        if problem is not None:
            raise ValueError(f"the fast path cannot run here: {problem}; use das_lib.method.training.PlainForward")
        self.model, self.site, self.intervention = model, site, intervention
        self.upper = list(find_layers(model)[site.layer + 1 :])
        attn = self.upper[0].self_attn if self.upper else layer_module(model, site).self_attn
        self.head_dim = attn.head_dim
        self.scaling = getattr(attn, "scaling", self.head_dim**-0.5)
        self.gqa = attn.q_proj.out_features != attn.k_proj.out_features
        self.qk_norm = hasattr(attn, "q_norm")
        self.max_cache_bytes, self.chunk_size = max_cache_bytes, chunk_size
        self.stores: list[_Store] = []
        self.plans: list[CachePlan] = []  # one per prepared dataset, in order
        self.checked = False
        for d in data:
            self.prepare(d)

    # ---- caching ------------------------------------------------------------------------------
    def prepare(self, data: InterchangeData) -> None:
        """Cache `data` so that batches drawn from it run the fast step (checked against the model)."""
        problem = fast_path_problem(self.model, self.site, [data])
        if problem is not None:
            raise ValueError(f"the fast path cannot run on this data: {problem}")
        used = sum(s.nbytes() for s in self.stores)
        plan = plan_cache(self.cache_shape(data), max(0, self.max_cache_bytes - used), self.strategy)
        self.plans.append(plan)
        if plan.strategy == "batch":
            if self.strategy == "auto":
                warnings.warn(
                    f"not caching {len(data)} examples for the fast path (even the site's states take "
                    f"{plan.shape.bytes('site') / 2**20:.0f} MiB; limit {self.max_cache_bytes / 2**20:.0f} MiB in all): "
                    "their batches will be cached on the fly (exact, but slower); raise max_cache_bytes or use fewer examples",
                    stacklevel=2,
                )
            return
        stores, reference = self._build(data, keep_prefix_states=plan.strategy == "site")
        self._check(stores[self.site.layer], data, reference)
        self.stores.append(stores[self.site.layer])

    def plan_report(self) -> str:
        """What is cached for each prepared dataset, and how much memory it takes (for printing)."""
        return "\n".join(str(p) for p in self.plans) or "fast-path cache plan: no dataset prepared"

    def cache_shape(self, data: InterchangeData) -> CacheShape:
        """The sizes that set `data`'s cache (see das_lib.cache_plan)."""
        kv = self.upper[0].self_attn.k_proj.out_features if self.upper else 1
        length = data.base["input_ids"].shape[1]
        low, high = int(data.base_pos.min()), int(data.base_pos.max())
        if low < 0 or high >= length:  # the same words as das_lib.sites for a position that does not exist
            raise IndexError(f"token position {low}..{high} does not exist: these inputs have positions 0..{length - 1}")
        return CacheShape(
            n_examples=len(data), length=data.base["input_ids"].shape[1], prefix=int(data.base_pos.min()),
            hidden_size=self.model.config.hidden_size, kv_width=kv, n_upper=len(self.upper),
            n_source_positions=data.source_pos[0].numel(), element_size=next(self.model.parameters()).element_size(),
            head_dim=self.head_dim, rotary_rows=len(data) if "position_ids" in data.base else 1,
        )

    def cache_bytes(self, data: InterchangeData, strategy: str = "full") -> int:
        """Memory the cache of `data` takes under `strategy` (full: suffix states, source vectors, prefix keys and values)."""
        return self.cache_shape(data).bytes(strategy)

    def kv_bytes(self, data: InterchangeData) -> int:
        """The part of `cache_bytes` taken by the prefix keys and values of the layers above the site."""
        kv = self.upper[0].self_attn.k_proj.out_features if self.upper else 0
        return len(data) * 2 * len(self.upper) * int(data.base_pos.min()) * kv * next(self.model.parameters()).element_size()

    def _keys_values(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Keys (after rotary) and values (B, kv_heads, S, head_dim) of attention `attn` on normed input x."""
        shape = (*x.shape[:2], -1, self.head_dim)
        k = attn.k_proj(x).view(shape)
        if self.qk_norm:
            k = attn.k_norm(k)
        return _rotary(k.transpose(1, 2), cos, sin), attn.v_proj(x).view(shape).transpose(1, 2)

    @torch.no_grad()
    def _build(self, data: InterchangeData, layers: Sequence[int] = (), all_keys: bool = False,
               keep_prefix_states: bool = False) -> tuple[dict[int, _Store], torch.Tensor]:
        """Run the model once over `data` and keep what the fast step needs at each of `layers` (default:
        the site's layer), with the model's own last-layer output at the answer for `_check`.

        One pass serves every layer: the prefix keys and values of a layer are those of the plain base
        run whichever site lies below it, so the caches of several layers share them (no copies). With
        `all_keys` the keys and values of every position are kept, so that `for_position` can serve a
        later position with a longer prefix (a position before the intervened one never changes). With
        `keep_prefix_states` (strategy "site", one layer) the site's prefix states are kept instead of
        the keys and values above it."""
        layers_all = find_layers(self.model)
        sites = sorted(set(layers) or {self.site.layer})
        if keep_prefix_states and len(sites) > 1:
            raise ValueError("strategy 'site' caches one layer at a time")
        first_upper = sites[0] + 1
        prefix = int(data.base_pos.min())
        suffix: dict[int, list[torch.Tensor]] = {l: [] for l in sites}
        source: dict[int, list[torch.Tensor]] = {l: [] for l in sites}
        chunks: dict[str, list] = {"cos": [], "sin": [], "ref": [], "prefix": [], "prefix_cos": [], "prefix_sin": []}
        keys: list[list[torch.Tensor]] = [[] for _ in range(first_upper, len(layers_all))]
        values: list[list[torch.Tensor]] = [[] for _ in range(first_upper, len(layers_all))]
        explicit_positions = "position_ids" in data.base
        for start in range(0, len(data), self.chunk_size):
            batch = data.select(slice(start, start + self.chunk_size))
            ids = batch.base["input_ids"]
            positions = batch.base.get("position_ids")
            if positions is None:
                positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
            mask = batch.base.get("attention_mask")
            keep = None if mask is None else mask.bool()[..., None]
            cos_sin: list[tuple[torch.Tensor, torch.Tensor]] = []

            def hook(module: nn.Module, args: Any, output: Any, j: int) -> None:
                h = _main_output(output)
                if keep is not None:  # padded rows never reach a real token; zeros keep them finite
                    h = torch.where(keep, h, torch.zeros((), dtype=h.dtype, device=h.device))
                if not cos_sin:
                    cos_sin.append(self.model.model.rotary_emb(h, positions))
                cos, sin = cos_sin[0]
                rows = slice(None) if explicit_positions else slice(0, 1)
                if j == sites[0]:
                    chunks["cos"].append(cos[rows, prefix:])
                    chunks["sin"].append(sin[rows, prefix:])
                    if keep_prefix_states:
                        chunks["prefix"].append(h[:, :prefix])
                        chunks["prefix_cos"].append(cos[rows, :prefix])
                        chunks["prefix_sin"].append(sin[rows, :prefix])
                if j in suffix:
                    suffix[j].append(h[:, prefix:])
                if j + 1 < len(layers_all) and j + 1 >= first_upper and not keep_prefix_states:
                    upper = layers_all[j + 1]
                    end = h.shape[1] if all_keys else prefix
                    x = upper.input_layernorm(h[:, :end])
                    k, v = self._keys_values(upper.self_attn, x, cos[:, :end], sin[:, :end])
                    keys[j + 1 - first_upper].append(k)
                    values[j + 1 - first_upper].append(v)
                if j == len(layers_all) - 1:
                    chunks["ref"].append(h[:, -1])
                    raise _Captured

            handles = [
                layers_all[j].register_forward_hook(lambda m, a, o, j=j: hook(m, a, o, j))
                for j in range(sites[0], len(layers_all))
            ]
            try:
                self.model(**batch.base)
            except _Captured:
                pass
            finally:
                for handle in handles:
                    handle.remove()
            for l, vectors in capture_layers(self.model, sites, batch.source, batch.source_pos).items():
                source[l].append(vectors)
            if not explicit_positions:  # one rotary table serves every row
                for name in ("cos", "sin", "prefix_cos", "prefix_sin"):
                    chunks[name] = chunks[name][:1]
        mask = data.base.get("attention_mask")
        if keep_prefix_states:  # strategy "site": no keys and values kept, the prefix states instead
            keys_all, values_all = [], []
        else:
            keys_all, values_all = [_cat(k) for k in keys], [_cat(v) for v in values]
        common = dict(
            index={key: i for i, key in enumerate(_row_keys(data))}, prefix_len=prefix,
            cos=_cat(chunks["cos"]), sin=_cat(chunks["sin"]),
            key_mask=None if mask is None or bool(mask.all()) else mask.bool(),
            inputs_index={key: i for i, key in enumerate(_row_keys(data, positions=False))},
            base_pos=data.base_pos, source_pos=data.source_pos,
            prefix_hidden=_cat(chunks["prefix"]) if keep_prefix_states else None,
            prefix_cos=_cat(chunks["prefix_cos"]) if keep_prefix_states else None,
            prefix_sin=_cat(chunks["prefix_sin"]) if keep_prefix_states else None,
        )
        stores = {l: _Store(suffix=_cat(suffix[l]), source=_cat(source[l]), keys=keys_all[l + 1 - first_upper :],
                            values=values_all[l + 1 - first_upper :], **common) for l in sites}
        return stores, _cat(chunks["ref"])

    def _check(self, store: _Store, data: InterchangeData, reference: torch.Tensor, n: int = 8) -> None:
        """Refuse the cache unless the fast path, unintervened, reproduces the model's own last layer."""
        rows = torch.arange(min(n, len(data)))
        with torch.no_grad():
            ours = self._upper_layers(store, rows, store.suffix.index_select(0, rows))
        ref = reference[rows]
        err = (ours.float() - ref.float()).abs().max().item()
        tol = (1e-4 if ref.dtype == torch.float32 else 3e-2) * (1.0 + ref.float().abs().max().item())
        if not err <= tol:
            raise FastPathMismatch(
                f"the fast path differs from {type(self.model).__name__}'s own forward pass by {err:.3g} "
                f"(tolerance {tol:.3g}) at site {self.site}; this model is not supported: use PlainForward"
            )
        self.checked = True

    def for_position(
        self, column: int, data: Iterable[InterchangeData], site: Site, intervention: nn.Module
    ) -> "CachedForward":
        """The fast path at one of k positions cached together, sharing this object's caches (no copy).

        A sweep caches each dataset once per layer with k positions per example ((N, k) positions; the
        cache's own intervention may be None) and trains one intervention per position from it:
        `data` are cached datasets (any subset, any order) with only the positions of `column` ((N,)).
        Examples or positions that are not in the cache are refused (FastPathMismatch).
        """
        if site.layer != self.site.layer:
            raise ValueError(f"site {site} is not at the cached layer {self.site.layer}")
        view = copy.copy(self)
        view.site, view.intervention = site, intervention
        view.stores = [self._column_store(d, column) for d in data]
        return view

    def _column_store(self, data: InterchangeData, column: int) -> _Store:
        """A view of the cached dataset that holds `data`, at position column `column`."""
        keys = _row_keys(data, positions=False)
        for store in self.stores:
            rows = [store.inputs_index.get(k) for k in keys]
            if None in rows or store.base_pos.dim() != 2 or not 0 <= column < store.base_pos.shape[1]:
                continue
            rows_t = torch.tensor(rows, dtype=torch.long, device=store.base_pos.device)
            if not (torch.equal(store.base_pos[rows_t, column], data.base_pos.to(rows_t.device))
                    and torch.equal(store.source_pos[rows_t, column], data.source_pos.to(rows_t.device))):
                continue
            k = store.base_pos.shape[1]
            source = store.source.view(len(store.source), k, -1)[:, column]
            view = replace(store, index=dict(zip(_row_keys(data), rows)), source=source, inputs_index={},
                           base_pos=store.base_pos[:, column], source_pos=store.source_pos[:, column])
            return _longer_prefix(view)
        raise FastPathMismatch(
            f"these {len(data)} examples with the positions of column {column} are not in this cache: build the "
            "cache on the same examples with all their position columns ((N, k) positions)"
        )

    def _find(self, batch: InterchangeData) -> tuple[_Store, torch.Tensor]:
        """The cached dataset holding every example of `batch`, and their rows in it."""
        keys = _row_keys(batch)
        for store in self.stores:
            rows = [store.index.get(k) for k in keys]
            if None not in rows:
                return store, torch.tensor(rows, dtype=torch.long, device=store.suffix.device)
        stores, reference = self._build(batch)
        store = stores[self.site.layer]
        if not self.checked:
            self._check(store, batch, reference)
        return store, torch.arange(len(batch), device=store.suffix.device)

    # ---- the fast step ------------------------------------------------------------------------
    @torch.no_grad()
    def _prefix_keys_values(self, store: _Store, rows: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Strategy "site": the keys and values of positions < P above the site, recomputed from the
        site's cached prefix states. No gradients: the intervention acts at positions >= P, which a
        causal model's prefix never sees."""
        hidden = store.prefix_hidden.index_select(0, rows)
        n, prefix = hidden.shape[:2]
        pick = lambda t: t.index_select(0, rows) if t.shape[0] > 1 else t.expand(n, -1, -1)  # noqa: E731
        cos, sin = pick(store.prefix_cos), pick(store.prefix_sin)
        idx = torch.arange(prefix, device=hidden.device)
        allowed = idx[None, :] <= idx[:, None]  # causal within the prefix
        if store.key_mask is not None:  # as in _upper_layers: padded keys hidden, a padded query sees itself
            own = idx[None, :] == idx[:, None]
            keep = store.key_mask.index_select(0, rows)[:, :prefix]
            allowed = ((allowed[None] & keep[:, None, :]) | own[None])[:, None]
        mask = None if bool(allowed.all()) else allowed
        empty = hidden.new_zeros(n, 0, 0)
        keys, values = [], []
        for i, layer in enumerate(self.upper):
            last = i == len(self.upper) - 1  # the last layer's prefix outputs are never read
            hidden, k, v = self._layer(layer, hidden, empty, empty, mask, cos, sin, last_only=False, kv_only=last)
            keys.append(k)
            values.append(v)
        return keys, values

    def _upper_layers(self, store: _Store, rows: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Run the layers above the site on the suffix positions; the last layer output (B, d) at the answer."""
        n_suffix = hidden.shape[1]
        prefix = store.prefix_len
        # index_select: several times faster than t[rows] for gathering rows of a cache
        cos = store.cos.index_select(0, rows) if store.cos.shape[0] > 1 else store.cos.expand(len(rows), -1, -1)
        sin = store.sin.index_select(0, rows) if store.sin.shape[0] > 1 else store.sin.expand(len(rows), -1, -1)
        # key j is visible from suffix query i when j is in the prefix or j <= i; padded keys never
        # are, except a padded query's own key (so that no row is empty and nothing becomes NaN).
        q_idx = torch.arange(n_suffix, device=hidden.device)
        k_idx = torch.arange(prefix + n_suffix, device=hidden.device)
        allowed = k_idx[None, :] <= q_idx[:, None] + prefix
        if store.key_mask is not None:
            own = k_idx[None, :] == q_idx[:, None] + prefix
            allowed = ((allowed[None] & store.key_mask.index_select(0, rows)[:, None, :]) | own[None])[:, None]
        masks = [None if bool(a.all()) else a for a in (allowed, allowed[..., -1:, :])]
        if store.prefix_hidden is not None:
            prefix_keys, prefix_values = self._prefix_keys_values(store, rows)
        else:
            prefix_keys = [k[:, :, :prefix].index_select(0, rows) for k in store.keys]  # positions >= P: see _longer_prefix
            prefix_values = [v[:, :, :prefix].index_select(0, rows) for v in store.values]
        for i, layer in enumerate(self.upper):
            last = i == len(self.upper) - 1
            hidden, _, _ = self._layer(layer, hidden, prefix_keys[i], prefix_values[i], masks[last], cos, sin, last)
        return hidden[:, -1]

    def _layer(self, layer, hidden, k_prefix, v_prefix, mask, cos, sin, last_only: bool, kv_only: bool = False):
        """One decoder layer on the suffix: (output, keys, values of `hidden`'s positions). With
        `last_only` only the answer position's output is computed; with `kv_only` only the keys and values."""
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        k, v = self._keys_values(attn, x, cos, sin)
        if kv_only:
            return hidden, k, v
        if last_only:  # the output head reads only the answer position
            hidden, x, cos, sin = hidden[:, -1:], x[:, -1:], cos[:, -1:], sin[:, -1:]
        q = attn.q_proj(x).view(*x.shape[:2], -1, self.head_dim)
        if self.qk_norm:
            q = attn.q_norm(q)
        q = _rotary(q.transpose(1, 2), cos, sin)
        keys, values = (k, v) if k_prefix.numel() == 0 else (torch.cat([k_prefix, k], dim=2), torch.cat([v_prefix, v], dim=2))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=self.gqa)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden)), k, v

    def __call__(self, batch: InterchangeData) -> torch.Tensor:
        if self.intervention is None:
            raise ValueError("this cache was built without an intervention: get a forward from for_position(...)")
        store, rows = self._find(batch)
        local = batch.base_pos.to(rows.device) - store.prefix_len  # intervened positions within the suffix
        suffix = store.suffix.index_select(0, rows)
        new = self.intervention(select_positions(suffix, local), store.source.index_select(0, rows), batch.variable)
        hidden = self._upper_layers(store, rows, write_positions(suffix, local, new))
        return self.model.get_output_embeddings()(self.model.model.norm(hidden))


def shared_cache(
    model: nn.Module, layer: int, data: Iterable[InterchangeData], max_cache_bytes: int = 4 * 2**30
) -> CachedForward | None:
    """One cache of `data` (encoded at every position of a grid) at `layer`, for `for_position` to serve
    each position from; None where the fast path cannot run or not even the site's states fit the budget
    (when the full cache does not fit, the plan of `CachedForward` picks what to keep)."""
    data = list(data)
    full = shared_caches(model, [layer], data, max_cache_bytes)[layer]
    if full is not None or fast_path_problem(model, Site(layer), data) is not None:
        return full
    try:
        cache = CachedForward(model, Site(layer), None, data, max_cache_bytes=max_cache_bytes)
    except FastPathMismatch:
        return None
    return cache if len(cache.stores) == len(data) else None


def shared_caches(
    model: nn.Module, layers: Sequence[int], data: Iterable[InterchangeData], max_cache_bytes: int = 4 * 2**30
) -> dict[int, CachedForward | None]:
    """`shared_cache` at each of `layers`, from one forward pass over each dataset (the layers share the
    prefix keys and values); None at every layer where the fast path cannot run or the caches would
    take more than `max_cache_bytes` together."""
    data, layers = list(data), sorted(set(layers))
    none: dict[int, CachedForward | None] = {l: None for l in layers}
    if not layers or any(fast_path_problem(model, Site(l), data) is not None for l in layers):
        return none
    caches = {l: CachedForward(model, Site(l), None, max_cache_bytes=max_cache_bytes) for l in layers}
    lowest = caches[layers[0]]  # its prefix keys and values cover every layer above the others' too
    # the keys and values of every position (not only the prefix's) are kept: see _longer_prefix
    scale = [d.base["input_ids"].shape[1] / max(1, int(d.base_pos.min())) for d in data]
    need = sum(lowest.cache_bytes(d) + (f - 1) * lowest.kv_bytes(d) for d, f in zip(data, scale)) + sum(
        caches[l].cache_bytes(d) - caches[l].kv_bytes(d) for l in layers[1:] for d in data)
    if need > max_cache_bytes:
        return none
    try:
        for d in data:
            stores, reference = lowest._build(d, layers, all_keys=True)
            for l, cache in caches.items():
                cache._check(stores[l], d, reference)
                cache.stores.append(stores[l])
    except FastPathMismatch:
        return none
    return caches


def make_forward(
    model: nn.Module, site: Site, intervention: nn.Module, data: Iterable[InterchangeData] = (), fast: bool = True
) -> InterventionForward:
    """The fast path when the model, site and data allow it (caching `data`), else the plain path."""
    data = list(data)
    if not fast:
        return PlainForward(model, site, intervention)
    problem = fast_path_problem(model, site, data)
    if problem is None:
        try:
            return CachedForward(model, site, intervention, data)
        except FastPathMismatch as err:
            problem = str(err)
    warnings.warn(f"using the plain path (exact, slower): {problem}", stacklevel=2)
    return PlainForward(model, site, intervention)
