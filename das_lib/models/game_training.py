"""What the models trained here on the game share: the settings, the games they see, the learning rate.

The stand-in (das_lib.models.standin, trained from scratch) and the fine-tuned SmolLM2
(das_lib.models.finetune, a LoRA adapter) both train on fresh games every step, half of them with the
amount close to a bound (the hard cases), under linear warm-up and cosine decay. Their configs are
`GameTraining`s with their own fields added; `config_from_args` reads either from a command line.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from das_lib.tasks.pricetag import game as pricetag


@dataclass
class GameTraining:
    """The settings both models' training has, with the same meaning and defaults."""

    seed: int = 0
    hard_rate: float = 0.5  # share of games whose amount lies within `hard_cents` of a bound
    hard_cents: int = 40
    threads: int = 2  # the two cores of the machine the book targets


def sample_training_game(rng: random.Random, cfg: GameTraining) -> dict[str, int]:
    """A game with Yes/No balanced; half of them with the amount close to a bound (the hard cases)."""
    lb, ub = pricetag.sample_bracket(rng)
    if rng.random() < cfg.hard_rate:
        bound = rng.choice((lb, ub))
        amount = min(999, max(1, bound + rng.randint(-cfg.hard_cents, cfg.hard_cents)))
        return {"lb": lb, "ub": ub, "amount": amount}
    region = rng.choice((1, 2, 2, 3))  # half inside: Yes as often as No
    return pricetag.sample_in_region(rng, region, (lb, ub))


def lr_at(step: int, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to 5% of it at `steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    frac = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def config_from_args(args: Sequence[str], cls: type) -> Any:
    """A config dataclass `cls` from 'key=value' strings, e.g. ['steps=500', 'lr=0.001']."""
    defaults, changes = cls(), {}
    settable = [k for k, v in asdict(defaults).items() if not isinstance(v, (dict, list, tuple))]
    for arg in args:
        key, _, value = arg.partition("=")
        if key not in settable or not value:
            raise ValueError(f"cannot set {arg!r}: use key=value with a key among {settable}")
        changes[key] = type(getattr(defaults, key))(value)
    return cls(**changes)
