"""The space of programs (expression-tree causal models, grouping by labels, separating pairs) and the search over
it (das_lib.runs.program_search), a thin layer on the grid engine."""
from __future__ import annotations

import operator
import random

import numpy as np
import pytest
import torch

from das_lib.method.outcome import candidate_score
from das_lib.method.programs import constant, failures, leaf, node, program, sibling_pairs, variable_nodes
from das_lib.method.separation import group, label_functions, restrict, separated_counts, separating_pairs
from das_lib.method.training import TrainConfig
from das_lib.tasks.pricetag import game, programs
from das_lib.tasks.pricetag.game import HYPOTHESES, Hypothesis, sample_pairs, task_label
from das_lib.runs import program_search, protocol
from das_lib.runs.jobs import majority_rate
from das_lib.runs.pools import SPLITS, pair_key

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


# ---- the search over the stand-in


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A chapter's search at a tiny budget (run_search): the paper's four groups at L1 and L3 last, then every group
    at the better site, then the two leading groups from one more seed (about 60 cells), and its finding."""
    spec = program_search.SearchSpec("standin", train=TrainConfig(steps=2, batch_size=8), n_train=32, n_val=24, n_test=32,
                                     pool_factor=2, family={"n_brackets": 10, "thresholds": [500]}, leading=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        search = program_search.ProgramSearch(spec, tmp_path_factory.mktemp("search"), progress=False)
        scan, finding = program_search.run_search(search, ((1, 3), ("last",)), 1)
    finally:
        torch.set_num_threads(threads)
    return search, scan, search.every, finding


def test_the_splits_share_no_pair_and_every_group_is_labelled_by_running_it(searched):
    search, _, every, _ = searched
    keys = [{pair_key(p) for p in search.pairs[s]} for s in SPLITS]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    c = search.grid_candidate("bracket | (lb,ub)")
    base, source = search.pairs["test"][3]
    assert every.labels(c.key, "test")[0][3] == search.task.answer_id(c.model.interchange(base, source, c.variables))


def test_groups_carrying_the_whole_answer_are_not_searched(searched):
    search, _, _, _ = searched
    answer = search.separation.group_of("product | (amount-lb)*(ub-amount)").key
    assert answer in search.answer_groups and answer not in search.groups()
    assert sum(len(g.members) for g in search.separation.groups) == len(search.family)  # each candidate in one group
    assert set(search.groups()) | set(search.answer_groups) == {g.key for g in search.separation.groups}


def test_the_papers_hypotheses_the_plant_and_the_inert_control_have_their_groups(searched):
    search, _, _, _ = searched
    assert sorted(search.paper_groups.values()) == sorted(HYPOTHESES)
    assert search.paper_groups[search.planted_group()] == "left_right"
    inert = search.inert_groups()
    assert inert and set(inert) <= set(search.groups())
    c = search.grid_candidate(inert[0])
    pairs = [p for s in ("train", "val", "test") for p in search.pairs[s]]
    assert all(c.model.interchange(b, src, (v,)) == c.model.predict(b) for b, src in pairs for v in c.variables)
    assert search.title(search.planted_group()).endswith("(Left and Right Boundary)")


def test_the_scan_keeps_the_site_where_a_papers_group_scores_best_on_validation(searched):
    search, scan, every, _ = searched
    runs = scan.runs()
    assert len(runs) == 8 and set(runs["candidate"]) == set(search.paper_groups)
    best = {}
    for r in runs.itertuples():
        value = float(candidate_score(r.val.correct, r.val.none, r.val.changed))
        best[(r.layer, r.position)] = max(best.get((r.layer, r.position), -2.0), value)
    ranked = sorted(best, key=lambda site: -best[site])
    assert search.top_sites(scan, 2) == ranked and search.top_sites(scan, 1) == ranked[:1]
    assert (every.spec.layers, every.spec.positions) == ((ranked[0][0],), ("last",))


def test_every_group_is_trained_once_then_the_leading_ones_again_and_a_rerun_reuses_them(searched):
    search, scan, every, _ = searched
    runs = every.runs()
    assert sorted(runs["candidate"]) == sorted(search.groups()) and (runs["seed"] == 0).all()
    leading = protocol.order(runs, protocol.choose_sites(runs))[:2]
    lead = search.leading_grid(every)
    assert lead.spec.candidates == tuple(leading) and {c.seed for c in lead.extra_cells()} == {1}
    assert len(lead.runs(lead.extra_cells())) == 2
    assert scan.run() == {"ran": 0, "reused": 8} and every.run() == {"ran": 0, "reused": len(search.groups())}


def test_the_searchs_finding_ranks_groups_on_validation_with_the_leading_ones_extra_seeds(searched):
    search, _, every, finding = searched
    assert sorted(finding.order) == sorted(search.groups())
    lead = search.leading_grid(every)
    assert {c: int(finding.table.loc[c, "runs"]) for c in lead.spec.candidates} == {c: 2 for c in lead.spec.candidates}
    assert (finding.table.drop(index=list(lead.spec.candidates))["runs"] == 1).all()


def test_the_majority_rate_counts_every_variables_labels():
    assert majority_rate(np.array([[1, 1, 0], [0, 0, 0]])) == pytest.approx(4 / 6)
