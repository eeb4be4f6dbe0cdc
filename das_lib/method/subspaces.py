"""Which neurons and which directions a learned rotated subspace is made of.

- `neuron_weights`, `effective_neurons`, `random_rotation_like`: which original neurons the learned
  subspace is made of, and the same for a random subspace of the same size.
- `subspace`, `captured_variation`: the subspace an intervention swaps, and how much of what varies in
  another subspace it holds.
"""
from __future__ import annotations

import torch

from das_lib.method.interventions import BoundlessDASIntervention, RotatedSpaceIntervention


def neuron_weights(intervention: RotatedSpaceIntervention, variable: int = 0) -> torch.Tensor:
    """Weight of each original neuron i in the learned subspace: sum_j m_j W[j, i]^2, normalised to sum to 1.

    W (r x d) is the learned rotation and m the mask over rotated dims at the intervention's current
    temperature. A subspace spanned by k neurons gives them 1/k each; a subspace spread over all d
    neurons gives each about 1/d.
    """
    if not isinstance(intervention, RotatedSpaceIntervention):
        raise TypeError(f"neuron weights need a rotated-space intervention (DAS, Boundless DAS), got {type(intervention).__name__}")
    if not 0 <= variable < intervention.n_variables:
        raise ValueError(f"variable must be in 0..{intervention.n_variables - 1}, got {variable}")
    with torch.no_grad():
        w = intervention.rotation.weight.detach().double()
        m = intervention.mask(torch.tensor([variable], device=w.device))[0].double()
        weights = (m[:, None] * w**2).sum(0)
    return (weights / weights.sum()).float().cpu()
def random_rotation_like(intervention: BoundlessDASIntervention, seed: int) -> BoundlessDASIntervention:
    """The same intervention (sizes, boundaries, temperature) with a fresh random rotation: a reference subspace."""
    torch.manual_seed(seed)
    reference = BoundlessDASIntervention(intervention.d, intervention.r, intervention.n_variables)
    reference.to(intervention.boundaries.device)
    with torch.no_grad():
        reference.boundaries.copy_(intervention.boundaries)
    reference.temperature = intervention.temperature
    return reference
def effective_neurons(weights: torch.Tensor) -> float:
    """How many neurons the weights are spread over: 1 / sum(w_i^2) for weights summing to 1 (k for k equal ones)."""
    w = weights.double() / weights.double().sum()
    return float(1.0 / (w**2).sum())
def subspace(intervention: RotatedSpaceIntervention, variable: int = 0) -> torch.Tensor:
    """Orthonormal rows (k, d) spanning the rotated dims the intervention swaps for `variable` (mask > 0.5)."""
    with torch.no_grad():
        m = intervention.mask(torch.tensor([variable], device=intervention.rotation.weight.device))[0]
        return intervention.rotation.weight.detach()[m > 0.5].double().cpu()
def captured_variation(hidden: torch.Tensor, planted: torch.Tensor, learned: torch.Tensor) -> float:
    """Share of what varies inside the planted subspace, over the hidden vectors (N, d), that lies inside
    the learned subspace: 1 when the learned one holds all of it, about k / d for a random k-dim one.

    Comparing subspaces by their variation on real inputs, not by their bases: a planted block of 4
    dims may carry a boolean along a single direction, and a learned subspace that holds that direction
    has found what matters even if it ignores the block's 3 idle dims."""
    if not hidden.shape[-1] == planted.shape[-1] == learned.shape[-1]:
        raise ValueError(f"sizes differ: hidden {hidden.shape[-1]}, planted {planted.shape[-1]}, learned {learned.shape[-1]}")
    h = hidden.double().cpu()
    inside = (h - h.mean(0)) @ planted.double().T @ planted.double()  # the variation inside the planted subspace
    total = inside.pow(2).sum()
    if total == 0:
        return float("nan")
    return float((inside @ learned.double().T).pow(2).sum() / total)