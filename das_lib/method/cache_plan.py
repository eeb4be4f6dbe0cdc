"""How much of the fast path's cache to keep, under a memory budget: the strategies and the plan.

The fast path (`das_lib.fastpath.CachedForward`) can keep, per dataset, three amounts of what the
frozen model computes; each is exact (the intervention cannot change any of it), they differ in
memory and in the work left for every step:

- "full": the site's layer outputs from the first intervened position P on, the source vectors, and
  the keys and values of positions < P in every layer above the site. A step runs only the layers
  above the site on positions >= P. Largest: the keys and values grow with P x the layers above.
- "site": the site's layer outputs at every position (prefix included) and the source vectors. A
  step first recomputes, without gradients, the layers above the site on the prefix (for their keys
  and values), then runs them with gradients on positions >= P only. The layers below the site and
  the source run are never rerun.
- "batch": nothing is kept; every batch is run through the frozen model without gradients (base and
  source), then the step runs as in "full". Memory of one batch only.

At Alpaca 7B with the paper's budget (21,000 pairs of 82 tokens, site at layer 0) "full" would take
about 740 GB in bfloat16, "site" about 14 GB, "batch" nothing kept: `plan_cache` picks the cheapest
step that fits the budget, and `CachePlan` says what is cached and how much memory it takes.
"""
from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("full", "site", "batch")  # from the least work per step to the least memory


@dataclass(frozen=True)
class CacheShape:
    """What sets a dataset's cache size: examples, tokens, first intervened position, model widths."""

    n_examples: int
    length: int  # T: tokens per (left-padded) input
    prefix: int  # P: first intervened position; positions < P are only read as keys and values
    hidden_size: int
    kv_width: int  # key (= value) width of one layer: kv_heads x head_dim
    n_upper: int  # decoder layers above the site
    n_source_positions: int = 1  # positions intervened together (k)
    element_size: int = 2  # bytes of one value in the model's dtype (bfloat16: 2)
    head_dim: int = 0  # width of the rotary tables (cos and sin); 0 leaves them out (they are small)
    rotary_rows: int = 1  # rows of the rotary tables: 1 when every input has positions 0..T-1, else N
    n_masks: int = 0  # attention-mask kinds kept (one bool per query and key each; 0 leaves the masks out)
    mask_rows: int = 1  # rows of each mask: 1 when it is causal only, else N (padding, a sliding window)

    def __post_init__(self) -> None:
        if not 0 <= self.prefix < self.length:
            raise ValueError(f"prefix must be in 0..{self.length - 1} (an intervened position), got {self.prefix}")
        for name in ("n_examples", "hidden_size", "kv_width", "n_source_positions", "element_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_upper < 0:
            raise ValueError(f"n_upper must be >= 0, got {self.n_upper}")

    def parts(self) -> dict[str, int]:
        """Bytes of each cached tensor over all examples."""
        per_value = self.n_examples * self.element_size
        return {
            "suffix states": per_value * (self.length - self.prefix) * self.hidden_size,
            "source vectors": per_value * self.n_source_positions * self.hidden_size,
            "prefix states at the site": per_value * self.prefix * self.hidden_size,
            "prefix keys and values above the site": per_value * 2 * self.n_upper * self.prefix * self.kv_width,
            "suffix rotary tables": 2 * self.rotary_rows * (self.length - self.prefix) * self.head_dim * self.element_size,
            "prefix rotary tables": 2 * self.rotary_rows * self.prefix * self.head_dim * self.element_size,
            # per mask kind (rows, 1, T, T) bool, and the position ids (rows, T) int64 the layers are given
            "attention masks": self.n_masks * self.mask_rows * self.length**2 + (self.rotary_rows * self.length * 8 if self.n_masks else 0),
        }

    def bytes(self, strategy: str) -> int:
        """Memory kept by `strategy` for this dataset."""
        parts = self.parts()
        return sum(parts[name] for name in CACHED[check_strategy(strategy)])


# which parts each strategy keeps
CACHED = {
    "full": ("suffix states", "source vectors", "prefix keys and values above the site", "suffix rotary tables",
             "attention masks"),
    "site": ("suffix states", "source vectors", "prefix states at the site", "suffix rotary tables", "prefix rotary tables",
             "attention masks"),
    "batch": (),
}
RECOMPUTED = {
    "full": "nothing: each step runs the layers above the site on the positions from P on",
    "site": "the layers above the site on the prefix, without gradients, every step (for their keys and values)",
    "batch": "the whole frozen model on every batch without gradients (base and source), then the step of 'full'",
}


def check_strategy(strategy: str) -> str:
    """`strategy` if it is one of STRATEGIES (or 'auto'), else a ValueError listing them."""
    if strategy not in (*STRATEGIES, "auto"):
        raise ValueError(f"unknown cache strategy {strategy!r}: one of 'auto', {', '.join(map(repr, STRATEGIES))}")
    return strategy


@dataclass(frozen=True)
class CachePlan:
    """The strategy chosen for one dataset, with what every strategy would keep, and the budget."""

    strategy: str
    shape: CacheShape
    budget: int  # bytes left for this dataset's cache when it was planned
    requested: str = "auto"

    @property
    def nbytes(self) -> int:
        """Memory the chosen strategy keeps."""
        return self.shape.bytes(self.strategy)

    def __str__(self) -> str:
        s = self.shape
        lines = [f"fast-path cache plan: {s.n_examples} examples x {s.length} tokens, intervened from position "
                 f"{s.prefix}, {s.n_upper} layers above the site, budget {_size(self.budget)}"]
        for name in STRATEGIES:
            mark = "->" if name == self.strategy else "  "
            fits = "fits" if s.bytes(name) <= self.budget else "does not fit"
            lines.append(f" {mark} {name:5s} keeps {_size(s.bytes(name)):>10s} ({fits}): "
                         f"{', '.join(n for n in CACHED[name] if 'rotary' not in n and 'mask' not in n) or 'nothing'}; recomputes {RECOMPUTED[name]}")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def plan_cache(shape: CacheShape, budget: int, strategy: str = "auto") -> CachePlan:
    """The strategy for a dataset: `strategy` itself, or for 'auto' the first of STRATEGIES that fits `budget` bytes."""
    check_strategy(strategy)
    if budget < 0:
        raise ValueError(f"the memory budget must be >= 0 bytes, got {budget}")
    chosen = strategy
    if strategy == "auto":
        chosen = next(name for name in STRATEGIES if shape.bytes(name) <= budget)  # "batch" keeps 0 bytes
    return CachePlan(chosen, shape, budget, requested=strategy)
