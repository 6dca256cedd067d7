"""The final measurement on the test split (automq.report.final and ``automq final``).

Oracles: paired differences and standard errors computed by hand from constructed per-image outcomes; the
candidate chosen at each budget worked out by hand from hand-set accuracies and costs; test accuracies recomputed
through an independent path (``automq export`` writes the candidate's model, which is loaded back, recalibrated on
each block's images and run over the test split in a plain loop); and the images themselves, compared byte for
byte, for the split separation and for the calibration blocks' separation from the searches' calibration.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from automq.cli import main
from automq.data import fixed_batches
from automq.errors import DataError
from automq.model.supernet import load_model, recalibrate_bn
from automq.oneshot.evaluate import CALIBRATION_THREADS, OneShotEstimator, torch_threads
from automq.oneshot.paired import BlockCorrectness, Correctness, Difference, crossed_mean
from automq.oneshot.train import load_space_data, load_supernet, train_supernet
from automq.report.comparison import Baseline, analyse_runs, find_baselines
from automq.report import final as final_module
from automq.report.final import (FINAL_FILE, SCORES_FILE, Z95, FineTune, Pairing, binding, budget_verdict, ceiling,
                                 compare, deploy, measure_final, measured_outcomes, pairings, verdict)
from automq.search.driver import run_search
from automq.search.results import SearchResult
from automq.search.trial import Trial

from _spaces import SpaceFactory

EPS64 = np.finfo(np.float64).eps
TOL = 16 * EPS64  # a handful of float64 operations on numbers below 1
SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "train_size": 256, "num_random": 1},
    "search": {"eval_size": 60, "calib_size": 64},
}


def outcomes(*bits: int) -> Correctness:
    return Correctness.from_bools(np.array(bits, dtype=bool))


# ------------------------------------------------------------------------------------------------ statistics
def test_compare_gives_the_hand_computed_paired_difference_interval_and_a_tie() -> None:
    # right only in a: images 5, 6, 7; right only in b: image 9 -> d = (0,0,0,0,0,1,1,1,0,-1)
    a = outcomes(1, 1, 1, 1, 1, 1, 1, 1, 0, 0)
    b = outcomes(1, 1, 1, 1, 1, 0, 0, 0, 0, 1)
    result = compare(a, b)
    se = math.sqrt((0.4 - 0.2**2) / 10)  # mean of d^2 is 0.4, mean of d is 0.2: population variance / n
    assert abs(result["difference"] - 0.2) <= TOL and abs(result["se"] - se) <= TOL
    assert abs(result["ci95"][0] - (0.2 - 1.959963984540054 * se)) <= TOL
    assert abs(result["ci95"][1] - (0.2 + 1.959963984540054 * se)) <= TOL
    assert result["verdict"] == "tie"  # 0.2 < 2 * 0.1897


def test_compare_wins_and_loses_only_beyond_two_paired_standard_errors() -> None:
    # 100 images: 20 right only in a, 2 right only in b, 50 right in both
    a = Correctness.from_bools(np.arange(100) < 70)
    b = Correctness.from_bools((np.arange(100) < 50) | ((np.arange(100) >= 70) & (np.arange(100) < 72)))
    se = math.sqrt((22 / 100 - 0.18**2) / 100)  # 0.0433: the lead of 0.18 is 4.2 standard errors
    win, loss = compare(a, b), compare(b, a)
    assert abs(win["difference"] - 0.18) <= TOL and abs(win["se"] - se) <= TOL and win["verdict"] == "win"
    assert abs(loss["difference"] + 0.18) <= TOL and loss["verdict"] == "loss"
    assert compare(a, b, margin_se=0.18 / se + 0.01)["verdict"] == "tie"  # just beyond the lead


def test_a_lead_beyond_two_errors_of_few_degrees_of_freedom_needs_its_interval_above_zero_too() -> None:
    from scipy.stats import t

    # 2.5 standard errors: a win when the error is known from many images, a tie when 2 blocks carry it (the 95%
    # quantile of t with 2 degrees of freedom is 4.30)
    assert verdict(Difference(0.005, 0.002)) == "win" and verdict(Difference(-0.005, 0.002)) == "loss"
    assert verdict(Difference(0.005, 0.002, 2.0)) == "tie" == verdict(Difference(-0.005, 0.002, 2.0))
    assert verdict(Difference(0.002 * t.ppf(0.975, 2.0) + 1e-6, 0.002, 2.0)) == "win"
    # the interval of a comparison over blocks is t's
    blocks = [Correctness.from_bools(np.arange(100) < n) for n in (70, 72, 75)]
    reference = [Correctness.from_bools(np.arange(100) < n) for n in (60, 66, 61)]
    result = compare(BlockCorrectness(tuple(blocks)), BlockCorrectness(tuple(reference)))
    expected = crossed_mean(np.stack([b.bools().astype(int) - r.bools() for b, r in zip(blocks, reference)], axis=1))
    half = t.ppf(0.975, expected.df) * expected.se
    assert abs(result["ci95"][0] - (expected.value - half)) <= TOL and abs(result["df"] - expected.df) <= TOL
    assert result["difference_blocks"] == [0.70 - 0.60, 0.72 - 0.66, 0.75 - 0.61]


def test_z95_is_the_normal_quantile() -> None:
    from scipy.stats import norm

    assert abs(Z95 - norm.ppf(0.975)) <= 4 * EPS64


# ------------------------------------------------------------------------------------------------ pairing
def _trial(number: int, candidate, accuracy: float, bitops: float, **info) -> Trial:
    return Trial(number, candidate, {"accuracy": accuracy, "bitops": bitops}, info=info)


def test_pairings_choose_by_validation_accuracy_within_each_uniform_budget(tiny_space: SpaceFactory) -> None:
    space = tiny_space()
    u4, u8, u48 = (space.uniform(w, a) for w, a in (("int4", "int8"), ("int8", "int8"), ("int4", "fp8_e4m3")))
    uniform = SearchResult(Path("u"), {"strategy": "uniform"}, [
        _trial(0, u4, 0.80, 100, format="W int4 / A int8"),
        _trial(1, u48, 0.78, 200, format="W int4 / A fp8_e4m3"),  # dearer and worse than int4/int8
        _trial(2, u8, 0.85, 400, format="int8"),
    ])
    rng = np.random.default_rng(0)
    mixed = []
    while len(mixed) < 4:  # distinct candidates that are not one format everywhere
        c = space.sample(rng)
        if len({(w, a) for _, w, a in c.formats}) > 1 and c.id not in {m.id for m in mixed}:
            mixed.append(c)
    searched = SearchResult(Path("s"), {"strategy": "random"}, [
        _trial(0, mixed[0], 0.79, 90),
        _trial(1, mixed[1], 0.83, 150),
        _trial(2, mixed[2], 0.82, 390),  # dominated by trial 1: never chosen
        _trial(3, mixed[3], 0.90, 500),  # above every budget
    ])
    runs = analyse_runs([searched, uniform], [])
    chosen = pairings(runs, find_baselines(runs))
    # every uniform format at or below the budget, the most accurate by validation first
    assert [(p.run, p.budget, p.searched.number, [r.trial.number for r in p.references]) for p in chosen] == [
        ("random", 100, 0, [0]), ("random", 200, 1, [0, 1]), ("random", 400, 1, [2, 0, 1])]


def test_the_binding_comparison_is_the_worst_verdict_and_then_the_lead_furthest_from_a_win() -> None:
    from scipy.stats import t

    # thresholds: 2 SE where the error has many degrees of freedom, t_0.975(2) = 4.30 SE where it has 2
    wins = [Difference(0.010, 0.002), Difference(0.009, 0.001), Difference(0.020, 0.004, 2.0)]
    # slack over the threshold: 0.010 - 0.004, 0.009 - 0.002, 0.020 - 4.30 * 0.004 = 0.0028: the last binds
    assert 0.020 - t.ppf(0.975, 2.0) * 0.004 < 0.006 and binding(wins) == 2
    ties = wins + [Difference(0.003, 0.002), Difference(0.001, 0.002)]
    assert binding(ties) == 4  # both tie; 0.001 - 0.004 falls further short of a win than 0.003 - 0.004
    losses = ties + [Difference(-0.005, 0.002), Difference(-0.009, 0.002)]
    assert binding(losses) == 6 and binding(losses[::-1]) == 0  # the clearest loss, wherever it stands
    assert binding([Difference(0.0, 0.0)]) == 0
    with pytest.raises(ValueError):
        binding([])
    assert [budget_verdict(d) for d in (wins, ties, losses, [Difference(0.0, 0.0)])] == ["win", "tie", "loss", "tie"]


def test_a_budget_is_won_only_against_every_uniform_format_there(tiny_space: SpaceFactory) -> None:
    space = tiny_space()
    rng = np.random.default_rng(2)
    mixed = space.sample(rng)
    w4a8, w4fp8 = space.uniform("int4", "int8"), space.uniform("int4", "fp8_e4m3")
    # validation prefers int4/int8 (0.80); on 100 test images the searched candidate is right on images 0-69,
    # int4/int8 on 0-49 (a lead of 0.20, SE 0.04), int4/fp8 on 0-67 (0.02, SE 0.014: a tie)
    references = (Baseline("W int4 / A int8", "uniform", _trial(0, w4a8, 0.80, 100)),
                  Baseline("W int4 / A fp8_e4m3", "uniform", _trial(1, w4fp8, 0.78, 100)))
    pairing = Pairing("random", 100.0, "uniform W int4 / A int8", _trial(3, mixed, 0.81, 90), references)
    correct = {candidate.id: Correctness.from_bools(np.arange(100) < right)
               for candidate, right in ((mixed, 70), (w4a8, 50), (w4fp8, 68))}
    record = final_module._comparison_record(pairing, correct, 2.0)
    first, second = record["references"]
    assert (first["uniform"], first["verdict"], second["uniform"], second["verdict"]) == (
        "W int4 / A int8", "win", "W int4 / A fp8_e4m3", "tie")
    assert abs(first["difference"] - 0.20) <= TOL and abs(first["se"] - math.sqrt((0.2 - 0.2**2) / 100)) <= TOL
    assert abs(second["difference"] - 0.02) <= TOL and abs(second["se"] - math.sqrt((0.02 - 0.02**2) / 100)) <= TOL
    # the budget's verdict and the fields shown are the binding comparison's; the validation choice is kept
    assert record["verdict"] == "tie" and record["uniform"] == "W int4 / A fp8_e4m3" and record["uniform_trial"] == 1
    assert abs(record["difference"] - 0.02) <= TOL and record["validation_uniform"] == "W int4 / A int8"
    assert record["uniform_test_accuracy"] == 0.68 and record["searched_test_accuracy"] == 0.70
    # without that second format the budget is won
    alone = final_module._comparison_record(dataclasses.replace(pairing, references=references[:1]), correct, 2.0)
    assert alone["verdict"] == "win" and len(alone["references"]) == 1
    # a budget without a searched candidate shows the format most accurate on test
    empty = final_module._comparison_record(dataclasses.replace(pairing, searched=None), correct, 2.0)
    assert (empty["verdict"], empty["uniform"], empty["searched_trial"]) == ("none", "W int4 / A fp8_e4m3", None)


def test_the_ceiling_pairs_the_most_accurate_candidate_with_the_most_accurate_uniform_one(
        tiny_space: SpaceFactory) -> None:
    space = tiny_space()
    rng = np.random.default_rng(1)
    mixed = [space.sample(rng), space.sample(rng)]
    u4, u8 = space.uniform("int4", "int8"), space.uniform("int8", "int8")
    trials = [_trial(0, mixed[0], 0.0, 90), _trial(1, mixed[1], 0.0, 300), _trial(0, u4, 0.0, 100),
              _trial(1, u8, 0.0, 400)]
    correct = {mixed[0].id: outcomes(1, 1, 0, 0, 0, 0, 0, 0, 0, 0), mixed[1].id: outcomes(1, 1, 1, 1, 1, 1, 1, 0, 0, 0),
               u4.id: outcomes(1, 1, 1, 1, 0, 0, 0, 0, 0, 0), u8.id: outcomes(1, 1, 1, 1, 1, 0, 0, 0, 0, 1)}
    measured = [("random", trials[0]), ("random", trials[1]), ("uniform", trials[2]), ("uniform", trials[3])]
    baselines = [Baseline("W int4 / A int8", "uniform", trials[2]), Baseline("int8", "uniform", trials[3])]
    result = ceiling(measured, baselines, correct)
    # 0.7 against int8's 0.6: d = (0,0,0,0,0,1,1,0,0,-1), mean 0.1, mean of d^2 0.3
    assert (result["run"], result["trial"], result["candidate_id"], result["bitops"]) == ("random", 1, mixed[1].id,
                                                                                        300)
    assert (result["uniform"], result["uniform_trial"], result["uniform_bitops"]) == ("int8", 1, 400)
    assert (result["test_accuracy"], result["uniform_test_accuracy"]) == (0.7, 0.6)
    assert abs(result["difference"] - 0.1) <= TOL
    assert abs(result["se"] - math.sqrt((0.3 - 0.1**2) / 10)) <= TOL and result["verdict"] == "tie"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def measured(tiny_space: SpaceFactory, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("final")
    space = tiny_space(SPACE_CHANGES, folder=folder)
    run = folder / "run"
    train_supernet(space, run, progress=False)
    searches = [folder / "random", folder / "uniform"]
    run_search(space, out=searches[0], supernet=run, strategy="random", trials=8, progress=False)
    run_search(space, out=searches[1], supernet=run, strategy="uniform", progress=False)
    return space, run, searches, measure_final(searches, run, folder / "report"), folder / "report"


def exported_test_outcomes(run: Path, search: Path, trial: int, space, tmp_path: Path, blocks: list[int],
                           size: int) -> np.ndarray:
    """Per-image test outcomes (images x blocks) of a trial's candidate through ``automq export`` without
    recalibration, loaded back, recalibrated on training images ``first`` to ``first + size`` for each ``first`` of
    ``blocks`` (batches of 128) and run over the test split in a plain loop."""
    path = tmp_path / f"{search.name}-{trial}.pt"
    assert main(["export", str(run), f"{search}:{trial}", "--out", str(path), "--calib-images", "0"]) == 0
    data = load_space_data(space, with_test=True)
    columns = []
    for first in blocks:
        model, _ = load_model(path)
        with torch_threads(CALIBRATION_THREADS):
            recalibrate_bn(model, fixed_batches(data.train, first + size, 128, start=first))
        with torch.no_grad():
            columns.append(np.concatenate([(model.eval()(x).argmax(1) == y).numpy()
                                           for x, y in fixed_batches(data.test, len(data.test), 64)]))
    return np.stack(columns, axis=1)


def test_the_final_ceiling_is_the_most_accurate_candidate_measured(measured) -> None:
    *_, result, _ = measured
    best = max(c["test_accuracy"] for c in result["candidates"])
    best_uniform = max(c["test_accuracy"] for c in result["candidates"] if c["run"] == "uniform")
    assert abs(result["ceiling"]["difference"] - (best - best_uniform)) <= TOL


def test_final_scores_equal_the_exported_models_on_the_test_split(measured, tmp_path: Path) -> None:
    space, run, (random_dir, uniform_dir), final, report = measured
    assert json.loads((report / FINAL_FILE).read_text()) == final
    assert final["test_images"] == 200 and "no fine-tuning" in final["recipe"]
    # 1000 training images, the first 64 the searches' calibration: 4 blocks of (1000 - 64) // 4 images after them
    assert final["calibration"] == {"images": 234, "blocks": 4, "first": 64, "batch": 128}
    assert "each of the 4 calibration blocks has 234 images instead of 512" in final["notes"][-1]
    assert "each of 4 disjoint blocks of 234 training images (images 64 to 999" in final["recipe"]
    compared = [c for c in final["comparisons"] if c["searched_trial"] is not None]
    assert len(final["comparisons"]) == len({c["budget"] for c in final["comparisons"]}) >= 2 and compared
    blocks = [64, 298, 532, 766]
    for c in compared:
        searched = exported_test_outcomes(run, random_dir, c["searched_trial"], space, tmp_path, blocks, 234)
        assert c["uniform_run"] == "uniform"
        reference = exported_test_outcomes(run, uniform_dir, c["uniform_trial"], space, tmp_path, blocks, 234)
        assert c["searched_test_accuracy"] == searched.sum() / searched.size
        assert c["uniform_test_accuracy"] == reference.sum() / reference.size
        by_block = searched.mean(axis=0) - reference.mean(axis=0)
        assert np.allclose(c["difference_blocks"], by_block, rtol=0, atol=TOL)
        # the error from the images x blocks table of per-image differences (oracle: the tests of crossed_mean)
        expected = crossed_mean(searched.astype(int) - reference)
        assert abs(c["difference"] - by_block.mean()) <= TOL and abs(c["se"] - expected.se) <= TOL
    uniform = {c["candidate_id"]: c for c in final["candidates"] if c["run"] == "uniform"}
    for c in final["comparisons"]:
        # every uniform candidate at or below the budget, once; the verdict is a win over each, a loss to any
        within = {(u["run"], u["trial"]) for u in uniform.values() if u["bitops"] <= c["budget"] * (1 + 1e-9)}
        assert sorted((r["uniform_run"], r["uniform_trial"]) for r in c["references"]) == sorted(within)
        verdicts = {r.get("verdict") for r in c["references"]}
        expected = ("none" if c["searched_trial"] is None else "loss" if "loss" in verdicts else
                    "win" if verdicts == {"win"} else "tie")
        assert c["verdict"] == expected
        shown = {k: v for k, v in c.items() if k.startswith("uniform") or k in ("difference", "se", "ci95")}
        assert any(shown.items() <= r.items() for r in c["references"])


def test_the_calibration_blocks_leave_out_the_images_the_searches_calibrated_on(measured) -> None:
    space, run, _, final, report = measured
    estimator = OneShotEstimator.from_run(run)
    searched = image_bytes_of(estimator.calib)
    assert len(searched) == 64  # the space's search.calib_size
    train = load_space_data(space).train
    first, size = final["calibration"]["first"], final["calibration"]["images"]
    blocks = [image_bytes_of(fixed_batches(train, start + size, 128, start=start))
              for start in range(first, first + 4 * size, size)]
    assert all(len(block) == size and block.isdisjoint(searched) for block in blocks)
    assert all(a.isdisjoint(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    # the stored outcomes come back per block, in the order measured
    outcomes = measured_outcomes(report, final)
    record = final["candidates"][0]
    assert outcomes[record["candidate_id"]].accuracies == record["test_accuracy_blocks"]


def image_bytes(dataset) -> set[bytes]:
    """Each image of ``dataset`` as its raw bytes: equal images, equal bytes."""
    return image_bytes_of(fixed_batches(dataset, len(dataset), 1))


def image_bytes_of(batches) -> set[bytes]:
    """Each image of a list of (images, labels) batches as its raw bytes."""
    return {x.cpu().numpy().tobytes() for images, _ in batches for x in images}


def test_the_estimator_never_loads_the_test_split_and_its_images_are_disjoint_from_it(measured) -> None:
    space, run, _, _, _ = measured
    estimator = OneShotEstimator.from_run(run)
    assert estimator.data.test is None  # searches and refinement cannot score on the test split
    data = load_space_data(space, with_test=True)
    test = image_bytes(data.test)
    assert len(test) == len(data.test)
    assert image_bytes(estimator.data.val).isdisjoint(test) and image_bytes(estimator.data.train).isdisjoint(test)


# ------------------------------------------------------------------------------------------------ fine-tuned
FINETUNE = FineTune(images=256, epochs=2)


def mean_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x), y, reduction="sum").item() for x, y in batches]
    return sum(losses) / sum(len(y) for _, y in batches)


def test_a_fine_tuned_deployment_trains_on_the_images_and_ignores_the_callers_thread_count(measured) -> None:
    space, run, *_ = measured
    data = load_space_data(space)
    supernet = load_supernet(run, space)
    candidate = space.largest()
    calibration = fixed_batches(data.train, 64, 32)
    train = fixed_batches(data.train, FINETUNE.images, 64)
    plain = deploy(supernet, candidate, calibration)
    rng = torch.get_rng_state()
    tuned = deploy(supernet, candidate, calibration, finetune=FINETUNE, space=space, train=data.train)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is left alone
    # 16 SGD steps on 256 images it is scored on: the loss there falls well beyond float noise
    assert mean_loss(tuned, train) < 0.95 * mean_loss(plain, train)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = deploy(supernet, candidate, calibration, finetune=FINETUNE, space=space, train=data.train)
    finally:
        torch.set_num_threads(threads)
    for (name, a), (_, b) in zip(tuned.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def counting_deploy(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[tuple[str, bytes]]:
    """Replace the final measurement's deploy by one that records each candidate it deploys with the first
    calibration image's bytes (which block), and raises on the ``fail_at``-th call, as a killed measurement would
    stop."""
    calls: list[tuple[str, bytes]] = []
    real = final_module.deploy

    def deploy_and_count(supernet, candidate, calibration, **kwargs):
        calls.append((candidate.id, calibration[0][0][0].numpy().tobytes()))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(supernet, candidate, calibration, **kwargs)

    monkeypatch.setattr(final_module, "deploy", deploy_and_count)
    return calls


def test_a_stopped_fine_tuned_measurement_continues_without_measuring_a_candidate_twice(
        measured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space, run, searches, plain, _ = measured
    out = tmp_path / "tuned"
    counting_deploy(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        measure_final(searches, run, out, finetune=FINETUNE, calib_images=64)
    assert len((out / SCORES_FILE).read_text().splitlines()) == 2
    calls = counting_deploy(monkeypatch)
    tuned = measure_final(searches, run, out, finetune=FINETUNE, calib_images=64)
    measured_ids = {c["candidate_id"] for c in tuned["candidates"]}
    assert len(calls) == 4 * len(measured_ids) - 2 and len(set(calls)) == len(calls)  # 4 blocks each
    assert "fine-tuned in its formats for 2 epoch(s) on the first 256 training images" in tuned["recipe"]
    assert "cosine schedule without warm-up" in tuned["recipe"]
    assert tuned["finetune"] == {"images": 256, "epochs": 2, "seed": 0, "lr": None} and plain["finetune"] is None
    # the resumed measurement equals one that was never stopped
    monkeypatch.undo()
    whole = measure_final(searches, run, tmp_path / "whole", finetune=FINETUNE, calib_images=64)
    assert whole["candidates"] == tuned["candidates"] and whole["comparisons"] == tuned["comparisons"]
    # the fine-tune changed what the candidates get right
    before = {c["candidate_id"]: c["test_accuracy"] for c in plain["candidates"]}
    assert any(before[c["candidate_id"]] != c["test_accuracy"] for c in tuned["candidates"])
    calls = counting_deploy(monkeypatch)
    again = measure_final(searches, run, out, finetune=FINETUNE, calib_images=64)
    assert calls == [] and again["candidates"] == tuned["candidates"]
    deployments = 4 * len(measured_ids)
    assert (f"{deployments} of {deployments} deployments (candidates x calibration blocks) were measured before"
            in again["notes"][-1])
    # the time of measuring each candidate is kept with it: the resumed total is that of the runs that measured them
    assert again["measure_s"] == tuned["measure_s"] > 0 and tuned["candidates_measured"] == len(measured_ids)
    assert again["comparisons"] == tuned["comparisons"]
    # another recipe (no fine-tune, other calibration or test images) in the same folder measures everything
    # again: nothing stored matches it
    for changed in ({}, {"calib_images": 32}, {"test_images": 150}):
        calls = counting_deploy(monkeypatch)
        measure_final(searches, run, out, **{"calib_images": 64, **changed})
        assert sorted(cid for cid, _ in calls) == sorted(4 * list(measured_ids)), changed
    # a fifth block measures that block only: the four others are stored under their own keys
    calls = counting_deploy(monkeypatch)
    five = measure_final(searches, run, out, calib_images=64, calib_blocks=5)
    assert sorted(cid for cid, _ in calls) == sorted(measured_ids) and len({block for _, block in calls}) == 1
    assert all(len(c["test_accuracy_blocks"]) == 5 for c in five["candidates"])


def test_damaged_stored_scores_are_measured_again_not_trusted(
        measured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space, run, searches, plain, _ = measured
    out = tmp_path / "damaged"
    first = measure_final(searches, run, out)
    lines = (out / SCORES_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    short = {**records[0], "bits": records[0]["bits"][:4]}  # outcomes of 16 images where 200 are needed
    untimed = {**records[1], "wall_s": "soon"}
    (out / SCORES_FILE).write_text("\n".join(["42", "null", json.dumps(short), json.dumps(untimed),
                                              *map(json.dumps, records[2:])]) + "\n")
    calls = counting_deploy(monkeypatch)
    again = measure_final(searches, run, out)
    assert sorted(cid for cid, _ in calls) == sorted([records[0]["candidate_id"], records[1]["candidate_id"]])
    assert again["candidates"] == first["candidates"] == plain["candidates"]


def test_blocks_that_cannot_be_measured_are_refused_before_any_deployment(
        measured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space, run, searches, *_ = measured
    calls = counting_deploy(monkeypatch)
    with pytest.raises(DataError, match="needs at least 2 test images, got 1: give --test-images 2 or more, or "
                                        "--calib-blocks 1"):
        measure_final(searches, run, tmp_path, test_images=1)
    # 1000 training images, 64 the searches': not one image each for 1000 blocks
    with pytest.raises(DataError, match="the training split holds 1000 images, 64 of them the searches' calibration: "
                                        "too few for 1000 calibration blocks after them"):
        measure_final(searches, run, tmp_path, calib_blocks=1000)
    assert calls == []
    # one block on one test image is a measurement (its error is the binomial one)
    single = measure_final(searches, run, tmp_path, test_images=1, calib_blocks=1, calib_images=64)
    assert all(c["test_se"] == 0.0 for c in single["candidates"])


def test_outcomes_of_a_measurement_from_before_the_blocks_are_one_block(measured) -> None:
    *_, final, report = measured
    outcomes = measured_outcomes(report, final)
    first = {k: v for k, v in final.items() if k != "scores_keys"}
    older = measured_outcomes(report, {**first, "scores_key": final["scores_keys"][0]})
    assert all(older[cid].blocks == outcomes[cid].blocks[:1] for cid in outcomes)
    with pytest.raises(DataError, match="records no scores key: run the final measurement again"):
        measured_outcomes(report, first)


def test_a_fine_tune_on_more_images_than_the_training_split_is_refused(measured, tmp_path: Path) -> None:
    space, run, searches, *_ = measured
    held = len(load_space_data(space).train)
    with pytest.raises(DataError, match=f"--finetune-images {held + 1} is out of range: the training split holds "
                                        f"{held} images"):
        measure_final(searches, run, tmp_path, finetune=FineTune(held + 1))


def test_a_fine_tune_without_images_epochs_or_learning_rate_is_refused() -> None:
    for images, epochs, lr in ((0, 1, None), (10, 0, None), (10, 1, 0.0), (10, 1, float("nan"))):
        with pytest.raises(DataError, match="at least one image, one epoch and a learning rate above 0"):
            FineTune(images, epochs, lr=lr)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_final_writes_final_json_and_the_report_section(measured, capsys) -> None:
    _, run, searches, _, report = measured
    out = report.parent / "cli-report"
    assert main(["final", *map(str, searches), "--supernet", str(run), "--out", str(out), "--test-images", "100"]) == 0
    final = json.loads((out / FINAL_FILE).read_text())
    assert final["test_images"] == 100
    counts = final["summary"]["random"]
    assert (f"random: beats every uniform format at or below the budget at {counts['win']} of {counts['budgets']} "
            "budgets") in capsys.readouterr().out
    markdown = (out / "report.md").read_text()
    assert "## Final measurement (test split)" in markdown
    first = next(c for c in final["comparisons"] if c["searched_trial"] is not None)
    assert f"{100 * first['difference']:+.2f} ± {100 * first['se']:.2f}" in markdown
    assert (out / "final.csv").read_text().count("\n") == len(final["comparisons"]) + 1


def test_cli_final_without_a_uniform_search_is_one_error_line(measured, capsys) -> None:
    _, run, (random_dir, _), _, report = measured
    assert main(["final", str(random_dir), "--supernet", str(run), "--out", str(report.parent / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("automq: error: no uniform-precision search") and err.count("\n") == 1


def test_cli_final_fine_tunes_and_says_so_in_the_report(measured, capsys) -> None:
    _, run, searches, _, report = measured
    out = report.parent / "cli-tuned"
    assert main(["final", *map(str, searches), "--supernet", str(run), "--out", str(out), "--test-images", "100",
                 "--finetune-images", "64"]) == 0
    final = json.loads((out / FINAL_FILE).read_text())
    assert final["finetune"] == {"images": 64, "epochs": 1, "seed": 0, "lr": None}
    assert "fine-tuned in its formats for 1 epoch(s) on the first 64 training images" in (out / "report.md").read_text()
    for option in (["--finetune-images", "-1"], ["--finetune-images", "5", "--finetune-epochs", "0"],
                   ["--finetune-epochs", "2"], ["--finetune-images", "10000000"]):
        assert main(["final", *map(str, searches), "--supernet", str(run), "--out", str(out), *option]) == 2
        err = capsys.readouterr().err
        assert err.startswith("automq: error:") and err.count("\n") == 1


def test_cli_final_recalibrates_on_the_calibration_images_asked_for(measured, capsys) -> None:
    _, run, searches, _, report = measured
    out = report.parent / "cli-calib"
    assert main(["final", *map(str, searches), "--supernet", str(run), "--out", str(out), "--test-images", "100",
                 "--calib-images", "64", "--calib-blocks", "2"]) == 0
    final = json.loads((out / FINAL_FILE).read_text())
    assert ("batch norms recalibrated on each of 2 disjoint blocks of 64 training images (images 64 to 191, after "
            "the first 64 that the searches' estimates calibrated on)") in final["recipe"]
    assert all(len(c["test_accuracy_blocks"]) == 2 for c in final["candidates"])
    capsys.readouterr()
    for option, message in ((["--calib-images", "0"], "--calib-images and --calib-blocks must be at least 1, got 0 "
                                                      "and 4"),
                            (["--calib-blocks", "0"], "--calib-images and --calib-blocks must be at least 1, got 512 "
                                                      "and 0"),
                            (["--calib-blocks", "5", "--calib-images", "200"],
                             "--calib-blocks 5 of --calib-images 200 need 1000 training images after the first 64 "
                             "the searches calibrated on, but the training split holds 1000: give fewer or smaller "
                             "blocks")):
        assert main(["final", *map(str, searches), "--supernet", str(run), "--out", str(out), *option]) == 2
        err = capsys.readouterr().err
        assert err == f"automq: error: {message}\n", option


def test_cli_final_refuses_more_test_images_than_the_split_holds(measured, capsys) -> None:
    _, run, searches, _, report = measured
    assert main(["final", *map(str, searches), "--supernet", str(run), "--out", str(report.parent / "y"),
                 "--test-images", "201"]) == 2
    assert "the test split holds 200 images" in capsys.readouterr().err


def test_the_calibration_blocks_begin_after_every_block_a_search_averaged_over(tiny_space, tmp_path) -> None:
    space = tiny_space({"search": {"calib_size": 64}})
    folders = [tmp_path / "plain", tmp_path / "blocks"]
    for folder, search in zip(folders, [{"calib_size": 100}, {"calib_size": 48, "calib_blocks": 3}]):
        folder.mkdir()
        Path(tiny_space({"search": search}, folder=folder).source).rename(folder / "space.yaml")
    # the supernet's 64, a search's 100, the other's 3 blocks of 48 (images 0 to 143): the blocks begin at 144
    assert final_module.calibration_skip(folders, space) == 144
    assert final_module.calibration_skip(folders[:1], space) == 100
    # a search resumed with 4 blocks keeps its first space file (1 block of 100); its refinement's record counts
    (folders[0] / "run.json").write_text(json.dumps({"refine": {"calib_blocks": 4}}))
    assert final_module.calibration_skip(folders, space) == 400
