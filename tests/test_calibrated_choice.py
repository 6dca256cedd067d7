"""The calibrated-choice study's pure parts (experiments/calibrated_choice.py) on hand-built trials: which
candidates contend at a budget, which one the calibration-averaged accuracy picks, and where its blocks lie."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from automq.oneshot.paired import BlockCorrectness, Correctness
from automq.search.trial import Trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from calibrated_choice import against_every_uniform, calibrated_pick, choice_firsts, contenders  # noqa: E402

from _spaces import SpaceFactory  # noqa: E402


def trials(space, rows: list[tuple[float, float]]) -> list[Trial]:
    rng = np.random.default_rng(0)
    found: dict[str, object] = {}
    while len(found) < len(rows):
        candidate = space.sample(rng)
        found[candidate.id] = candidate
    return [Trial(number, candidate, {"accuracy": accuracy, "bitops": bitops})
            for number, (candidate, (accuracy, bitops)) in enumerate(zip(found.values(), rows))]


def test_contenders_are_the_most_accurate_at_or_below_the_budget_the_cheaper_first_on_a_tie(
        tiny_space: SpaceFactory) -> None:
    made = trials(tiny_space(), [(0.80, 100), (0.85, 250), (0.83, 200), (0.83, 150), (0.90, 300)])
    assert [t.number for t in contenders(made, 250, 3)] == [1, 3, 2]  # 0.85, then 0.83 at 150 before 0.83 at 200
    assert [t.number for t in contenders(made, 99, 3)] == []


def test_the_pick_is_the_best_mean_over_the_choice_blocks_and_keeps_the_usual_order_on_a_tie(
        tiny_space: SpaceFactory) -> None:
    first, second, third = trials(tiny_space(), [(0.85, 250), (0.84, 150), (0.83, 200)])
    accuracies = {first.candidate.id: [0.84, 0.86], second.candidate.id: [0.86, 0.87],
                  third.candidate.id: [0.85, 0.85]}
    assert calibrated_pick([first, second, third], accuracies) is second  # mean 0.865 against 0.85 twice
    accuracies[second.candidate.id] = [0.85, 0.85]
    assert calibrated_pick([first, second, third], accuracies) is first  # three means of 0.85: the usual first


def test_choice_blocks_follow_the_final_measurements_own() -> None:
    final = {"calibration": {"first": 512, "blocks": 4, "images": 512, "batch": 128}}
    assert choice_firsts(final, 3) == [2560, 3072, 3584]


def right_on_first(count: int, images: int = 100) -> BlockCorrectness:
    return BlockCorrectness((Correctness.from_bools(np.arange(images) < count),))


def test_the_calibrated_pick_is_judged_against_every_uniform_format_by_its_binding_comparison(
        tiny_space: SpaceFactory) -> None:
    int4, fp4, int8 = trials(tiny_space(), [(0.80, 100), (0.81, 100), (0.82, 200)])
    outcomes = {int4.candidate.id: right_on_first(50), fp4.candidate.id: right_on_first(68),
                int8.candidate.id: right_on_first(75)}
    # +0.20 over int4 (SE 0.04, a win) but +0.02 over fp4 (SE sqrt((0.02 - 0.0004) / 100) = 0.014): a tie, binding
    tie = against_every_uniform(right_on_first(70), [int4, fp4, int4], outcomes)
    assert tie["uniform_id"] == fp4.candidate.id and tie["verdict"] == "tie"
    assert abs(tie["difference"] - 0.02) <= 1e-12 and abs(tie["se"] - math.sqrt((0.02 - 0.02**2) / 100)) <= 1e-12
    # int8 right on 5 more images: -0.05 ± 0.0218, a loss, which binds whatever else is won
    loss = against_every_uniform(right_on_first(70), [int4, fp4, int8], outcomes)
    assert loss["uniform_id"] == int8.candidate.id and loss["verdict"] == "loss"
