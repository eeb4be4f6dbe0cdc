"""Interchange interventions as small modules: `forward(base, source, variable) -> intervened`.

All act on the last axis of (B, d) vectors taken at a site.

- `NeuronIntervention`: swap a fixed set of neurons (the brute-force baseline).
- `DASIntervention`: swap the first k dimensions of a learned rotation (DAS, fixed size).
- `BoundlessDASIntervention`: swap a soft, learned number of rotated dimensions (Boundless DAS).

The rotated ones share one formula. With W an r x d matrix with orthonormal rows (r = d: a full
rotation; r < d: the low-rank variant whose memory grows with d*r) and a mask m over the r rotated
dimensions,

    intervened = base + W^T (m * (W source - W base)),

which for r = d equals the paper's R^T((1 - m) R base + m R source), because R^T R = I. The
rotation and the swap are computed in float32 whatever the model's dtype (as pyvene does), so a
bfloat16 model never rounds or differentiates the rotation in bfloat16.

How W is kept orthonormal while it is trained is the rotation's *orthogonal map* (`ORTHOGONAL_MAPS`):
the paper's matrix exponential, the Cayley map, or a QR retraction after each optimizer step.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrizations


class NeuronIntervention(nn.Module):
    """Copy the neurons `dims` of the source into the base: no learned parameters."""

    def __init__(self, d: int, dims: list[int]):
        super().__init__()
        if not dims or not all(0 <= i < d for i in dims):
            raise ValueError(f"neuron dims must be a non-empty subset of 0..{d - 1}, got {dims}")
        self.d = d
        self.register_buffer("dims", torch.tensor(sorted(dims), dtype=torch.long, device="cpu"))  # moved with .to()

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (saved with the weights)."""
        return {"d": self.d, "dims": self.dims.tolist()}

    def forward(self, base: torch.Tensor, source: torch.Tensor, variable: torch.Tensor | None = None) -> torch.Tensor:
        out = base.clone()
        out[..., self.dims] = source[..., self.dims]
        return out


# How an OrthonormalMap keeps W orthonormal while it is trained (see das_lib/method/training.py for the
# optimizer side). All three start from the same W for the same seed.
ORTHOGONAL_MAPS = {
    "exp": "torch's orthogonal parametrization as the paper's code and pyvene use it: the matrix exponential "
           "of a skew-symmetric matrix for the full rotation (Householder reflections for r < d: the default there)",
    "cayley": "torch's orthogonal parametrization with the Cayley map (I - A/2)^-1 (I + A/2): one linear "
              "solve instead of the exponential, the same rotation to first order in A (the default for a full rotation)",
    "qr": "W itself is the trained parameter: Adam steps in the ambient space and a QR retraction puts W back "
          "on the orthonormal matrices after every step (no map in the forward or backward pass)",
}
# The map used where none is named (None), by the rotation's shape (benchmarks/README.md, issue 19): for the
# full rotation Cayley, which finds the same alignments as the exponential at a fraction of its cost; for a
# low-rank one torch's Householder product ("exp" with r < d, as pyvene's), which holds d*r numbers only
# (torch's Cayley map of a d x r matrix keeps and solves a d x d one).
DEFAULT_MAPS = {"full": "cayley", "low rank": "exp"}


def resolve_map(orthogonal_map: str | None, d: int, r: int | None = None) -> str:
    """`orthogonal_map`, or for None the default for a rotation of rank r in width d (DEFAULT_MAPS); an unknown
    name is refused with the valid ones."""
    if orthogonal_map is None:
        return DEFAULT_MAPS["full" if r is None or r == d else "low rank"]
    if orthogonal_map not in ORTHOGONAL_MAPS:
        raise ValueError(f"unknown orthogonal map {orthogonal_map!r}; choose one of {list(ORTHOGONAL_MAPS)} (or None: "
                         "the default for the rotation's shape)")
    return orthogonal_map


def orthonormal_columns(matrix: torch.Tensor) -> torch.Tensor:
    """The Q of the QR decomposition of `matrix` (d x r, d >= r), each column's sign chosen so that R's
    diagonal is positive: the orthonormal matrix nearest a nearly orthonormal one, computed in its dtype."""
    q, r = torch.linalg.qr(matrix)
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)


class OrthonormalMap(nn.Module):
    """An r x d matrix W with orthonormal rows, kept exact by its orthogonal map (ORTHOGONAL_MAPS).

    The starting W is drawn from torch's global random stream on the CPU (then moved to `device`), so a
    seed gives the same start on every device; orthonormalising it runs on `device`."""

    def __init__(self, d: int, r: int | None = None, orthogonal_map: str | None = None,
                 device: str | torch.device | None = None):
        super().__init__()
        r = d if r is None else r
        if not 1 <= r <= d:
            raise ValueError(f"rotation rank r must be in 1..{d} for hidden size {d}, got {r}")
        self.d, self.r, self.orthogonal_map = d, r, resolve_map(orthogonal_map, d, r)
        # The d x r matrix is the parametrized one (rotated = x @ basis), as in the paper's release and
        # pyvene: the transposed choice spans the same rotations but trains along another path (we
        # measured different IIA from the same start).
        linear = nn.Linear(r, d, bias=False, device="cpu")
        if device is not None:
            linear = linear.to(device)
        if self.orthogonal_map == "qr":
            with torch.no_grad():
                linear.weight.copy_(orthonormal_columns(linear.weight))
            self.basis = linear
        elif self.orthogonal_map == "exp" and r < d:
            # householder for r < d, without torch's default trivialization, which would keep a d x d
            # buffer: the low-rank map holds d*r numbers only (pyvene's low-rank rotation)
            self.basis = parametrizations.orthogonal(linear, orthogonal_map="householder", use_trivialization=False)
        else:
            torch_map = "matrix_exp" if self.orthogonal_map == "exp" else "cayley"
            self.basis = parametrizations.orthogonal(linear, orthogonal_map=torch_map, use_trivialization=True)

    @property
    def weight(self) -> torch.Tensor:
        return self.basis.weight.T  # (r, d), rows orthonormal

    @torch.no_grad()
    def retract(self) -> None:
        """After an optimizer step of the "qr" map, put W back on the orthonormal matrices (QR retraction);
        nothing for the parametrized maps, whose W is orthonormal by construction."""
        if self.orthogonal_map == "qr":
            self.basis.weight.copy_(orthonormal_columns(self.basis.weight))

    @torch.no_grad()
    def reorthonormalize(self) -> None:
        """Replace W by the orthonormal matrix QR finds nearest it, computed in float64.

        Training keeps W orthonormal only up to the float32 rounding of its map (matrix_exp drifts to
        ~3e-5 at d = 4096), which a saved alignment would carry; this removes the drift."""
        basis = self.basis.weight  # (d, r): orthonormal columns
        q = orthonormal_columns(basis.double()).to(basis.dtype)  # QR fixes each column only up to its sign: keep W's
        if self.orthogonal_map == "qr":
            basis.copy_(q)
        else:
            self.basis.weight = q  # stored through the parametrization's right_inverse

    def orthogonality_error(self) -> float:
        """max |W W^T - I|: how far the rows are from orthonormal."""
        with torch.no_grad():
            w = self.weight.double()
            return (w @ w.T - torch.eye(self.r, dtype=w.dtype, device=w.device)).abs().max().item()


class RotatedSpaceIntervention(nn.Module):
    """Base class: interchange inside a learned rotated subspace selected by `mask(variable)`."""

    def __init__(self, d: int, r: int | None = None, n_variables: int = 1, orthogonal_map: str | None = None,
                 device: str | torch.device | None = None):
        super().__init__()
        self.rotation = OrthonormalMap(d, r, orthogonal_map, device)
        self.d, self.r, self.n_variables = d, self.rotation.r, n_variables
        if self.r < n_variables:
            raise ValueError(f"rank {self.r} cannot hold {n_variables} disjoint subspaces")

    def mask(self, variable: torch.Tensor) -> torch.Tensor:
        """(B, r) weights in [0, 1] of each rotated dimension for the variable of each example."""
        raise NotImplementedError

    def forward(self, base: torch.Tensor, source: torch.Tensor, variable: torch.Tensor | None = None) -> torch.Tensor:
        if base.shape[-1] != self.d:
            raise ValueError(f"intervention was built for hidden size {self.d}, got vectors of size {base.shape[-1]}")
        if variable is None:
            variable = torch.zeros(base.shape[0], dtype=torch.long, device=base.device)
        w = self.rotation.weight  # float32, computed once per call (once per step, or per evaluation: see training.evaluate)
        m = self.mask(variable.to(base.device))
        return base + (((source - base).to(w.dtype) @ w.T * m) @ w).to(base.dtype)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (saved with the weights)."""
        return {"d": self.d, "r": self.r, "n_variables": self.n_variables, "orthogonal_map": self.rotation.orthogonal_map}


class DASIntervention(RotatedSpaceIntervention):
    """DAS with a fixed subspace of k rotated dimensions per variable (disjoint blocks)."""

    def __init__(self, d: int, k: int, r: int | None = None, n_variables: int = 1, orthogonal_map: str | None = None,
                 device: str | torch.device | None = None):
        super().__init__(d, r, n_variables, orthogonal_map, device)
        if not 1 <= k * n_variables <= self.r:
            raise ValueError(f"k={k} x {n_variables} variables does not fit in {self.r} rotated dimensions")
        self.k = k
        masks = torch.zeros(n_variables, self.r, device=device)
        for v in range(n_variables):
            masks[v, v * k : (v + 1) * k] = 1.0
        self.register_buffer("masks", masks)

    def mask(self, variable: torch.Tensor) -> torch.Tensor:
        return self.masks[variable]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}


def sigmoid_boundary_mask(r: int, lower: torch.Tensor, upper: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Soft mask over dims i = 0..r-1: sigmoid((i - lower) / T) * sigmoid((upper - i) / T)."""
    i = torch.arange(r, dtype=upper.dtype, device=upper.device)
    return torch.sigmoid((i - lower.unsqueeze(-1)) / temperature) * torch.sigmoid((upper.unsqueeze(-1) - i) / temperature)


class BoundlessDASIntervention(RotatedSpaceIntervention):
    """Boundless DAS: each variable owns a block of r / n_variables rotated dims and learns what
    fraction `boundary` of it to intervene on, through a sigmoid mask sharpened by `temperature`."""

    def __init__(self, d: int, r: int | None = None, n_variables: int = 1, init_boundary: float = 0.5,
                 orthogonal_map: str | None = None, device: str | torch.device | None = None):
        super().__init__(d, r, n_variables, orthogonal_map, device)
        self.block = self.r // n_variables
        self.boundaries = nn.Parameter(torch.full((n_variables,), float(init_boundary), device=device))
        # A buffer, not a learned parameter: annealed by the training loop, and saved, loaded and
        # checkpointed with the weights like any other state.
        self.register_buffer("mask_temperature", torch.tensor(50.0, device=device))

    @property
    def temperature(self) -> float:
        """The mask's temperature T: high is soft, low is a hard mask."""
        return float(self.mask_temperature)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.mask_temperature.fill_(value)

    def clamped_boundaries(self) -> torch.Tensor:
        """Boundaries kept in [1/block, 1] so every variable keeps at least one soft dimension."""
        return self.boundaries.clamp(1.0 / self.block, 1.0)

    def mask(self, variable: torch.Tensor) -> torch.Tensor:
        b = self.clamped_boundaries()
        lower = torch.arange(self.n_variables, device=b.device, dtype=b.dtype) * self.block
        upper = lower + b * self.block
        masks = sigmoid_boundary_mask(self.r, lower, upper, self.mask_temperature)  # (n_variables, r)
        # the soft edges of a hot mask reach into the neighbouring block: cut them, so that
        # variables stay in disjoint subspaces at every temperature (no-op for one variable)
        block_of = torch.arange(self.r, device=b.device) // self.block
        own = block_of[None, :] == torch.arange(self.n_variables, device=b.device)[:, None]
        return (masks * own)[variable]

    def boundary_dims(self) -> list[float]:
        """Learned subspace size of each variable, in rotated dimensions."""
        return (self.clamped_boundaries().detach() * self.block).tolist()


INTERVENTIONS = {c.__name__: c for c in (NeuronIntervention, DASIntervention, BoundlessDASIntervention)}
# Version of the saved files: raise it when a module's parameters change name or meaning, so that an
# old file is refused with a message instead of loading wrongly. Files without one are version 1.
# Version 2: Boundless DAS keeps its temperature in its weights (buffer mask_temperature); version 1
# wrote it in the JSON, and such files are converted when loaded.
# Version 3: rotated interventions record their orthogonal map; older files were all trained with "exp".
FILE_FORMAT = 3
Converted = tuple[dict[str, Any], dict[str, torch.Tensor]]


def _from_format_1(info: dict[str, Any], config: dict[str, Any], state: dict[str, torch.Tensor]) -> Converted:
    """A version-1 file as version 2 has it: the temperature moves from the JSON into the weights."""
    if info["class"] == BoundlessDASIntervention.__name__:
        state = {**state, "mask_temperature": torch.tensor(float(info.get("temperature", 50.0)), device="cpu")}
    return config, state


def _from_format_2(info: dict[str, Any], config: dict[str, Any], state: dict[str, torch.Tensor]) -> Converted:
    """A version-2 file as version 3 has it: a rotated intervention's map, which was always "exp"."""
    if info["class"] != NeuronIntervention.__name__:
        config = {**config, "orthogonal_map": "exp"}
    return config, state


CONVERTERS = {1: _from_format_1, 2: _from_format_2}  # version -> function turning it into the next version


def save_intervention(intervention: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write `path`.safetensors (weights) and `path`.json (class, sizes, orthogonal map, site, hyperparameters)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in intervention.state_dict().items()}
    save_file(state, str(path.with_suffix(".safetensors")))
    info = {"format": FILE_FORMAT, "class": type(intervention).__name__, "config": intervention.config(), "meta": meta or {}}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return path


def load_intervention(path: str | Path, hidden_size: int | None = None,
                      device: str | torch.device | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load what `save_intervention` wrote (any class, built from its saved config, on `device`); refuse it if
    built for another hidden size."""
    path = Path(path)
    json_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not json_path.exists() or not weights_path.exists():
        raise FileNotFoundError(f"no saved intervention at {path} (need {json_path.name} and {weights_path.name})")
    info = json.loads(json_path.read_text())
    version = info.get("format", 1)
    if version != FILE_FORMAT and version not in CONVERTERS:
        raise ValueError(
            f"alignment {path} was saved in file format {version}, this das_lib reads format {FILE_FORMAT} "
            f"(and converts {sorted(CONVERTERS)}); train it again with this version (or load it with the das_lib "
            "version that wrote it)"
        )
    config = info["config"]
    if hidden_size is not None and config["d"] != hidden_size:
        raise ValueError(
            f"alignment {path} was learned for hidden size {config['d']} but the model has hidden size "
            f"{hidden_size}; train an alignment for this model instead"
        )
    state = load_file(str(weights_path), device=str(device or "cpu"))
    while version != FILE_FORMAT:
        config, state = CONVERTERS[version](info, config, state)
        version += 1
    cls = INTERVENTIONS[info["class"]]
    # config() holds exactly the constructor's arguments; the module is built where its weights go
    module = cls(**config) if cls is NeuronIntervention else cls(**config, device=device)
    module.load_state_dict(state)
    return module.to(device) if device is not None else module, info["meta"]
