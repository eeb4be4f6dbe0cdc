"""Interchange examples as tensors: what training, evaluation and the fast path read."""
from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from das_lib.method.readout import check_answers


def rows_on(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Row numbers kept on the host, as an index tensor on `device`. To a GPU they are copied from pinned
    memory without waiting: a plain copy from the host would wait until the GPU has run all it was given."""
    index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


@dataclass
class InterchangeData:
    """Tensors of N interchange examples: model inputs of base and source, site positions, labels.

    `roles` names the position columns (one name for (N,) positions, k names for (N, k)), so that a
    forward can check that a site's position is the one the data was encoded at; None: unnamed.
    `answers` are the token ids of the task's answers, (A,): the model's answer is read over them
    (das_lib.method.readout); None reads it over the whole vocabulary (the paper's reading).

    Every dataset made by the constructor (or `dataclasses.replace`, which may change any tensor) gets a
    new `origin`; `select` and `to` keep their parent's, with `ids`, the rows of the parent's examples
    they hold. A cache of a dataset can so find a batch drawn from it by its ids, on the host, without
    reading the batch's tensors back from the device (see das_lib.method.fastpath). Likewise positions
    are checked against the inputs' length once, where the dataset is made on the CPU
    (`positions_checked`), and not again for every batch on a GPU.
    """

    base: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor]
    base_pos: torch.Tensor | None
    source_pos: torch.Tensor | None
    variable: torch.Tensor  # (N,) index of the intervened high-level variable
    labels: torch.Tensor  # (N,) class or token id of the counterfactual output
    base_labels: torch.Tensor | None = None  # (N,) the model's expected factual answer on the base
    roles: tuple[str, ...] | None = None
    answers: torch.Tensor | None = None  # (A,) token ids the answer is read over; None: the whole vocabulary
    origin: str = field(init=False, repr=False, compare=False)
    ids: np.ndarray | None = field(init=False, repr=False, compare=False)  # (N,) rows in `origin`; None: 0..N-1
    positions_checked: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.origin, self.ids = uuid.uuid4().hex, None
        self.positions_checked = self._check_positions()
        n = len(self.labels)
        for name, t in [*self.base.items(), *self.source.items(), ("variable", self.variable)]:
            if len(t) != n:
                raise ValueError(f"InterchangeData: {name} has {len(t)} rows but there are {n} labels")
        if self.answers is not None:
            check_answers(self.answers, self.labels)
        if self.roles is not None and self.base_pos is not None:
            columns = 1 if self.base_pos.dim() == 1 else self.base_pos.shape[1]
            if len(self.roles) != columns:
                raise ValueError(f"InterchangeData: {len(self.roles)} role names {self.roles} for {columns} position columns")

    def __len__(self) -> int:
        return len(self.labels)

    def _check_positions(self) -> bool:
        """Refuse positions outside their inputs where reading them is free (on the CPU); True if checked."""
        for pos, inputs in ((self.base_pos, self.base), (self.source_pos, self.source)):
            if pos is None or pos.numel() == 0:
                continue
            if pos.device.type != "cpu" or "input_ids" not in inputs:
                return False
            length = inputs["input_ids"].shape[1]
            if int(pos.min()) < 0 or int(pos.max()) >= length:
                raise IndexError(f"token position {int(pos.min())}..{int(pos.max())} does not exist: "
                                 f"these inputs have positions 0..{length - 1}")
        return True

    def row_ids(self) -> np.ndarray:
        """(N,) int64 array on the host: the rows of these examples in the dataset named by `origin`."""
        return np.arange(len(self)) if self.ids is None else self.ids

    def _derived(self, ids: np.ndarray | None, apply: Callable[[torch.Tensor], torch.Tensor]) -> "InterchangeData":
        """This dataset with `apply` done to every tensor (rows picked, or moved): of the same origin, with
        `ids`, and not checked again (it is valid by construction, and checking reads the device)."""
        new = copy.copy(self)
        new.base, new.source = {k: apply(v) for k, v in self.base.items()}, {k: apply(v) for k, v in self.source.items()}
        for name in ("base_pos", "source_pos", "variable", "labels", "base_labels"):
            value = getattr(self, name)
            setattr(new, name, None if value is None else apply(value))
        new.ids = ids
        return new

    def select(self, idx: np.ndarray | torch.Tensor | slice) -> "InterchangeData":
        """The examples at `idx`: a slice, or row numbers, best as a host (numpy) array: the rows' ids are
        computed on the host, and a device tensor of row numbers would have to be read back for them."""
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        if isinstance(idx, slice):
            return self._derived(self.row_ids()[idx], lambda t: t[idx])
        index = rows_on(idx, self.labels.device)  # once for every tensor of the dataset
        return self._derived(self.row_ids()[idx], lambda t: t.index_select(0, index.to(t.device)))

    def relabelled(self, variable: torch.Tensor, labels: torch.Tensor, base_labels: torch.Tensor | None) -> "InterchangeData":
        """The same inputs and positions (the same origin: a cache of them serves both) with the targets of
        another causal model: which variable each pair intervenes on, and the labels."""
        if len(variable) != len(self) or len(labels) != len(self):
            raise ValueError(f"relabelled: {len(variable)} variables and {len(labels)} labels for {len(self)} examples")
        new = self._derived(self.ids, lambda t: t)
        device = self.labels.device
        new.variable, new.labels = variable.to(device), labels.to(device)
        new.base_labels = None if base_labels is None else base_labels.to(device)
        if new.answers is not None:
            check_answers(new.answers.cpu(), labels.cpu())
        return new

    def column(self, j: int) -> "InterchangeData":
        """The same examples at their j-th position only (for data encoded at k positions, (N, k))."""
        roles = None if self.roles is None else (self.roles[j],)
        return replace(self, base_pos=self.base_pos[:, j], source_pos=self.source_pos[:, j], roles=roles)

    def to(self, device: str | torch.device) -> "InterchangeData":
        """A copy on `device`."""
        new = self._derived(self.ids, lambda t: t.to(device))
        new.answers = None if self.answers is None else self.answers.to(device)
        return new

    def read_over(self, answers: torch.Tensor | None) -> "InterchangeData":
        """The same examples (the same origin) read over other answer tokens; None: the whole vocabulary."""
        new = self._derived(self.ids, lambda t: t)
        if answers is not None:
            check_answers(answers.cpu(), self.labels.cpu())
            answers = answers.to(self.labels.device)
        new.answers = answers
        return new

    def check_position(self, position: str | None) -> None:
        """Refuse a site whose position is not the one (named) role these examples are encoded at."""
        if self.roles is not None and position is not None and self.roles != (position,):
            raise ValueError(
                f"the site is at position {position!r} but these examples are encoded at {list(self.roles)}; "
                "encode them at the site's role (the task's interchange_data), or take that column (.column(j))"
            )
