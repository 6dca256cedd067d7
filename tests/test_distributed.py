"""Supernet training on several workers: the all-reduced gradient is the mean of the workers' gradients, two
workers train the weights one process gets when it computes each shard's loss with that shard's BN statistics, and
a Ray Train run killed with SIGKILL resumes to the weights of an uninterrupted run.

Why not the weights of a one-process run on whole batches: the supernet trains with BN in training mode, which
normalises with the statistics of the images in the forward pass; each worker only sees its shard, so its
activations, and so its gradients, differ from a whole-batch forward (checked below: they do differ). What holds
exactly is the per-shard equality. The two-process runs without Ray use torch.distributed's gloo backend directly,
the same collective Ray Train sets up, so only the Ray tests pay Ray's start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from automq.errors import SpaceError
from automq.io import read_jsonl, safe_torch_load
from automq.model.supernet import Supernet
from automq.oneshot.distributed import all_reduce_gradients
from automq.oneshot.train import (
    METRICS,
    SUPERNET,
    DataParallel,
    SupernetTrainer,
    deterministic,
    load_space_data,
    sandwich_step,
    train_supernet,
)
from automq.space.space import SearchSpace

from _spaces import SpaceFactory

EPOCHS = 3
SPACE_CHANGES = {  # epochs of a few seconds on 2 workers, so a kill lands between the first and the last
    "dataset": {"val_size": 128},
    "training": {"epochs": EPOCHS, "batch_size": 32, "train_size": 512, "num_random": 1},
    "search": {"eval_size": 128, "calib_size": 64},
}
EPS32 = torch.finfo(torch.float32).eps
CLI = [sys.executable, "-m", "automq.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def space(tiny_space: SpaceFactory, tmp_path: Path) -> SearchSpace:
    return tiny_space(SPACE_CHANGES, folder=tmp_path)


# ------------------------------------------------------------------------------------------- two gloo processes
def in_two_processes(task: Callable[..., None], folder: Path, *args: object) -> None:
    """Run ``task(rank, folder, *args)`` in two processes joined by a gloo process group."""
    mp.spawn(_join_group, args=(task, str(folder), args), nprocs=2, join=True)


def _join_group(rank: int, task: Callable[..., None], folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/gloo_store", rank=rank, world_size=2)
    try:
        task(rank, folder, *args)
        # both ranks done before either tears its group down: a rank destroying its gloo group while the other still
        # talks to it can abort the other with "terminate called without an active exception" (seen once in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _parallel(rank: int) -> DataParallel:
    return DataParallel(rank=rank, world_size=2, sum_gradients=all_reduce_gradients)


def _local_and_combined_gradients(rank: int, folder: str, space_file: str) -> None:
    space = SearchSpace.from_file(space_file)
    torch.manual_seed(0)
    supernet = Supernet(space)
    images, labels = load_space_data(space, train_subset=32).train.tensors
    parallel = _parallel(rank)
    shard_images, shard_labels, share = parallel.shard(images, labels)
    sandwich_step(supernet, shard_images, shard_labels, [space.largest(), space.smallest()])
    local = {name: p.grad.clone() for name, p in supernet.named_parameters() if p.grad is not None}
    parallel.combine(supernet, share)
    combined = {name: p.grad.clone() for name, p in supernet.named_parameters() if p.grad is not None}
    torch.save({"local": local, "combined": combined}, f"{folder}/gradients{rank}.pt")


def _train_one_epoch(rank: int, folder: str, space_file: str) -> None:
    space = SearchSpace.from_file(space_file)
    with deterministic():
        trainer = SupernetTrainer(space, load_space_data(space), space.training, seed=0, parallel=_parallel(rank))
        trainer.train_epoch()
    torch.save(dict(trainer.supernet.named_parameters()), f"{folder}/weights{rank}.pt")


def _train_run(rank: int, folder: str, space_file: str) -> None:
    train_supernet(SearchSpace.from_file(space_file), f"{folder}/run", progress=False, parallel=_parallel(rank))


# ------------------------------------------------------------------------------------------- tests
def test_shards_split_each_batch_and_a_worker_without_images_is_refused() -> None:
    images, labels = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    shards = [DataParallel(rank=r, world_size=2).shard(images, labels) for r in (0, 1)]
    assert [s[1].tolist() for s in shards] == [[0, 1], [2, 3, 4]] and [s[2] for s in shards] == [0.4, 0.6]
    DataParallel(world_size=2).check_batches(train_size=66, batch_size=32)  # the last batch holds 2 images
    with pytest.raises(SpaceError, match="a batch of 1"):
        DataParallel(world_size=2).check_batches(train_size=65, batch_size=32)
    with pytest.raises(SpaceError, match="3 workers need at least 3 images"):
        DataParallel(world_size=3).check_batches(train_size=64, batch_size=2)


def test_the_combined_gradient_is_the_mean_of_the_two_workers_local_gradients(
        space: SearchSpace, tmp_path: Path) -> None:
    in_two_processes(_local_and_combined_gradients, tmp_path, str(space.source))
    workers = [torch.load(tmp_path / f"gradients{rank}.pt") for rank in (0, 1)]
    local0, local1 = workers[0]["local"], workers[1]["local"]
    assert local0.keys() == local1.keys() == workers[0]["combined"].keys() and len(local0) > 10
    assert any(not torch.equal(local0[name], local1[name]) for name in local0)  # the shards' gradients differ
    for name in local0:
        a, b = local0[name].double(), local1[name].double()
        mean = (a + b) / 2
        tolerance = EPS32 * (a.abs() + b.abs())  # two scalings by 1/2 (exact) and one float32 addition
        for worker in workers:
            assert torch.all((worker["combined"][name].double() - mean).abs() <= tolerance), name
        assert torch.equal(workers[0]["combined"][name], workers[1]["combined"][name])  # the same step everywhere


def test_two_workers_train_the_weights_of_one_process_that_normalises_each_shard_on_its_own(
        space: SearchSpace, tmp_path: Path) -> None:
    in_two_processes(_train_one_epoch, tmp_path, str(space.source))
    workers = [torch.load(tmp_path / f"weights{rank}.pt") for rank in (0, 1)]
    with deterministic():
        per_shard = _one_process_epoch(space, per_shard_bn=True)
        whole_batch = _one_process_epoch(space, per_shard_bn=False)
    for name, weight in per_shard.items():
        # bit for bit: each shard's gradient is computed alike, halving is exact, and a sum of two is one rounding
        assert torch.equal(workers[0][name], weight) and torch.equal(workers[1][name], weight), name
    assert max(float((whole_batch[n] - w).abs().max()) for n, w in per_shard.items()) > 1e-3  # BN on whole batches


def _one_process_epoch(space: SearchSpace, *, per_shard_bn: bool) -> dict[str, torch.Tensor]:
    """One epoch in one process; with ``per_shard_bn`` each step's gradient is the mean of the two half batches'
    gradients, each half through the network on its own (the oracle of two workers)."""
    trainer = SupernetTrainer(space, load_space_data(space), space.training, seed=0)
    params = list(trainer.supernet.parameters())

    def per_shard_step(images: torch.Tensor, labels: torch.Tensor) -> list[float]:
        candidates = trainer.step_candidates()
        half, grads, losses = len(labels) // 2, [], []
        for part in (slice(0, half), slice(half, None)):
            trainer.supernet.zero_grad(set_to_none=True)
            losses.append(sandwich_step(trainer.supernet, images[part], labels[part], candidates))
            grads.append([p.grad for p in params])
        for p, first, second in zip(params, *grads):
            p.grad = None if first is None else (first + second) / 2
        return losses[0]

    if per_shard_bn:
        trainer._step = per_shard_step
    trainer.train_epoch()
    return {name: p.detach().clone() for name, p in trainer.supernet.named_parameters()}


def test_the_training_path_imports_no_ray() -> None:
    code = "import sys, automq.oneshot.distributed, automq.cli; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)


def test_address_without_workers_is_one_clear_error(space: SearchSpace, tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "train-supernet", str(space.source), "--out", str(tmp_path / "run"),
                             "--address", "auto"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 2 and result.stderr.startswith("automq: error: --address joins a Ray cluster")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_ray_train_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(
        space: SearchSpace, tmp_path: Path) -> None:
    in_two_processes(_train_run, tmp_path, str(space.source))  # the uninterrupted run, without Ray
    out = tmp_path / "ray_run"
    command = [*CLI, "train-supernet", str(space.source), "--out", str(out), "--workers", "2", "--device", "cpu"]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while not list(read_jsonl(out / METRICS)) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        process.wait()
    killed_at = len(list(read_jsonl(out / METRICS)))
    assert 1 <= killed_at < EPOCHS and not (out / SUPERNET).exists(), (tmp_path / "stderr.txt").read_text()[-2000:]
    subprocess.run([*command, "--resume"], env=ENV, check=True, timeout=300, capture_output=True)
    assert [r["epoch"] for r in read_jsonl(out / METRICS)] == list(range(1, EPOCHS + 1))
    info = json.loads((out / "run.json").read_text())  # the user's commands, not the Ray workers'
    assert info["command"][1:] == command[3:] and info["resumes"][0]["command"][1:] == [*command[3:], "--resume"]
    expected = safe_torch_load(tmp_path / "run" / SUPERNET)["state_dict"]
    resumed = safe_torch_load(out / SUPERNET)["state_dict"]
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)
