"""Supernet training: the sandwich step learns, the schedule and optimizer groups are right, runs resume bit for
bit, a diverged run stops cleanly, and checkpoints are written atomically and refused across spaces."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from automq.oneshot import train
from automq.errors import CheckpointError, TrainingDivergedError
from automq.io import read_jsonl, safe_torch_load
from automq.space.space import SearchSpace, TrainingSpec
from automq.model.supernet import Supernet
from automq.numerics.quant import dequantize_
from automq.oneshot.evaluate import train_float
from automq.oneshot.train import (
    CHECKPOINT,
    SUPERNET,
    FloatNetwork,
    build_optimizer,
    build_scheduler,
    endless_batches,
    SupernetTrainer,
    load_float_network,
    load_space_data,
    load_supernet,
    sandwich_step,
    train_supernet,
    training_summary,
    training_text,
)

from _spaces import SpaceFactory

SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "train_size": 96, "num_random": 1},
    "search": {"eval_size": 64, "calib_size": 64},
}
RUN_FILES = {"checkpoint.pt", "supernet.pt", "space.yaml", "run.json", "metrics.jsonl"}
METRICS = "metrics.jsonl"
EPS64 = 2.0**-52  # a sum of a few float64 wall times, in any order, is within a few ulps of any other order


@pytest.fixture()
def space(tiny_space: SpaceFactory, tmp_path: Path) -> SearchSpace:
    return tiny_space(SPACE_CHANGES, folder=tmp_path)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(path)["state_dict"]


def test_sandwich_steps_teach_the_largest_and_through_it_the_smallest(space: SearchSpace) -> None:
    torch.manual_seed(0)
    supernet = Supernet(space)
    images, labels = load_space_data(space, train_subset=32).train.tensors
    largest, smallest = space.largest(), space.smallest()
    candidates = [largest, smallest, space.sample(np.random.default_rng(1))]
    optimizer = build_optimizer(supernet, space.training)

    def label_loss(candidate) -> float:
        supernet.set_active(candidate)
        with torch.no_grad():
            return float(F.cross_entropy(supernet(images), labels))

    before = label_loss(smallest)
    history = []
    for _ in range(20):
        optimizer.zero_grad()
        history.append(sandwich_step(supernet, images, labels, candidates))
        optimizer.step()
    assert len(history[-1]) == 3 and all(math.isfinite(v) for v in history[-1])
    assert history[0][0] > 2.0 and history[-1][0] < 0.75 * history[0][0]  # the largest learns the labels
    assert label_loss(smallest) < 0.9 * before  # the smallest never sees a label, only the largest's outputs


def test_optimizer_groups_decay_weights_only_and_slow_down_weight_scales(space: SearchSpace) -> None:
    supernet = Supernet(space)
    spec = space.training
    decay, no_decay, scales = build_optimizer(supernet, spec).param_groups
    names = {id(p): n for n, p in supernet.named_parameters()}
    assert (decay["weight_decay"], no_decay["weight_decay"], scales["weight_decay"]) == (spec.weight_decay, 0, 0)
    assert (decay["lr"], no_decay["lr"], scales["lr"]) == (spec.lr, spec.lr, spec.lr * train.WEIGHT_SCALE_LR_FACTOR)
    assert all(names[id(p)].endswith(".weight") and p.ndim > 1 for p in decay["params"])
    assert {names[id(p)] for p in scales["params"]} == {n for n in names.values() if ".w_quant.scales." in n}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"conv_stem.a_quant.scales.int8", "bn1.weight", "classifier.bias"} <= exempt
    assert len(decay["params"]) + len(no_decay["params"]) + len(scales["params"]) == len(names)


def test_schedule_warms_up_linearly_then_follows_a_cosine() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    spec = TrainingSpec(epochs=3, lr=0.1, warmup_epochs=1)
    optimizer = torch.optim.SGD([param], lr=spec.lr)
    scheduler = build_scheduler(optimizer, spec, steps_per_epoch=4)  # 12 steps, 4 of warm-up
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * (s + 1) / 4 for s in range(4)] + [0.05 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_training_writes_a_complete_run_folder(space: SearchSpace, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_supernet(space, out, progress=False) == out / SUPERNET
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no *.tmp left behind
    records = list(read_jsonl(out / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [3, 6]  # 96 / 32
    for record in records:
        assert 0.0 <= record["val_acc_largest"] <= 1.0 and 0.0 <= record["val_acc_smallest"] <= 1.0
        assert math.isfinite(record["train_loss"]) and record["lr"] > 0
    checkpoint = safe_torch_load(out / CHECKPOINT)
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["training"]["train_size"] == 96
    assert SearchSpace.from_file(out / "space.yaml").name == "tiny"
    supernet = load_supernet(out, space)
    for name, tensor in supernet.state_dict().items():
        assert torch.equal(tensor, checkpoint["model"][name])
    wall_s = pytest.approx(sum(r["wall_s"] for r in records), rel=4 * EPS64)
    assert training_summary(out) == {"epochs": 2, "train_images": 96, "num_random": 1, "smallest": False,
                                     "training_wall_s": wall_s,
                                     "val_acc_largest": records[-1]["val_acc_largest"],
                                     "val_acc_smallest": records[-1]["val_acc_smallest"]}
    assert training_summary(tmp_path / "no_run") == {}
    assert training_text(training_summary(out)).startswith(
        "2 epochs on 96 train images, the largest + 1 random candidates per step, 0 min; val accuracy largest 0.")
    assert training_text({}) == "training record not found"


def test_resume_after_a_kill_repeats_the_uninterrupted_run_bit_for_bit(
    space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_supernet(space, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    real_step = train.sandwich_step

    def killed_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 2 (3 steps per epoch)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "sandwich_step", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(space, tmp_path / "resumed", progress=False)
    assert safe_torch_load(tmp_path / "resumed" / CHECKPOINT)["epoch"] == 1  # lost only the current epoch
    monkeypatch.setattr(train, "sandwich_step", real_step)
    train_supernet(space, tmp_path / "resumed", resume=True, progress=False)

    straight, resumed = weights(tmp_path / "straight" / SUPERNET), weights(tmp_path / "resumed" / SUPERNET)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    timing = {"wall_s", "images_per_s"}
    a, b = (list(read_jsonl(tmp_path / run / "metrics.jsonl")) for run in ("straight", "resumed"))
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == [
        {k: v for k, v in r.items() if k not in timing} for r in b]


@pytest.mark.parametrize("written_before_kill", [0, 20], ids=["before_the_line", "in_the_line"])
def test_a_kill_between_checkpoint_and_metrics_line_loses_no_line(
    space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written_before_kill: int
) -> None:
    train_supernet(space, tmp_path / "straight", progress=False)
    out = tmp_path / "resumed"
    real_append = train.append_jsonl

    def killed_writing_the_last_line(path: Path, record: dict) -> None:
        if record["epoch"] < 2:
            return real_append(path, record)
        with open(path, "a") as handle:  # the first bytes of the line reach the disk, then the process dies
            handle.write(json.dumps(record)[:written_before_kill])
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "append_jsonl", killed_writing_the_last_line)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(space, out, progress=False)
    assert safe_torch_load(out / CHECKPOINT)["epoch"] == 2 and [r["epoch"] for r in read_jsonl(out / METRICS)] == [1]
    monkeypatch.setattr(train, "append_jsonl", real_append)
    train_supernet(space, out, resume=True, progress=False)

    straight, resumed = (list(read_jsonl(tmp_path / run / METRICS)) for run in ("straight", "resumed"))
    assert len((out / METRICS).read_text().splitlines()) == 2  # a torn fragment was cut off, not kept as a line
    timing = {"wall_s", "images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == [
        {k: v for k, v in r.items() if k not in timing} for r in straight]


def record_steps(monkeypatch: pytest.MonkeyPatch) -> list[list]:
    """The candidate list of every sandwich step from now on (the steps still run)."""
    steps: list[list] = []
    real_step = train.sandwich_step

    def recording(supernet, images, labels, candidates):
        steps.append(list(candidates))
        return real_step(supernet, images, labels, candidates)

    monkeypatch.setattr(train, "sandwich_step", recording)
    return steps


@pytest.mark.parametrize("smallest", [False, True])
def test_each_step_trains_the_largest_then_the_smallest_only_when_asked_then_random_ones(
    tiny_space: SpaceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smallest: bool
) -> None:
    space = tiny_space(SPACE_CHANGES, folder=tmp_path, training={"num_random": 2, "smallest": smallest})
    steps = record_steps(monkeypatch)
    train_supernet(space, tmp_path / "run", epochs=1, progress=False)
    fixed = [space.largest(), space.smallest()][: 1 + smallest]
    assert len(steps) == 3 and all(step[: len(fixed)] == fixed and len(step) == len(fixed) + 2 for step in steps)
    sampled = [c for step in steps for c in step[len(fixed):]]
    assert len(set(sampled)) == 6 and not {space.largest(), space.smallest()} & set(sampled)


def test_uniform_candidates_come_last_in_a_step_and_leave_the_random_stream_as_it_was(
    tiny_space: SpaceFactory, tmp_path: Path
) -> None:
    def first_steps(uniform: int) -> list[list]:
        space = tiny_space(SPACE_CHANGES, folder=tmp_path, training={"num_random": 2, "uniform": uniform})
        trainer = SupernetTrainer(space, load_space_data(space), space.training, seed=0)
        return [trainer.step_candidates() for _ in range(3)]

    plain, with_uniform = first_steps(0), first_steps(2)
    assert all(len(step) == 3 for step in plain) and all(len(step) == 5 for step in with_uniform)
    assert with_uniform[0][:3] == plain[0]  # the first step draws the same random candidates before its uniform ones
    for step in with_uniform:
        for candidate in step[3:]:
            formats = candidate.layer_formats()
            assert len({f for name, f in formats.items() if name.endswith(("conv_pw", "conv_pwl"))}) == 1


def test_a_run_from_before_the_smallest_option_resumes_training_the_smallest(
    space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    train_supernet(space, out, epochs=2, progress=False)
    checkpoint = safe_torch_load(out / CHECKPOINT)
    del checkpoint["config"]["training"]["smallest"]
    checkpoint["epoch"] = 1  # as if killed after the first epoch
    torch.save(checkpoint, out / CHECKPOINT)
    steps = record_steps(monkeypatch)
    train_supernet(space, out, resume=True, progress=False)
    assert len(steps) == 3 and all(step[1] == space.smallest() for step in steps)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    calls = {"n": 0}
    real_step = train.sandwich_step

    def nan_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        losses = real_step(*args, **kwargs)
        return [float("nan"), *losses[1:]] if calls["n"] == 4 else losses

    monkeypatch.setattr(train, "sandwich_step", nan_in_second_epoch)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 4") as info:
        train_supernet(space, out, epochs=3, progress=False)
    assert str(out / CHECKPOINT) in str(info.value) and "epoch 1" in str(info.value)
    good = safe_torch_load(out / CHECKPOINT)
    assert good["epoch"] == 1 and all(torch.isfinite(t).all() for t in good["model"].values() if t.is_floating_point())
    assert {p.name for p in out.iterdir()} == RUN_FILES - {SUPERNET}


def test_an_absurd_learning_rate_diverges_in_the_first_epoch(tiny_space: SpaceFactory, tmp_path: Path) -> None:
    space = tiny_space(SPACE_CHANGES, folder=tmp_path, training={"lr": 1e30, "momentum": 0.0})
    with pytest.raises(TrainingDivergedError, match="no checkpoint"):
        train_supernet(space, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_checkpoint_save_is_atomic(space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_save = torch.save
    saves = {"n": 0}

    def crash_in_second_save(obj, handle, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            handle.write(b"torn")
            raise OSError("disk full")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_in_second_save)
    with pytest.raises(OSError, match="disk full"):
        train_supernet(space, out, progress=False)
    assert safe_torch_load(out / CHECKPOINT)["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_refuses_a_checkpoint_of_another_space(space: SearchSpace, tiny_space: SpaceFactory,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_supernet(space, out, epochs=1, progress=False)
    other = tiny_space(SPACE_CHANGES, folder=tmp_path, name="other", network={"head": {"channels": 48}})
    with pytest.raises(CheckpointError, match="another search space"):
        train_supernet(other, out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="another search space"):
        load_supernet(out, other)
    # objectives and budgets do not shape the weights: a space that changes only them is accepted
    same_weights = tiny_space(SPACE_CHANGES, folder=tmp_path, name="same",
                              objectives=[{"metric": "accuracy"}, {"metric": "size"}])
    load_supernet(out, same_weights)
    # a narrower copy (fewer formats) is scored by the run's supernet, but training cannot continue with it
    narrower = tiny_space(SPACE_CHANGES, folder=tmp_path, name="narrower", formats={"weights": ["int4"]})
    load_supernet(out, narrower)
    with pytest.raises(CheckpointError, match="another search space"):
        train_supernet(narrower, out, resume=True, progress=False)


def test_a_supernet_is_refused_on_another_validation_split(space: SearchSpace, tiny_space: SpaceFactory,
                                                           tmp_path: Path) -> None:
    """Another dataset.val_size or seed holds out other images, some of which the supernet trained on: refused,
    also for a supernet.pt from before the split was recorded (read from the space file saved beside it)."""
    out = tmp_path / "run"
    train_supernet(space, out, epochs=1, progress=False)
    wider = tiny_space({**SPACE_CHANGES, "dataset": {"val_size": 150}}, folder=tmp_path, name="wider")
    reseeded = tiny_space(SPACE_CHANGES, folder=tmp_path, name="reseeded", seed=7)
    for other in (wider, reseeded):
        with pytest.raises(CheckpointError, match="would score images the supernet trained on"):
            load_supernet(out, other)
    old = safe_torch_load(out / SUPERNET)
    del old["split"]
    torch.save(old, out / SUPERNET)
    with pytest.raises(CheckpointError, match="holding out 200 validation images \\(seed 0\\)"):
        load_supernet(out, wider)
    (out / "space.yaml").unlink()  # nothing left to tell the split by: accepted as before
    load_supernet(out, wider)
    load_supernet(out, space)


def test_run_folder_misuse_is_explained(space: SearchSpace, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_supernet(space, out, resume=True, progress=False)
    train_supernet(space, out, epochs=1, progress=False)
    with pytest.raises(CheckpointError, match="--resume"):
        train_supernet(space, out, epochs=1, progress=False)
    with pytest.raises(CheckpointError, match="started with epochs=1, not 3"):
        train_supernet(space, out, epochs=3, resume=True, progress=False)


def test_endless_batches_reshuffle_every_epoch_and_repeat_under_a_seed() -> None:
    dataset = TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    stream = endless_batches(dataset, 4, seed=3)
    epochs = [[next(stream)[1] for _ in range(2)] for _ in range(3)]  # 10 images: 2 full batches, 2 dropped
    assert all(len(labels) == 4 for epoch in epochs for labels in epoch)
    seen = [torch.cat(epoch).tolist() for epoch in epochs]
    assert all(len(set(s)) == 8 for s in seen) and len({tuple(s) for s in seen}) == 3  # a new order each epoch
    again = endless_batches(dataset, 4, seed=3)
    assert [next(again)[1].tolist() for _ in range(6)] == [labels.tolist() for epoch in epochs for labels in epoch]
    assert len(next(endless_batches(dataset, 64, seed=0))[1]) == 10  # a batch above the dataset is cut to it


# ------------------------------------------------------------------------------- the float network start
@pytest.fixture()
def float_run(space: SearchSpace, tmp_path: Path) -> Path:
    return train_float(space, tmp_path / "float", epochs=2, train_subset=384, progress=False).parent


def test_a_supernet_started_from_a_float_network_computes_it_at_the_largest_candidate(
    space: SearchSpace, float_run: Path
) -> None:
    """The float network learns (the synthetic classes are separable), and a supernet started from it holds its
    weights and BN state: the largest candidate with every quantizer off scores on the validation split exactly what
    ``train_float`` measured with its own model, where a supernet from a random start is near chance."""
    record = json.loads((float_run / "float.json").read_text())
    assert (float_run / "space.yaml").is_file() and record["config"]["epochs"] == 2
    accuracy = record["record"]["accuracy"]
    assert record["record"]["accuracy_images"] == 200 and accuracy > 0.6 and record["record"]["formats"] == "fp32"
    network = load_float_network(float_run, space)
    data = load_space_data(space, train_subset=96)

    def float_accuracy(init: FloatNetwork | None) -> float:
        trainer = SupernetTrainer(space, data, space.training, seed=0, init=init)
        model = trainer.supernet.extract(space.largest())
        dequantize_(model)
        images, labels = data.val.tensors
        with torch.no_grad():
            return (model.eval()(images).argmax(1) == labels).double().mean().item()

    assert float_accuracy(network) == accuracy and float_accuracy(None) < 0.4


def test_a_run_from_a_float_network_records_it_and_keeps_its_learning_rate(
    space: SearchSpace, float_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    network = load_float_network(float_run / "float.pt", space)
    train_supernet(space, out, epochs=1, lr=0.01, init=network, progress=False)
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["training"]["lr"] == 0.01 and config["init_float"]["source"] == str(float_run / "float.pt")
    assert config["init_float"]["accuracy"] == network.record["accuracy"]
    text = training_text(training_summary(out))
    assert re.search(r" from the float network `.*float\.pt` \(0\.\d{4} val accuracy, trained in \d+ min\) at learning "
                     r"rate 0\.01,", text), text
    with pytest.raises(CheckpointError, match="started with lr=0.01, not 0.05"):
        train_supernet(space, out, lr=0.05, resume=True, progress=False)
    trained = weights(out / SUPERNET)
    train_supernet(space, out, resume=True, init=network, progress=False)  # the checkpoint's weights win
    assert all(torch.equal(v, trained[k]) for k, v in weights(out / SUPERNET).items())


def test_a_float_network_that_does_not_fit_is_refused_before_training(
    space: SearchSpace, float_run: Path, tiny_space: SpaceFactory, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="already holds a float network"):
        train_float(space, float_run, epochs=1, progress=False)
    narrower = tiny_space(SPACE_CHANGES, {"network": {"head": {"channels": 16}}}, name="narrow", folder=tmp_path)
    with pytest.raises(CheckpointError, match="another architecture .* e.g. 'conv_head.weight'.*train-float"):
        load_float_network(float_run, narrower)
    other_split = tiny_space(SPACE_CHANGES, {"dataset": {"val_size": 100}}, name="split", folder=tmp_path)
    with pytest.raises(CheckpointError, match="holding out 200 validation images .* the float network trained on"):
        load_float_network(float_run, other_split)
    train_supernet(space, tmp_path / "run", epochs=1, progress=False)
    with pytest.raises(CheckpointError, match="not a float network"):
        load_float_network(tmp_path / "run" / SUPERNET, space)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_float_network(tmp_path / "nowhere", space)


def test_an_interrupted_float_training_continues_to_the_uninterrupted_network(
    space: SearchSpace, float_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, real_epoch = tmp_path / "interrupted", train.run_epoch

    def stop_in_the_second_epoch(*args, epoch: int, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(train, "run_epoch", stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_float(space, out, epochs=2, train_subset=384, progress=False)
    assert (out / "float_checkpoint.pt").is_file() and not (out / "float.pt").exists()
    with pytest.raises(CheckpointError, match="another recipe or data"):
        train_float(space, out, epochs=3, train_subset=384, progress=False)
    trained_epochs = []

    def count(*args, epoch: int, **kwargs):
        trained_epochs.append(epoch)
        return real_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(train, "run_epoch", count)
    train_float(space, out, epochs=2, train_subset=384, progress=False)
    assert trained_epochs == [1]  # the first epoch came from the checkpoint
    resumed, straight = (safe_torch_load(folder / "float.pt") for folder in (out, float_run))
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in straight["state_dict"].items())
    assert resumed["record"]["accuracy"] == straight["record"]["accuracy"]
    assert not (out / "float_checkpoint.pt").exists()
