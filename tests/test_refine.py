"""Refinement re-scores exactly the trials that could be on the front (hand-built cases whose paired standard
errors are computed by hand), races them on an intermediate number of images first (a candidate clearly beaten there
never reaches the whole split, and the front is what refining without the race gives), puts the trials it does not
re-score onto the whole split's scale by the shift it measures on probe trials spread over the search (so it no
longer chases trials that only the easier first images put ahead), keeps the search-time values, rewrites the
search directory atomically, always re-scores the uniform-precision references (so a searched candidate replaces
one only by the whole split), changes nothing when resumed, and is what ``run_search`` does at the end of a search
with the one-shot estimator."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import Subset

from automq.oneshot.evaluate import OneShotEstimator
from automq.oneshot.paired import BlockCorrectness, Correctness
from automq.oneshot.train import load_space_data, load_supernet, train_supernet
from automq.search.driver import run_search
from automq.search import refine as refine_module
from automq.search.refine import near_front, race_images, refine_front
from automq.search.results import PARETO_FILE, TRIALS_FILE, SearchLog, load_trials
from automq.search.trial import Trial

SEARCH_IMAGES, ALL_IMAGES = 1000, 5000


def outcomes(right: int, flip_right: int = 0, flip_wrong: int = 0, images: int = SEARCH_IMAGES) -> np.ndarray:
    """The first ``right`` of ``images`` images right, then ``flip_right`` of those made wrong and ``flip_wrong`` of
    the wrong ones made right."""
    correct = np.arange(images) < right
    correct[:flip_right] = False
    correct[right:right + flip_wrong] = True
    return correct


def whole_split(first: np.ndarray, accuracy: float, images: int = ALL_IMAGES) -> np.ndarray:
    """Outcomes on all ``images`` images that begin with ``first`` (a score on fewer images is their start) and are
    right on ``accuracy`` of them."""
    rest = round(accuracy * images) - int(first.sum())
    return np.concatenate([first, np.arange(images - len(first)) < rest])


# name: (bitops, search-time outcomes, accuracy on all images). Front at search time: A and B.
# C vs B: 55 images right only in B, 45 only in C: gap 0.01, paired se sqrt((0.1 - 0.01**2) / 1000) = 0.009995,
#   2 se = 0.0200 > 0.01: C could be on the front. (Binomial errors 0.0113 + 0.0116 could not decide it.)
# E vs B: 20 images right only in B: gap 0.02, paired se sqrt((0.02 - 0.02**2) / 1000) = 0.00443, 2 se = 0.0089:
#   beaten, although the binomial bound 2 * (0.0113 + 0.0119) = 0.046 is not.
# D vs B: gap 0.15 > 2 * (0.0113 + 0.0145) = 0.052: beaten without asking for D's per-image outcomes.
# On all images the first 1,000 images are easier for A (by 0.005) and B (0.03), harder for C (0.02). The shift
# measured on one probe, A (the first trial), 0.005, puts E at 0.83 - 0.005 = 0.825 > B's 0.82 at fewer BitOps than
# C: E is on the front and refined next (0.81).
CASES = {
    "A": (10.0, outcomes(800), 0.795),
    "B": (20.0, outcomes(850), 0.82),
    "C": (25.0, outcomes(850, flip_right=55, flip_wrong=45), 0.86),
    "D": (30.0, outcomes(700), 0.70),
    "E": (22.0, outcomes(850, flip_right=20), 0.81),
}


class OneBlock:
    """What a refiner with one calibration block answers about blocks: its outcomes as a single block."""

    calib_blocks = 1

    def block_correctness(self, candidate, *, images=None, blocks=None) -> BlockCorrectness:
        assert blocks in (None, 1)
        return BlockCorrectness((self.correctness(candidate, images=images),))


class TableRefiner(OneBlock):
    """A refiner over a table like the one above: per-image outcomes at the search's resolution (and on the whole
    split, starting with them), fixed full-split scores."""

    val_images, max_images = SEARCH_IMAGES, ALL_IMAGES

    def __init__(self, names: dict[str, str], cases: dict = CASES) -> None:
        self.names = names  # candidate id -> case name
        self.cases = cases
        self.asked: list[str] = []  # asked for outcomes at the search's resolution
        self.estimated: list[str] = []

    def correctness(self, candidate, *, images=None) -> Correctness:
        name = self.names[candidate.id]
        _, first, whole = self.cases[name]
        if images is None:
            self.asked.append(name)
            return Correctness.from_bools(first)
        assert images == ALL_IMAGES  # the shift is measured on the whole split
        return Correctness.from_bools(whole_split(first, whole))

    def estimate(self, candidate, *, images=None, blocks=1) -> dict[str, float]:
        assert images == ALL_IMAGES and blocks == 1
        name = self.names[candidate.id]
        self.estimated.append(name)
        accuracy = self.cases[name][2]
        return {"accuracy": accuracy, "accuracy_se": 0.005, "accuracy_images": ALL_IMAGES, "loss": 0.4,
                "bitops": self.cases[name][0]}


@pytest.fixture()
def table_search(tiny_space, tmp_path):
    return table_log(tiny_space(), tmp_path, CASES)


def table_log(space, folder: Path, cases: dict, references: tuple[str, ...] = ()) -> tuple[SearchLog, TableRefiner]:
    """A search log of one trial per case, scored as the search would (on its first 1,000 images); the cases named
    in ``references`` are the space's uniform-precision references, the others random candidates."""
    rng = np.random.default_rng(0)
    uniform = iter(space.uniform_references())
    candidates = {}
    for name in cases:
        candidate = next(uniform) if name in references else space.sample(rng)
        while candidate.id in candidates:
            candidate = space.sample(rng)
        candidates[candidate.id] = candidate
    log = SearchLog(folder, space, strategy="random")
    names = {}
    for number, ((name, (bitops, correct, _)), candidate) in enumerate(zip(cases.items(), candidates.values())):
        names[candidate.id] = name
        accuracy = correct.mean()
        log.append(Trial(number, candidate, {"accuracy": accuracy, "accuracy_images": SEARCH_IMAGES,
                                             "accuracy_se": np.sqrt(accuracy * (1 - accuracy) / SEARCH_IMAGES),
                                             "loss": 0.5, "bitops": bitops}))
    return log, TableRefiner(names, cases)


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
    refined = refine_front(log, refiner, race_fraction=None, probes=1)
    # A, B and C first; B's drop to 0.82 leaves E (0.825 shifted, bitops 22) undominated: E next
    assert refiner.estimated == ["A", "B", "C", "E"] and [refiner.names[t.candidate.id] for t in refined] == \
        ["A", "B", "C", "E"]
    by_name = {refiner.names[t.candidate.id]: t for t in log.trials}
    c = by_name["C"].metrics
    assert c["accuracy"] == 0.86 and c["accuracy_images"] == ALL_IMAGES and c["accuracy_se"] == 0.005
    assert c["accuracy_search"] == 0.84 and c["loss_search"] == 0.5
    assert abs(c["accuracy_se_search"] - np.sqrt(0.84 * 0.16 / SEARCH_IMAGES)) < 1e-15
    # D, not refined, is shifted by A's 0.005 onto the whole split's scale
    d = by_name["D"].metrics
    assert d["accuracy"] == pytest.approx(0.70 - 0.005) and d["accuracy_shift"] == pytest.approx(0.005)
    assert d["accuracy_search"] == 0.70 and d["accuracy_images"] == SEARCH_IMAGES and "loss_search" not in d
    saved = load_trials(log.dir)
    assert [t.to_dict() for t in saved] == [t.to_dict() for t in log.trials]
    pareto = json.loads((log.dir / PARETO_FILE).read_text())
    # on all images: A 0.795 @ 10, B 0.82 @ 20, C 0.86 @ 25 optimal; E 0.81 @ 22 and D (shifted) 0.695 @ 30 not
    assert sorted(t["metrics"]["accuracy"] for t in pareto["trials"]) == [0.795, 0.82, 0.86]
    assert all(t["metrics"]["accuracy_images"] == ALL_IMAGES for t in pareto["trials"])
    assert log.run_info["refine"] == {"nearest": 5, "near_front": 3, "raced": 0, "race_images": None,
                                      "references": 0, "rescored": 4, "images": ALL_IMAGES, "calib_blocks": 1,
                                      "contenders": 0, "margin_se": 2.0,
                                      "shift": {"1000": pytest.approx(0.005)}, "probes": [0]}
    refiner.estimated.clear()  # a resumed search refines again: selection on search-time values, nothing rescored
    assert refine_front(log, refiner, race_fraction=None, probes=1) == [] and refiner.estimated == []
    assert names_of(near_front(log.trials, log.objectives, refiner), refiner) == {"A", "B", "C"}


def test_a_capped_refinement_keeps_the_front_and_the_trials_nearest_to_it(table_search) -> None:
    """Search-time gaps below the front trial B (0.85 at bitops 20), in binomial standard errors at 1000 images:
    C (0.84) 0.01 / (0.0113 + 0.0116), E (0.83) 0.02 / (0.0113 + 0.0119), D (0.70) 0.15 / (0.0113 + 0.0145)."""
    log, refiner = table_search
    for count, expected in ((0, {"A", "B"}), (1, {"A", "B", "C"}), (2, {"A", "B", "C", "E"})):
        kept = refine_module.nearest_to_front(log.trials, log.objectives, SEARCH_IMAGES, count)
        assert names_of(kept, refiner) == expected
    refine_front(log, refiner, race_fraction=None, max_near_front=0, probes=1)
    # A and B first; what then reaches the front is refined all the same, the same front: the shift measured on A,
    # 0.005, puts E at 0.825 and C at 0.835 above B's 0.82 at more BitOps, so both come next
    assert refiner.estimated[:2] == ["A", "B"] and sorted(refiner.estimated[2:]) == ["C", "E"]
    assert log.run_info["refine"]["nearest"] == 2
    assert refiner.asked == []  # nothing left to decide by per-image outcomes: the front alone


# R, a uniform-precision reference, scored 0.78 at search time at B's BitOps: beaten by B's 0.85 beyond the binomial
# bound 2 * (0.0113 + 0.0131) = 0.049, so neither on nor near the front. On the whole split it scores 0.83, above
# B's 0.82: re-scored as a reference, it takes B's place on the front.
REFERENCE_CASES = {"A": CASES["A"], "B": CASES["B"], "R": (20.0, outcomes(780), 0.83)}


def test_the_uniform_references_are_always_rescored_and_replace_a_front_trial_they_beat(tiny_space, tmp_path) -> None:
    log, refiner = table_log(tiny_space(), tmp_path, REFERENCE_CASES, references=("R",))
    assert names_of(near_front(log.trials, log.objectives, refiner), refiner) == {"A", "B"}
    assert names_of(refine_front(log, refiner, race_fraction=None, probes=0), refiner) == {"A", "B", "R"}
    assert log.run_info["refine"]["references"] == 1
    assert names_of(refine_module._front(log, log.trials), refiner) == {"A", "R"}


def test_nothing_is_refined_when_the_search_already_used_every_image(table_search) -> None:
    log, refiner = table_search
    refiner.max_images = SEARCH_IMAGES
    assert refine_front(log, refiner) == [] and refiner.estimated == []


# name: (bitops, search-time outcomes, accuracy on all images). Two probes, spread over the search: its first and
# last trials, A and P; the first 1,000 images are easier than all 5,000 for both by 0.02: the shift is 0.02 (the
# refined B's 0.03 does not count: B was refined for scoring high on them).
# Search-time front: A 0.80 @ 10, B 0.86 @ 20; every other trial is below B at more BitOps, and with no trial kept
# near the front (max_near_front=0) only the front and the probes are refined first. B drops to 0.83, then:
# C, D, E (0.849, 0.847, 0.845 @ 24, 26, 28) beat B's 0.83 by 0.019, 0.017, 0.015, less than the shift: the easier
#   images alone put them ahead (on the raw scores they would be refined one after another). Shifted, 0.829,
#   0.827, 0.825: below B, not refined.
# G (0.858 @ 30) beats B's 0.83 by 0.028, more than the shift: shifted, 0.838 > 0.83, on the front, refined (0.838).
SHIFT_CASES = {
    "A": (10.0, outcomes(800), 0.78),
    "B": (20.0, outcomes(860), 0.83),
    "C": (24.0, outcomes(849), 0.829),
    "D": (26.0, outcomes(847), 0.827),
    "E": (28.0, outcomes(845), 0.825),
    "G": (30.0, outcomes(858), 0.838),
    "P": (40.0, outcomes(700), 0.68),
}


@pytest.fixture()
def shifted_search(tiny_space, tmp_path):
    log, refiner = table_log(tiny_space(), tmp_path, SHIFT_CASES)
    refined = refine_front(log, refiner, race_fraction=None, max_near_front=0, probes=2)
    return log, refiner, refined


def test_the_trials_not_refined_are_shifted_by_how_much_easier_the_first_images_are(shifted_search) -> None:
    log, refiner, _ = shifted_search
    # (0.80 - 0.78 + 0.70 - 0.68) / 2 over the probes A and P
    assert log.run_info["refine"]["shift"] == {str(SEARCH_IMAGES): pytest.approx(0.02)}
    assert log.run_info["refine"]["probes"] == [0, 6]
    by_name = {refiner.names[t.candidate.id]: t.metrics for t in log.trials}
    for name, measured in (("C", 0.849), ("D", 0.847), ("E", 0.845)):
        metrics = by_name[name]
        assert metrics["accuracy"] == pytest.approx(measured - 0.02)
        assert metrics["accuracy_shift"] == pytest.approx(0.02)
        assert metrics["accuracy"] + metrics["accuracy_shift"] == pytest.approx(measured)
        assert metrics["accuracy_search"] == measured and metrics["accuracy_images"] == SEARCH_IMAGES
        assert metrics["accuracy_se"] == pytest.approx(np.sqrt(measured * (1 - measured) / SEARCH_IMAGES))
    # G was shifted before it was refined: its re-score drops the shift and keeps the search's own values
    g = by_name["G"]
    assert g["accuracy"] == 0.838 and g["accuracy_images"] == ALL_IMAGES and "accuracy_shift" not in g
    assert g["accuracy_search"] == 0.858 and g["loss_search"] == 0.5


def test_the_refinement_chases_no_trial_that_only_the_easier_first_images_put_ahead(shifted_search) -> None:
    log, refiner, refined = shifted_search
    assert refiner.estimated == ["A", "B", "P", "G"] and names_of(refined, refiner) == {"A", "B", "P", "G"}
    assert log.run_info["refine"]["rescored"] == 4
    front = refine_module._front(log, [t for t in log.trials if t.feasible])
    assert names_of(front, refiner) == {"A", "B", "G"}


def test_the_front_written_after_a_refinement_was_all_measured_on_the_whole_split(shifted_search) -> None:
    log, _, _ = shifted_search
    pareto = json.loads((log.dir / PARETO_FILE).read_text())["trials"]
    assert [t["metrics"]["accuracy"] for t in pareto] == [0.78, 0.83, 0.838]  # A, B, G by BitOps
    assert all(t["metrics"]["accuracy_images"] == ALL_IMAGES for t in pareto)


def test_a_resumed_refinement_rescores_nothing_and_changes_no_metric(shifted_search) -> None:
    log, refiner, _ = shifted_search
    log.finish()  # run.json now holds the refinement's record, as after run_search
    before, saved = [t.to_dict() for t in log.trials], (log.dir / TRIALS_FILE).read_text()
    record = dict(log.run_info["refine"])
    refiner.estimated.clear()
    resumed = SearchLog(log.dir, log.space, strategy="random", resume=True)  # read back from the directory
    assert refine_front(resumed, refiner, race_fraction=None, max_near_front=0, probes=2) == []
    assert refiner.estimated == []
    assert [t.to_dict() for t in resumed.trials] == before and (log.dir / TRIALS_FILE).read_text() == saved
    # the record goes on: the probes that measured the shifts, and the 4 trials the first refinement re-scored
    assert resumed.run_info["refine"] == record and record["rescored"] == 4 and record["probes"] == [0, 6]


def test_without_a_probe_the_shift_is_zero(table_search) -> None:
    log, refiner = table_search
    assert refine_module._shift_to_final_scale(log, refiner, [], None) == {(SEARCH_IMAGES, 1): 0.0}
    assert all(t.metrics["accuracy_shift"] == 0.0 and t.metrics["accuracy"] == t.metrics["accuracy_search"]
               for t in log.trials)


RACE_IMAGES = ALL_IMAGES // 2  # the default race fraction, one half
# name: (bitops, search-time outcomes, race outcomes on 2,500 images, accuracy on all images).
# At the search's resolution P and Q are the front; R (like C above, 1.0 point behind Q within 2 paired se 0.0200)
# and S (as accurate as Q, more BitOps) are near it, so all four are raced.
# Race: Q 2125/2500 = 0.85. R has 100 images right only in Q and 50 only in R: gap 0.02, paired se
#   sqrt((150/2500 - 0.02**2) / 2500) = 0.00488, 2 se = 0.0098 < 0.02: dropped (the binomial bound
#   2 * (0.00714 + 0.00751) = 0.0293 could not decide it). S ties Q (30 images each way): survives.
# All images: P 0.79 @ 10, Q 0.83 @ 20, S 0.84 @ 22 are the front. The race's 2,500 images were easier for P (by
#   0.01), Q (0.02) and S (0.01); the one probe, P (the first trial), gives the shift: R's 0.83 raced is shifted
#   by 0.01 to 0.82 @ 25, dominated by S.
RACE_CASES = {
    "P": (10.0, outcomes(800), outcomes(2000, images=RACE_IMAGES), 0.79),
    "Q": (20.0, outcomes(850), outcomes(2125, images=RACE_IMAGES), 0.83),
    "R": (25.0, outcomes(850, flip_right=55, flip_wrong=45),
          outcomes(2125, flip_right=100, flip_wrong=50, images=RACE_IMAGES), 0.80),
    "S": (22.0, outcomes(850, flip_right=50, flip_wrong=50),
          outcomes(2125, flip_right=30, flip_wrong=30, images=RACE_IMAGES), 0.84),
}


class RaceRefiner(OneBlock):
    """A refiner over RACE_CASES at three resolutions; records every (case, images) it estimates."""

    val_images, max_images = SEARCH_IMAGES, ALL_IMAGES

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.estimated: list[tuple[str, int]] = []

    def correctness(self, candidate, *, images=None) -> Correctness:
        case = RACE_CASES[self.names[candidate.id]]
        if images == ALL_IMAGES:  # starting with the race's images
            return Correctness.from_bools(whole_split(case[2], case[3]))
        return Correctness.from_bools({None: case[1], RACE_IMAGES: case[2]}[images])

    def estimate(self, candidate, *, images=None, blocks=1) -> dict[str, float]:
        assert blocks == 1
        name = self.names[candidate.id]
        self.estimated.append((name, images))
        bitops, _, raced, full = RACE_CASES[name]
        accuracy = {RACE_IMAGES: raced.mean(), ALL_IMAGES: full}[images]
        return {"accuracy": accuracy, "accuracy_se": 0.005, "accuracy_images": images, "loss": 0.4,
                "bitops": bitops}


def race_search(space, folder: Path) -> tuple[SearchLog, RaceRefiner]:
    rng = np.random.default_rng(0)
    candidates: dict[str, object] = {}
    while len(candidates) < len(RACE_CASES):
        candidate = space.sample(rng)
        candidates.setdefault(candidate.id, candidate)
    log = SearchLog(folder, space, strategy="random")
    names = {}
    for number, ((name, (bitops, correct, _, _)), candidate) in enumerate(zip(RACE_CASES.items(),
                                                                               candidates.values())):
        names[candidate.id] = name
        log.append(Trial(number, candidate, {"accuracy": correct.mean(), "accuracy_images": SEARCH_IMAGES,
                                             "accuracy_se": 0.01, "loss": 0.5, "bitops": bitops}))
    return log, RaceRefiner(names)


def test_racing_drops_a_candidate_beaten_at_the_intermediate_resolution_and_gives_the_same_front(
        tiny_space, tmp_path: Path) -> None:
    space = tiny_space()
    raced_log, raced = race_search(space, tmp_path / "raced")
    plain_log, plain = race_search(space, tmp_path / "plain")
    refine_front(raced_log, raced, probes=1)
    refine_front(plain_log, plain, race_fraction=None, probes=1)
    assert sorted(raced.estimated) == [("P", RACE_IMAGES), ("P", ALL_IMAGES), ("Q", RACE_IMAGES),
                                       ("Q", ALL_IMAGES), ("R", RACE_IMAGES), ("S", RACE_IMAGES), ("S", ALL_IMAGES)]
    assert sorted(plain.estimated) == [(name, ALL_IMAGES) for name in "PQRS"]
    assert raced_log.run_info["refine"] == {"nearest": 4, "near_front": 4, "raced": 4, "race_images": RACE_IMAGES,
                                            "references": 0, "rescored": 3, "images": ALL_IMAGES, "calib_blocks": 1,
                                            "contenders": 0, "margin_se": 2.0,
                                            "shift": {str(RACE_IMAGES): pytest.approx(0.01)}, "probes": [0]}
    assert plain_log.run_info["refine"]["shift"] == {}  # every trial measured on the whole split
    # the survivors end as refining without the race leaves them; the dropped R keeps its race score, shifted
    by_name = {raced.names[t.candidate.id]: t.metrics for t in raced_log.trials}
    plain_by_name = {plain.names[t.candidate.id]: t.metrics for t in plain_log.trials}
    assert all(by_name[name] == plain_by_name[name] for name in "PQS")
    r = by_name["R"]
    assert r["accuracy"] == pytest.approx(0.83 - 0.01) and r["accuracy_shift"] == pytest.approx(0.01)
    assert r["accuracy_images"] == RACE_IMAGES and r["accuracy_search"] == 0.84
    pareto = [json.loads((log.dir / PARETO_FILE).read_text())["trials"] for log in (raced_log, plain_log)]
    assert pareto[0] == pareto[1] and sorted(t["metrics"]["accuracy"] for t in pareto[0]) == [0.79, 0.83, 0.84]
    # resumed: R, which lost the race, is neither raced again nor (the front not taking it) refined
    before, raced.estimated = [t.to_dict() for t in raced_log.trials], []
    assert refine_front(raced_log, raced, probes=1) == [] and raced.estimated == []
    assert [t.to_dict() for t in raced_log.trials] == before
    assert raced_log.run_info["refine"]["raced"] == 4  # the first refinement's four; none raced again
    assert raced_log.run_info["refine"]["shift"] == {str(RACE_IMAGES): by_name["R"]["accuracy_shift"]}


def test_race_images_is_the_fraction_of_the_split_strictly_between_search_and_whole(table_search) -> None:
    _, refiner = table_search  # 1,000 search-time images of 5,000
    assert race_images(refiner, 0.5) == 2500 and race_images(refiner, None) is None
    assert race_images(refiner, 0.2) is None  # 1,000 images: no more than the search's own score
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        race_images(refiner, 1.0)


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
    refined = [t for t in log.trials if t.metrics["accuracy_images"] == 200]
    front = json.loads((tmp_path / "search" / PARETO_FILE).read_text())["trials"]
    assert refined and {t["number"] for t in front} <= {t.number for t in refined}
    check = OneShotEstimator.from_run(tmp_path / "run")
    for trial in refined:
        assert trial.metrics["accuracy"] == check.estimate(trial.candidate, images=200)["accuracy"]
        assert trial.metrics["accuracy_search"] == check.estimate(trial.candidate)["accuracy"]
    probes = [t for t in log.trials if t.number in log.run_info["refine"]["probes"]]
    assert probes and {t.number for t in probes} <= {t.number for t in refined}
    whole = [check.correctness(t.candidate, images=200).bools() for t in probes]
    for trial in (t for t in log.trials if t not in refined):  # on the whole split's scale, shifted
        images = trial.metrics["accuracy_images"]
        shift = np.mean([c[:images].mean() - c.mean() for c in whole])
        assert log.run_info["refine"]["shift"][str(images)] == trial.metrics["accuracy_shift"] == pytest.approx(shift)
        measured = check.estimate(trial.candidate, images=images)["accuracy"]
        assert trial.metrics["accuracy"] + trial.metrics["accuracy_shift"] == pytest.approx(measured)
        assert trial.metrics["accuracy_search"] == check.estimate(trial.candidate)["accuracy"]
    assert [t.to_dict() for t in load_trials(tmp_path / "search")] == [t.to_dict() for t in log.trials]


def test_the_probes_are_spread_over_the_trials_scored_on_fewer_images_in_search_order(table_search) -> None:
    """Of 10 trials, 3 already measured on the whole split: the probes are the first, middle and last of the other
    7 by position (0, 3 and 6 of them: trials 0, 6 and 9), whatever they scored; never more than there are."""
    log, _ = table_search
    trials = [Trial(n, log.trials[0].candidate, {"accuracy": 0.5, "accuracy_images":
                                                ALL_IMAGES if n in (1, 2, 5) else SEARCH_IMAGES}) for n in range(10)]
    probed = refine_module.shift_probes(trials, ALL_IMAGES, 3)
    assert [t.number for t in probed] == [0, 6, 9]
    assert [t.number for t in refine_module.shift_probes(trials, ALL_IMAGES, 50)] == [0, 3, 4, 6, 7, 8, 9]
    assert refine_module.shift_probes(trials, ALL_IMAGES, 0) == []


# name: (bitops, search-time outcomes, accuracy on all images under calibration blocks 0 and 1). Near the front at
# search time: A, B and X (X like C above); D is beaten by the binomial bound. On the whole split under block 0,
# X ties B at more BitOps: off the front. The probe A is 0.80 under block 0 and 0.795 over both blocks, so a
# block-0 score is 0.005 above the final scale on the whole split and, A's first 1,000 images being 0.80 right,
# 0.005 above it on the search's images too. B, lucky under block 0, falls to 0.82 over both blocks; X, measured
# 0.83 under block 0 and shifted to 0.825, now beats it at 0.5 more BitOps: X enters the front and is measured
# under both blocks (0.83).
BLOCK_CASES = {
    "A": (10.0, outcomes(800), (0.80, 0.79)),
    "B": (20.0, outcomes(850), (0.83, 0.81)),
    "X": (20.5, outcomes(850, flip_right=55, flip_wrong=45), (0.83, 0.83)),
    "D": (30.0, outcomes(700), (0.70, 0.70)),
}


class BlockTableRefiner(TableRefiner):
    """A refiner over BLOCK_CASES with two calibration blocks: outcomes on the whole split start with the search's
    under either block; records every (case, blocks) it estimates."""

    calib_blocks = 2

    def block_correctness(self, candidate, *, images=None, blocks=None) -> BlockCorrectness:
        assert images == ALL_IMAGES
        _, first, whole = self.cases[self.names[candidate.id]]
        return BlockCorrectness(tuple(Correctness.from_bools(whole_split(first, accuracy))
                                      for accuracy in whole[:blocks or self.calib_blocks]))

    def correctness(self, candidate, *, images=None) -> Correctness:
        if images is None:
            return super().correctness(candidate)
        return self.block_correctness(candidate, images=images, blocks=1).blocks[0]

    def estimate(self, candidate, *, images=None, blocks=1) -> dict[str, float]:
        assert images == ALL_IMAGES
        name = self.names[candidate.id]
        self.estimated.append((name, blocks))
        accuracy = float(np.mean(self.cases[name][2][:blocks]))
        return {"accuracy": accuracy, "accuracy_se": 0.005, "accuracy_images": ALL_IMAGES, "loss": 0.4,
                "bitops": self.cases[name][0], **({"accuracy_calib_blocks": blocks} if blocks > 1 else {})}


def test_with_calibration_blocks_the_front_is_averaged_over_them_and_the_rest_shifted_onto_that_scale(
        tiny_space, tmp_path) -> None:
    log, table = table_log(tiny_space(), tmp_path, BLOCK_CASES)
    refiner = BlockTableRefiner(table.names, BLOCK_CASES)
    refined = refine_front(log, refiner, race_fraction=None, probes=1)
    # the near-front trials on the whole split under block 0, then the probe, the front, and the front again
    assert refiner.estimated == [("A", 1), ("B", 1), ("X", 1), ("A", 2), ("B", 2), ("X", 2)]
    assert names_of(refined, refiner) == {"A", "B", "X"}
    by_name = {refiner.names[t.candidate.id]: t.metrics for t in log.trials}
    assert by_name["B"]["accuracy"] == pytest.approx(0.82) and by_name["X"]["accuracy"] == pytest.approx(0.83)
    assert all(by_name[n]["accuracy_calib_blocks"] == 2 and "accuracy_shift" not in by_name[n] for n in "ABX")
    d = by_name["D"]
    assert d["accuracy"] == pytest.approx(0.70 - 0.005) and d["accuracy_shift"] == pytest.approx(0.005)
    record = log.run_info["refine"]
    assert record["calib_blocks"] == 2 and record["probes"] == [0]
    assert record["shift"] == {"1000": pytest.approx(0.005), "5000": pytest.approx(0.005)}
    pareto = json.loads((log.dir / PARETO_FILE).read_text())
    assert all(t["metrics"].get("accuracy_calib_blocks") == 2 for t in pareto["trials"])
    # resumed, nothing is scored again and nothing moves
    refiner.estimated.clear()
    before = [t.to_dict() for t in log.trials]
    assert refine_front(log, refiner, race_fraction=None, probes=1) == [] and refiner.estimated == []
    assert [t.to_dict() for t in log.trials] == before


def test_a_search_refined_with_one_block_is_refined_again_onto_the_scale_of_several(tiny_space, tmp_path) -> None:
    log, table = table_log(tiny_space(), tmp_path, BLOCK_CASES)
    one = BlockTableRefiner(table.names, BLOCK_CASES)
    one.calib_blocks = 1
    refine_front(log, one, race_fraction=None, probes=1)
    by_name = {one.names[t.candidate.id]: t.metrics for t in log.trials}
    assert by_name["B"]["accuracy"] == 0.83 and "accuracy_calib_blocks" not in by_name["B"]
    two = BlockTableRefiner(table.names, BLOCK_CASES)
    refine_front(log, two, race_fraction=None, probes=1)
    # D, the one trial left on the search's images, is the new probe (chosen before anything moves): 0.70 under
    # both blocks, so a block-0 score on the whole split is shifted by 0; D itself is then on the final scale
    assert log.run_info["refine"]["probes"] == [3] and log.run_info["refine"]["shift"] == {"5000": 0.0}
    assert two.estimated == [("D", 2), ("A", 2), ("B", 2), ("X", 2)]
    front = refine_module._front(log, [t for t in log.trials if t.feasible])
    assert names_of(front, two) == {"A", "B", "X"}
    assert all(t.metrics.get("accuracy_calib_blocks") == 2 for t in front)


@pytest.mark.parametrize("eval_size", [60, None])
def test_run_search_with_calibration_blocks_measures_the_front_under_each_of_them(tiny_space, tmp_path: Path,
                                                                                  eval_size) -> None:
    """With the search's 60 images, and with all 200 (then only the block shift is measured)."""
    space = tiny_space(SPACE_CHANGES, {"search": {"calib_blocks": 2, "eval_size": eval_size}}, folder=tmp_path)
    train_supernet(space, tmp_path / "run", progress=False)
    log = run_search(space, out=tmp_path / "search", supernet=tmp_path / "run", strategy="random", trials=40,
                     progress=False)
    # the oracle of each block: a one-block estimator whose training split starts at that block's first image
    data = load_space_data(space)
    blockwise = [OneShotEstimator(space, load_supernet(tmp_path / "run", space),
                                  dataclasses.replace(data, train=Subset(data.train, range(64 * k, len(data.train)))),
                                  calib_blocks=1) for k in (0, 1)]
    final = [t for t in log.trials if t.metrics.get("accuracy_calib_blocks") == 2]
    front = json.loads((tmp_path / "search" / PARETO_FILE).read_text())["trials"]
    probes = log.run_info["refine"]["probes"]
    assert final and {t["number"] for t in front} | set(probes) <= {t.number for t in final}
    for trial in final:
        per_block = [e.estimate(trial.candidate, images=200)["accuracy"] for e in blockwise]
        assert trial.metrics["accuracy"] == pytest.approx(np.mean(per_block), abs=1e-15)
        assert trial.metrics["accuracy_images"] == 200
    whole = [[e.correctness(t.candidate, images=200).bools() for e in blockwise] for t in log.trials
             if t.number in probes]
    for trial in (t for t in log.trials if t not in final):  # block 0 on fewer images or the whole split, shifted
        images = trial.metrics["accuracy_images"]
        shift = np.mean([b0[:images].mean() - (b0.mean() + b1.mean()) / 2 for b0, b1 in whole])
        assert log.run_info["refine"]["shift"][str(images)] == trial.metrics["accuracy_shift"] == pytest.approx(shift)
        measured = blockwise[0].estimate(trial.candidate, images=images)["accuracy"]
        assert trial.metrics["accuracy"] + trial.metrics["accuracy_shift"] == pytest.approx(measured)
    # every level occurs: the search's images, the race's, the whole split under block 0, the final one
    levels = {(t.metrics["accuracy_images"], t.metrics.get("accuracy_calib_blocks", 1)) for t in log.trials}
    assert levels == ({(60, 1), (100, 1), (200, 1), (200, 2)} if eval_size else {(200, 1), (200, 2)})


def test_contenders_are_the_most_accurate_front_trials_no_costlier_than_each_reference(tiny_space, tmp_path) -> None:
    log = SearchLog(tmp_path, tiny_space(), strategy="random")
    candidate = log.space.uniform_references()[0]

    def trial(number: int, accuracy: float, bitops: float) -> Trial:
        return Trial(number, candidate, {"accuracy": accuracy, "bitops": bitops})

    front = [trial(0, 0.80, 10.0), trial(1, 0.85, 20.0), trial(2, 0.87, 30.0), trial(3, 0.90, 40.0)]
    references = [trial(4, 0.84, 25.0), trial(5, 0.88, 40.0), trial(6, 0.70, 5.0)]
    # at 25 BitOps: 1 (0.85) then 0; at 40: 3 (0.90) then 2; at 5: none
    assert [t.number for t in refine_module.contenders(front, references, log.objectives, 1)] == [1, 3]
    assert [t.number for t in refine_module.contenders(front, references, log.objectives, 2)] == [0, 1, 2, 3]
    assert refine_module.contenders(front, references[2:], log.objectives, 3) == []


@pytest.mark.parametrize("reference, final", [("A", ["A"]), ("D", ["A", "D", "B", "X"])])
def test_with_contenders_only_the_pick_at_each_references_cost_is_averaged_over_the_blocks(
        tiny_space, tmp_path, reference, final) -> None:
    """Reference A (10 BitOps): only A is picked at its cost, so B stays on the whole split under block 0, shifted.
    Reference D (30 BitOps): the pick there is B (0.825 shifted), which falls to 0.82 over both blocks; then X
    (0.825 shifted) is the pick and is measured (0.83)."""
    log, table = table_log(tiny_space(), tmp_path, BLOCK_CASES, references=(reference,))
    refiner = BlockTableRefiner(table.names, BLOCK_CASES)
    refine_front(log, refiner, race_fraction=None, probes=1, contenders=1)
    assert refiner.estimated == [("A", 1), ("B", 1), ("X", 1)] + [(name, 2) for name in final]
    by_name = {refiner.names[t.candidate.id]: t.metrics for t in log.trials}
    if reference == "A":
        b = by_name["B"]
        assert b["accuracy_images"] == ALL_IMAGES and "accuracy_calib_blocks" not in b
        assert b["accuracy"] == pytest.approx(0.83 - 0.005) and b["accuracy_shift"] == pytest.approx(0.005)
    else:
        assert by_name["B"]["accuracy"] == pytest.approx(0.82) and by_name["X"]["accuracy"] == pytest.approx(0.83)
    record = log.run_info["refine"]
    assert record["contenders"] == 1 and record["shift"]["5000"] == pytest.approx(0.005)
    front = refine_module._front(log, [t for t in log.trials if t.feasible])
    assert all(t.metrics["accuracy_images"] == ALL_IMAGES for t in front)
    # resumed, nothing is scored again
    refiner.estimated.clear()
    assert refine_front(log, refiner, race_fraction=None, probes=1, contenders=1) == [] and refiner.estimated == []


def test_a_refinement_with_contenders_measures_each_references_pick_under_every_block(tiny_space, tmp_path) -> None:
    """A random search (in-process) with the uniform references scored after it, as ``evolution`` scores them first,
    refined with the space's ``calib_contenders``."""
    space = tiny_space(SPACE_CHANGES, {"search": {"calib_blocks": 2, "calib_contenders": 1}}, folder=tmp_path)
    train_supernet(space, tmp_path / "run", progress=False)
    log = run_search(space, out=tmp_path / "search", supernet=tmp_path / "run", strategy="random", trials=40,
                     progress=False, refine=False)
    estimator = OneShotEstimator.from_run(tmp_path / "run", space=space)
    for number, candidate in enumerate(space.uniform_references(), start=len(log.trials)):
        log.append(Trial(number, candidate, estimator.estimate(candidate)))
    refine_front(log, estimator)
    assert log.run_info["refine"]["contenders"] == 1
    front = json.loads((tmp_path / "search" / PARETO_FILE).read_text())["trials"]
    assert all(t["metrics"]["accuracy_images"] == 200 for t in front)
    references = {c.id for c in space.uniform_references()}
    for reference in (t for t in log.trials if t.candidate.id in references):
        assert reference.metrics["accuracy_calib_blocks"] == 2
        within = [t for t in log.trials if t.metrics["bitops"] <= reference.metrics["bitops"]]
        pick = max(within, key=lambda t: t.metrics["accuracy"])
        assert pick.metrics.get("accuracy_calib_blocks") == 2, (reference.number, pick.number)
    # fewer than the whole front needed every block: the point of contenders
    assert any(t["metrics"].get("accuracy_calib_blocks", 1) == 1 for t in front)
