"""The calibration-noise study's pure parts (experiments/calibration_noise.py) on hand-built records: which
comparisons it redoes, which training images each calibration block holds, and its spread in points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from calibration_noise import calibration_block, chosen_comparisons, copied_block, spread  # noqa: E402


def test_the_comparisons_redone_are_those_at_the_budgets_of_the_named_searches_with_a_candidate() -> None:
    final = {"searches": {"evolution (evolution)": "runs/b/evolution", "evolution (evolution-seed1)":
                          "runs/b/evolution-seed1", "tune-nsga2": "runs/b/tune-nsga2"},
             "comparisons": [{"run": "evolution (evolution)", "budget": 7.50213e7, "searched_trial": 4},
                             {"run": "evolution (evolution-seed1)", "budget": 7.50213e7, "searched_trial": None},
                             {"run": "tune-nsga2", "budget": 7.50213e7, "searched_trial": 9},
                             {"run": "evolution (evolution)", "budget": 1.022e8, "searched_trial": 7}]}
    # budgets match as the reports print them (4 significant digits)
    chosen = chosen_comparisons(final, [7.502e7], ["evolution", "evolution-seed1"])
    assert chosen == [final["comparisons"][0]]


def test_calibration_blocks_are_consecutive_disjoint_runs_of_the_training_split() -> None:
    images = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1)
    train = TensorDataset(images, torch.zeros(10, dtype=torch.long))
    block = calibration_block(train, 3, 1)
    assert torch.cat([batch[0] for batch in block]).flatten().tolist() == [3.0, 4.0, 5.0]
    copied = copied_block(train, 3)
    assert torch.cat([batch[0] for batch in copied]).flatten().tolist() == [0.0, 1.0, 2.0]


def test_spread_is_in_points_with_the_sample_standard_deviation() -> None:
    # accuracies 0.88, 0.89, 0.90: mean 89, SD sqrt(((-1)^2 + 0 + 1^2) / 2) = 1 point
    result = spread([0.88, 0.89, 0.90])
    assert result["mean"] == pytest.approx(89.0, abs=1e-9) and result["sd"] == pytest.approx(1.0, abs=1e-9)
    assert (result["min"], result["max"]) == pytest.approx((88.0, 90.0), abs=1e-9)
