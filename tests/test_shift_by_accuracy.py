"""The shift-by-accuracy study (experiments/shift_by_accuracy.py) cuts the validation split into the search's images
and two disjoint halves of the rest, and fits the slope by least squares (hand-computed cases)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from shift_by_accuracy import parts, slope  # noqa: E402


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
