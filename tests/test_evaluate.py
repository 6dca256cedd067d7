"""The one-shot estimator equals an independent computation on the extracted model, recalibrates BN on train
images, scores on val images only, is deterministic and cached; the stand-alone path trains reproducibly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from automq.cost import CostModel
from automq.data import DataSplits, fixed_batches
from automq.errors import CandidateError, CheckpointError
from automq.oneshot.evaluate import OneShotEstimator, train_standalone
from automq.space.space import SearchSpace
from automq.model.supernet import Supernet, recalibrate_bn
from automq.oneshot.train import load_space_data, load_supernet, train_supernet

from _spaces import SpaceFactory

SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "train_size": 384, "num_random": 1},
    "search": {"eval_size": 120, "calib_size": 64},
}
SIZES = {"calib_images": 64, "val_images": 120, "batch_size": 32}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_space: SpaceFactory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    train_supernet(tiny_space(SPACE_CHANGES, folder=folder), folder / "run", progress=False)
    return folder / "run"


@pytest.fixture(scope="module")
def space(run_dir: Path) -> SearchSpace:
    return SearchSpace.from_file(run_dir / "space.yaml")


@pytest.fixture(scope="module")
def data(space: SearchSpace) -> DataSplits:
    return load_space_data(space)


@pytest.fixture()
def supernet(run_dir: Path, space: SearchSpace) -> Supernet:
    return load_supernet(run_dir, space)


def candidates(space: SearchSpace) -> list:
    rng = np.random.default_rng(3)
    return [space.largest(), space.smallest(), space.sample(rng), space.sample(rng)]


def test_estimate_equals_the_extracted_model_after_the_same_recalibration(space, data, supernet) -> None:
    estimator = OneShotEstimator(space, supernet, data, **SIZES)
    images = torch.cat([x for x, _ in fixed_batches(data.val, 120, 500)])
    labels = torch.cat([y for _, y in fixed_batches(data.val, 120, 500)])
    accuracies = set()
    for candidate in candidates(space):
        model = supernet.extract(candidate)
        recalibrate_bn(model, fixed_batches(data.train, 64, 32))
        with torch.no_grad():
            logits = model.eval()(images)
        estimate = estimator(candidate)
        assert estimate["accuracy"] == (logits.argmax(1) == labels).double().mean().item()
        assert estimate["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
        assert {k: estimate[k] for k in CostModel(space).metrics(candidate)} == CostModel(space).metrics(candidate)
        accuracies.add(estimate["accuracy"])
    assert len(accuracies) > 1  # the candidates really differ


def test_estimates_are_deterministic_and_cached_by_candidate_id(space, data, supernet) -> None:
    estimator = OneShotEstimator(space, supernet, data, **SIZES)
    forwards = []
    supernet.register_forward_hook(lambda *_: forwards.append(1))
    first, second = candidates(space)[2:]
    a = estimator(first)
    assert len(forwards) == 2 + 1  # 2 calibration batches, 1 validation batch
    forwards.clear()
    b = estimator.estimate(first)
    assert b == a and not forwards
    b["accuracy"] = -1.0  # callers get copies: the cache is not theirs to change
    estimator(second)  # leaves the supernet with another candidate's BN statistics
    estimator.clear_cache()
    forwards.clear()
    assert estimator(first) == a and forwards
    uncached = OneShotEstimator(space, supernet, data, cache=False, **SIZES)
    forwards.clear()
    assert uncached(first) == a and uncached(first) == a and len(forwards) == 6
    assert estimator.evaluate_batch([first, second]) == [a, estimator(second)]


def test_an_estimate_does_not_depend_on_the_candidates_scored_before_it(space, data) -> None:
    # a fresh supernet has no quantizer scale initialised, as a trained one may lack a rarely sampled format
    rng = np.random.default_rng(5)
    sampled = [space.sample(rng) for _ in range(6)] + [space.smallest(), space.largest()]

    def estimates(order: list) -> dict[str, dict[str, float]]:
        torch.manual_seed(0)
        estimator = OneShotEstimator(space, Supernet(space), data, **SIZES)
        return {candidate.id: estimator(candidate) for candidate in order}

    forward, backward = estimates(sampled), estimates(sampled[::-1])
    assert forward == backward
    assert len({e["accuracy"] for e in forward.values()}) > 1  # the candidates really differ


def test_bn_statistics_are_recomputed_from_the_calibration_images(space, data, supernet) -> None:
    candidate, one_batch = candidates(space)[2], {**SIZES, "batch_size": 64}
    reference = OneShotEstimator(space, supernet, data, **one_batch)(candidate)
    for bn in (m for m in supernet.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.fill_(3.0)  # stale statistics must not leak into the estimate
        bn.running_var.fill_(0.01)
    stem_out = []
    supernet.conv_stem.register_forward_hook(lambda _m, _i, out: stem_out.append(out.detach()))
    assert OneShotEstimator(space, supernet, data, **one_batch)(candidate) == reference
    # one calibration batch of 64 train images: the stem BN holds exactly that batch's channel statistics
    calib = stem_out[0]
    assert calib.shape[0] == 64
    channels = calib.shape[1]
    torch.testing.assert_close(supernet.bn1.running_mean[:channels], calib.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(supernet.bn1.running_var[:channels], calib.var(dim=(0, 2, 3), unbiased=True))


class _Untouchable(Dataset):
    def __len__(self) -> int:
        raise AssertionError("the estimator touched the test split")

    def __getitem__(self, index: int):
        raise AssertionError("the estimator touched the test split")


def test_scores_on_the_validation_split_and_never_the_test_split(space, data, supernet) -> None:
    guarded = DataSplits(**{**data.__dict__, "test": _Untouchable()})
    estimator = OneShotEstimator(space, supernet, guarded, **SIZES)
    estimate = estimator(space.largest())
    assert 0.0 <= estimate["accuracy"] <= 1.0
    # validation images decide the score: relabelling them changes the accuracy, relabelling others does not
    val_x, val_y = data.val.tensors
    shifted = DataSplits(**{**data.__dict__, "val": torch.utils.data.TensorDataset(val_x, (val_y + 1) % 10)})
    assert OneShotEstimator(space, supernet, shifted, **SIZES)(space.largest())["accuracy"] != estimate["accuracy"]


def test_from_run_loads_the_supernet_and_space_of_a_training_run(run_dir, space, data, supernet, tmp_path) -> None:
    estimator = OneShotEstimator.from_run(run_dir, **SIZES)
    assert estimator(space.smallest()) == OneShotEstimator(space, supernet, data, **SIZES)(space.smallest())
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        OneShotEstimator.from_run(tmp_path, space=space)
    with pytest.raises(CandidateError, match="width_mult"):
        estimator(dataclasses.replace(space.largest(), width_mult=0.75))


def test_standalone_training_is_reproducible_and_learns(space, data, supernet) -> None:
    candidate = space.smallest()
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    scratch = train_standalone(space, candidate, data, epochs=2, seed=0, val_images=120)
    repeat = train_standalone(space, candidate, data, epochs=2, seed=0, val_images=120)
    assert {**repeat, "wall_s": 0} == {**scratch, "wall_s": 0}
    assert scratch["accuracy"] > 0.5 and scratch["epochs"] == 2 and scratch["init"] == "scratch"
    tuned = train_standalone(space, candidate, data, epochs=1, seed=0, init="supernet", supernet=supernet,
                             val_images=120)
    assert 0.0 <= tuned["accuracy"] <= 1.0 and tuned["accuracy"] != scratch["accuracy"]
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())  # fine-tunes a copy
    with pytest.raises(ValueError, match="supernet="):
        train_standalone(space, candidate, data, epochs=1, seed=0, init="supernet")


def test_finetuned_trains_the_extracted_candidate_with_its_own_bn_statistics(space, data, supernet, run_dir) -> None:
    candidate = candidates(space)[2]
    subset = torch.utils.data.Subset(data.train, range(96))
    estimator = OneShotEstimator(space, supernet, data, **SIZES)
    tuned = estimator.finetuned(candidate, train=subset, epochs=1, seed=0)
    reference_net = load_supernet(run_dir, space)  # the same steps by hand, on a supernet of its own
    reference_net.set_active(candidate)
    recalibrate_bn(reference_net, fixed_batches(data.train, 64, 32))
    reference = train_standalone(space, candidate, dataclasses.replace(data, train=subset), epochs=1, seed=0,
                                 init="supernet", supernet=reference_net, val_images=120)
    assert {**tuned, "wall_s": 0} == {**reference, "wall_s": 0}
    other = candidates(space)[3]  # nothing leaks into the estimates that follow
    assert estimator(other) == OneShotEstimator(space, load_supernet(run_dir, space), data, **SIZES)(other)


def test_finetune_images_scores_the_fine_tuned_candidate_and_keeps_the_one_shot_values(space, data, supernet,
                                                                                      run_dir) -> None:
    candidate = candidates(space)[2]
    plain = OneShotEstimator(space, supernet, data, **SIZES)(candidate)
    tuned = OneShotEstimator(space, load_supernet(run_dir, space), data, finetune_images=96, **SIZES)(candidate)
    reference = OneShotEstimator(space, load_supernet(run_dir, space), data, **SIZES).finetuned(
        candidate, train=torch.utils.data.Subset(data.train, range(96)), seed=space.seed)
    assert tuned == {**plain, "oneshot_accuracy": plain["accuracy"], "oneshot_loss": plain["loss"],
                     "accuracy": reference["accuracy"], "loss": reference["loss"]}
    assert tuned["accuracy"] != plain["accuracy"]
    with pytest.raises(ValueError, match="finetune_images must be >= 0"):
        OneShotEstimator(space, supernet, data, finetune_images=-1, **SIZES)


def test_estimates_run_on_one_torch_thread_unless_told_otherwise(space, data, supernet) -> None:
    seen = []
    supernet.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        OneShotEstimator(space, supernet, data, **SIZES)(space.smallest())
        assert set(seen) == {1} and torch.get_num_threads() == 2  # pinned while estimating, then restored
        seen.clear()
        OneShotEstimator(space, supernet, data, threads=None, **SIZES)(space.smallest())
        assert set(seen) == {2}
        seen.clear()
        OneShotEstimator(space, supernet, data, threads=3, **SIZES)(space.smallest())
        assert set(seen) == {3} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        OneShotEstimator(space, supernet, data, threads=0, **SIZES)
