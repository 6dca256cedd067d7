"""Refinement re-scores exactly the trials that could be on the front (hand-built cases whose paired standard
errors are computed by hand), keeps the search-time values, rewrites the search directory atomically, and is what
``run_search`` does at the end of a search with the one-shot estimator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from automq.oneshot.evaluate import OneShotEstimator
from automq.oneshot.paired import Correctness
from automq.oneshot.train import train_supernet
from automq.search.driver import run_search
from automq.search.refine import near_front, refine_front
from automq.search.results import PARETO_FILE, SearchLog, load_trials
from automq.search.trial import Trial

SEARCH_IMAGES, ALL_IMAGES = 1000, 5000


def outcomes(right: int, flip_right: int = 0, flip_wrong: int = 0) -> np.ndarray:
    """The first ``right`` of 1,000 images right, then ``flip_right`` of those made wrong and ``flip_wrong`` of the
    wrong ones made right."""
    correct = np.arange(SEARCH_IMAGES) < right
    correct[:flip_right] = False
    correct[right:right + flip_wrong] = True
    return correct


# name: (bitops, search-time outcomes, accuracy on all images). Front at search time: A and B.
# C vs B: 55 images right only in B, 45 only in C: gap 0.01, paired se sqrt((0.1 - 0.01**2) / 1000) = 0.009995,
#   2 se = 0.0200 > 0.01: C could be on the front. (Binomial errors 0.0113 + 0.0116 could not decide it.)
# E vs B: 20 images right only in B: gap 0.02, paired se sqrt((0.02 - 0.02**2) / 1000) = 0.00443, 2 se = 0.0089:
#   beaten, although the binomial bound 2 * (0.0113 + 0.0119) = 0.046 is not.
# D vs B: gap 0.15 > 2 * (0.0113 + 0.0145) = 0.052: beaten without asking for D's per-image outcomes.
# On all images B drops to 0.82, which leaves E (0.83 on the search's images) on the front: E is refined next.
CASES = {
    "A": (10.0, outcomes(800), 0.79),
    "B": (20.0, outcomes(850), 0.82),
    "C": (25.0, outcomes(850, flip_right=55, flip_wrong=45), 0.86),
    "D": (30.0, outcomes(700), 0.70),
    "E": (22.0, outcomes(850, flip_right=20), 0.81),
}


class TableRefiner:
    """A refiner over the table above: per-image outcomes at the search's resolution, fixed full-split scores."""

    val_images, max_images = SEARCH_IMAGES, ALL_IMAGES

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names  # candidate id -> case name
        self.asked: list[str] = []
        self.estimated: list[str] = []

    def correctness(self, candidate, *, images=None) -> Correctness:
        assert images is None  # always at the search's resolution
        self.asked.append(self.names[candidate.id])
        return Correctness.from_bools(CASES[self.names[candidate.id]][1])

    def estimate(self, candidate, *, images=None) -> dict[str, float]:
        assert images == ALL_IMAGES
        name = self.names[candidate.id]
        self.estimated.append(name)
        accuracy = CASES[name][2]
        return {"accuracy": accuracy, "accuracy_se": 0.005, "accuracy_images": ALL_IMAGES, "loss": 0.4,
                "bitops": CASES[name][0]}


@pytest.fixture()
def table_search(tiny_space, tmp_path):
    space = tiny_space()
    rng = np.random.default_rng(0)
    candidates = {}
    while len(candidates) < len(CASES):
        candidate = space.sample(rng)
        candidates.setdefault(candidate.id, candidate)
    log = SearchLog(tmp_path, space, strategy="random")
    names = {}
    for number, ((name, (bitops, correct, _)), candidate) in enumerate(zip(CASES.items(), candidates.values())):
        names[candidate.id] = name
        accuracy = correct.mean()
        log.append(Trial(number, candidate, {"accuracy": accuracy, "accuracy_images": SEARCH_IMAGES,
                                             "accuracy_se": np.sqrt(accuracy * (1 - accuracy) / SEARCH_IMAGES),
                                             "loss": 0.5, "bitops": bitops}))
    return log, TableRefiner(names)


def names_of(trials, refiner) -> set[str]:
    return {refiner.names[t.candidate.id] for t in trials}


def test_near_front_keeps_the_front_and_what_paired_errors_cannot_separate_from_it(table_search) -> None:
    log, refiner = table_search
    assert names_of(near_front(log.trials, log.objectives, refiner), refiner) == {"A", "B", "C"}
    assert "D" not in refiner.asked  # decided by the binomial bound
    refiner.asked.clear()
    wide = near_front(log.trials, log.objectives, refiner, margin_se=4.6)  # E's gap is 4.5 paired errors
    assert names_of(wide, refiner) == {"A", "B", "C", "E"}


def test_refine_front_rescores_them_keeps_search_values_and_rewrites_the_directory(table_search) -> None:
    log, refiner = table_search
    refined = refine_front(log, refiner)
    # A, B and C first; B's drop to 0.82 leaves E (0.83 on the search's images, bitops 22) undominated: E next
    assert refiner.estimated == ["A", "B", "C", "E"] and [refiner.names[t.candidate.id] for t in refined] == \
        ["A", "B", "C", "E"]
    by_name = {refiner.names[t.candidate.id]: t for t in log.trials}
    c = by_name["C"].metrics
    assert c["accuracy"] == 0.86 and c["accuracy_images"] == ALL_IMAGES and c["accuracy_se"] == 0.005
    assert c["accuracy_search"] == 0.84 and c["loss_search"] == 0.5
    assert abs(c["accuracy_se_search"] - np.sqrt(0.84 * 0.16 / SEARCH_IMAGES)) < 1e-15
    assert "accuracy_search" not in by_name["D"].metrics and by_name["D"].metrics["accuracy"] == 0.70
    saved = load_trials(log.dir)
    assert [t.to_dict() for t in saved] == [t.to_dict() for t in log.trials]
    pareto = json.loads((log.dir / PARETO_FILE).read_text())
    # on all images: A 0.79 @ 10, B 0.82 @ 20, C 0.86 @ 25 optimal; E 0.81 @ 22 and D (search-time) 0.70 @ 30 not
    assert sorted(t["metrics"]["accuracy"] for t in pareto["trials"]) == [0.79, 0.82, 0.86]
    assert all(t["metrics"]["accuracy_images"] == ALL_IMAGES for t in pareto["trials"])
    assert log.run_info["refine"] == {"near_front": 3, "rescored": 4, "images": ALL_IMAGES, "margin_se": 2.0}
    refiner.estimated.clear()  # a resumed search refines again: selection on search-time values, nothing rescored
    assert refine_front(log, refiner) == [] and refiner.estimated == []
    assert names_of(near_front(log.trials, log.objectives, refiner), refiner) == {"A", "B", "C"}


def test_nothing_is_refined_when_the_search_already_used_every_image(table_search) -> None:
    log, refiner = table_search
    refiner.max_images = SEARCH_IMAGES
    assert refine_front(log, refiner) == [] and refiner.estimated == []


SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "train_size": 256, "num_random": 1},
    "search": {"eval_size": 60, "calib_size": 64},
}


def test_run_search_refines_the_front_of_a_one_shot_search(tiny_space, tmp_path: Path) -> None:
    space = tiny_space(SPACE_CHANGES, folder=tmp_path)
    train_supernet(space, tmp_path / "run", progress=False)
    log = run_search(space, out=tmp_path / "search", supernet=tmp_path / "run", strategy="random", trials=8,
                     progress=False)
    refined = [t for t in log.trials if "accuracy_search" in t.metrics]
    front = json.loads((tmp_path / "search" / PARETO_FILE).read_text())["trials"]
    assert refined and {t["number"] for t in front} <= {t.number for t in refined}
    check = OneShotEstimator.from_run(tmp_path / "run")
    for trial in refined:
        assert trial.metrics["accuracy_images"] == 200
        assert trial.metrics["accuracy"] == check.estimate(trial.candidate, images=200)["accuracy"]
        assert trial.metrics["accuracy_search"] == check.estimate(trial.candidate)["accuracy"]
    assert [t.to_dict() for t in load_trials(tmp_path / "search")] == [t.to_dict() for t in log.trials]
