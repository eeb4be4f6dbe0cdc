"""Intervals: exact binomial against scipy's own, seeded bootstrap, coverage, paired differences, refusals."""
import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from das_lib.method.stats import beats, binomial_interval, bootstrap_interval, paired_difference


def test_clopper_pearson_known_values():
    # the closed forms: 0/n has upper end 1 - (alpha/2)^(1/n), n/n the mirror; 5/10 from the beta quantiles
    n, alpha = 20, 0.05
    assert binomial_interval(0, n) == pytest.approx((0.0, 1 - (alpha / 2) ** (1 / n)))
    assert binomial_interval(n, n) == pytest.approx(((alpha / 2) ** (1 / n), 1.0))
    low, high = binomial_interval(5, 10)
    assert (low, high) == pytest.approx((scipy_stats.beta.ppf(0.025, 5, 6), scipy_stats.beta.ppf(0.975, 6, 5)))
    assert (low, high) == pytest.approx((0.187086, 0.812914), abs=1e-5)  # the textbook value for 5/10
    assert binomial_interval(5, 10, level=0.5)[1] - binomial_interval(5, 10, level=0.5)[0] < high - low


def test_binomial_interval_covers_the_true_rate():
    rng = np.random.default_rng(0)
    n = 40
    intervals = np.array([binomial_interval(k, n) for k in range(n + 1)])
    for p in (0.05, 0.3, 0.5, 0.62, 0.9):
        k = rng.binomial(n, p, size=4000)
        covered = (intervals[k, 0] <= p) & (p <= intervals[k, 1])
        assert covered.mean() >= 0.94, (p, covered.mean())  # Clopper-Pearson is exact: >= 0.95 up to noise


def test_bootstrap_is_seeded_and_agrees_with_the_binomial_interval():
    values = np.r_[np.ones(120), np.zeros(80)]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)
    low, high = bootstrap_interval(values)
    exact = binomial_interval(120, 200)
    assert low < 0.6 < high
    assert low == pytest.approx(exact[0], abs=0.02) and high == pytest.approx(exact[1], abs=0.02)
    assert bootstrap_interval(values, level=0.5)[0] > low


def test_bootstrap_takes_lists_tensors_and_bools():
    values = [1, 0, 1, 1, 0, 1, 0, 1]
    expected = bootstrap_interval(np.array(values))
    assert bootstrap_interval(values) == expected
    assert bootstrap_interval(torch.tensor(values)) == expected
    assert bootstrap_interval(torch.tensor(values, dtype=torch.bool)) == expected
    assert bootstrap_interval(np.array(values, dtype=bool)) == expected


def test_identical_vectors_differ_by_exactly_nothing():
    a = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0])
    assert paired_difference(a, a.copy()) == (0.0, 0.0, 0.0)
    assert not beats(a, a)


def test_a_clear_difference_beats_and_the_reverse_does_not():
    rng = np.random.default_rng(1)
    b = (rng.random(300) < 0.5).astype(int)
    a = np.where(rng.random(300) < 0.4, 1, b)  # a is right wherever b is, and on 40% of b's misses
    mean, low, high = paired_difference(a, b)
    assert mean == pytest.approx((a - b).mean()) and low <= mean <= high
    assert 0 < low and high < 1
    assert beats(a, b) and not beats(b, a)
    mean_ba, low_ba, high_ba = paired_difference(b, a)
    assert mean_ba == pytest.approx(-mean) and high_ba < 0


def test_a_small_difference_on_few_pairs_does_not_beat():
    # 2 more right answers out of 20 is within the noise: the fixed 0.05 margin would call it found
    b = np.array([1] * 10 + [0] * 10)
    a = b.copy()
    a[[10, 11]] = 1
    assert paired_difference(a, b)[0] == pytest.approx(0.1)
    assert not beats(a, b)


def test_pairing_matters():
    # the same two rates, 0.6 and 0.5, are separated when the pairs move together and not when they do not
    b = np.array([1] * 50 + [0] * 50)
    together = b.copy()
    together[50:60] = 1
    apart = np.array([0] * 40 + [1] * 60)
    assert beats(together, b)
    assert not beats(apart, b)


@pytest.mark.parametrize("call, message", [
    (lambda: binomial_interval(0, 0), "n >= 1"),
    (lambda: binomial_interval(11, 10), "0 <= k <= n"),
    (lambda: binomial_interval(2.5, 10), "whole counts"),
    (lambda: binomial_interval(5, 10, level=1.0), "level"),
    (lambda: bootstrap_interval([]), "empty"),
    (lambda: bootstrap_interval([0.2, float("nan")]), "NaN"),
    (lambda: bootstrap_interval([[1, 0], [0, 1]]), "1-D"),
    (lambda: bootstrap_interval([1, 0], level=0), "level"),
    (lambda: bootstrap_interval([1, 0], n_boot=0), "n_boot"),
    (lambda: paired_difference([1, 0, 1], [1, 0]), "same pairs"),
    (lambda: paired_difference([], []), "empty"),
    (lambda: paired_difference([1, 0, 2], [1, 0, 1]), "0/1"),
    (lambda: paired_difference([1, 0], [1, 0], level=95), "level"),
    (lambda: beats([1, 0], [1, 0], level=-0.1), "level"),
])
def test_bad_input_is_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()
