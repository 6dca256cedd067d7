"""The prefix-noise study (experiments/prefix_noise.py): a stratified order keeps every prefix's strata in their
shares (counted by brute force against a plain shuffle), and its figures and neighbour shifts match hand-computed
cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from prefix_noise import (  # noqa: E402
    main, neighbour_shift_errors, prefix_errors, shuffled_equivalent, stratified_order)


def worst_share_gap(order: np.ndarray, strata: np.ndarray) -> float:
    """Over every prefix and stratum: |images of the stratum in the prefix - the prefix's share of them|."""
    sizes = np.bincount(strata)
    counts = np.cumsum(np.eye(len(sizes))[strata[order]], axis=0)  # prefix x stratum
    expected = np.arange(1, len(order) + 1)[:, None] * sizes / len(order)
    return float(np.abs(counts - expected).max())


def test_every_prefix_of_a_stratified_order_holds_each_stratum_in_its_share() -> None:
    strata = np.repeat([0, 1, 2], [600, 300, 100])
    rng = np.random.default_rng(0)
    order = stratified_order(strata, rng)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation
    # each stratum's k-th image sits in [k, k+1) / size: a prefix is off its share by at most 1 + strata * share
    assert worst_share_gap(order, strata) <= 2.0
    assert worst_share_gap(rng.permutation(1000), strata) > 5.0  # a shuffle drifts by several images
    # within a stratum the order is random: two seeds give other images first
    assert stratified_order(strata, np.random.default_rng(1))[:50].tolist() != order[:50].tolist()


def test_one_stratum_is_a_plain_shuffle() -> None:
    order = stratified_order(np.zeros(50, dtype=np.int64), np.random.default_rng(3))
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))


def test_the_figures_of_one_order_by_hand() -> None:
    # whole 0.5, 0.5, 0.75; on the first 2 images 1.0, 0.5, 1.0: shifts 0.5, 0, 0.25 (mean 0.25), own -+0.25, 0
    outcomes = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], dtype=bool)
    figures = prefix_errors(outcomes, np.arange(4), images=2, close=0.3)
    assert figures["common_sq"] == pytest.approx(0.0625, abs=1e-15)
    assert figures["own_sq"] == pytest.approx(0.125 / 3, abs=1e-15)
    assert figures["pairs"] == 3 and figures["pair_sq"] == pytest.approx((0.25 + 0.0625 + 0.0625) / 3, abs=1e-15)
    assert figures["tau"] == pytest.approx(0.5, abs=1e-12)  # tau-b: 1 concordant of 3 pairs, one tie on each side
    close = prefix_errors(outcomes, np.arange(4), images=2, close=0.1)  # only the pair (0, 1): shift gap 0.5
    assert close["pairs"] == 1 and close["pair_sq"] == pytest.approx(0.25, abs=1e-15)


def test_shuffled_equivalent_inverts_the_finite_population_variance() -> None:
    assert shuffled_equivalent(1.0, 2000, 10000) == pytest.approx(2000, rel=1e-12)
    # half the variance of 2,000 of 10,000: 1 / (0.5 (1/2000 - 1/10000) + 1/10000) = 3,333.3
    assert shuffled_equivalent(0.5, 2000, 10000) == pytest.approx(10000 / 3, rel=1e-12)


def test_a_neighbour_shift_is_that_of_the_candidates_agreeing_on_the_most_prefix_images() -> None:
    # whole 0.5, 0.75, 0.75; first 2 images 1, 1, 0.5: shifts 0.5, 0.25, -0.25. On them 0 and 1 agree on both images,
    # 2 agrees with each on one: the nearest of 0 is 1 and of 1 is 0 (errors 0.25, -0.25); the mean of the others
    # is 0 for 0 and 0.125 for 1 (errors 0.5, 0.125). Candidate 2 is a neighbour but is not evaluated.
    outcomes = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]], dtype=bool)
    errors = neighbour_shift_errors(outcomes, np.array([True, True, False]), np.arange(4), 2, [1, 2])
    assert errors["1"] == pytest.approx(0.0625, abs=1e-15)
    assert errors["all"] == pytest.approx((0.25 + 0.015625) / 2, abs=1e-15)
    assert errors["2"] == errors["all"]  # with two others, the two nearest are all of them


def test_a_missing_outcomes_file_is_one_error_line_naming_the_script_that_writes_it(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "none.npz"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("none.npz is not a file: run experiments/shift_by_accuracy.py first, it writes the .npz")
    assert not (tmp_path / "out.json").exists()
