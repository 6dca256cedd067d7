"""Supernet training on several workers with Ray Train: the same training loop, data-parallel.

:func:`train_supernet_on_workers` runs :func:`automq.oneshot.train.train_supernet` in every worker of a
``ray.train.torch.TorchTrainer`` (gloo on CPUs, NCCL on GPUs). Every worker draws the same global batches and the
same candidates (the run's seed) and trains them on its own shard of each batch; :func:`all_reduce_gradients`
adds the workers' share-weighted gradients before the clipping and the optimizer step, so the weights stay the
same on every worker (:class:`~automq.oneshot.train.DataParallel`). BN batch statistics are each shard's own: a
run on N workers equals one process that computes each shard's loss with its own BN statistics and averages them,
not a one-process run on whole batches. The training losses in ``metrics.jsonl`` are worker 0's, on its shards.

Worker 0 writes the run folder exactly as a one-process run does (``checkpoint.pt`` atomically every epoch,
``metrics.jsonl``, ``supernet.pt``), so ``estimate`` and ``search`` read it unchanged and ``--resume`` continues a
run whose driver or worker was killed, from its last finished epoch, on any number of workers. A worker failure
ends the run (Ray Train's own retries are off: the run folder's checkpoint is the one to resume from). On several
machines, ``--out`` must be on storage every machine shares. Ray is imported only inside these functions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from automq.errors import AutomqError, RayClusterError
from automq.oneshot.train import SUPERNET, DataParallel, FloatNetwork, run_config, train_supernet
from automq.space.space import SearchSpace

__all__ = ["all_reduce_gradients", "train_supernet_on_workers"]

RAY_FOLDER = "ray"  # inside the run folder: Ray's session files and Ray Train's run records


def all_reduce_gradients(model: nn.Module) -> None:
    """Sum ``model``'s gradients over the processes of the default torch.distributed group, in place.

    One flat buffer, so there is one collective per step instead of one per tensor; every process must hold
    gradients for the same parameters (they train the same candidates).
    """
    grads = [param.grad for param in model.parameters() if param.grad is not None]
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def train_supernet_on_workers(
    space: SearchSpace,
    out_dir: str | Path,
    *,
    workers: int,
    address: str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    train_subset: int | None = None,
    data_root: str | Path | None = None,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    lr: float | None = None,
    init: FloatNetwork | None = None,
) -> Path:
    """Train the supernet of ``space`` into ``out_dir`` on ``workers`` Ray Train workers; returns ``supernet.pt``.

    ``address=None`` starts a private local Ray instance (session files under ``out_dir/ray``); ``auto`` or
    ``HOST:PORT`` joins a running cluster. On a CUDA ``device`` each worker gets one GPU. The other arguments
    are :func:`~automq.oneshot.train.train_supernet`'s; a run folder in the wrong state is reported before Ray starts.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from automq.ray_cluster import ray_session

    if workers < 1:
        raise RayClusterError(f"--workers {workers}: need at least one worker")
    out = Path(out_dir).resolve()  # workers run in folders of their own
    run_config(space, out, resume=resume, epochs=epochs, train_subset=train_subset, seed=seed, lr=lr)
    use_gpu = torch.device(device).type == "cuda"
    config = {"space": space, "out": str(out), "cwd": os.getcwd(), "argv": sys.argv, "use_gpu": use_gpu,
              "options": {"epochs": epochs, "resume": resume, "train_subset": train_subset, "seed": seed,
                          "data_root": None if data_root is None else str(data_root), "lr": lr, "init": init}}
    with ray_session(address, workers, out / RAY_FOLDER):
        trainer = TorchTrainer(
            _worker_loop, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(storage_path=str(out / RAY_FOLDER), name="train",
                                 failure_config=FailureConfig(max_failures=0)))
        try:
            trainer.fit()
        except TrainingFailedError as error:
            raise _user_error(error) or RayClusterError(
                f"supernet training on {workers} workers failed ({_last_line(error)}); the last finished epoch is "
                f"in {out}: continue with --resume") from error
    return out / SUPERNET


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the one-process training run as rank ``world_rank`` of ``world_size``."""
    import ray.train
    import ray.train.torch

    if os.path.isdir(config["cwd"]):  # relative dataset roots mean what they mean to the driver
        os.chdir(config["cwd"])
    sys.argv = config["argv"]  # run.json records the user's command, not the Ray worker's
    context = ray.train.get_context()
    parallel = DataParallel(rank=context.get_world_rank(), world_size=context.get_world_size(),
                            sum_gradients=all_reduce_gradients)
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    train_supernet(config["space"], config["out"], progress=False, device=device, parallel=parallel,
                   **config["options"])


def _user_error(error: BaseException) -> AutomqError | None:
    """The :class:`AutomqError` a worker raised (bad input found inside a worker), if that is why training failed."""
    failures = getattr(error, "worker_failures", {})
    for failure in (error, *failures.values()):
        for cause in _causes(failure):
            if isinstance(cause, AutomqError):
                return cause
    return None


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, what it was raised from and what a Ray task error carries (``cause``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__


def _last_line(error: BaseException) -> str:
    """The last non-blank line of an error message: where Ray puts the reason under its traceback."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__
