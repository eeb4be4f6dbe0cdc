"""Interchange examples as tensors: what training, evaluation and the fast path read."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class InterchangeData:
    """Tensors of N interchange examples: model inputs of base and source, site positions, labels.

    `roles` names the position columns (one name for (N,) positions, k names for (N, k)), so that a
    forward can check that a site's position is the one the data was encoded at; None: unnamed.
    """

    base: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor]
    base_pos: torch.Tensor | None
    source_pos: torch.Tensor | None
    variable: torch.Tensor  # (N,) index of the intervened high-level variable
    labels: torch.Tensor  # (N,) class or token id of the counterfactual output
    base_labels: torch.Tensor | None = None  # (N,) the model's expected factual answer on the base
    roles: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, t in [*self.base.items(), *self.source.items(), ("variable", self.variable)]:
            if len(t) != n:
                raise ValueError(f"InterchangeData: {name} has {len(t)} rows but there are {n} labels")
        if self.roles is not None and self.base_pos is not None:
            columns = 1 if self.base_pos.dim() == 1 else self.base_pos.shape[1]
            if len(self.roles) != columns:
                raise ValueError(f"InterchangeData: {len(self.roles)} role names {self.roles} for {columns} position columns")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, idx: torch.Tensor | slice) -> "InterchangeData":
        """The examples at `idx`."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return InterchangeData(
            {k: v[idx] for k, v in self.base.items()},
            {k: v[idx] for k, v in self.source.items()},
            pick(self.base_pos), pick(self.source_pos), self.variable[idx], self.labels[idx], pick(self.base_labels),
            self.roles,
        )

    def shuffled(self, seed: int) -> "InterchangeData":
        """The same examples with their labels permuted among them: a labelling no high-level variable
        explains, for the control that shows an alignment cannot fit just any labels."""
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return replace(self, labels=self.labels[perm])

    def column(self, j: int) -> "InterchangeData":
        """The same examples at their j-th position only (for data encoded at k positions, (N, k))."""
        roles = None if self.roles is None else (self.roles[j],)
        return replace(self, base_pos=self.base_pos[:, j], source_pos=self.source_pos[:, j], roles=roles)

    def to(self, device: str | torch.device) -> "InterchangeData":
        """A copy on `device`."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return InterchangeData(
            {k: v.to(device) for k, v in self.base.items()},
            {k: v.to(device) for k, v in self.source.items()},
            mv(self.base_pos), mv(self.source_pos), self.variable.to(device), self.labels.to(device), mv(self.base_labels),
            self.roles,
        )

    def check_position(self, position: str | None) -> None:
        """Refuse a site whose position is not the one (named) role these examples are encoded at."""
        if self.roles is not None and position is not None and self.roles != (position,):
            raise ValueError(
                f"the site is at position {position!r} but these examples are encoded at {list(self.roles)}; "
                "encode them at the site's role (PriceTagTask.interchange_data), or take that column (.column(j))"
            )
