"""What the chapters show that is about the book itself: the command line that runs a chapter."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def sweep_command(store: str, model: str, dtype: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
                  positions: Sequence[str] | None) -> str:
    """The papermill command (run from the repository root) that makes the sweep chapter train these
    alignments into `store` (given as an absolute path: a chapter resolves it from its own folder)."""
    grid = {"hypotheses": list(hypotheses), "layers": list(layers or []), "positions": list(positions or [])}
    yaml = "{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in grid.items()) + "}"
    return (f"papermill book/05_sweep.ipynb /tmp/05_sweep.ipynb -p store {Path(store).resolve()} -p model {model} "
            f"-p dtype {dtype} -y '{yaml}'")
