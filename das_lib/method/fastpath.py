"""The exact fast path for alignment training on rotary decoder LMs (Llama, Mistral, Qwen2/3, Gemma 3).

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

What is cached is a `das_lib.method.layer_cache.LayerCache`, built in one forward pass; the layers above
the site are the model's own decoder-layer modules, run on the suffix with the prefix's keys and values in a
transformers cache (`das_lib.method.decoder_layers`), so no architecture's layer is written out here. Other
architectures (GPT-2, GPT-NeoX, ...) use `PlainForward`: `make_forward` picks the path
(`das_lib.method.fastpath_checks` says which models it supports and how its self-check judges the result).
`shared_cache` builds one cache at a layer for data encoded at every position of a grid, which
`CachedForward.for_position` then serves position by position (sweeps and the robustness study).
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from das_lib.method import decoder_layers, layer_cache
from das_lib.method.cache_plan import CachePlan, CacheShape, check_strategy, plan_cache
from das_lib.method.data import InterchangeData, rows_on
from das_lib.method.fastpath_checks import (
    CHECK_FACTOR, CHECK_FLOOR, FastPathMismatch, FastPathUnavailable, check_tolerance, fast_path_problem, relative_error,
    self_disagreement,
)
from das_lib.method.layer_cache import LayerCache
from das_lib.method.sites import Site, find_layers, main_output, select_positions, write_positions
from das_lib.method.training import InterventionForward, PlainForward

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
        self.max_cache_bytes, self.chunk_size = max_cache_bytes, chunk_size
        self.stores: list[LayerCache] = []
        self.plans: list[CachePlan] = []  # one per prepared dataset, in order
        self.checked = False
        self.check_result: dict[str, float] | None = None  # the last self-check: error, model_noise, tolerance
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
            head_dim=decoder_layers.rotary_width(self.model), rotary_rows=len(data) if "position_ids" in data.base else 1,
            **self._mask_shape(data),
        )

    def _mask_shape(self, data: InterchangeData) -> dict[str, int]:
        """At most how many attention-mask kinds the cache of `data` keeps, and their rows (see das_lib.cache_plan)."""
        if not self.upper:
            return {"n_masks": 0}
        config, length = self.model.config, data.base["input_ids"].shape[1]
        types = getattr(config, "layer_types", None)  # Gemma 3: sliding and global layers, a mask each
        kinds = len(set(types[self.site.layer + 1 :])) if types else 1
        mask = data.base.get("attention_mask")
        window = getattr(config, "sliding_window", None)
        per_row = ((mask is not None and not bool(mask.all())) or config._attn_implementation == "eager"
                   or (window is not None and length > window))
        return {"n_masks": kinds, "mask_rows": len(data) if per_row else 1}

    def cache_bytes(self, data: InterchangeData, strategy: str = "full") -> int:
        """Memory the cache of `data` takes under `strategy` (full: suffix states, source vectors, prefix keys and values)."""
        return self.cache_shape(data).bytes(strategy)

    def kv_bytes(self, data: InterchangeData) -> int:
        """The part of `cache_bytes` taken by the prefix keys and values of the layers above the site."""
        kv = self.upper[0].self_attn.k_proj.out_features if self.upper else 0
        return len(data) * 2 * len(self.upper) * int(data.base_pos.min()) * kv * next(self.model.parameters()).element_size()

    def _build(self, data: InterchangeData, layers: Sequence[int] = (), all_keys: bool = False,
               keep_prefix_states: bool = False) -> tuple[dict[int, LayerCache], torch.Tensor]:
        """The caches of `data` at `layers` (default: the site's layer) and the model's own answer
        states to check them against (see `layer_cache.build`)."""
        try:
            return layer_cache.build(self.model, data, layers or [self.site.layer], self.chunk_size,
                                     all_keys=all_keys, keep_prefix_states=keep_prefix_states)
        except decoder_layers.UnknownArguments as err:
            raise FastPathUnavailable(f"{type(self.model).__name__}'s layers cannot run on a suffix here: {err}") from None

    def _check(self, store: LayerCache, data: InterchangeData, reference: torch.Tensor, n: int = 8,
               noise: float | None = None) -> None:
        """Refuse the cache unless the fast path, unintervened, reproduces the model's own last layer (see
        `check_tolerance`; `noise`: the model's own disagreement on these rows, when already measured); the
        result is kept in `self.check_result`."""
        rows = np.arange(min(n, len(data)))
        with torch.no_grad():
            ours = self._upper_layers(store, rows, store.suffix[: len(rows)])
        reference = reference[: len(rows)]
        err = relative_error(ours, reference)
        if noise is None:
            noise = self_disagreement(self.model, data.select(rows), reference)
        tol = check_tolerance(noise, reference.dtype)
        self.check_result = {"error": err, "model_noise": noise, "tolerance": tol}
        self.check_reference = reference  # the model's own answer states of the checked rows
        if not err <= tol:
            raise FastPathMismatch(
                f"the fast path differs from {type(self.model).__name__}'s own forward pass by a relative error of "
                f"{err:.3g} at site {self.site} (tolerance {tol:.3g}: {CHECK_FACTOR} x the model's own disagreement "
                f"between two attention implementations, {noise:.3g}, and at least {CHECK_FLOOR[reference.dtype]:.0e} in "
                f"{reference.dtype}); this model is not supported: use PlainForward"
            )
        self.checked = True

    def with_intervention(self, intervention: nn.Module) -> "CachedForward":
        """The same caches (no copy) serving another intervention at the same site."""
        view = copy.copy(self)
        view.intervention = intervention
        return view

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
        view = self.with_intervention(intervention)
        view.site, view.stores = site, []
        for d in data:
            store = layer_cache.column_view(self.stores, d, column)
            if store is None:
                raise FastPathMismatch(
                    f"these {len(d)} examples with the positions of column {column} are not in this cache: build "
                    "the cache on the same examples with all their position columns ((N, k) positions)"
                )
            view.stores.append(store)
        return view

    def find(self, batch: InterchangeData) -> tuple[LayerCache, np.ndarray]:
        """The cached dataset holding every example of `batch`, and their rows in it (on the host).

        A batch drawn from a cached dataset is found by its ids on the host (the training step's case: no
        read-back from the device); any other batch by the bytes of its inputs and positions."""
        for store in self.stores:
            rows = store.rows_of(batch)
            if rows is not None:
                return store, rows
        keys = layer_cache.row_keys(batch)
        for store in self.stores:
            found = [store.index.get(k) for k in keys]
            if None not in found:
                return store, np.asarray(found, dtype=np.int64)
        stores, reference = self._build(batch)
        store = stores[self.site.layer]
        if not self.checked:
            self._check(store, batch, reference)
        return store, np.arange(len(batch))

    # ---- the fast step ------------------------------------------------------------------------
    def _upper_layers(self, store: LayerCache, rows_host: np.ndarray, hidden: torch.Tensor,
                      rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run the layers above the site on the suffix positions of the cache's rows `rows_host` (`rows`: the
        same on the cache's device, when the caller has them); the last layer output (B, d) at the answer."""
        if not self.upper:  # the site is the last layer
            return hidden[:, -1]
        with decoder_layers.shared_kv_heads(hidden.device):
            return self._run_upper(store, rows_host, hidden, rows)

    def _run_upper(self, store: LayerCache, rows_host: np.ndarray, hidden: torch.Tensor,
                   rows: torch.Tensor | None) -> torch.Tensor:
        """`_upper_layers` (see there), once the site is below the last layer."""
        rows = rows_on(rows_host, store.suffix.device) if rows is None else rows
        prefix, n, n_layers = store.prefix_len, hidden.shape[1], self.site.layer + 1 + len(self.upper)
        upper = list(enumerate(self.upper, start=self.site.layer + 1))
        implementation = self.model.config._attn_implementation

        def arguments(queries: slice, needed: list[bool], cos: torch.Tensor, sin: torch.Tensor, cache: object) -> dict[int, dict]:
            return store.arguments(rows, queries, needed, cos, sin, cache, implementation, hidden.dtype)

        every = [True] * len(store.masks)
        if store.prefix_hidden is not None:  # strategy "site": recompute the prefix's keys and values
            on_prefix = arguments(slice(0, prefix), every, store.prefix_cos, store.prefix_sin, None)
            prefix_keys, prefix_values = decoder_layers.prefix_keys_values(
                upper, n_layers, store.prefix_hidden.index_select(0, rows), on_prefix, store.layout.cache_arg)
        else:  # positions >= P: see longer_prefix
            prefix_keys = {j: k[:, :, :prefix].index_select(0, rows) for (j, _), k in zip(upper, store.keys)}
            prefix_values = {j: v[:, :, :prefix].index_select(0, rows) for (j, _), v in zip(upper, store.values)}
        cache = decoder_layers.prefix_cache(n_layers, prefix_keys, prefix_values, hidden.new_empty(0))
        # the last query sees every key unless one is hidden from it (masks then dropped: SDPA runs faster
        # without); the other queries never see the later keys
        at_last = [store.hidden_at_last(k, rows_host) for k in range(len(store.masks))]
        end = prefix + n
        hidden = decoder_layers.run_layers(upper[:-1], hidden, arguments(
            slice(prefix, end), every if n > 1 else at_last, store.cos, store.sin, cache))
        index, top = upper[-1]  # the output head reads the answer only: the top layer's keys and values at
        if n > 1:  # every position, its attention and MLP at the last one
            decoder_layers.keys_only(top, index, hidden[:, :-1], arguments(
                slice(prefix, end - 1), [False] * len(at_last), store.cos[:, :-1], store.sin[:, :-1], cache)[index], cache)
        last = arguments(slice(end - 1, end), at_last, store.cos[:, -1:], store.sin[:, -1:], cache)[index]
        return main_output(top(hidden[:, -1:], **last))[:, -1]

    def __call__(self, batch: InterchangeData) -> torch.Tensor:
        if self.intervention is None:
            raise ValueError("this cache was built without an intervention: get a forward from for_position(...)")
        store, rows_host = self.find(batch)
        rows = rows_on(rows_host, store.suffix.device)
        # intervened positions within the suffix; their range was checked when the dataset was cached
        local = batch.base_pos.to(rows.device) - store.prefix_len
        suffix = store.suffix.index_select(0, rows)
        new = self.intervention(select_positions(suffix, local, check=False), store.source.index_select(0, rows),
                                batch.variable)
        hidden = self._upper_layers(store, rows_host, write_positions(suffix, local, new, check=False), rows)
        return decoder_layers.output_logits(self.model, hidden, batch.answers)


def shared_cache(
    model: nn.Module, layer: int, data: Iterable[InterchangeData], max_cache_bytes: int = 4 * 2**30
) -> CachedForward:
    """One cache of `data` (encoded at every position of a grid) at `layer`, for `for_position` to serve
    each position from (when the full cache does not fit, the plan of `CachedForward` picks what to keep).
    Raises FastPathUnavailable, saying why, where the fast path cannot run or not even the site's states
    fit the budget."""
    data = list(data)
    try:
        return shared_caches(model, [layer], data, max_cache_bytes)[layer]
    except FastPathMismatch:
        raise
    except FastPathUnavailable:  # over the budget, or unsupported: the plan below keeps less, or refuses likewise
        pass
    problem = fast_path_problem(model, Site(layer), data)
    if problem is not None:
        raise FastPathUnavailable(problem)
    with warnings.catch_warnings():  # the plan's own note on batch caching: said below, once, as a reason
        warnings.simplefilter("ignore")
        cache = CachedForward(model, Site(layer), None, data, max_cache_bytes=max_cache_bytes)
    if len(cache.stores) != len(data):
        raise FastPathUnavailable(f"not even the site's states of these {sum(map(len, data))} examples fit the "
                                  f"fast path's memory budget of {max_cache_bytes / 2**20:.1f} MiB")
    return cache


def shared_caches(
    model: nn.Module, layers: Sequence[int], data: Iterable[InterchangeData], max_cache_bytes: int = 4 * 2**30
) -> dict[int, CachedForward]:
    """`shared_cache` at each of `layers`, from one forward pass over each dataset (the layers share the
    prefix keys and values). Raises FastPathUnavailable, saying why, where the fast path cannot run at
    one of them or the caches would take more than `max_cache_bytes` together."""
    data, layers = list(data), sorted(set(layers))
    for layer in layers:
        problem = fast_path_problem(model, Site(layer), data)
        if problem is not None:
            raise FastPathUnavailable(problem)
    caches = {l: CachedForward(model, Site(l), None, max_cache_bytes=max_cache_bytes) for l in layers}
    lowest = caches[layers[0]]  # its prefix keys and values cover every layer above the others' too
    # the keys and values of every position (not only the prefix's) are kept: see layer_cache.longer_prefix
    scale = [d.base["input_ids"].shape[1] / max(1, int(d.base_pos.min())) for d in data]
    need = sum(lowest.cache_bytes(d) + (f - 1) * lowest.kv_bytes(d) for d, f in zip(data, scale)) + sum(
        caches[l].cache_bytes(d) - caches[l].kv_bytes(d) for l in layers[1:] for d in data)
    if need > max_cache_bytes:
        raise FastPathUnavailable(f"the caches of layers {layers} would take {need / 2**20:.1f} MiB together, over the "
                                  f"fast path's budget of {max_cache_bytes / 2**20:.1f} MiB")
    for d in data:
        stores, reference = lowest._build(d, layers, all_keys=True)
        noise = None  # the model's own disagreement on these rows is the same at every layer: measured once
        for l, cache in caches.items():
            cache._check(stores[l], d, reference, noise=noise)
            noise = cache.check_result["model_noise"]
            cache.stores.append(stores[l])
    return caches


def caches_or_plain(
    model: nn.Module, layers: Sequence[int], data: Iterable[InterchangeData], max_cache_bytes: int = 4 * 2**30
) -> dict[int, CachedForward | None]:
    """The shared caches of `layers` (all from one pass when they fit together, else layer by layer), and
    None at a layer where the fast path cannot run: the caller then uses PlainForward, and is told once
    why (`plain_path_notice`)."""
    data = list(data)
    try:
        return shared_caches(model, layers, data, max_cache_bytes)
    except FastPathUnavailable as together:
        if len(set(layers)) == 1:
            plain_path_notice(str(together))
            return {layer: None for layer in layers}
    caches: dict[int, CachedForward | None] = {}
    for layer in sorted(set(layers)):
        try:
            caches[layer] = shared_cache(model, layer, data, max_cache_bytes)
        except FastPathUnavailable as err:
            plain_path_notice(f"layer {layer}: {err}")
            caches[layer] = None
    return caches


class PlainPathWarning(UserWarning):
    """The plain path runs where the fast path was asked for (the message says why)."""


_TOLD: set[str] = set()


def plain_path_notice(reason: str) -> None:
    """Say, once per reason in a process, that the plain path runs instead of the fast one, and why."""
    if reason not in _TOLD:
        _TOLD.add(reason)
        warnings.warn(f"using the plain path (exact, slower): {reason}", PlainPathWarning, stacklevel=3)


def make_forward(
    model: nn.Module, site: Site, intervention: nn.Module, data: Iterable[InterchangeData] = (), fast: bool = True
) -> InterventionForward:
    """The fast path when the model, site and data allow it (caching `data`), else the plain path (and the
    caller is told why, once)."""
    data = list(data)
    if not fast:
        return PlainForward(model, site, intervention)
    problem = fast_path_problem(model, site, data)
    if problem is None:
        try:
            return CachedForward(model, site, intervention, data)
        except FastPathUnavailable as err:  # a mismatch, or layers given arguments the fast path cannot cut
            problem = str(err)
    plain_path_notice(problem)
    return PlainForward(model, site, intervention)
