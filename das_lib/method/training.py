"""Training an interchange intervention (DAS, Boundless DAS) and measuring its IIA.

The loop is written once. What changes between the plain method and faster ones is only how the
intervened answer logits of a batch are computed: an `InterventionForward`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from das_lib import paper
from das_lib.method.data import InterchangeData
from das_lib.method.interventions import ORTHOGONAL_MAPS, BoundlessDASIntervention, RotatedSpaceIntervention, resolve_map
from das_lib.method.readout import answer_targets, over_answers, predicted_tokens
from das_lib.method.sites import Site, answer_logits, capture, intervened_logits


class InterventionForward(Protocol):
    """Computes the answer logits of a batch under the intervention: over `batch.answers` when the batch names
    them, (B, A), else over the vocabulary, (B, V) (das_lib.method.readout)."""

    def __call__(self, batch: InterchangeData) -> torch.Tensor: ...


class PlainForward:
    """The reference method: run the source to the site, then the whole base model with a hook."""

    def __init__(self, model: nn.Module, site: Site, intervention: nn.Module):
        self.model, self.site, self.intervention = model, site, intervention

    def __call__(self, batch: InterchangeData) -> torch.Tensor:
        batch.check_position(self.site.position)
        check = not batch.positions_checked  # checking on a GPU would read the positions back at every step
        with torch.no_grad():
            source_vectors = capture(self.model, self.site, batch.source, batch.source_pos, check)
        logits = intervened_logits(self.model, self.site, batch.base, batch.base_pos, source_vectors, self.intervention,
                                   batch.variable, check)
        return over_answers(logits, batch.answers)


@dataclass
class TrainConfig:
    """Hyperparameters of alignment training (defaults follow the paper, scaled to small models)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3  # rotation
    boundary_lr: float = 1e-2  # Boundless DAS boundaries
    warmup_frac: float = 0.1
    # None: the paper's 50 for 4096 rotated dims, scaled to the intervention's width (at least 1). The
    # mask's edge is about T dims wide, so an unscaled 50 keeps a 64-dim mask soft everywhere while the
    # boundary loss shrinks it, and the boundary can collapse before the rotation has learnt anything.
    temperature_start: float | None = None
    temperature_end: float = 0.1
    boundary_loss_weight: float = 1.0
    eval_every: int = 0  # 0: evaluate only at the end
    seed: int = 0
    # How the rotation is kept orthogonal while it trains (das_lib.method.interventions.ORTHOGONAL_MAPS; None:
    # the default for its shape, DEFAULT_MAPS); the intervention is built with it (another map is refused).
    orthogonal_map: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1 (got {self.steps})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.lr <= 0 or self.boundary_lr <= 0:
            problems.append(f"learning rates must be positive (got lr={self.lr}, boundary_lr={self.boundary_lr})")
        if not 0 <= self.warmup_frac < 1:
            problems.append(f"warmup_frac must be in [0, 1) (got {self.warmup_frac})")
        if not (self.temperature_start is None or self.temperature_start >= self.temperature_end) or not self.temperature_end > 0:
            problems.append("temperatures must satisfy temperature_start >= temperature_end > 0 (or temperature_start None)")
        if self.orthogonal_map is not None and self.orthogonal_map not in ORTHOGONAL_MAPS:
            problems.append(f"orthogonal_map must be one of {list(ORTHOGONAL_MAPS)} (got {self.orthogonal_map!r})")
        if problems:
            raise ValueError("bad TrainConfig: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What training produced: per-step curves and the final held-out IIA (if eval data was given)."""

    curves: list[dict[str, float]] = field(default_factory=list)
    iia: float | None = None
    seconds: float = 0.0
    resumed_from: int = 0  # the step a checkpoint resumed training at (0: trained from the start)
    correct: torch.Tensor | None = None  # (N,) bool per held-out pair: was the intervened answer its label
    none_correct: torch.Tensor | None = None  # (N,) bool: was doing nothing right there (set by the caller that knows the model)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch so that the same seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)




def start_temperature(config: TrainConfig, width: int = paper.WIDTH) -> float:
    """config.temperature_start, or when None the paper's 50 scaled to `width` rotated dims (at least 1)."""
    if config.temperature_start is not None:
        return config.temperature_start
    return max(1.0, config.temperature_end, paper.TEMPERATURE * width / paper.WIDTH)


def temperature_at(step: int, config: TrainConfig, width: int = paper.WIDTH) -> float:
    """Linear annealing from the start temperature (for `width` rotated dims) to temperature_end over training."""
    frac = step / max(1, config.steps - 1)
    start = start_temperature(config, width)
    return start + frac * (config.temperature_end - start)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up over warmup_frac of the steps, then linear decay to zero."""
    warm = max(1, int(config.warmup_frac * config.steps))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (config.steps - step) / max(1, config.steps - warm))


def make_optimizer(intervention: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the rotation at `lr` and Boundless DAS boundaries at `boundary_lr`."""
    boundary = [p for n, p in intervention.named_parameters() if n == "boundaries"]
    rest = [p for n, p in intervention.named_parameters() if n != "boundaries"]
    groups = [{"params": rest, "lr": config.lr}]
    if boundary:
        groups.append({"params": boundary, "lr": config.boundary_lr})
    return torch.optim.Adam(groups)


def answer_tokens_under(forward: InterventionForward, data: InterchangeData, batch_size: int = 256) -> torch.Tensor:
    """(N,) on the CPU: the token the model answers on each example under the intervention (the most likely of
    the data's answer tokens, or of the vocabulary: das_lib.method.readout). The tokens stay on the data's
    device and are read once at the end, and the rotation of a parametrized intervention is computed once for
    the whole evaluation, not once per batch."""
    tokens = []
    with torch.no_grad(), parametrize.cached():
        for start in range(0, len(data), batch_size):
            tokens.append(predicted_tokens(forward(data.select(slice(start, start + batch_size))), data.answers))
    return torch.cat(tokens).cpu()


def correct_pairs(forward: InterventionForward, data: InterchangeData, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool on the CPU: is each example's intervened answer (`answer_tokens_under`) its counterfactual label?"""
    if len(data) == 0:
        raise ValueError("cannot evaluate on zero examples")
    return answer_tokens_under(forward, data, batch_size) == data.labels.cpu()


def evaluate(forward: InterventionForward, data: InterchangeData, batch_size: int = 256) -> float:
    """IIA: how often the intervened answer (`answer_tokens_under`) is the counterfactual label."""
    return correct_pairs(forward, data, batch_size).float().mean().item()


def answer_tokens(model: nn.Module, data: InterchangeData, batch_size: int = 256) -> torch.Tensor:
    """(N,) on the CPU: the token the model answers on each base, left alone (read as `answer_tokens_under` reads)."""
    return answer_tokens_under(lambda batch: over_answers(answer_logits(model, batch.base), batch.answers), data, batch_size)


def unintervened_correct(model: nn.Module, data: InterchangeData, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: is the model's own answer on each base its counterfactual label (doing nothing, pair by pair)?"""
    return answer_tokens(model, data, batch_size) == data.labels.cpu()


def unintervened_iia(model: nn.Module, data: InterchangeData, batch_size: int = 256) -> float:
    """IIA of leaving the base run alone: how often the model's own answer on the base is the counterfactual label."""
    return unintervened_correct(model, data, batch_size).float().mean().item()


def data_fingerprint(data: InterchangeData) -> str:
    """A short hash of every tensor of `data`: a checkpoint only resumes on the same examples."""
    h = hashlib.sha256()
    tensors = {**{f"base.{k}": v for k, v in data.base.items()}, **{f"source.{k}": v for k, v in data.source.items()},
               "base_pos": data.base_pos, "source_pos": data.source_pos, "variable": data.variable, "labels": data.labels,
               "answers": data.answers}
    for name in sorted(tensors):
        if tensors[name] is not None:
            h.update(name.encode())
            h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _run_identity(intervention: nn.Module, data: InterchangeData, config: TrainConfig) -> str:
    """JSON of what a checkpoint must match to be resumed: training config, intervention, data."""
    config_fn = getattr(intervention, "config", None)
    return json.dumps({
        "config": config.as_dict(),
        "intervention": type(intervention).__name__,
        "intervention_config": config_fn() if callable(config_fn) else None,
        "data": data_fingerprint(data),
        "n_examples": len(data),
    }, sort_keys=True)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically: a crash while saving leaves the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, identity: str) -> dict[str, Any]:
    """The checkpoint at `path`, refused unless it was written by a run with the same identity."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("identity") != identity:
        ours, theirs = json.loads(identity), json.loads(state.get("identity", "{}"))
        differ = sorted(k for k in ours if ours.get(k) != theirs.get(k))
        raise ValueError(
            f"checkpoint {path} belongs to another run (different {', '.join(differ) or 'format'}); "
            "delete it to start afresh, or pass another checkpoint path"
        )
    return state


def random_order(n: int, generator: torch.Generator) -> np.ndarray:
    """A seeded permutation of 0..n-1, drawn on the CPU whatever the data's device (the same seed draws the
    same batches everywhere) and kept on the host, where batches are selected."""
    return torch.randperm(n, generator=generator, device="cpu").numpy()


def next_batch(data: InterchangeData, order: np.ndarray, cursor: int, batch_size: int,
               generator: torch.Generator) -> tuple[InterchangeData, np.ndarray, int]:
    """The next batch of a seeded random order over `data`, drawn anew when less than a batch is left:
    (batch, order, cursor). The order and cursor are the loop's state, saved in checkpoints."""
    if cursor + batch_size > len(data):
        order, cursor = random_order(len(data), generator), 0
    return data.select(order[cursor : cursor + batch_size]), order, cursor + batch_size


STAT_NAMES = ("loss", "task_loss", "batch_iia", "boundary_dims", "finite")  # what a step records, in order


def _step_stats(loss: torch.Tensor, task_loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                boundary_dims: torch.Tensor) -> torch.Tensor:
    """The step's statistics (STAT_NAMES) as one tensor on the device: read later, with others, in one transfer
    (`targets`: the classes of `logits` the labels are, as the loss takes them)."""
    with torch.no_grad():
        hits = (logits.argmax(-1) == targets).float().mean()
        finite = torch.isfinite(logits).all().float()
        return torch.stack([loss.detach().float(), task_loss.detach().float(), hits, boundary_dims.float(), finite])


def _check_step(row: dict[str, float], config: TrainConfig) -> None:
    """Refuse a step whose logits were not finite or whose loss exploded, saying what to change."""
    step = row["step"]
    if row["finite"] < 1:
        raise FloatingPointError(
            f"training stopped at step {step}: the intervened logits contain NaN or inf. Likely cause: "
            "the model runs in a dtype that overflows (load it in float32), or the intervention's weights "
            f"became NaN after too large an update (lower lr={config.lr} / boundary_lr={config.boundary_lr})"
        )
    if not math.isfinite(row["loss"]) or row["loss"] > 1e4:
        raise FloatingPointError(
            f"training stopped at step {step}: the loss exploded to {row['loss']}. Likely cause: a learning "
            f"rate too high for this model (lr={config.lr}, boundary_lr={config.boundary_lr}) or a model "
            "in a dtype that overflows (try float32); lower the learning rate and retrain"
        )


def train_intervention(
    forward: InterventionForward,
    intervention: nn.Module,
    data: InterchangeData,
    config: TrainConfig,
    eval_data: InterchangeData | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    read_every: int = 16,
) -> TrainResult:
    """Train `intervention` so that intervened runs output the counterfactual labels.

    With `checkpoint`, the full training state is saved there every `checkpoint_every` steps and at
    the end, and a run finding a checkpoint of the same config, intervention and data resumes from
    it, giving the same numbers as an uninterrupted run.

    A step never waits for the device: its statistics stay there and are read every `read_every` steps
    (one transfer for all of them), and a step whose logits were not finite or whose loss exploded is
    refused then, naming that step.
    """
    if checkpoint_every < 1 or read_every < 1:
        raise ValueError(f"checkpoint_every and read_every must be >= 1 (got {checkpoint_every}, {read_every})")
    rotated = isinstance(intervention, RotatedSpaceIntervention)
    if rotated and intervention.rotation.orthogonal_map != resolve_map(config.orthogonal_map, intervention.d, intervention.r):
        raise ValueError(
            f"the intervention keeps its rotation orthogonal with the {intervention.rotation.orthogonal_map!r} map but "
            f"the training config asks for {config.orthogonal_map!r}; build it with orthogonal_map=config.orthogonal_map")
    set_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(intervention, config)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    boundless = isinstance(intervention, BoundlessDASIntervention)
    result = TrainResult()
    order = random_order(len(data), generator)
    cursor, first_step, seconds_before = 0, 0, 0.0
    path = None if checkpoint is None else Path(checkpoint)
    identity = None if path is None else _run_identity(intervention, data, config)
    if path is not None and path.exists():
        state = _load_checkpoint(path, identity)
        intervention.load_state_dict(state["intervention"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        order, cursor, first_step = np.asarray(state["order"]), state["cursor"], state["step"]
        result.curves, seconds_before, result.resumed_from = state["curves"], state["seconds"], first_step
    pending: list[tuple[dict[str, float], torch.Tensor]] = []  # rows whose device statistics are not read yet

    def read_pending() -> None:
        if not pending:
            return
        values = torch.stack([stats for _, stats in pending]).tolist()  # the one transfer
        for (row, _), numbers in zip(pending, values):
            row.update(zip(STAT_NAMES, numbers))
            _check_step(row, config)
            del row["finite"]
            if not boundless:
                del row["boundary_dims"]
            result.curves.append(row)
        pending.clear()

    start = time.perf_counter()
    for step in tqdm(range(first_step, config.steps), desc="training", disable=not progress, leave=False):
        batch, order, cursor = next_batch(data, order, cursor, config.batch_size, generator)
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * lr_factor(step, config)
        row: dict[str, float] = {"step": step}
        if boundless:
            row["temperature"] = temperature_at(step, config, intervention.r)  # the schedule's value, not its float32 copy
            intervention.temperature = row["temperature"]
        logits = forward(batch)  # over the batch's answer tokens, or the vocabulary (das_lib.method.readout)
        targets = answer_targets(batch.labels.to(logits.device), batch.answers)
        task_loss = nn.functional.cross_entropy(logits.float(), targets)
        loss = task_loss
        boundary = torch.zeros((), device=logits.device)
        if boundless:
            boundaries = intervention.clamped_boundaries()
            loss = loss + config.boundary_loss_weight * boundaries.sum()
            boundary = boundaries.detach().sum() * intervention.block
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rotated:
            intervention.rotation.retract()  # the "qr" map's step ends back on the orthonormal matrices
        pending.append((row, _step_stats(loss, task_loss, logits, targets, boundary)))
        last = step + 1 == config.steps
        evaluating = eval_data is not None and config.eval_every and (step + 1) % config.eval_every == 0
        saving = path is not None and ((step + 1) % checkpoint_every == 0 or last)
        if last or saving or evaluating or len(pending) >= read_every:
            read_pending()
        if evaluating:
            row["iia"] = evaluate(forward, eval_data)
        if saving:
            _save_checkpoint(path, {
                "identity": identity, "step": step + 1, "intervention": intervention.state_dict(),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "order": torch.from_numpy(order), "cursor": cursor, "curves": result.curves,
                "seconds": seconds_before + time.perf_counter() - start,
            })
    read_pending()
    if rotated:
        intervention.rotation.reorthonormalize()  # the alignment measured and saved is an exact rotation
    result.seconds = seconds_before + time.perf_counter() - start
    if eval_data is not None:
        result.correct = correct_pairs(forward, eval_data)
        result.iia = result.correct.float().mean().item()
    return result
