"""Per-image correctness packs losslessly; binomial and paired standard errors equal hand-computed values and
scipy's standard error of the mean of the per-image differences; the error over calibration blocks equals a
two-way analysis of variance worked by hand, and on tables drawn from the crossed random-effects model it estimates
the known variance of the mean and its t intervals cover the known mean as often as they claim."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from automq.errors import DataError
from automq.oneshot.paired import (BlockCorrectness, Correctness, binomial_se, block_difference, crossed_mean,
                                   paired_difference)

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
    assert (same.value, same.se) == (0.0, 0.0)


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


# ------------------------------------------------------------------------------------------------ calibration blocks
def test_crossed_mean_equals_the_two_way_analysis_of_variance_by_hand() -> None:
    table = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    # grand mean 1/2; image means 1/2, 1/2, 1, 0; block means 3/4, 1/4; every residual is +-1/4
    # MS_images = 2 * (0 + 0 + 1/4 + 1/4) / 3 = 1/3, MS_blocks = 4 * (1/16 + 1/16) / 1 = 1/2, MS_res = 8/16 / 3 = 1/6
    result = crossed_mean(table)
    assert result.value == 0.5
    assert abs(result.se - math.sqrt((1 / 3 + 1 / 2 - 1 / 6) / 8)) <= TOLERANCE
    # Satterthwaite: (2/3)^2 / ((1/3)^2 / 3 + (1/2)^2 / 1 + (1/6)^2 / 3) = 3/2
    assert abs(result.df - 1.5) <= TOLERANCE


def test_crossed_mean_never_falls_below_the_larger_one_way_part() -> None:
    table = np.array([[1, 0], [1, 1], [0, 0]])
    # MS_images = 2 * (0 + 1/4 + 1/4) / 2 = 1/2, MS_blocks = 3 * (1/36 + 1/36) = 1/6, MS_res = (1/3) / 2 = 1/6:
    # the sum 1/2 is no more than MS_images, which is kept, with its 2 degrees of freedom
    result = crossed_mean(table)
    assert abs(result.se - math.sqrt(0.5 / 6)) <= TOLERANCE and result.df == 2


def test_crossed_mean_keeps_the_blocks_part_and_its_freedom_when_that_is_the_larger() -> None:
    table = np.array([[0, 0, 1], [0, 1, 0], [0, 1, 1]])
    # grand mean 4/9; image means 1/3, 1/3, 2/3; block means 0, 2/3, 2/3; total sum of squares 4 (5/9)^2 + 5 (4/9)^2
    # = 20/9, images 2/9, blocks 8/9, residual 10/9: MS_images = 1/9, MS_blocks = 4/9, MS_res = 10/9 / 4 = 5/18;
    # 1/9 + 4/9 - 5/18 = 5/18 is below MS_blocks, which is kept with its K - 1 = 2 degrees of freedom
    result = crossed_mean(table)
    assert abs(result.value - 4 / 9) <= TOLERANCE
    assert abs(result.se - math.sqrt((4 / 9) / 9)) <= TOLERANCE and result.df == 2


def test_one_block_is_the_paired_difference_and_the_binomial_error() -> None:
    a, b = Correctness.from_bools(A), Correctness.from_bools(B)
    one = block_difference(BlockCorrectness((a,)), BlockCorrectness((b,)))
    paired = paired_difference(a, b)
    assert abs(one.value - paired.value) <= TOLERANCE and abs(one.se - paired.se) <= TOLERANCE
    assert math.isinf(one.df)
    assert abs(BlockCorrectness((a,)).se - binomial_se(0.7, 10)) <= TOLERANCE


def test_block_difference_pairs_block_k_with_block_k() -> None:
    a = BlockCorrectness((Correctness.from_bools(A), Correctness.from_bools(B)))
    b = BlockCorrectness((Correctness.from_bools(B), Correctness.from_bools(B)))
    # block 1 is the same outcomes in both: differences 0.1 and 0.0
    assert a.accuracies == [0.7, 0.6] and a.accuracy == 0.65
    result = block_difference(a, b)
    expected = crossed_mean(np.stack([A.astype(int) - B, np.zeros(10, dtype=int)], axis=1))
    assert abs(result.value - 0.05) <= TOLERANCE and result == expected


def test_outcomes_on_other_images_or_other_block_counts_are_refused() -> None:
    ten, eight = Correctness.from_bools(A), Correctness.from_bools(A[:8])
    with pytest.raises(DataError, match="all on the same images"):
        BlockCorrectness((ten, eight))
    with pytest.raises(DataError, match="cannot be paired"):
        block_difference(BlockCorrectness((ten, ten)), BlockCorrectness((ten,)))


def test_crossed_error_estimates_the_variance_of_the_mean_and_its_intervals_cover() -> None:
    rng = np.random.default_rng(0)
    images, blocks, draws = 50, 4, 2000
    image_sd, block_sd, noise_sd = 1.0, 0.5, 0.7
    variance = image_sd**2 / images + block_sd**2 / blocks + noise_sd**2 / (images * blocks)
    estimates, covered, covered_by_images = [], 0, 0
    for _ in range(draws):
        table = (3.0 + image_sd * rng.standard_normal((images, 1)) + block_sd * rng.standard_normal((1, blocks))
                 + noise_sd * rng.standard_normal((images, blocks)))
        result = crossed_mean(table)
        estimates.append(result.se**2)
        covered += abs(result.value - 3.0) <= stats.t.ppf(0.975, result.df) * result.se
        images_only = stats.sem(table.mean(axis=1))  # the error of the images alone, as if one block were all
        covered_by_images += abs(result.value - 3.0) <= 1.959964 * images_only
    # unbiased up to the rare floor (a block variance below the interaction's): within 4 Monte Carlo errors
    assert abs(np.mean(estimates) - variance) <= 4 * np.std(estimates) / math.sqrt(draws)
    # a 95% interval covers about 95% (binomial sd of the share 0.5 points); the images alone cover far less
    assert 0.93 <= covered / draws <= 0.965 and covered_by_images / draws < 0.8
