"""The space of programs: expression-tree causal models, grouping by labels, separating pairs, ranking."""
from __future__ import annotations

import operator
import random

import numpy as np
import torch
import pytest

from das_lib.method.programs import constant, failures, leaf, node, program, sibling_pairs, variable_nodes
from das_lib.method.search import Outcome, margin, ranking
from das_lib.method.separation import group, label_functions, restrict, separated_counts, separating_pairs
from das_lib.pricetag import game, programs
from das_lib.pricetag.game import HYPOTHESES, Hypothesis, sample_pairs, task_label
from das_lib.runs.program_splits import pair_key

A, B, C = leaf("a"), leaf("b"), leaf("c")
SUM = node("a+b", operator.add, A, B)
PRODUCT = node("(a+b)*c", operator.mul, SUM, C)  # the toy of chapter 1


def test_a_program_names_a_sub_expression_and_interchange_runs_it():
    model = program("toy", PRODUCT, ("a+b",))
    assert model.predict({"a": 1, "b": 2, "c": 3}) == 9
    # (a+b) from the source (1+2), c from the base: 3 * 4
    assert model.interchange({"a": 2, "b": 3, "c": 4}, {"a": 1, "b": 2, "c": 3}, ("a+b",)) == 12
    assert [n.text for n in variable_nodes(PRODUCT)] == ["a+b"]
    assert sibling_pairs(PRODUCT) == []  # c is an input, not an intermediate variable
    with pytest.raises(KeyError, match="not sub-expressions"):
        program("toy", PRODUCT, ("a*b",))


def test_an_input_swapped_is_swapped_everywhere_it_is_used():
    twice = node("a+a", operator.add, A, A)
    assert program("t", twice, ("a",)).interchange({"a": 1}, {"a": 5}, ("a",)) == 10


def test_failures_runs_the_program_against_the_reference():
    wrong = node("a>=5", operator.ge, A, constant("5", 5))
    games = [{"a": x} for x in range(10)]
    assert failures(program("ok", wrong, ()), lambda g: g["a"] >= 5, games) == []
    assert failures(program("off", wrong, ()), lambda g: g["a"] >= 4, games) == [{"a": 4}]


def _toy_candidates() -> list[Hypothesis]:
    same = node("b+a", operator.add, A, B)
    other = node("(b+a)*c", operator.mul, same, C)
    keys = [("sum", PRODUCT, ("a+b",)), ("sum reordered", other, ("b+a",)), ("a", PRODUCT, ("a",))]
    return [Hypothesis(k, k, program(k, f, v), v) for k, f, v in keys]


def test_candidates_with_equal_labels_form_one_group():
    rng = random.Random(0)
    pairs = [tuple({k: rng.randint(0, 9) for k in "abc"} for _ in range(2)) for _ in range(50)]
    labels = {c.key: label_functions(c, pairs) for c in _toy_candidates()}
    separation = group(labels)
    assert [g.members for g in separation.groups] == [("sum", "sum reordered"), ("a",)]
    assert separation.group_of("sum reordered").key == "sum"
    assert group(restrict(labels, [0])).groups[0].members[0] == "sum"


def test_separating_pairs_reach_the_asked_count_where_the_pool_allows():
    functions = [(0, 0, 0, 0, 1, 1), (0, 0, 0, 0, 0, 1), (1, 1, 1, 1, 1, 1)]
    chosen = separating_pairs(functions, 3, 2, seed=0)
    counts = separated_counts([tuple(f[i] for i in chosen) for f in functions])
    assert counts[0, 1] == 1  # the pool has only one pair that separates them: it is taken
    assert counts[0, 2] >= 2 and counts[1, 2] >= 2
    assert separating_pairs(functions, 3, 2, seed=0) == chosen  # a seed gives one selection
    with pytest.raises(ValueError, match="pool"):
        separating_pairs(functions, 7, 1, seed=0)


# ---- the game's space


@pytest.fixture(scope="module")
def space():
    return programs.space(n_brackets=30, seed=0)


def test_every_candidate_answers_every_verification_game(space):
    games = programs.verification_games(120, seed=3)
    for name, formula in space.formulas.items():
        assert failures(program(name, formula, ()), task_label, games) == [], name
    for candidate in space.candidates[::7]:  # a candidate's factual output is its formula's
        assert failures(candidate.model, task_label, games[::5]) == [], candidate.key


def test_wrong_shortcuts_are_generated_and_dropped(space):
    assert {"and(dollars_only,direct)", "split_5.00(direct,direct)"} <= set(space.rejected)
    assert all(0 < share < 1 for share in space.rejected.values())
    assert not set(space.rejected) & set(space.formulas)


def test_the_papers_four_hypotheses_are_members_with_the_same_labels(space):
    rng = random.Random(1)
    pairs = [game.sample_pair(rng) for _ in range(300)]
    members = programs.paper_members(space.candidates, pairs)
    assert set(members) == set(HYPOTHESES)
    for key, candidate_key in members.items():
        candidate = next(c for c in space.candidates if c.key == candidate_key)
        paper = sample_pairs(key, 40, seed=5, balance=False)  # the paper's pairs, labelled by the paper's model
        for v, variable in enumerate(HYPOTHESES[key].variables):
            mine = [candidate.model.interchange(p.base, p.source, (candidate.variables[v],)) for p in paper]
            assert mine == [HYPOTHESES[key].model.interchange(p.base, p.source, (variable,)) for p in paper]


def test_the_unused_variable_never_changes_the_answer(space):
    unused = next(c for c in space.candidates if c.key == "unused_5.00 | amount>=5.00")
    rng = random.Random(2)
    for base, source in (game.sample_pair(rng) for _ in range(200)):
        assert unused.model.interchange(base, source, unused.variables) == task_label(base)


# ---- ranking


def _outcome(correct: list[list[int]], unintervened: list[list[int]]) -> Outcome:
    return Outcome(np.array(correct, dtype=bool), np.array(unintervened, dtype=bool))


def test_gains_sum_over_variables_and_the_ranking_orders_by_gain():
    two = _outcome([[1, 1, 1, 1], [1, 1, 1, 0]], [[0, 1, 0, 1], [1, 0, 0, 0]])  # gains 1+1 | 0+1 | 1+1 | 0+0
    one = _outcome([[1, 1, 0, 1]], [[1, 1, 1, 1]])
    assert two.gains().tolist() == [1, 1, 2, 0]
    table = ranking({"one": one, "two": two})
    assert table.index.tolist() == ["two", "one"] and table["rank"].tolist() == [1, 2]
    assert table.loc["two", "gain"] == pytest.approx(1.0) and table.loc["one", "gain"] == pytest.approx(-0.25)
    assert table.loc["one", "iia_low"] < 0.75 < table.loc["one", "iia_high"]
    mean, low, high = margin(two, one)
    assert mean == pytest.approx(1.25) and low <= mean <= high
    assert Outcome.from_dict(two.as_dict()).gains().tolist() == two.gains().tolist()


# ---- the search over the stand-in


@pytest.fixture(scope="module")
def small_search(tmp_path_factory):
    from das_lib.runs.program_search import ProgramSearch, SearchSpec

    keys = ("and(direct,direct) | amount>=lb & ub>=amount", "unused_5.00 | amount>=5.00", "bracket | (lb,ub)")
    spec = SearchSpec("standin", sites=((1, "last"), (3, "last")), candidates=keys, steps=30, batch_size=16,
                      n_train=64, n_val=32, n_test=64, pool_factor=2, n_brackets=20)
    search = ProgramSearch(spec, tmp_path_factory.mktemp("search"), progress=False)
    return search, search.run()


def test_a_search_trains_each_group_once_per_site_and_resumes(small_search):
    search, counts = small_search
    assert counts == {"ran": 6, "reused": 0}
    assert search.run() == {"ran": 0, "reused": 6}
    search.store.discard(search.config(*search.cells()[0]))  # a cell killed in flight leaves no record
    assert search.run() == {"ran": 1, "reused": 5}


def test_the_splits_share_no_pair_and_every_candidate_is_labelled_by_running_it(small_search):
    search, _ = small_search
    keys = [{pair_key(p) for p in search.splits[s].pairs} for s in ("train", "val", "test")]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    c = search.candidate("bracket | (lb,ub)")
    base, source = search.splits["test"].pairs[3]
    assert search.splits["test"].labels[c.key][0][3] == c.model.interchange(base, source, c.variables)


def test_the_ranking_reads_the_test_pairs_at_each_groups_best_validation_site(small_search):
    search, _ = small_search
    table = search.ranking()
    assert len(table) == 3 and table["pairs"].eq(64).all()
    best = search.best_sites()
    val = search.outcomes("val")
    for key, site in best.items():
        assert all(val[(key, site)].gains().mean() >= val[(key, other)].gains().mean() for other in search.spec.sites)
    assert table.loc["and(direct,direct) | amount>=lb & ub>=amount", "paper"] == "Left and Right Boundary"
    assert search.planted_group() == "and(direct,direct) | amount>=lb & ub>=amount"
    mean, low, high = search.margin()
    assert low <= mean <= high


def test_groups_carrying_the_whole_answer_are_not_searched(small_search):
    search, _ = small_search
    answer = search.separation.group_of("product | (amount-lb)*(ub-amount)").key
    assert answer in search.answer_groups() and answer not in search.groups()
    frame = search.groups_frame()
    assert frame["candidates"].sum() == len(search.space.candidates)


def test_the_models_own_answers_from_the_cache_equal_a_full_forward_pass(small_search):
    from das_lib.method.training import answer_tokens
    from das_lib.runs.program_search import SPLITS, runner_for

    search, _ = small_search
    runner = runner_for("standin", "float32", "cpu")
    prepared = search._prepared(runner, [1])
    for s in SPLITS:
        assert torch.equal(prepared.base[s], answer_tokens(runner.model, prepared.data[s]))


def test_the_majority_rate_counts_every_variables_labels():
    from das_lib.method.search import majority_rate

    assert majority_rate([(True, True, False), (False, False, False)]) == pytest.approx(4 / 6)
