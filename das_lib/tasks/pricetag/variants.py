"""The paper's robustness settings of the game, as variants of the task (das_lib.method.task.Variant).

An alignment learned on the standard yes/no games is reused (das_lib.runs.robustness) on games with a fixed
bracket, seen or unseen in training; with an irrelevant sentence prepended to the instruction; under the sibling
instruction ("say True ... otherwise False"); and on the games the model answers right, or wrong. The paper
reuses Left Boundary's alignments for the fixed-bracket rows and Left and Right Boundary's for the others; its
numbers are in das_lib.paper.ROBUSTNESS.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from das_lib import paper
from das_lib.method.task import Variant
from das_lib.tasks.pricetag.game import HYPOTHESES, parse_bracket, price

SETTING_KINDS = ("standard", "fixed_bracket", "context", "sibling", "correct_only", "incorrect_only")

# A longer irrelevant passage (not in the stand-in's training pool of contexts).
LONG_CONTEXT = (
    "Last spring the town library moved into the old railway station. Volunteers carried thousands of "
    "books across the square, and the mayor cut a ribbon made of recycled paper. Visitors now read under "
    "the tall arched windows while freight trains rumble past on the new line behind the building."
)
DEFAULT_CONTEXTS = (*paper.CONTEXTS, LONG_CONTEXT)
FIGURES = ("new inputs", "irrelevant context", "instruction and inputs")  # the paper's three groups of heatmaps


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def _bracket_name(bracket: Sequence[int]) -> str:
    return f"{price(bracket[0])}-{price(bracket[1])}"


def make_settings(
    kinds: Sequence[str] = SETTING_KINDS,
    bracket_seen: str = paper.BRACKETS["seen"],
    bracket_unseen: str = paper.BRACKETS["unseen"],
    contexts: Sequence[str] = DEFAULT_CONTEXTS,
) -> list[Variant]:
    """The settings of the robustness table, in the paper's order, for the given kinds, brackets and contexts."""
    bad = [k for k in kinds if k not in SETTING_KINDS]
    if not kinds or bad:
        raise ValueError(f"setting kinds must be a non-empty list drawn from {list(SETTING_KINDS)}; bad: {bad or 'empty list'}")
    if "context" in kinds and (not contexts or any(not isinstance(c, str) or not c.strip() for c in contexts)):
        raise ValueError(f"contexts must be a non-empty list of non-empty strings, got {list(contexts)!r}")
    new, context, instruction = FIGURES
    out: list[Variant] = []
    if "standard" in kinds:
        for key, figure in (("left", new), ("left_right", context)):
            title = HYPOTHESES[key].title
            out.append(Variant(f"standard_{key}", f"standard inputs ({title})", key, "standard", figure=figure,
                               paper=title, short="standard inputs"))
    for kind, answers in (("correct_only", "correct"), ("incorrect_only", "incorrect")):
        if kind in kinds:
            title = f"{answers}-only inputs"
            out.append(Variant(kind, title, "left_right", kind, answers=answers, figure=instruction, paper=title))
    if "fixed_bracket" in kinds:
        for which, text in (("seen", bracket_seen), ("unseen", bracket_unseen)):
            bracket = parse_bracket(text)
            title = f"fixed bracket {_bracket_name(bracket)} ({which})"
            out.append(Variant(f"fixed_{which}", title, "left", "fixed_bracket", (("bracket", bracket),), figure=new,
                               paper=title if title in paper.ROBUSTNESS else None,
                               short=f"bracket {_bracket_name(bracket)} ({which})"))
    if "context" in kinds:
        for i, text in enumerate(contexts, start=1):
            row = f'irrelevant context "{text}"'
            out.append(Variant(f"context_{i}", f'irrelevant context "{_short(text)}"', "left_right", "context",
                               (("context", text),), figure=context, paper=row if row in paper.ROBUSTNESS else None,
                               short=f'"{_short(text, 36)}"'))
    if "sibling" in kinds:
        title = 'sibling instruction "say True ... otherwise False"'
        out.append(Variant("sibling", title, "left_right", "sibling", (("variant", "truefalse"),), figure=instruction,
                           paper=title, short="say True ... otherwise False"))
    return out


def settings_table(settings: Sequence[Variant]) -> pd.DataFrame:
    """One row per setting: what changes, whose alignments are reused, the paper's row it is compared with."""
    rows = []
    for s in settings:
        changes = dict(s.changes)
        rows.append({"key": s.key, "setting": s.title, "alignments of": HYPOTHESES[s.hypothesis].title,
                     "bracket": _bracket_name(changes["bracket"]) if "bracket" in changes else "random",
                     "context": _short(changes.get("context") or "", 32), "instruction": changes.get("variant", "yesno"),
                     "inputs": s.answers or "all", "in the paper": s.paper is not None})
    return pd.DataFrame(rows).set_index("key")
