"""Scoring candidates: the one-shot estimator (shared supernet weights) and the stand-alone ground truth.

The one-shot estimate of a candidate activates it in the trained supernet, recomputes the BN statistics for
it on a fixed calibration subset of the training split (the running statistics gathered during training mix
every sampled candidate and are wrong for any single one), and measures accuracy and loss on the first images
of the validation split. The test split is never touched: it is for final reporting only. The stand-alone path
trains a candidate alone with the same recipe; comparing the two measures how far the estimate can be trusted.
Between the two, ``finetune_images`` scores each candidate after a short fine-tune from the shared weights, which
ranks candidates better than the plain estimate for a little more time.

Every score keeps which images were classified right (:class:`~automq.oneshot.paired.Correctness`), so an accuracy
carries its binomial standard error (``accuracy_se``) and two candidates scored on the same images get the paired
standard error of their difference (:meth:`OneShotEstimator.paired_difference`). A search scores on the first
``search.eval_size`` images; ``estimate(candidate, images=N)`` re-scores on the first N (up to the whole split),
which is how the search's front is refined (:mod:`automq.search.refine`).

An estimate does not depend on the torch thread count. The one computation whose summation order changed with
the thread count is the batch statistics of BN recalibration (the convolutions return channels-last tensors,
whose per-channel sums torch splits between threads); a BN mean moved by 1e-4 flips the fake-quantized values
that sit on a rounding boundary, and that moved accuracies by 0.2-0.4 points. Recalibration therefore always runs
on :data:`CALIBRATION_THREADS`; the eval-mode forward, whose outputs are bit-identical for any thread count
(measured, and checked by the tests), runs on ``threads``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from automq.cost import CostModel
from automq.data import DataSplits, fixed_batches, head
from automq.device import module_device
from automq.errors import CheckpointError, DataError
from automq.io import atomic_torch_save
from automq.numerics.quant import dequantize_, scales_restored
from automq.space.space import SearchSpace
from automq.model.supernet import Supernet, recalibrate_bn
from automq.oneshot.paired import BLOCKS_KEY, BlockCorrectness, Correctness, Difference, paired_difference
from automq.oneshot.train import (EVAL_BATCH_SIZE, FLOAT_FILE, FLOAT_KIND, FLOAT_RECORD, SPACE_FILE, data_split,
                                  deterministic, foreign_tensors, load_space_data, load_supernet, space_fingerprint,
                                  train_model, write_run_info)

if TYPE_CHECKING:
    from automq.space.candidate import Candidate
    from automq.space.schema import TrainingSpec

__all__ = [
    "CALIBRATION_THREADS", "ESTIMATOR_THREADS", "INITS", "OneShotEstimator", "Score", "load_float_weights",
    "score_model", "torch_threads", "train_float", "train_float_parent", "train_standalone",
]  # fmt: skip

CALIB_BATCH_SIZE = 256
FLOAT_CHECKPOINT = "float_checkpoint.pt"
INITS = ("scratch", "supernet", "float")
"""Where a stand-alone training starts (:func:`train_standalone`)."""
ESTIMATOR_THREADS = 1
"""Default torch intra-op threads of an estimate. An estimate is a few hundred milliseconds of small tensor work:
a second thread made it 1.4x faster on an idle 2-core machine, but 40x slower next to one other busy process,
and two 2-thread estimator processes scored 33x fewer candidates per minute than two 1-thread ones (OpenMP
threads spin waiting for a core; ``experiments/results/bench_estimator.md``). Parallel searches run estimates in
parallel processes instead (Ray Tune workers)."""
CALIBRATION_THREADS = 1
"""Torch threads of BN recalibration, whatever the estimator's ``threads``: the batch statistics are the one
thread-count-dependent sum of an estimate (see the module docstring), so they are always summed in one order."""


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


class Score(NamedTuple):
    """One scoring of a model: mean cross-entropy and which images it classified right."""

    loss: float
    correctness: Correctness

    def metrics(self) -> dict[str, float]:
        """``{accuracy, accuracy_se, accuracy_images, loss}``, as a trial records them."""
        c = self.correctness
        return {"accuracy": c.accuracy, "accuracy_se": c.se, "accuracy_images": c.images, "loss": self.loss}

    def then(self, rest: Score) -> Score:
        """This score followed by ``rest``, a score of the same model on the images after these."""
        first, second = self.correctness, rest.correctness
        loss = (self.loss * first.images + rest.loss * second.images) / (first.images + second.images)
        return Score(loss, Correctness.from_bools(np.concatenate([first.bools(), second.bools()])))


def score_model(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> Score:
    """Per-image correctness and mean cross-entropy of ``model`` in eval mode over ``batches``.

    Per-image losses are summed in float64 in image order, so the mean does not depend on how torch splits a
    batch's reduction between threads.
    """
    was_training = model.training
    model.eval()
    correct, losses = [], []
    try:
        with torch.no_grad():
            for images, labels in batches:
                logits = model(images)
                correct.append((logits.argmax(dim=1) == labels).cpu().numpy())
                losses.append(F.cross_entropy(logits, labels, reduction="none").cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)
    if not correct:
        raise DataError("no validation images to score on: the validation split is empty")
    per_image = np.concatenate(losses)
    return Score(float(per_image.sum() / len(per_image)), Correctness.from_bools(np.concatenate(correct)))


class OneShotEstimator:
    """Accuracy (with its standard error), loss and analytic costs of candidates from one trained supernet.

    Scores are cached by candidate id and image count, with the per-image correctness behind each accuracy.

    Args:
        space: the search space (candidates are validated against it; costs come from its :class:`CostModel`).
        supernet: the trained supernet of ``space``; the estimator changes its active candidate and BN buffers.
            Estimates run on its device; :meth:`to` moves both to another one.
        data: the space's data splits; calibration uses ``data.train``, scoring ``data.val``. In-memory splits are
            moved to the supernet's device once.
        calib_images: BN-recalibration images, the first of the train split (default: ``search.calib_size``).
        calib_blocks: calibration blocks a refined score averages over (default: ``search.calib_blocks``): block
            ``k`` is the ``k``-th run of ``calib_images`` training images, block 0 the search-time calibration.
            :meth:`estimate` with ``blocks=K`` recalibrates the candidate on each of the first ``K`` blocks in
            turn and averages its outcomes: a deployed candidate's accuracy moves with its calibration images by
            an SD of 0.1-0.2 points, as much as the contenders at a budget differ (``calibration_noise_16ep.md``).
        val_images: validation images of a search-time estimate, the first of the val split (default:
            ``search.eval_size``; ``None`` in the space means all of them). ``estimate(images=...)`` uses more.
        batch_size: calibration batch size; larger batches give better per-batch BN estimates.
        eval_batch_size: validation batch size (only speed depends on it).
        cache: remember scores by candidate id and image count (estimates are deterministic, so this only saves
            time, and it keeps the per-image correctness that :meth:`paired_difference` compares).
        finetune_images: when above 0, ``accuracy`` and ``loss`` are those of the candidate fine-tuned from the
            shared weights on the first ``finetune_images`` training images (one epoch, :meth:`finetuned`), and the
            one-shot values are kept as ``oneshot_accuracy`` and ``oneshot_loss``. ``None``: the space's
            ``search.finetune_images``. Four steps of 128 images lifted the fidelity study's Kendall tau from 0.25
            to 0.46 with a supernet trained by the sandwich rule, but not with the default recipe's supernet (0.69
            against 0.76), for 2x the time of a one-shot estimate.
        threads: torch intra-op threads of the validation forward (the caller's count is restored afterwards);
            ``None`` uses whatever torch is set to. Estimates are the same for any count (BN recalibration always
            runs on :data:`CALIBRATION_THREADS`); the default of one thread is the fastest way to share cores
            between processes (see :data:`ESTIMATOR_THREADS`); raise it for one process on an idle machine.
    """

    def __init__(
        self,
        space: SearchSpace,
        supernet: Supernet,
        data: DataSplits,
        *,
        calib_images: int | None = None,
        calib_blocks: int | None = None,
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
        self.space, self.supernet, self.threads = space, supernet, threads
        self.cost_model = CostModel(space)
        self.max_images = len(data.val)
        self.val_images = min(val_images or space.search.eval_size or self.max_images, self.max_images)
        self.calib_images, self.batch_size = calib_images or space.search.calib_size, batch_size
        self.calib_blocks = space.search.calib_blocks if calib_blocks is None else calib_blocks
        if self.calib_blocks < 1:
            raise ValueError(f"calib_blocks must be at least 1, got {self.calib_blocks}")
        self.eval_batch_size = eval_batch_size
        self.cache = cache
        self._scores: dict[tuple[str, int, int], tuple[dict[str, float], Correctness]] = {}  # id, images, block
        self._place(data)
        blocks_images = self.calib_blocks * self.calib_images
        if self.calib_blocks > 1 and blocks_images > len(self.data.train):  # refused now, not after a search
            raise DataError(f"{self.calib_blocks} calibration blocks of {self.calib_images} images need "
                            f"{blocks_images} training images, but the training split holds "
                            f"{len(self.data.train)}; lower search.calib_blocks or search.calib_size")

    @property
    def device(self) -> torch.device:
        """Where the supernet, and the images it is scored on, live."""
        return module_device(self.supernet)

    def to(self, device: torch.device | str) -> OneShotEstimator:
        """Move the supernet and the images to ``device`` (a Ray Tune trial's GPU, or back to the CPU); returns
        ``self``. Cached scores are kept: formats round the same on every device (float32 fake quantization); only
        another summation order of a GPU can move an image that sits on a rounding boundary."""
        self.supernet.to(device)
        self._place(self.data)
        return self

    def _place(self, data: DataSplits) -> None:
        """``data`` and the fixed calibration and validation batches on the supernet's device."""
        self.data = data.to(self.device)
        self.finetune_train = head(self.data.train, self.finetune_images)
        self.calib = fixed_batches(self.data.train, self.calib_images, self.batch_size, device=self.device)
        self._block_calib = {0: self.calib}
        self.val = self._batches(self.val_images)

    def _calibration(self, block: int) -> list[tuple[Tensor, Tensor]]:
        """The BN-recalibration batches of calibration block ``block`` (0: the search-time ones)."""
        if block not in self._block_calib:
            first, last = block * self.calib_images, (block + 1) * self.calib_images
            if last > len(self.data.train):
                raise DataError(f"calibration block {block} needs training images {first} to {last - 1}, but the "
                                f"training split holds {len(self.data.train)}; lower search.calib_blocks")
            self._block_calib[block] = fixed_batches(self.data.train, last, self.batch_size, start=first,
                                                     device=self.device)
        return self._block_calib[block]

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        space: SearchSpace | None = None,
        data_root: str | Path | None = None,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> OneShotEstimator:
        """The estimator of a training run folder: its ``supernet.pt`` and (unless given) its ``space.yaml``,
        loaded onto ``device`` with the in-memory images.

        A given ``space`` must hold out the same validation images as the run's (``dataset.val_size`` and
        ``seed``); otherwise some validation images would be images the supernet was trained on.
        """
        run_dir = Path(run_dir)
        space = space or SearchSpace.from_file(run_dir / SPACE_FILE)
        supernet = load_supernet(run_dir, space, device=device)  # refuses another validation split
        return cls(space, supernet, load_space_data(space, root=data_root), **kwargs)

    def costs(self, candidate: Candidate) -> dict[str, float]:
        """The analytic costs of ``candidate``, keyed by the metric names of space files."""
        return self.cost_model.metrics(candidate)

    def estimate(self, candidate: Candidate, *, images: int | None = None, blocks: int = 1) -> dict[str, float]:
        """``{accuracy, accuracy_se, accuracy_images, loss, <cost metrics>}`` of ``candidate`` with the supernet's
        shared weights, scored on the first ``images`` validation images (default: :attr:`val_images`).

        ``blocks`` above 1: the mean over the first ``blocks`` calibration blocks (the loss too), with the standard
        error of :func:`~automq.oneshot.paired.crossed_mean` (images and blocks both sampled) and
        :data:`~automq.oneshot.paired.BLOCKS_KEY` recording their number."""
        if blocks == 1:
            return dict(self._score(candidate, images)[0])
        scores = self._block_scores(candidate, images, blocks)  # each block scored once
        outcomes = BlockCorrectness(tuple(correctness for _, correctness in scores))
        return {**scores[0][0], "accuracy": outcomes.accuracy, "accuracy_se": outcomes.se, BLOCKS_KEY: blocks,
                "loss": float(np.mean([metrics["loss"] for metrics, _ in scores]))}

    __call__ = estimate

    def correctness(self, candidate: Candidate, *, images: int | None = None) -> Correctness:
        """Which of the first ``images`` validation images ``candidate`` classifies right (scored if need be)."""
        return self._score(candidate, images)[1]

    def block_correctness(self, candidate: Candidate, *, images: int | None = None, blocks: int | None = None
                          ) -> BlockCorrectness:
        """Which of the first ``images`` validation images ``candidate`` classifies right under each of the first
        ``blocks`` calibration blocks (default: :attr:`calib_blocks`)."""
        scores = self._block_scores(candidate, images, self.calib_blocks if blocks is None else blocks)
        return BlockCorrectness(tuple(correctness for _, correctness in scores))

    def _block_scores(self, candidate: Candidate, images: int | None, blocks: int
                      ) -> list[tuple[dict[str, float], Correctness]]:
        """The score of ``candidate`` under each of the first ``blocks`` calibration blocks."""
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")
        return [self._score(candidate, images, block) for block in range(blocks)]

    def paired_difference(self, a: Candidate, b: Candidate, *, images: int | None = None) -> Difference:
        """``accuracy(a) - accuracy(b)`` on the same images, with its paired standard error."""
        return paired_difference(self.correctness(a, images=images), self.correctness(b, images=images))

    def _score(self, candidate: Candidate, images: int | None, block: int = 0) -> tuple[dict[str, float], Correctness]:
        images = self._image_count(images)
        key = (candidate.id, images, block)
        if self.cache and key in self._scores:
            return self._scores[key]
        self.space.validate_candidate(candidate)
        score = self._one_shot(candidate, images, block)
        metrics, correctness = score.metrics(), score.correctness
        if self.finetune_images:
            tuned, correctness = self._finetuned(candidate, self.finetune_train, epochs=1, seed=self.space.seed,
                                                 images=images, block=block)
            metrics = {**Score(tuned["loss"], correctness).metrics(), "oneshot_accuracy": metrics["accuracy"],
                       "oneshot_loss": metrics["loss"]}
        result = ({**metrics, **self.costs(candidate)}, correctness)
        if self.cache:
            self._scores[key] = result
        return result

    def _one_shot(self, candidate: Candidate, images: int, block: int) -> Score:
        """The shared weights' score on the first ``images`` validation images after recalibrating on calibration
        block ``block``, continuing a cached shorter one."""
        done = self._scored_prefix(candidate, images, block)
        start = done.correctness.images if done else 0
        with deterministic(), scales_restored(self.supernet):
            self.supernet.set_active(candidate)
            with torch_threads(CALIBRATION_THREADS):
                recalibrate_bn(self.supernet, self._calibration(block))
            batches = self.val if (start, images) == (0, self.val_images) else self._batches(images, start)
            with torch_threads(self.threads):
                score = score_model(self.supernet, batches)
        return done.then(score) if done else score

    def _image_count(self, images: int | None) -> int:
        if images is None:
            return self.val_images
        if not 1 <= images <= self.max_images:
            raise DataError(f"images={images} is out of range: the validation split holds {self.max_images} "
                            f"images; score on 1..{self.max_images}")
        return images

    def _batches(self, images: int, start: int = 0) -> list[tuple[Tensor, Tensor]]:
        return fixed_batches(self.data.val, images, self.eval_batch_size, start=start, device=self.device)

    def _scored_prefix(self, candidate: Candidate, images: int, block: int) -> Score | None:
        """The cached one-shot score of ``candidate`` on the most of the first ``images`` images that a re-scoring
        can continue: recalibration repeats the same BN statistics, and a prefix of whole batches was computed on
        the very batches a scoring from the start would use, so the continued score equals a fresh one (the mean
        loss up to float64 rounding). Re-scoring the search's front on the whole split then skips the search's
        images."""
        if not self.cache or self.finetune_images:
            return None
        done = [n for (key, n, b) in self._scores
                if (key, b) == (candidate.id, block) and n < images and n % self.eval_batch_size == 0]
        if not done:
            return None
        metrics, correctness = self._scores[(candidate.id, max(done), block)]
        return Score(metrics["loss"], correctness)

    def finetuned(self, candidate: Candidate, *, train: Dataset | None = None, epochs: int = 1,
                  seed: int = 0) -> dict[str, Any]:
        """The stand-alone path started from the shared weights: ``candidate`` extracted with its own BN statistics
        and quantizer scales, fine-tuned for ``epochs`` on ``train`` (default: the whole train split) with the
        space's recipe (:func:`train_standalone`), and scored on this estimator's validation images.

        Slower than :meth:`estimate` by the training. A few steps ranked candidates closer to their trained accuracy
        on a supernet whose shared weights served the mid-size candidates poorly, not on a well-served one
        (``experiments/results/oneshot_fidelity_medium_supernet8ep{,_nosmallest}_variants.md``); longer fine-tunes
        are the stand-alone ground truth itself. Training sums depend on the thread count, so this does too."""
        return self._finetuned(candidate, train, epochs=epochs, seed=seed, images=self.val_images)[0]

    def _finetuned(self, candidate: Candidate, train: Dataset | None, *, epochs: int, seed: int,
                   images: int, block: int = 0) -> tuple[dict[str, Any], Correctness]:
        self.space.validate_candidate(candidate)
        data = dataclasses.replace(self.data, train=self.data.train if train is None else train)
        with scales_restored(self.supernet):
            with deterministic(), torch_threads(CALIBRATION_THREADS):
                self.supernet.set_active(candidate)
                # the extracted start carries this candidate's statistics
                recalibrate_bn(self.supernet, self._calibration(block))
            with torch_threads(self.threads):
                return _train_and_score(self.space, candidate, data, epochs=epochs, seed=seed, init="supernet",
                                        supernet=self.supernet, val_images=images)

    def evaluate_batch(self, candidates: Iterable[Candidate]) -> list[dict[str, float]]:
        """:meth:`estimate` for each candidate, in order."""
        return [self.estimate(candidate) for candidate in candidates]

    def clear_cache(self) -> None:
        self._scores.clear()


def train_standalone(
    space: SearchSpace,
    candidate: Candidate,
    data: DataSplits,
    *,
    epochs: int,
    seed: int,
    init: str = "scratch",
    supernet: Supernet | None = None,
    parent: Mapping[str, Tensor] | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    val_images: int | None = None,
) -> dict[str, Any]:
    """Train ``candidate`` alone (QAT in its formats) and score it on the same validation images as the
    one-shot estimator: the ground truth that the estimator's fidelity is measured against.

    ``init="scratch"`` starts from a fresh seeded initialisation, ``init="supernet"`` fine-tunes the weights
    and quantizer scales extracted from ``supernet``, ``init="float"`` fine-tunes ``parent``, the state of a float
    network of the candidate's architecture (:func:`train_float_parent`): quantization-aware training from a
    pretrained float model, as a user deploys a format assignment, with no weight the supernet trained.
    The recipe is the space's ``training:`` section (SGD, warm-up and cosine schedule, gradient clipping) with
    ``epochs``, and ``lr``/``batch_size`` if given. Training runs on ``supernet``'s device (the CPU without one).
    Returns ``{accuracy, accuracy_se, accuracy_images, loss, train_loss, epochs, seed, init, wall_s}``.
    """
    return _train_and_score(space, candidate, data, epochs=epochs, seed=seed, init=init, supernet=supernet,
                            parent=parent, lr=lr, batch_size=batch_size, val_images=val_images)[0]


def train_float_parent(space: SearchSpace, candidate: Candidate, data: DataSplits, *, epochs: int, seed: int,
                       val_images: int | None = None, device: torch.device | str = "cpu", progress: bool = False,
                       checkpoint: Path | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``candidate``'s architecture trained from scratch in ``fp32`` (every layer dequantized, the formats
    ignored) with the space's recipe for ``epochs``, on ``device``: the pretrained network of ``init="float"``
    (resumable through ``checkpoint``: :func:`~automq.oneshot.train.train_model`).
    Returns its ``state_dict`` (weights and BN, no quantizer scales; on the CPU) and the record of
    :func:`train_standalone`, whose accuracy is the float reference of that architecture."""
    start = time.perf_counter()
    device = torch.device(device)
    data = data.to(device)

    def build() -> nn.Module:
        model = Supernet(space).extract(candidate)
        dequantize_(model)
        return model.to(device)

    spec = dataclasses.replace(space.training, epochs=epochs)
    model, train_loss, score = _fit(build, data, spec, seed=seed, val_images=val_images or len(data.val),
                                    device=device, progress=progress, checkpoint=checkpoint)
    record = {**score.metrics(), "train_loss": train_loss, "epochs": epochs, "seed": seed, "init": "scratch",
              "formats": "fp32", "train_images": len(data.train), "wall_s": time.perf_counter() - start}
    return {k: v.cpu() for k, v in model.state_dict().items()}, record


def train_float(space: SearchSpace, out_dir: str | Path, *, epochs: int | None = None,
                train_subset: int | None = None, data_root: str | Path | None = None, seed: int | None = None,
                device: torch.device | str = "cpu", progress: bool = True) -> Path:
    """Train the float network of ``space``'s largest architecture (:func:`train_float_parent`, scored on the whole
    validation split) into ``out_dir`` and return the path of its ``float.pt``, which ``train_supernet(init=
    load_float_network(path, space))`` starts the supernet from. ``epochs``, ``train_subset`` and ``seed`` default to
    the space's. A folder that holds one already is refused; an interrupted run, given the same command again,
    continues from its last finished epoch (``float_checkpoint.pt``, removed when the network is written)."""
    out = Path(out_dir)
    path, checkpoint = out / FLOAT_FILE, out / FLOAT_CHECKPOINT
    if path.exists():
        raise CheckpointError(f"{path} already holds a float network; choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    seed = space.seed if seed is None else seed
    data = load_space_data(space, root=data_root, train_subset=train_subset or space.training.train_size)
    state, record = train_float_parent(space, space.largest(), data, epochs=epochs or space.training.epochs,
                                       seed=seed, device=device, progress=progress, checkpoint=checkpoint)
    write_run_info(out, space, {"epochs": record["epochs"], "train_images": record["train_images"], "seed": seed,
                                "data_root": None if data_root is None else str(data_root)}, FLOAT_RECORD,
                   record=record)
    atomic_torch_save({"kind": FLOAT_KIND, "space": space_fingerprint(space), "split": data_split(space),
                       "record": record, "state_dict": state}, path)
    checkpoint.unlink(missing_ok=True)
    return path


def load_float_weights(model: nn.Module, parent: Mapping[str, Tensor]) -> None:
    """Copy a float network's weights and BN state (:func:`train_float_parent`) into the quantized ``model`` of
    the same architecture; its quantizer scales, which the float network has none of, stay to be initialised from
    the first tensors they see. Raises ``ValueError`` when the architectures differ."""
    foreign = foreign_tensors(model, parent)
    if foreign:
        raise ValueError(f"the float parent is another architecture than the candidate ({len(foreign)} tensors "
                         f"differ, e.g. {foreign[0]!r})")
    model.load_state_dict(parent, strict=False)


def _train_and_score(
    space: SearchSpace,
    candidate: Candidate,
    data: DataSplits,
    *,
    epochs: int,
    seed: int,
    init: str = "scratch",
    supernet: Supernet | None = None,
    parent: Mapping[str, Tensor] | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    val_images: int | None = None,
) -> tuple[dict[str, Any], Correctness]:
    """:func:`train_standalone`'s record, and the per-image correctness behind its accuracy."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "supernet" and supernet is None:
        raise ValueError("init='supernet' needs the trained supernet: pass supernet=...")
    if init == "float" and parent is None:
        raise ValueError("init='float' needs the float network's state: pass parent=train_float_parent(...)[0]")
    space.validate_candidate(candidate)
    start = time.perf_counter()
    overrides = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    spec = dataclasses.replace(space.training, **{k: v for k, v in overrides.items() if v is not None})
    device = torch.device("cpu") if supernet is None else module_device(supernet)
    data = data.to(device)

    def build() -> nn.Module:
        model = (supernet if init == "supernet" else Supernet(space).to(device)).extract(candidate)
        if init == "float":
            load_float_weights(model, parent)
        return model

    _, train_loss, score = _fit(build, data, spec, seed=seed, device=device,
                                val_images=val_images or space.search.eval_size or len(data.val))
    record = {**score.metrics(), "train_loss": train_loss, "epochs": spec.epochs, "seed": seed, "init": init,
              "wall_s": time.perf_counter() - start}
    return record, score.correctness


def _fit(build: Callable[[], nn.Module], data: DataSplits, spec: TrainingSpec, *, seed: int, val_images: int,
         device: torch.device | None = None, progress: bool = False, checkpoint: Path | None = None
         ) -> tuple[nn.Module, float, Score]:
    """The model ``build`` makes under ``seed``, trained with ``spec`` and scored on the first ``val_images``
    validation images, all deterministically: one seed gives one result."""
    with deterministic():
        torch.manual_seed(seed)
        model = build()
        train_loss = train_model(model, data.train, spec, seed=seed, progress=progress, checkpoint=checkpoint)
        score = score_model(model, fixed_batches(data.val, val_images, EVAL_BATCH_SIZE, device=device))
    return model, train_loss, score
