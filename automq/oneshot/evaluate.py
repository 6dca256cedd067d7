"""Scoring candidates: the one-shot estimator (shared supernet weights) and the stand-alone ground truth.

The one-shot estimate of a candidate activates it in the trained supernet, recomputes the BN statistics for
it on a fixed calibration subset of the training split (the running statistics gathered during training mix
every sampled candidate and are wrong for any single one), and measures accuracy and loss on the first images
of the validation split. The test split is never touched: it is for final reporting only. The stand-alone path
trains a candidate alone with the same recipe; comparing the two measures how far the estimate can be trusted.
Between the two, ``finetune_images`` scores each candidate after a short fine-tune from the shared weights, which
ranks candidates better than the plain estimate for a little more time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from automq.cost import CostModel
from automq.data import DataSplits, fixed_batches, head, make_loader
from automq.numerics.quant import scales_restored
from automq.space.space import SearchSpace
from automq.model.supernet import Supernet, recalibrate_bn
from automq.oneshot.train import (
    EVAL_BATCH_SIZE,
    SPACE_FILE,
    build_optimizer,
    build_scheduler,
    deterministic,
    epoch_seed,
    load_space_data,
    load_supernet,
    run_epoch,
    validate,
)

if TYPE_CHECKING:
    from automq.space.candidate import Candidate

__all__ = ["ESTIMATOR_THREADS", "OneShotEstimator", "torch_threads", "train_standalone"]

CALIB_BATCH_SIZE = 256
ESTIMATOR_THREADS = 1
"""Default torch intra-op threads of an estimate. An estimate is a few hundred milliseconds of small tensor work:
a second thread made it 1.4x faster on an idle 2-core machine, but 40x slower next to one other busy process,
and two 2-thread estimator processes scored 33x fewer candidates per minute than two 1-thread ones (OpenMP
threads spin waiting for a core; ``experiments/results/bench_estimator.md``). Parallel searches run estimates in
parallel processes instead (Ray Tune workers)."""


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads and restore the caller's count afterwards;
    ``None`` leaves the count alone."""
    if count is None:
        yield
        return
    _check_threads(count)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_threads(count: int | None) -> None:
    if count is not None and count < 1:
        raise ValueError(f"threads must be at least 1 (or None to keep torch's setting), got {count}")


class OneShotEstimator:
    """Accuracy, loss and analytic costs of candidates from one trained supernet, cached by candidate id.

    Args:
        space: the search space (candidates are validated against it; costs come from its :class:`CostModel`).
        supernet: the trained supernet of ``space``; the estimator changes its active candidate and BN buffers.
        data: the space's data splits; calibration uses ``data.train``, scoring ``data.val``.
        calib_images: BN-recalibration images, the first of the train split (default: ``search.calib_size``).
        val_images: validation images, the first of the val split (default: ``search.eval_size``; ``None`` in
            the space means all of them).
        batch_size: calibration batch size; larger batches give better per-batch BN estimates.
        eval_batch_size: validation batch size (only speed depends on it).
        cache: remember results by candidate id (estimates are deterministic, so this only saves time).
        finetune_images: when above 0, ``accuracy`` and ``loss`` are those of the candidate fine-tuned from the
            shared weights on the first ``finetune_images`` training images (one epoch, :meth:`finetuned`), and the
            one-shot values are kept as ``oneshot_accuracy`` and ``oneshot_loss``. ``None``: the space's
            ``search.finetune_images``. Four steps of 128 images lifted the fidelity study's Kendall tau from 0.25
            to 0.46 with a supernet trained by the sandwich rule, but not with the default recipe's supernet (0.69
            against 0.76), for 2x the time of a one-shot estimate.
        threads: torch intra-op threads while an estimate runs (the caller's count is restored afterwards);
            ``None`` uses whatever torch is set to. The default of one thread is the fastest way to share
            cores between processes (see :data:`ESTIMATOR_THREADS`); raise it for one process on an idle machine.
    """

    def __init__(
        self,
        space: SearchSpace,
        supernet: Supernet,
        data: DataSplits,
        *,
        calib_images: int | None = None,
        val_images: int | None = None,
        batch_size: int = CALIB_BATCH_SIZE,
        eval_batch_size: int = EVAL_BATCH_SIZE,
        cache: bool = True,
        threads: int | None = ESTIMATOR_THREADS,
        finetune_images: int | None = None,
    ) -> None:
        _check_threads(threads)
        self.finetune_images = space.search.finetune_images if finetune_images is None else finetune_images
        if self.finetune_images < 0:
            raise ValueError(f"finetune_images must be >= 0 (0: no fine-tuning), got {self.finetune_images}")
        self.finetune_train = head(data.train, self.finetune_images)
        self.space, self.supernet, self.data, self.threads = space, supernet, data, threads
        self.cost_model = CostModel(space)
        self.val_images = min(val_images or space.search.eval_size or len(data.val), len(data.val))
        self.calib = fixed_batches(data.train, calib_images or space.search.calib_size, batch_size)
        self.val = fixed_batches(data.val, self.val_images, eval_batch_size)
        self._cache: dict[str, dict[str, float]] | None = {} if cache else None

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        space: SearchSpace | None = None,
        data_root: str | Path | None = None,
        **kwargs: Any,
    ) -> OneShotEstimator:
        """The estimator of a training run folder: its ``supernet.pt`` and (unless given) its ``space.yaml``."""
        run_dir = Path(run_dir)
        space = space or SearchSpace.from_file(run_dir / SPACE_FILE)
        supernet = load_supernet(run_dir, space)
        return cls(space, supernet, load_space_data(space, root=data_root), **kwargs)

    def costs(self, candidate: Candidate) -> dict[str, float]:
        """The analytic costs of ``candidate``, keyed by the metric names of space files."""
        return self.cost_model.metrics(candidate)

    def estimate(self, candidate: Candidate) -> dict[str, float]:
        """``{accuracy, loss, <cost metrics>}`` of ``candidate`` with the supernet's shared weights."""
        if self._cache is not None and candidate.id in self._cache:
            return dict(self._cache[candidate.id])
        self.space.validate_candidate(candidate)
        with deterministic(), torch_threads(self.threads), scales_restored(self.supernet):
            self.supernet.set_active(candidate)
            recalibrate_bn(self.supernet, self.calib)
            result = {**validate(self.supernet, self.val), **self.costs(candidate)}
        if self.finetune_images:
            tuned = self.finetuned(candidate, train=self.finetune_train, seed=self.space.seed)
            result |= {"oneshot_accuracy": result["accuracy"], "oneshot_loss": result["loss"],
                       "accuracy": tuned["accuracy"], "loss": tuned["loss"]}
        if self._cache is not None:
            self._cache[candidate.id] = result
        return dict(result)

    __call__ = estimate

    def finetuned(self, candidate: Candidate, *, train: Dataset | None = None, epochs: int = 1,
                  seed: int = 0) -> dict[str, Any]:
        """The stand-alone path started from the shared weights: ``candidate`` extracted with its own BN statistics
        and quantizer scales, fine-tuned for ``epochs`` on ``train`` (default: the whole train split) with the
        space's recipe (:func:`train_standalone`), and scored on this estimator's validation images.

        Slower than :meth:`estimate` by the training. A few steps ranked candidates closer to their trained accuracy
        on a supernet whose shared weights served the mid-size candidates poorly, not on a well-served one
        (``experiments/results/oneshot_fidelity_medium_supernet8ep{,_nosmallest}_variants.md``); longer fine-tunes
        are the stand-alone ground truth itself."""
        self.space.validate_candidate(candidate)
        data = dataclasses.replace(self.data, train=self.data.train if train is None else train)
        with torch_threads(self.threads), scales_restored(self.supernet):
            with deterministic():
                self.supernet.set_active(candidate)
                recalibrate_bn(self.supernet, self.calib)  # the extracted start carries this candidate's statistics
            return train_standalone(self.space, candidate, data, epochs=epochs, seed=seed, init="supernet",
                                    supernet=self.supernet, val_images=self.val_images)

    def evaluate_batch(self, candidates: Iterable[Candidate]) -> list[dict[str, float]]:
        """:meth:`estimate` for each candidate, in order."""
        return [self.estimate(candidate) for candidate in candidates]

    def clear_cache(self) -> None:
        if self._cache is not None:
            self._cache.clear()


def train_standalone(
    space: SearchSpace,
    candidate: Candidate,
    data: DataSplits,
    *,
    epochs: int,
    seed: int,
    init: str = "scratch",
    supernet: Supernet | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    val_images: int | None = None,
) -> dict[str, Any]:
    """Train ``candidate`` alone (QAT in its formats) and score it on the same validation images as the
    one-shot estimator: the ground truth that the estimator's fidelity is measured against.

    ``init="scratch"`` starts from a fresh seeded initialisation, ``init="supernet"`` fine-tunes the weights
    and quantizer scales extracted from ``supernet``. The recipe is the space's ``training:`` section (SGD,
    warm-up and cosine schedule, gradient clipping) with ``epochs``, and ``lr``/``batch_size`` if given.
    Returns ``{accuracy, loss, train_loss, epochs, seed, init, wall_s}``.
    """
    if init not in ("scratch", "supernet"):
        raise ValueError(f"init must be 'scratch' or 'supernet', got {init!r}")
    if init == "supernet" and supernet is None:
        raise ValueError("init='supernet' needs the trained supernet: pass supernet=...")
    space.validate_candidate(candidate)
    start = time.perf_counter()
    overrides = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    spec = dataclasses.replace(space.training, **{k: v for k, v in overrides.items() if v is not None})
    with deterministic():
        torch.manual_seed(seed)
        model = (supernet if init == "supernet" else Supernet(space)).extract(candidate)
        optimizer = build_optimizer(model, spec)
        steps_per_epoch = -(-len(data.train) // spec.batch_size)
        scheduler = build_scheduler(optimizer, spec, steps_per_epoch)

        def step(images: Tensor, labels: Tensor) -> list[float]:
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            return [loss.item()]

        train_loss = float("nan")
        for epoch in range(spec.epochs):
            loader = make_loader(data.train, spec.batch_size, shuffle=True, seed=epoch_seed(seed, epoch))
            train_loss = run_epoch(model, loader, step, optimizer, scheduler, epoch=epoch,
                                   first_step=epoch * steps_per_epoch)["loss_0"]
        val_images = val_images or space.search.eval_size or len(data.val)
        result = validate(model, fixed_batches(data.val, val_images, EVAL_BATCH_SIZE))
    return {**result, "train_loss": train_loss, "epochs": spec.epochs, "seed": seed, "init": init,
            "wall_s": time.perf_counter() - start}
