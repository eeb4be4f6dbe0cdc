"""The pairs a grid trains and scores on (das_lib.runs.pools): drawn at random as the old sweep drew them, or chosen
to separate a family with no pair in two splits; every candidate labelled by running its causal model."""
from __future__ import annotations

import pytest

from das_lib.method.seeds import split_seeds
from das_lib.models.load import load_tokenizer
from das_lib.tasks.pricetag import game
from das_lib.tasks.pricetag.task import PriceTagTask
from das_lib.runs import pools

FAMILY = {"n_brackets": 10, "seed": 0, "thresholds": [500]}


@pytest.fixture(scope="module")
def task() -> PriceTagTask:
    return PriceTagTask(load_tokenizer("standin"), "standin")


def test_the_random_design_draws_the_old_sweeps_pool(task):
    """Each split from its own seed (split_seeds), as game.sample_pool drew the pool of the sweep before the grid."""
    design = pools.design(20, 10, 12, seed=3)
    drawn = pools.pairs(task, design)
    for split, seed in zip(pools.SPLITS, split_seeds(3, 3)):
        assert drawn[split] == game.sample_pool(design[f"n_{split}"], seed)
    assert pools.pairs(task, pools.design(20, 10, 12, seed=4))["test"] != drawn["test"]


def test_the_separating_design_puts_no_pair_in_two_splits(task):
    design = pools.design(40, 20, 20, seed=0, separate={"family": FAMILY, "pool_factor": 3, "share": 0.1})
    drawn = pools.pairs(task, design)
    assert [len(drawn[s]) for s in pools.SPLITS] == [40, 20, 20]
    keys = [{pools.pair_key(p) for p in drawn[s]} for s in pools.SPLITS]
    assert sum(map(len, keys)) == 80 and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert pools.pairs(task, design) is drawn  # made once per process
    family = task.family(FAMILY)
    assert pools.candidate(task, family[3].key, design["separate"]) is family[3]


def test_labels_come_from_running_each_candidates_causal_model(task):
    split = pools.pairs(task, pools.design(8, 8, 30, seed=1))["test"]
    for key in ("left_right", "midpoint", "control"):
        candidate = pools.candidate(task, key, None)
        labels, factual = pools.labels(task, candidate, split)
        assert labels.shape == (len(candidate.variables), len(split))
        for v, variable in enumerate(candidate.variables):
            assert labels[v].tolist() == [task.answer_id(candidate.model.interchange(b, s, (variable,))) for b, s in split]
        assert factual.tolist() == [task.answer_id(candidate.model.predict(b)) for b, _ in split]
    yes, no = task.answer_ids()
    assert set(pools.labels(task, pools.candidate(task, "left", None), split)[0].ravel()) <= {yes, no}


def test_bad_designs_and_unknown_candidates_are_refused(task):
    with pytest.raises(ValueError, match="at least 2 pairs"):
        pools.design(1, 10, 10, seed=0)
    with pytest.raises(ValueError, match="seed >= 0"):
        pools.design(10, 10, 10, seed=-1)
    with pytest.raises(ValueError, match="pool_factor"):
        pools.design(10, 10, 10, seed=0, separate={"family": FAMILY, "pool_factor": 0, "share": 0.1})
    with pytest.raises(KeyError, match="neither a hypothesis or control"):
        pools.candidate(task, "right", None)
