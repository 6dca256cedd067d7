"""Per-image correctness packs losslessly; binomial and paired standard errors equal hand-computed values and
scipy's standard error of the mean of the per-image differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from automq.errors import DataError
from automq.oneshot.paired import Correctness, binomial_se, paired_difference

# float64 sums of at most a few thousand terms of size <= 1
TOLERANCE = 1e-12

A = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool)  # 7 of 10 right
B = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1], dtype=bool)  # 6 of 10; right only in A: 2, right only in B: 1


def test_correctness_round_trips_any_length_and_counts_right_images() -> None:
    rng = np.random.default_rng(0)
    for length in (1, 7, 8, 13, 2000):
        outcomes = rng.random(length) < 0.8
        packed = Correctness.from_bools(outcomes)
        assert packed.images == length and len(packed.bits) == math.ceil(length / 8)
        np.testing.assert_array_equal(packed.bools(), outcomes)
        assert packed.correct == int(outcomes.sum())
    assert Correctness.from_bools(A).accuracy == 0.7


def test_binomial_se_equals_hand_computed_values() -> None:
    assert abs(binomial_se(0.7, 10) - math.sqrt(0.7 * 0.3 / 10)) < TOLERANCE  # 0.14491...
    assert abs(binomial_se(0.8295, 2000) - 0.00840921) < 1e-8  # the 0.8-point error at 2,000 images
    assert abs(Correctness.from_bools(A).se - 0.1449137675) < 1e-10
    assert binomial_se(1.0, 50) == 0.0
    with pytest.raises(DataError, match="at least one image"):
        binomial_se(0.5, 0)


def test_paired_difference_equals_the_hand_computed_wald_error() -> None:
    difference = paired_difference(Correctness.from_bools(A), Correctness.from_bools(B))
    # n10 = 2, n01 = 1, n = 10: difference 0.1, se = sqrt((3/10 - 0.1**2) / 10) = sqrt(0.029)
    assert abs(difference.value - 0.1) < TOLERANCE
    assert abs(difference.se - 0.1702938637) < 1e-10
    reverse = paired_difference(Correctness.from_bools(B), Correctness.from_bools(A))
    assert abs(reverse.value + 0.1) < TOLERANCE and reverse.se == difference.se
    same = paired_difference(Correctness.from_bools(A), Correctness.from_bools(A))
    assert same == (0.0, 0.0)


def test_paired_difference_equals_scipy_sem_of_per_image_differences() -> None:
    rng = np.random.default_rng(1)
    for length in (9, 1000, 2003):
        a = rng.random(length) < 0.83
        flips = rng.random(length) < 0.05  # neighbours: the same answers except on a few images
        b = a ^ flips
        difference = paired_difference(Correctness.from_bools(a), Correctness.from_bools(b))
        per_image = a.astype(np.float64) - b.astype(np.float64)
        assert abs(difference.value - per_image.mean()) < TOLERANCE
        assert abs(difference.se - stats.sem(per_image, ddof=0)) < TOLERANCE


def test_paired_error_of_neighbours_is_far_below_their_binomial_errors_and_never_above_their_sum() -> None:
    rng = np.random.default_rng(2)
    a = rng.random(2000) < 0.83
    b = a ^ (rng.random(2000) < 0.03)
    score_a, score_b = Correctness.from_bools(a), Correctness.from_bools(b)
    paired = paired_difference(score_a, score_b).se
    unpaired = math.sqrt(score_a.se**2 + score_b.se**2)
    assert paired < unpaired / 2
    for _ in range(200):  # the bound the search's refinement step relies on, for any two outcome vectors
        x, y = rng.random(50) < rng.random(), rng.random(50) < rng.random()
        sx, sy = Correctness.from_bools(x), Correctness.from_bools(y)
        assert paired_difference(sx, sy).se <= sx.se + sy.se + TOLERANCE


def test_scores_on_different_images_or_non_boolean_outcomes_are_refused() -> None:
    with pytest.raises(DataError, match="10 and 9 images cannot be paired"):
        paired_difference(Correctness.from_bools(A), Correctness.from_bools(B[:9]))
    with pytest.raises(DataError, match="1-D bool array"):
        Correctness.from_bools(np.array([1, 0, 1]))
