"""The estimator benchmark's resolution path (experiments/bench_estimator.py): each step's accuracy and its paired
difference to the step before, checked against outcomes counted by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from automq.oneshot.paired import Correctness

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from bench_estimator import path_differences  # noqa: E402

OUTCOMES = {"a": [1, 1, 0, 0, 1, 0, 1, 0], "b": [1, 1, 1, 0, 1, 0, 1, 1]}  # b right on 2 more images, never fewer


class FixedOutcomes:
    """An estimator stand-in whose candidates (here: names) have fixed per-image outcomes."""

    def correctness(self, candidate: str, *, images: int) -> Correctness:
        return Correctness.from_bools(np.array(OUTCOMES[candidate][:images], dtype=bool))


def test_each_step_gets_its_paired_difference_to_the_step_before() -> None:
    rows = path_differences(FixedOutcomes(), ["a", "b"], [8, 4])
    first, second = rows[0]["steps"]
    assert "difference" not in first and first["accuracy"] == 0.5
    # 8 images: n10 = 2 (b over a), n01 = 0; difference 2/8, SE sqrt((2/8 - (2/8)^2) / 8)
    assert second["accuracy"] == 0.75 and second["difference"] == 0.25
    assert abs(second["paired_se"] - math.sqrt((0.25 - 0.0625) / 8)) <= 1e-15
    # the first 4 images: one disagreement
    assert rows[1]["images"] == 4 and rows[1]["steps"][1]["difference"] == 0.25
