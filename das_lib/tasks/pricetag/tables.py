"""Tables of games and counterfactual pairs for the chapters: what a set of pairs looks like (answers,
label balance, regions) before any model is trained on it. Imports game only."""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from das_lib.method.counterfactual import CounterfactualPair, majority_rate_of
from das_lib.tasks.pricetag.game import answer_word, get_hypothesis, price, task_label


# ---------------------------------------------------------------------------------------------
# Tables of counterfactual pairs (for the chapters)


def _game_text(game: Mapping[str, int]) -> str:
    return f"{price(game['amount'])} in {price(game['lb'])}-{price(game['ub'])}"


def pairs_table(pairs: Sequence[CounterfactualPair], variant: str = "yesno") -> pd.DataFrame:
    """One row per pair: base and source games, regions, intervened variable, factual and counterfactual answers."""
    return pd.DataFrame(
        [
            {
                "base": _game_text(p.base),
                "source": _game_text(p.source),
                "regions": p.meta.get("regions"),
                "variable": ", ".join(p.variables),
                "base answer": answer_word(p.base_label, variant),
                "source answer": answer_word(p.source_label, variant),
                "counterfactual": answer_word(p.label, variant),
            }
            for p in pairs
        ]
    )


def label_balance(pairs: Sequence[CounterfactualPair]) -> pd.DataFrame:
    """Counts of Yes and No counterfactual labels per intervened variable."""
    table = pd.crosstab(
        pd.Series([", ".join(p.variables) for p in pairs], name="variable"),
        pd.Series([answer_word(p.label) for p in pairs], name="label"),
    )
    return table.reindex(columns=["Yes", "No"], fill_value=0)


def changed_rate(pairs: Sequence[CounterfactualPair]) -> float:
    """Share of pairs whose counterfactual label differs from the base's factual label."""
    return sum(p.label != p.base_label for p in pairs) / len(pairs)


def region_table(pairs: Sequence[CounterfactualPair]) -> pd.DataFrame:
    """Share of Yes counterfactual labels per (base region, source region); rows: base, columns: source."""
    frame = pd.DataFrame(
        [{"base region": p.meta["regions"][0], "source region": p.meta["regions"][1], "yes": float(p.label)} for p in pairs]
    )
    return frame.pivot_table(index="base region", columns="source region", values="yes", aggfunc="mean")


# ---------------------------------------------------------------------------------------------
# Tables of chapter 2: games, example pairs of several hypotheses, label balance


def games_table(games: Sequence[Mapping[str, int]]) -> pd.DataFrame:
    """One row per game: lb, ub and amount as prices, and the answer."""
    return pd.DataFrame([{"lb": price(g["lb"]), "ub": price(g["ub"]), "amount": price(g["amount"]),
                          "answer": answer_word(task_label(g))} for g in games])


def examples_table(pairs: Mapping[str, Sequence[CounterfactualPair]], n: int) -> pd.DataFrame:
    """The first `n` pairs of each hypothesis (key -> pairs) as `pairs_table` rows, indexed by its title."""
    return pd.concat({get_hypothesis(key).title: pairs_table(ps).head(n) for key, ps in pairs.items()})


def region_panels(pairs: Mapping[str, Sequence[CounterfactualPair]], keys: Sequence[str]) -> dict[str, pd.DataFrame]:
    """A `region_table` per intervened variable of each hypothesis in `keys` (pairs: key -> unbalanced
    pairs), titled by the hypothesis (and the variable, where it has several)."""
    panels = {}
    for key in keys:
        h = get_hypothesis(key)
        for v, variable in enumerate(h.variables):
            chosen = [p for p in pairs[key] if p.meta["variable_index"] == v]
            panels[f"{h.title}: {variable}" if len(h.variables) > 1 else h.title] = region_table(chosen)
    return panels


def yes_share(pairs: Sequence[CounterfactualPair], variable: str, regions: tuple[int, int]) -> float:
    """Share of Yes labels among the pairs that intervene on `variable` with (base, source) in `regions`."""
    labels = [p.label for p in pairs if p.variables == (variable,) and p.meta["regions"] == regions]
    if not labels:
        raise ValueError(f"no pair intervenes on {variable!r} with regions {regions}; sample more pairs")
    return sum(labels) / len(labels)


def balance_summary(pairs: Mapping[str, Sequence[CounterfactualPair]],
                    unbalanced: Mapping[str, Sequence[CounterfactualPair]]) -> pd.DataFrame:
    """Per hypothesis (key -> balanced pairs; `unbalanced`: the same drawn without balancing): pair and
    label counts, the dummy classifier's accuracy with and without balancing, and the share of labels
    that differ from the base's own answer; indexed by title."""
    rows = []
    for key, ps in pairs.items():
        balance = label_balance(ps)
        rows.append({"hypothesis": get_hypothesis(key).title, "pairs": len(ps),
                     "Yes": int(balance["Yes"].sum()), "No": int(balance["No"].sum()),
                     "Yes/No per variable": "; ".join(f"{v}: {r.Yes}/{r.No}" for v, r in balance.iterrows()),
                     "dummy acc": majority_rate_of(ps), "dummy acc unbalanced": majority_rate_of(unbalanced[key]),
                     "label changed": changed_rate(ps)})
    return pd.DataFrame(rows).set_index("hypothesis")
