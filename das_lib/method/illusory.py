"""An interpretability illusion built on purpose, to calibrate the check of das_lib.method.illusion.

Makelov, Lange and Nanda's (2023) recipe: one direction v = (a + b) / sqrt(2) made of

- a *dormant* direction a, which the layers above read but along which the site's states never vary
  (`dormant_direction`: the least-varying direction of the read space);
- a *disconnected* direction b, along which the states vary with the variable but which nothing above
  reads (`disconnected_direction`: the difference of the mean states of the variable's two values, with
  its part in the read space removed).

Patching v moves the base state along a by half of what separates source and base along b; if the
layers above read a shift of that size along a as the variable, the answer follows the source's value,
though neither part holds the variable. `profile` measures each direction's variance, read and decoding.

Whether it works depends on how strongly the layers above read a. `amplified_copy` makes a copy of a model
whose layers above the site read one direction `factor` times as strongly (the state's coordinate along it,
measured from the natural mean, is multiplied by `factor` at the last token before the next layer). For a
dormant direction that coordinate is about its mean on natural inputs, so the copy answers as the model
does there; the read space is unchanged (a is already in it), only the strength of its read.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from das_lib.method.illusion import SiteSpaces
from das_lib.method.sites import Site, find_layers


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def dormant_direction(spaces: SiteSpaces) -> torch.Tensor:
    """(d,): the unit direction of the read space along which the natural states vary least, signed so that the
    mean margin gradient along it is positive."""
    if spaces.read.shape[1] == 0:
        raise ValueError("the read space is empty: the answer does not depend on this site")
    values, vectors = torch.linalg.eigh(spaces.read.T @ spaces.covariance @ spaces.read)
    a = _unit(spaces.read @ vectors[:, 0])
    return a if float((spaces.gradients @ a).mean()) >= 0 else -a


def mean_difference(states: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(d,): the mean state where the boolean `values` hold minus where they do not."""
    values = torch.as_tensor(values, dtype=torch.bool)
    if len(values) != len(states) or values.all() or not values.any():
        raise ValueError(f"need one boolean per state ({len(states)}), with both values present")
    return states[values].mean(0) - states[~values].mean(0)


def disconnected_direction(states: torch.Tensor, values: torch.Tensor, spaces: SiteSpaces) -> torch.Tensor:
    """(d,): the mean difference of the states between the variable's two values, out of the read space."""
    difference = mean_difference(states.double(), values)
    outside = difference - spaces.read @ (spaces.read.T @ difference)
    return _unit(outside)


def illusory_direction(dormant: torch.Tensor, disconnected: torch.Tensor) -> torch.Tensor:
    """(d, 1): (a + b) / sqrt(2) for orthogonal unit a and b, as a basis to patch."""
    if abs(float(dormant @ disconnected)) > 1e-6:
        raise ValueError(f"the dormant and disconnected directions must be orthogonal (a . b = {float(dormant @ disconnected):.2g})")
    return _unit(_unit(dormant) + _unit(disconnected))[:, None]


def construct(states: torch.Tensor, values: torch.Tensor, spaces: SiteSpaces) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, v): the dormant direction, the disconnected direction of the boolean `values` of `states` (N, d), and
    the illusory direction v = (a + b) / sqrt(2) as a (d, 1) basis."""
    a, b = dormant_direction(spaces), disconnected_direction(states, values, spaces)
    return a, b, illusory_direction(a, b)


def profile(direction: torch.Tensor, spaces: SiteSpaces, states: torch.Tensor, values: torch.Tensor) -> dict[str, float]:
    """How a direction behaves at the site: its natural variance and margin-gradient read (each over a typical
    direction's, see SiteSpaces), its share in the read space, and how well its coordinate decodes the boolean
    `values` of `states` (accuracy of the threshold halfway between the two values' means)."""
    u = _unit(direction.double())
    along = states.double() @ u
    values = torch.as_tensor(values, dtype=torch.bool)
    high, low = along[values].mean(), along[~values].mean()
    decoded = (along > (high + low) / 2) == values if high >= low else (along < (high + low) / 2) == values
    return {"variance": spaces.variance_along(u), "read": spaces.read_along(u),
            "read_space_share": float((spaces.read.T @ u).pow(2).sum()), "decoding": float(decoded.double().mean()),
            "separation": float((high - low).abs())}


class AmplifiedRead(nn.Module):
    """A decoder layer whose input state at the last token has its coordinate along `direction` (a unit vector),
    measured from `offset`, multiplied by `factor` first."""

    def __init__(self, layer: nn.Module, direction: torch.Tensor, factor: float, offset: float):
        super().__init__()
        self.layer = layer
        self.register_buffer("direction", direction.detach().double())
        self.factor, self.offset = float(factor), float(offset)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        last = hidden_states[:, -1].double()
        extra = (self.factor - 1) * (last @ self.direction - self.offset)[:, None] * self.direction
        hidden = torch.cat([hidden_states[:, :-1], (last + extra).to(hidden_states.dtype)[:, None]], 1)
        return self.layer(hidden, *args, **kwargs)


def amplified_copy(model: nn.Module, site: Site, direction: torch.Tensor, factor: float, spaces: SiteSpaces) -> nn.Module:
    """A copy of `model` whose layers above `site` (at the last token) read `direction` `factor` times as strongly:
    the layer above gets the state with its coordinate along it, from the natural mean, scaled by `factor`. The
    copy runs on the plain path (the fast one refuses its wrapped layer, saying so)."""
    layers = find_layers(model)
    if not 0 <= site.layer < len(layers) - 1:
        raise ValueError(f"site layer {site.layer} has no layer above it to read the direction (layers 0..{len(layers) - 1})")
    if direction.shape != (spaces.d,) or not factor > 0:
        raise ValueError(f"need a ({spaces.d},) direction and a factor > 0, got {tuple(direction.shape)} and {factor}")
    edited = copy.deepcopy(model)
    upper = find_layers(edited)
    u = _unit(direction.double())
    upper[site.layer + 1] = AmplifiedRead(upper[site.layer + 1], u.to(next(edited.parameters()).device), factor,
                                          float(spaces.mean @ u))
    return edited
