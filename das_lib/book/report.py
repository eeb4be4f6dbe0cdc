"""Tables the chapters show: what sweeps found side by side, and the command line that runs a chapter.

An IIA means something only beside the IIA of leaving the model alone (many counterfactual labels
equal the base's own answer), so the findings tables carry the gain, IIA - no-intervention IIA.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from das_lib import paper
from das_lib.pricetag.game import HYPOTHESES
from das_lib.runs.sweep import summary


def sweep_command(store: str, model: str, dtype: str, hypotheses: Sequence[str], layers: Sequence[int] | None,
                  positions: Sequence[str] | None) -> str:
    """The papermill command (run from the repository root) that makes the sweep chapter train these
    alignments into `store` (given as an absolute path: a chapter resolves it from its own folder)."""
    grid = {"hypotheses": list(hypotheses), "layers": list(layers or []), "positions": list(positions or [])}
    yaml = "{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in grid.items()) + "}"
    return (f"papermill book/05_sweep.ipynb /tmp/05_sweep.ipynb -p store {Path(store).resolve()} -p model {model} "
            f"-p dtype {dtype} -y '{yaml}'")


def hypothesis_table(frame: pd.DataFrame, task_acc: float) -> pd.DataFrame:
    """`sweep.summary` of a sweep's frame with the gain over no intervention and the best site's layer and
    position, indexed by hypothesis key."""
    table = summary(frame, task_acc)
    table.index = [next(k for k, h in HYPOTHESES.items() if h.title == title) for title in table.index]
    first = frame[frame["seed"] == frame["seed"].min()]
    best = first.loc[first.groupby("hypothesis", sort=False)["iia"].idxmax()].set_index("hypothesis")  # as summary picks it
    return table.assign(gain=table["max IIA"] - table["unintervened"], layer=best["layer"].astype(int), position=best["position"])


def side_by_side(tables: Mapping[str, pd.DataFrame], paper_name: str = "Alpaca 7B (paper)") -> pd.DataFrame:
    """One row per hypothesis; per model (a `hypothesis_table` each) its max IIA, gain and best site, then
    the paper's max IIA (the paper reports no IIA of doing nothing, so no gain is shown for it)."""
    hypotheses = list(dict.fromkeys(h for t in tables.values() for h in t.index))
    columns = {}
    for name, table in tables.items():
        t = table.reindex(hypotheses)
        columns[(name, "max IIA")] = t["max IIA"]
        columns[(name, "gain")] = t["gain"]
        columns[(name, "best site")] = t["best site"]
    columns[(paper_name, "max IIA")] = pd.Series({h: paper.MAX_IIA[h] for h in hypotheses})
    out = pd.DataFrame(columns)
    out.index = [HYPOTHESES[h].title for h in hypotheses]
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def findings(table: pd.DataFrame) -> dict[str, float | str]:
    """The numbers a chapter pastes from a `hypothesis_table`: for each hypothesis key h `max_iia_h`, `gain_h`,
    `best_site_h` and `std_h` (over the seeds at the best site); and the hypothesis of largest gain,
    `winner` (its title), `winner_key`, `winner_site`, `best_gain`."""
    out: dict[str, float | str] = {}
    for h, row in table.iterrows():
        out.update({f"max_iia_{h}": float(row["max IIA"]), f"gain_{h}": float(row["gain"]),
                    f"best_site_{h}": str(row["best site"]), f"std_{h}": float(row["std over seeds"])})
    winner = str(table["gain"].idxmax())
    out.update({"winner": HYPOTHESES[winner].title, "winner_key": winner,
                "winner_site": str(table.loc[winner, "best site"]), "best_gain": float(table.loc[winner, "gain"])})
    return out


def without_nan(table: pd.DataFrame, missing: str = "n/a") -> pd.DataFrame:
    """The table as a page shows it: a missing number (NaN: not measured, or no paper value) reads `missing`."""
    return table.astype(object).where(table.notna(), missing)


# --- Chapters 1-4: glue a chapter's values in one call ---


def glue_values(prefix: str, values: Mapping[str, object]) -> None:
    """Glue each value under `prefix` + its key (display=False), as a chapter's glue() calls would."""
    from myst_nb import glue  # the book's dependency, not the library's

    for key, value in values.items():
        glue(f"{prefix}{key}", value, display=False)
