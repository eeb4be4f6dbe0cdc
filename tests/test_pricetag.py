"""The price-tagging game: sampling as in the paper, prompts, and labels that come from the hypotheses."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from das_lib.tasks.pricetag import game as pricetag, tables
from das_lib.tasks.pricetag.game import (
    HYPOTHESES,
    get_hypothesis,
    parse_bracket,
    region_of,
    render_prompt,
    sample_game,
    sample_in_region,
    sample_pairs,
)


# --- sampling ------------------------------------------------------------------------------------------


def test_brackets_and_amounts_follow_the_paper_ranges():
    rng = random.Random(0)
    games = [sample_game(rng) for _ in range(5000)]
    for g in games:
        assert isinstance(g["lb"], int) and isinstance(g["ub"], int) and isinstance(g["amount"], int)  # 2 decimals
        assert 250 <= g["ub"] - g["lb"] <= 750
        assert g["lb"] >= 5 and g["ub"] <= 995
        assert 1 <= g["amount"] <= 999
    widths = [g["ub"] - g["lb"] for g in games]
    amounts = [g["amount"] for g in games]
    # The ranges are actually used, not a corner of them.
    assert min(widths) < 270 and max(widths) > 730
    assert min(g["lb"] for g in games) < 30 and max(g["ub"] for g in games) > 970
    assert min(amounts) < 20 and max(amounts) > 980


def test_same_seed_same_pairs_other_seed_other_pairs():
    for key in HYPOTHESES:
        assert sample_pairs(key, 40, seed=3) == sample_pairs(key, 40, seed=3)
        assert sample_pairs(key, 40, seed=3) != sample_pairs(key, 40, seed=4)


@pytest.mark.parametrize("region", [1, 2, 3])
def test_sample_in_region_puts_the_amount_there(region):
    rng = random.Random(region)
    for _ in range(500):
        assert region_of(sample_in_region(rng, region)) == region


def test_region_of_includes_the_bounds_and_refuses_bad_regions():
    assert [region_of({"lb": 200, "ub": 500, "amount": a}) for a in (199, 200, 500, 501)] == [1, 2, 2, 3]
    with pytest.raises(ValueError, match="region"):
        sample_in_region(random.Random(0), 4)
    with pytest.raises(ValueError, match="no amount"):
        sample_in_region(random.Random(0), 1, bracket=(1, 400))


@pytest.mark.parametrize("key", list(HYPOTHESES))
def test_pairs_record_their_regions_and_cover_every_region_pair(key):
    pairs = sample_pairs(key, 400, seed=1)
    for p in pairs:
        assert p.meta["regions"] == (region_of(p.base), region_of(p.source))
    assert set(Counter(p.meta["regions"] for p in pairs)) == {(a, b) for a in (1, 2, 3) for b in (1, 2, 3)}


# --- labels come from the hypotheses ---------------------------------------------------------------


def _definition(key: str, variable: str, base: dict, source: dict) -> bool:
    """The counterfactual answer of each hypothesis, written from the paper's definitions."""
    left = lambda g: g["amount"] >= g["lb"]  # noqa: E731
    right = lambda g: g["amount"] <= g["ub"]  # noqa: E731
    if key in ("left", "left_right"):
        if variable == "left":
            return left(source) and right(base)
        return left(base) and right(source)
    if key == "midpoint":
        mid_source = (source["lb"] + source["ub"]) / 2
        return abs(base["amount"] - mid_source) <= abs(base["ub"] - base["lb"]) / 2
    if key == "bracket":
        return source["lb"] <= base["amount"] <= source["ub"]
    raise KeyError(key)


@pytest.mark.parametrize("key", list(HYPOTHESES))
def test_counterfactual_labels_equal_the_definition_and_the_intervened_model(key):
    h = get_hypothesis(key)
    pairs = sample_pairs(key, 400, seed=7)
    for p in pairs:
        (variable,) = p.variables
        assert variable == h.variables[p.meta["variable_index"]]
        assert p.label == _definition(key, variable, p.base, p.source)
        source_value = h.model.run(p.source)[variable]
        assert p.label == h.model.run(p.base, {variable: source_value})["answer"]
        assert p.base_label == (p.base["lb"] <= p.base["amount"] <= p.base["ub"])
        assert p.source_label == (p.source["lb"] <= p.source["amount"] <= p.source["ub"])


@pytest.mark.parametrize("key", list(HYPOTHESES))
def test_yes_no_balanced_per_variable(key):
    n_vars = len(get_hypothesis(key).variables)
    pairs = sample_pairs(key, 200, seed=5)
    counts = Counter((p.meta["variable_index"], p.label) for p in pairs)
    assert counts == {(v, label): 200 // (2 * n_vars) for v in range(n_vars) for label in (True, False)}
    # An n that does not split evenly over the cells still balances each variable to within one pair.
    odd = sample_pairs(key, 10, seed=5)
    for v in range(n_vars):
        yes = sum(p.label for p in odd if p.meta["variable_index"] == v)
        no = sum(not p.label for p in odd if p.meta["variable_index"] == v)
        assert abs(yes - no) <= 1


def test_balance_needs_an_even_number_of_pairs():
    with pytest.raises(ValueError, match="even"):
        sample_pairs("left", 7, seed=0)
    with pytest.raises(KeyError, match="choose one of"):
        sample_pairs("nope", 8, seed=0)


def test_released_sampler_defects_come_out_right():
    # Left Boundary, base inside and source above the bracket: L(source) = True and R(base) = True,
    # so the answer is Yes (the released sampler's table said No).
    left = [p for p in sample_pairs("left", 600, seed=11) if p.meta["regions"] == (2, 3)]
    # Right boundary, base inside and source below: R(source) = True and L(base) = True -> Yes
    # (the released upper-bound sampler's table said No and was never fixed).
    right = [
        p for p in sample_pairs("left_right", 1200, seed=11)
        if p.meta["regions"] == (2, 1) and p.variables == ("right",)
    ]
    assert len(left) > 20 and len(right) > 20
    assert all(p.label is True for p in left + right)
    # The opposite cells are No: source below the left bound / above the right bound.
    left_no = [p for p in sample_pairs("left", 600, seed=11) if p.meta["regions"] == (2, 1)]
    assert left_no and all(p.label is False for p in left_no)


# --- fixed brackets --------------------------------------------------------------------------------------


def test_parse_bracket():
    assert parse_bracket("5.49-8.49") == (549, 849)
    assert parse_bracket("2.51-5.51") == (251, 551)
    for bad in ("5.49", "abc", "8.49-5.49", "5.00-5.00", "0.00-5.00", "5.00-9.99", "1-2-3"):
        with pytest.raises(ValueError, match="bracket"):
            parse_bracket(bad)


def test_fixed_bracket_pairs_keep_the_bracket():
    bracket = parse_bracket("5.49-8.49")
    pairs = sample_pairs("left", 100, seed=0, bracket=bracket)
    assert all((g["lb"], g["ub"]) == bracket for p in pairs for g in (p.base, p.source))
    assert Counter(p.label for p in pairs) == {True: 50, False: 50}


# --- prompts -----------------------------------------------------------------------------------------------

GAME = {"lb": 549, "ub": 849, "amount": 712}


def test_alpaca_prompt_is_the_papers():
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nPlease say yes only if it costs between 5.49 and 8.49 dollars, otherwise no.\n\n"
        "### Input:\n7.12 dollars\n\n### Response:\n"
    )
    assert render_prompt(GAME) == expected


def test_standin_prompt_variant_and_context():
    assert render_prompt({"lb": 5, "ub": 995, "amount": 1}, "standin") == (
        "### Instruction:\nPlease say yes only if it costs between 0.05 and 9.95 dollars, otherwise no.\n\n"
        "### Input:\n0.01 dollars\n\n### Response:\n"
    )
    sibling = render_prompt(GAME, "standin", "truefalse", context="Pricing tag game!")
    assert "### Instruction:\nPricing tag game! Please say True only if it costs between 5.49 and 8.49 dollars, otherwise False.\n\n" in sibling
    assert pricetag.answer_word(True, "truefalse") == "True" and pricetag.answer_word(False) == "No"


def test_prompt_refuses_unknown_template_and_variant():
    with pytest.raises(KeyError, match="template"):
        render_prompt(GAME, "vicuna")
    with pytest.raises(KeyError, match="variant"):
        render_prompt(GAME, "alpaca", "maybe")


# --- tables for the chapter ---------------------------------------------------------------------------------


def test_pairs_table_and_summaries():
    pairs = sample_pairs("left_right", 40, seed=2)
    table = tables.pairs_table(pairs)
    assert len(table) == 40
    assert list(table["variable"]) == [p.variables[0] for p in pairs]
    assert list(table["counterfactual"]) == [pricetag.answer_word(p.label) for p in pairs]
    assert table.loc[0, "base"] == f"{pairs[0].base['amount'] / 100:.2f} in {pairs[0].base['lb'] / 100:.2f}-{pairs[0].base['ub'] / 100:.2f}"
    changed = sum(p.label != p.base_label for p in pairs) / len(pairs)
    assert tables.changed_rate(pairs) == changed
    balance = tables.label_balance(pairs)
    assert balance.loc["right", "Yes"] == sum(p.label for p in pairs if p.variables == ("right",))
    assert balance["Yes"].sum() + balance["No"].sum() == 40
