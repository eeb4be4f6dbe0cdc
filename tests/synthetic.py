"""Grid runs made up to order, for the tests of the protocol, the findings and the controls: every number a test
expects follows from how the outcomes were built, not from training.

An outcome's pairs are built as a model that answers the task right would give them: `changed` (the label differs
from the base's answer) on a share of the pairs, `none` (doing nothing already gives the label) on the others, and
`correct` on every unchanged pair plus the realised share of the changed ones.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from das_lib.method.outcome import Outcome


def outcome(pairs: int, realised: float | Sequence[float], changes: float | Sequence[float] = 0.4,
            rng: np.random.Generator | None = None) -> Outcome:
    """One variable per entry of `realised`: the share `changes` of the pairs predicted to change (the first ones, or
    drawn with `rng`), of which the share `realised` are answered right (the first ones, or drawn with `rng`)."""
    realised = np.atleast_1d(np.asarray(realised, dtype=float))
    changes = np.broadcast_to(np.asarray(changes, dtype=float), realised.shape)
    rows = []
    for share, rate in zip(changes, realised):
        if rng is None:
            changed = np.arange(pairs) < round(share * pairs)
            hit = np.zeros(pairs, bool)
            hit[np.flatnonzero(changed)[: round(rate * changed.sum())]] = True
        else:
            changed, hit = rng.random(pairs) < share, rng.random(pairs) < rate
        rows.append((changed, ~changed | (changed & hit)))
    changed, correct = (np.stack(a) for a in zip(*rows))
    return Outcome(correct=correct, none=~changed, changed=changed)


def row(candidate: str, layer: int, position: str, val: Outcome, test: Outcome, seed: int = 0, data_seed: int = 0
        ) -> dict:
    """A row of `Grid.runs()`."""
    return {"candidate": candidate, "layer": layer, "position": position, "seed": seed, "data_seed": data_seed,
            "site": f"L{layer} {position}", "val": val, "test": test, "majority": 0.6}


def runs(rows: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))
