"""The shift-by-accuracy study (experiments/shift_by_accuracy.py) cuts the validation split into the search's images
and two disjoint halves of the rest, fits the slope by least squares, and compares the one mean shift with a line
predicting the whole split's accuracy (hand-computed cases)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from shift_by_accuracy import parts, prediction_errors, slope  # noqa: E402


def test_the_split_is_the_search_images_then_two_halves_of_the_rest() -> None:
    # A = 3 of 4 right, B = 1 of 3, C = 3 of 3; 7 of 10 in all
    outcomes = np.array([1, 1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    assert parts(outcomes, first=4) == pytest.approx((0.75, 1 / 3, 1.0, 0.7), abs=1e-15)


def test_the_slope_is_the_least_squares_one() -> None:
    # y = 0.02 - 0.1 x exactly, then one point off the line: slope by hand from the normal equations
    x = np.array([0.80, 0.85, 0.90])
    assert slope(x, 0.02 - 0.1 * x) == pytest.approx(-0.1, rel=1e-12)
    y = np.array([0.0, 0.01, 0.0])  # mean 1/300; sum (x - 0.85) * y = 0 -> slope 0
    assert slope(x, y) == pytest.approx(0.0, abs=1e-12)


def test_a_line_through_every_point_predicts_them_all_and_the_mean_shift_misses_by_hand_computed_errors() -> None:
    # whole = 2 search - 0.8 exactly; the probes are the first two. Their shifts 0 and -0.1 average -0.05, so the
    # mean shift predicts 1.00 for the reference at 0.95 (measured 1.10) and 0.80 for the one at 0.75 (0.70).
    search = np.array([0.80, 0.90, 0.95, 0.75])
    result = prediction_errors(search, 2 * search - 0.8, np.array([True, True, False, False]))
    assert result["line_slope"] == pytest.approx(2.0, rel=1e-9)
    assert result["held_out"]["line"]["mean"] == pytest.approx(0.0, abs=1e-9)
    shifted = result["held_out"]["mean shift"]
    assert shifted["n"] == 2 and shifted["mean"] == pytest.approx(0.0, abs=1e-12)
    assert shifted["se"] == pytest.approx(0.1, rel=1e-9)  # errors -0.1 and +0.1
    # leave one out: each shift (0, -0.1, -0.15, 0.05) less the mean of the other three: +-1/15, +-2/15
    assert result["loo_rmse"]["mean shift"] == pytest.approx(1 / np.sqrt(90), rel=1e-9)
    assert result["loo_rmse"]["line"] == pytest.approx(0.0, abs=1e-9)
