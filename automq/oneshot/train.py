"""One-shot training of the quantization-aware supernet: random candidates per step, in-place distillation, checkpoints.

Every step trains the largest candidate (most-bit formats) on the labels, then ``num_random`` sampled candidates
(formats sampled too) on the largest one's detached soft targets, accumulates the gradients and takes one optimizer
step (Yu & Huang, "Universally Slimmable Networks", ICCV 2019; Cai et al., "Once-for-All", ICLR 2020). The sandwich
rule's smallest candidate is trained too only with ``training.smallest: true``: in a joint architecture x format
space, training that one corner every step made it the only well-served cheap point; the largest architecture with
3x3 kernels then scored below the all-minimum one, and the estimator's ranking fell from Kendall tau 0.76 to 0.25
(``experiments/results/supernet_recipes.md``). Each layer keeps one learned scale per format, so candidates that
share a weight tensor do not fight over its quantizer scale; BN statistics, which differ per candidate, are
recomputed for each candidate at evaluation time (:func:`automq.model.supernet.recalibrate_bn`).

A run directory holds ``space.yaml`` (the space it was trained on), ``run.json`` (command, config, versions),
``metrics.jsonl`` (one record per epoch), ``checkpoint.pt`` (everything needed to resume exactly, written
atomically at the end of every epoch) and, when training finishes, ``supernet.pt`` (the weights). The checkpoint
also carries its epoch's metrics record, which is appended after it: a run killed between the two gets the
line back on resume, so the metrics always cover the epochs the checkpoint has done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from automq.data import DEFAULT_VAL_SIZE, DataSplits, fixed_batches, load_dataset, make_loader
from automq.device import module_device
from automq.errors import CheckpointError, SpaceError, TrainingDivergedError
from automq.io import append_jsonl, atomic_torch_save, atomic_write_json, read_jsonl, safe_torch_load
from automq.numerics.quant import Quantizer
from automq.space.space import SearchSpace, TrainingSpec
from automq.model.supernet import Supernet, recalibrate_bn

if TYPE_CHECKING:
    from automq.space.candidate import Candidate

__all__ = [
    "CHECKPOINT",
    "SUPERNET",
    "DataParallel",
    "FLOAT_FILE",
    "FloatNetwork",
    "foreign_tensors",
    "build_optimizer",
    "build_scheduler",
    "deterministic",
    "epoch_seed",
    "load_float_network",
    "load_space_data",
    "load_supernet",
    "run_config",
    "run_epoch",
    "sandwich_step",
    "space_fingerprint",
    "SupernetTrainer",
    "train_model",
    "train_supernet",
    "training_summary",
    "training_text",
    "validate",
    "write_run_info",
]

CHECKPOINT = "checkpoint.pt"
SUPERNET = "supernet.pt"
SPACE_FILE = "space.yaml"
METRICS = "metrics.jsonl"
RUN_INFO = "run.json"
_CHECKPOINT_KIND = "automq-supernet-checkpoint"
_SUPERNET_KIND = "automq-supernet"
FLOAT_FILE = "float.pt"
FLOAT_RECORD = "float.json"
FLOAT_KIND = "automq-float-network"
_MODEL_CHECKPOINT_KIND = "automq-model-checkpoint"
GRAD_CLIP_NORM = 5.0  # keeps a low-bit candidate's rare huge gradient from wrecking the shared weights
EVAL_BATCH_SIZE = 500  # validation batches: only speed depends on it
# Measured on mbv2_fmnist (SGD, lr 0.05): a factor of 1e-2 or more sends per-channel weight scales negative
# within two steps and the loss stalls at 2.5; 3e-4 trains as well as frozen scales while letting them adapt.
WEIGHT_SCALE_LR_FACTOR = 3e-4
# What a run recorded before an option existed did: runs from before `smallest` trained the smallest every step.
_OLD_RUN_TRAINING = {"smallest": True}

StepFn = Callable[[Tensor, Tensor], Sequence[float]]
GradientHook = Callable[[nn.Module], None]


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """This process's part in data-parallel training: process ``rank`` of ``world_size``.

    Every process draws the same global batch and the same candidates (same seeds) and trains on its own contiguous
    shard of the batch; :meth:`combine` then scales its gradients by the shard's share of the batch and lets
    ``sum_gradients`` add them up over the processes (``all_reduce`` under torch.distributed), so every process
    steps with the gradient of the mean loss over the whole batch and the weights stay identical everywhere. BN
    batch statistics are each shard's own, so the gradient equals that of one process computing each shard's loss
    separately, not that of the whole batch at once. Learned quantizer scales initialise from the first tensor
    they see, so every process initialises them from rank 0's shard (:meth:`SupernetTrainer._step`). The default
    is one process: the whole batch, gradients as they are.
    """

    rank: int = 0
    world_size: int = 1
    sum_gradients: GradientHook | None = None

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (one process does: rank 0)."""
        return self.rank == 0

    def shard(self, images: Tensor, labels: Tensor, rank: int | None = None) -> tuple[Tensor, Tensor, float]:
        """The slice of a global batch of this process (or of ``rank``) and its share of the batch's images."""
        rank = self.rank if rank is None else rank
        start, stop = (len(labels) * r // self.world_size for r in (rank, rank + 1))
        return images[start:stop], labels[start:stop], (stop - start) / len(labels)

    def check_batches(self, train_size: int, batch_size: int) -> None:
        """Refuse batches that would leave a process without images (it would have no gradients to add)."""
        smallest = min(batch_size, train_size % batch_size or batch_size)
        if smallest < self.world_size:
            raise SpaceError(f"{self.world_size} workers need at least {self.world_size} images in every batch, but "
                             f"batch_size {batch_size} on {train_size} training images makes a batch of {smallest}; "
                             "use fewer workers or change training.batch_size / train_size")

    def combine(self, model: nn.Module, share: float) -> None:
        """Turn this process's shard-mean gradients into the global batch's (nothing to do in one process)."""
        if self.sum_gradients is None:
            return
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(share)
        self.sum_gradients(model)


# ------------------------------------------------------------------------------------------------ building blocks
def build_optimizer(model: nn.Module, spec: TrainingSpec) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum over three parameter groups.

    Weights get ``spec.weight_decay``; BN/bias vectors and activation scales get none (decaying them only
    shrinks gains and quantization grids). Per-channel weight scales get no decay and ``spec.lr`` times
    :data:`WEIGHT_SCALE_LR_FACTOR`: they are ~1e-3 (a channel's ``amax / 127``) and their LSQ gradient is
    not small enough to match, so at the weights' learning rate one step drives them below zero.
    """
    weight_scales = {id(p) for m in model.modules() if isinstance(m, Quantizer) and m.channels is not None
                     for p in m.parameters()}
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "weight_scales": []}
    for param in model.parameters():
        if param.requires_grad:
            group = "weight_scales" if id(param) in weight_scales else "no_decay" if param.ndim <= 1 else "decay"
            groups[group].append(param)
    return torch.optim.SGD([
        {"params": groups["decay"], "weight_decay": spec.weight_decay},
        {"params": groups["no_decay"], "weight_decay": 0.0},
        {"params": groups["weight_scales"], "weight_decay": 0.0, "lr": spec.lr * WEIGHT_SCALE_LR_FACTOR},
    ], lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0)


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainingSpec, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up over ``spec.warmup_epochs``, then a cosine decay to zero at the last step."""
    total = spec.epochs * steps_per_epoch
    warmup = min(spec.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sandwich_step(supernet: Supernet, images: Tensor, labels: Tensor, candidates: Sequence[Candidate]) -> list[float]:
    """Accumulate the gradients of one sandwich-rule step; returns each candidate's loss, in order.

    ``candidates[0]`` (the largest) learns from the labels; the others learn from its detached softmax by
    KL divergence at temperature 1 (in-place distillation), which keeps small and low-bit candidates close
    to the best one instead of each fitting the labels on their own.
    """
    supernet.set_active(candidates[0])
    logits = supernet(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    losses = [loss.item()]
    teacher = logits.detach().softmax(dim=1)
    for candidate in candidates[1:]:
        supernet.set_active(candidate)
        distill = F.kl_div(supernet(images).log_softmax(dim=1), teacher, reduction="batchmean")
        distill.backward()
        losses.append(distill.item())
    return losses


def run_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    first_step: int = 0,
    diverged_hint: str = "",
    progress: Progress | None = None,
) -> dict[str, float]:
    """One pass over ``batches``: ``step_fn`` accumulates gradients, then clip, step and advance the schedule.

    A non-finite loss or gradient raises :class:`TrainingDivergedError` before the optimizer step, so the
    weights stay those of the last finite step. Returns the mean of each loss position of ``step_fn``.
    """
    model.train()
    sums: list[float] = []
    count = 0
    for step, (images, labels) in enumerate(batches, start=first_step):
        optimizer.zero_grad(set_to_none=True)
        losses = step_fn(images, labels)
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM))
        if not all(math.isfinite(v) for v in (*losses, grad_norm)):
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch + 1}, step {step + 1}: losses {[f'{v:.4g}' for v in losses]}, "
                f"gradient norm {grad_norm:.4g}. {diverged_hint}"
            )
        optimizer.step()
        scheduler.step()
        sums = [a + b for a, b in zip(sums, losses)] if sums else list(losses)
        count += 1
        if progress is not None:
            progress.update(len(labels), losses[0], scheduler.get_last_lr()[0])
    return {f"loss_{n}": total / max(1, count) for n, total in enumerate(sums)}


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch: a function of (seed, epoch) only, so a resumed run needs no loader state."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_model(model: nn.Module, train: Dataset, spec: TrainingSpec, *, seed: int, progress: bool = False,
                checkpoint: Path | None = None) -> float:
    """Train one stand-alone ``model`` in place on ``train`` with the recipe ``spec`` (SGD, warm-up and cosine
    schedule over ``spec.epochs``, gradient clipping), on the model's device; each epoch shuffled by
    :func:`epoch_seed`. Returns the last epoch's mean training loss (nan for 0 epochs).

    The ground truths of the fidelity studies (a candidate trained alone) and the optional fine-tune of the final
    measurement both train through here, so they follow the same recipe. The caller seeds torch and holds
    :func:`deterministic` when it wants a reproducible run, and gives ``train`` on the model's device (an in-memory
    dataset is not moved). ``progress`` shows a progress line on stderr. With ``checkpoint``, the state after every
    epoch is saved there atomically, and a run that finds one of the same recipe continues from it (to the same
    weights as an uninterrupted run)."""
    device = module_device(model)
    optimizer = build_optimizer(model, spec)
    steps_per_epoch = -(-len(train) // spec.batch_size)
    scheduler = build_scheduler(optimizer, spec, steps_per_epoch)
    config = {"training": dataclasses.asdict(spec), "seed": seed, "images": len(train)}
    first, train_loss = 0, float("nan")
    if checkpoint is not None and checkpoint.is_file():
        state = safe_torch_load(checkpoint)
        if not isinstance(state, dict) or state.get("kind") != _MODEL_CHECKPOINT_KIND or state["config"] != config:
            raise CheckpointError(f"{checkpoint} holds a training run of another recipe or data; delete it, or "
                                  "choose another --out folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first, train_loss = state["epoch"], state["train_loss"]

    def step(images: Tensor, labels: Tensor) -> list[float]:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        return [loss.item()]

    bar = Progress(spec.epochs * steps_per_epoch) if progress else None
    for epoch in range(first, spec.epochs):
        if bar is not None:
            bar.begin_epoch(epoch, spec.epochs, epoch * steps_per_epoch)
        loader = make_loader(train, spec.batch_size, shuffle=True, seed=epoch_seed(seed, epoch), device=device)
        train_loss = run_epoch(model, loader, step, optimizer, scheduler, epoch=epoch,
                               first_step=epoch * steps_per_epoch, progress=bar)["loss_0"]
        if checkpoint is not None:
            atomic_torch_save({"kind": _MODEL_CHECKPOINT_KIND, "config": config, "epoch": epoch + 1,
                               "train_loss": train_loss, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, checkpoint)
        if bar is not None:
            bar.end_epoch(f"loss {train_loss:.4f}")
    return train_loss


def endless_batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled full batches, epoch after epoch without end, each epoch in its own seeded order (full batches
    keep BN batch statistics comparable); a batch size above the dataset's size is cut to it."""
    batch_size = min(batch_size, len(dataset))
    epoch = 0
    while True:
        yield from make_loader(dataset, batch_size, shuffle=True, seed=epoch_seed(seed, epoch), drop_last=True)
        epoch += 1


@torch.inference_mode()
def validate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` in eval mode over ``batches``."""
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    for images, labels in batches:
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    model.train(was_training)
    return {"accuracy": correct / max(1, count), "loss": loss_sum / max(1, count)}


class Progress:
    """A status line on stderr: step, loss, lr, images/s and ETA.

    On a terminal the line is rewritten in place with ``\\r`` twice a second; in a log file (not a terminal)
    a new line is written once a minute, so logs stay short but show that the run is alive.
    """

    def __init__(self, total_steps: int, *, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval_s = 0.5 if self.live else 60.0
        self.total_steps = total_steps
        self.step = self.run_steps = self.run_images = 0
        self.start = self.last = time.perf_counter()
        self.prefix = ""

    def begin_epoch(self, epoch: int, epochs: int, step: int) -> None:
        self.prefix, self.step = f"epoch {epoch + 1}/{epochs}", step

    def update(self, images: int, loss: float, lr: float) -> None:
        self.step += 1
        self.run_steps += 1
        self.run_images += images
        now = time.perf_counter()
        if now - self.last >= self.interval_s:
            self.last = now
            elapsed = now - self.start
            eta = elapsed / self.run_steps * (self.total_steps - self.step)
            self._line(f"step {self.step}/{self.total_steps}  loss {loss:.4f}  lr {lr:.4g}  "
                       f"{self.run_images / elapsed:.0f} img/s  ETA {_clock(eta)}", final=False)

    def end_epoch(self, summary: str) -> None:
        self._line(summary, final=True)

    def _line(self, text: str, *, final: bool) -> None:
        if self.live:  # \033[K clears the rest of a longer previous line
            self.stream.write(f"\r{self.prefix}  {text}\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(f"{self.prefix}  {text}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


# ------------------------------------------------------------------------------------------------ the training run
def space_fingerprint(space: SearchSpace) -> str:
    """A short hash of what the supernet's weights depend on: data shape, network and format menus.

    Objectives, budgets and the training/search defaults are left out, so a supernet can be searched with a
    copy of its space that only changes those.
    """
    ds = space.dataset
    key = repr((ds.name, ds.input_size, ds.in_chans, ds.num_classes, space.network, space.weight_formats,
                space.activation_formats, space.overrides))
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def data_split(space: SearchSpace) -> dict[str, int]:
    """What decides which training-pool images are held out for validation: a supernet must be estimated on the
    split it was trained with, or its validation images include images it trained on."""
    return {"val_size": space.dataset.val_size or DEFAULT_VAL_SIZE, "seed": space.seed}


def load_space_data(
    space: SearchSpace, *, root: str | Path | None = None, train_subset: int | None = None, with_test: bool = False
) -> DataSplits:
    """The space's dataset with its train/val split, seeded by ``space.seed`` so training and every later
    estimate agree on which images are held out; ``with_test`` also reads the dataset's own test split, which only
    the final measurement (:mod:`automq.report.final`) scores on."""
    ds = space.dataset
    split = {} if ds.val_size is None else {"val_size": ds.val_size}
    return load_dataset(ds.name, root if root is not None else ds.root, input_size=ds.input_size,
                        train_subset=train_subset, with_test=with_test, seed=space.seed, **split)


@dataclasses.dataclass(frozen=True)
class FloatNetwork:
    """A float network of a space's largest architecture (:func:`automq.oneshot.evaluate.train_float` writes one):
    the pretrained start of a supernet, as Once-for-All trains its full network before the elastic stage and One-Shot
    MPQ trains its bit-width supernet from a pretrained model. Its weights and BN state are the supernet's at the
    largest candidate; the quantizer scales, which a float network has none of, initialise from the first tensors."""

    state_dict: dict[str, Tensor]
    source: str
    record: dict[str, Any]

    def load_into(self, supernet: Supernet) -> None:
        """Copy the weights into ``supernet``; a network of another architecture is a :class:`CheckpointError`."""
        foreign = foreign_tensors(supernet, self.state_dict)
        if foreign:
            raise CheckpointError(f"{self.source}: a float network of another architecture than this space's "
                                  f"largest ({len(foreign)} tensors differ, e.g. {foreign[0]!r}); train one for this "
                                  "space with `automq train-float`")
        supernet.load_state_dict(self.state_dict, strict=False)

    def summary(self) -> dict[str, Any]:
        """Where it came from and how good it is, for the supernet's ``run.json``."""
        keys = ("accuracy", "accuracy_images", "epochs", "train_images", "seed")
        return {"source": self.source, **{k: self.record[k] for k in keys if k in self.record}}


def foreign_tensors(model: nn.Module, float_state: Mapping[str, Tensor]) -> list[str]:
    """The tensors in which a float network's state and the quantized ``model`` of what should be the same
    architecture differ: missing on either side or of another shape (the quantizer state, which a float network has
    none of, excepted). Empty when ``float_state`` loads into ``model``."""
    own = model.state_dict()
    foreign = [k for k, v in float_state.items() if k not in own or own[k].shape != v.shape]
    return foreign + [k for k in own if k not in float_state and not (".w_quant." in k or ".a_quant." in k)]


def load_float_network(path: str | Path, space: SearchSpace) -> FloatNetwork:
    """The float network in ``path`` (the file, or the ``automq train-float`` folder that holds it), checked against
    ``space``: it must hold out the same validation images, or the supernet's estimates would score images that the
    float network trained on."""
    path, state = _load_run_file(path, FLOAT_FILE, FLOAT_KIND, "a float network", "train-float")
    _check_split(path, state, space, "float network")
    network = FloatNetwork(state["state_dict"], str(path), state.get("record", {}))
    network.load_into(Supernet(space))  # the architecture is checked before any training starts
    return network


class SupernetTrainer:
    """The complete state of one supernet training run, and its epoch loop.

    Candidates are sampled from a numpy Generator and epochs are shuffled by a seed derived from the epoch
    number; both, with the model, optimizer, schedule and torch RNG, are in :meth:`state_dict`, so a resumed
    run repeats the uninterrupted one bit for bit.
    """

    def __init__(self, space: SearchSpace, data: DataSplits, spec: TrainingSpec, *, seed: int,
                 device: torch.device | str = "cpu", parallel: DataParallel = DataParallel(),
                 init: FloatNetwork | None = None) -> None:
        parallel.check_batches(len(data.train), spec.batch_size)
        torch.manual_seed(seed)
        self.parallel = parallel
        self.device = torch.device(device)
        self.space, self.data, self.spec, self.seed = space, data.to(self.device), spec, seed
        self.supernet = Supernet(space)  # initialised on the CPU: the same weights on any device
        if init is not None:
            init.load_into(self.supernet)
        self.supernet.to(self.device)
        self.steps_per_epoch = math.ceil(len(data.train) / spec.batch_size)
        self.optimizer = build_optimizer(self.supernet, spec)
        self.scheduler = build_scheduler(self.optimizer, spec, self.steps_per_epoch)
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.ends = {"largest": space.largest(), "smallest": space.smallest()}  # both are validated every epoch
        self.fixed = [self.ends["largest"], *([self.ends["smallest"]] if spec.smallest else [])]
        # the search's calibration and validation images, so the logged accuracies are the estimator's
        self.calib = fixed_batches(self.data.train, space.search.calib_size, spec.batch_size, device=self.device)
        self.val = fixed_batches(self.data.val, space.search.eval_size or len(data.val), EVAL_BATCH_SIZE,
                                 device=self.device)

    def step_candidates(self) -> list[Candidate]:
        """The next step's candidates: the fixed ones, ``num_random`` sampled ones, then ``uniform`` random
        architectures each in one format throughout (drawn last, so ``uniform: 0`` keeps the older runs' stream)."""
        return [*self.fixed, *(self.space.sample(self.rng) for _ in range(self.spec.num_random)),
                *(self.space.sample_uniform(self.rng) for _ in range(self.spec.uniform))]

    def _step(self, images: Tensor, labels: Tensor) -> list[float]:
        candidates = self.step_candidates()
        if self.parallel.world_size > 1 and not _scales_initialised(self.supernet):
            # what rank 0's own forward passes would initialise, so the processes' weights stay the same
            _initialise_scales(self.supernet, self.parallel.shard(images, labels, rank=0)[0], candidates)
        images, labels, share = self.parallel.shard(images, labels)
        losses = sandwich_step(self.supernet, images, labels, candidates)
        self.parallel.combine(self.supernet, share)
        return losses

    def train_epoch(self, *, diverged_hint: str = "", progress: Progress | None = None) -> dict[str, float]:
        """Train one epoch and advance :attr:`epoch`; returns the mean label and distillation losses."""
        seed = epoch_seed(self.seed, self.epoch)
        loader = make_loader(self.data.train, self.spec.batch_size, shuffle=True, seed=seed, device=self.device)
        losses = run_epoch(self.supernet, loader, self._step, self.optimizer, self.scheduler, epoch=self.epoch,
                           first_step=self.epoch * self.steps_per_epoch, diverged_hint=diverged_hint,
                           progress=progress)
        self.epoch += 1
        distill = [v for k, v in losses.items() if k != "loss_0"]
        return {"train_loss": losses["loss_0"], "distill_loss": sum(distill) / len(distill) if distill else 0.0}

    def evaluate(self) -> dict[str, float]:
        """Validation accuracy and loss of the largest and smallest candidates, each after BN recalibration."""
        metrics = {}
        for name, candidate in self.ends.items():
            self.supernet.set_active(candidate)
            recalibrate_bn(self.supernet, self.calib)
            result = validate(self.supernet, self.val)
            metrics[f"val_acc_{name}"], metrics[f"val_loss_{name}"] = result["accuracy"], result["loss"]
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain Python values (loadable with ``weights_only``)."""
        return {
            "kind": _CHECKPOINT_KIND,
            "space": space_fingerprint(self.space),
            "split": data_split(self.space),
            "config": {"training": dataclasses.asdict(self.spec), "seed": self.seed},
            "epoch": self.epoch,
            "step": self.epoch * self.steps_per_epoch,
            "model": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # torch moves the momenta to the parameters' device
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]


def _scales_initialised(model: nn.Module) -> bool:
    """Whether every learned quantizer scale of ``model`` (every format, every channel) has seen its first tensor."""
    return all(bool(getattr(quantizer, f"initialised_{fmt}").all())
               for quantizer in model.modules() if isinstance(quantizer, Quantizer) for fmt in quantizer.scales)


@torch.no_grad()
def _initialise_scales(supernet: Supernet, images: Tensor, candidates: Sequence[Candidate]) -> None:
    """Run ``images`` through each candidate in turn, as a sandwich step does, without gradients: the quantizer
    scales that a step on ``images`` would initialise get exactly those values (BN running statistics move too;
    evaluation recomputes them)."""
    for candidate in candidates:
        supernet.set_active(candidate)
        supernet(images)


def train_supernet(
    space: SearchSpace,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    resume: bool = False,
    train_subset: int | None = None,
    data_root: str | Path | None = None,
    seed: int | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
    parallel: DataParallel = DataParallel(),
    lr: float | None = None,
    init: FloatNetwork | None = None,
) -> Path:
    """Train the one-shot supernet of ``space`` into ``out_dir`` and return the path of ``supernet.pt``.

    ``epochs``, ``train_subset`` (training images, class-balanced), ``lr`` and ``seed`` default to the space's
    ``training:`` section and ``seed``. ``init`` (:func:`load_float_network`) starts the shared weights from a float
    network of the space's largest architecture instead of a random initialisation. ``resume=True`` continues the
    run in ``out_dir`` from its last checkpoint with the configuration it was started with (its weights make
    ``init`` moot); a fresh start refuses to overwrite a run. ``device``
    is where the supernet and the in-memory images live (checkpoints are loaded onto it, so a run may resume on
    another device); the CPU path is the same computation as before devices existed. ``parallel`` makes this
    process one of several data-parallel ones (:mod:`automq.oneshot.distributed`); only its rank 0 writes.
    """
    out = Path(out_dir)
    spec, seed, state = run_config(space, out, resume=resume, epochs=epochs, train_subset=train_subset, seed=seed,
                                   lr=lr)
    data = load_space_data(space, root=data_root, train_subset=spec.train_size)
    with deterministic():
        trainer = SupernetTrainer(space, data, spec, seed=seed, device=device, parallel=parallel,
                                  init=None if state is not None else init)
        if state is not None:
            trainer.load_state_dict(state)
        if parallel.writes:
            if state is not None:
                _restore_metrics_line(out, state)
            _record_run(out, space, spec, seed, data_root, resumed_at=trainer.epoch if resume else None,
                        init=init)
        _fit(trainer, out, progress and parallel.writes)
    return out / SUPERNET


def run_config(space: SearchSpace, out: Path, *, resume: bool, epochs: int | None = None,
               train_subset: int | None = None, seed: int | None = None, lr: float | None = None
               ) -> tuple[TrainingSpec, int, dict[str, Any] | None]:
    """The training configuration and seed of a run in ``out``, and for ``resume`` its checkpoint's state.

    A resume keeps the configuration the run was started with; a fresh start refuses a folder that holds a run.
    Raises :class:`CheckpointError` before any work, so a launcher of several processes can check first.
    """
    checkpoint = out / CHECKPOINT
    if resume:
        state = _load_checkpoint(checkpoint, space)
        spec, seed = _resumed_config(checkpoint, state["config"], epochs=epochs, train_subset=train_subset, seed=seed,
                                     lr=lr)
        return spec, seed, state
    if checkpoint.exists():
        raise CheckpointError(f"{out} already holds a training run ({CHECKPOINT}); pass --resume to continue "
                              "it, or choose another --out folder")
    overrides = {"epochs": epochs, "train_size": train_subset, "lr": lr}
    spec = dataclasses.replace(space.training, **{k: v for k, v in overrides.items() if v is not None})
    return spec, space.seed if seed is None else seed, None


def _fit(trainer: SupernetTrainer, out: Path, show_progress: bool) -> None:
    """The epoch loop; the writing process also validates, checkpoints and logs each epoch, the others only train."""
    spec, writes = trainer.spec, trainer.parallel.writes
    bar = Progress(spec.epochs * trainer.steps_per_epoch) if show_progress else None
    while trainer.epoch < spec.epochs:
        epoch, start = trainer.epoch, time.perf_counter()
        if bar is not None:
            bar.begin_epoch(epoch, spec.epochs, epoch * trainer.steps_per_epoch)
        lr = trainer.scheduler.get_last_lr()[0]
        record = {"epoch": epoch + 1, **trainer.train_epoch(diverged_hint=_diverged_hint(out, epoch), progress=bar)}
        train_s = time.perf_counter() - start
        if not writes:
            continue
        record.update(trainer.evaluate())
        record.update(step=trainer.epoch * trainer.steps_per_epoch, lr=lr,
                      images_per_s=len(trainer.data.train) / train_s, wall_s=time.perf_counter() - start)
        atomic_torch_save({**trainer.state_dict(), "metrics": record}, out / CHECKPOINT)
        append_jsonl(out / METRICS, record)
        if bar is not None:
            bar.end_epoch(f"loss {record['train_loss']:.4f}  val acc largest {record['val_acc_largest']:.4f}  "
                          f"smallest {record['val_acc_smallest']:.4f}  ({record['wall_s']:.0f} s)")
    if writes:
        atomic_torch_save({"kind": _SUPERNET_KIND, "space": space_fingerprint(trainer.space),
                           "split": data_split(trainer.space), "epochs": trainer.epoch,
                           "state_dict": trainer.supernet.state_dict()}, out / SUPERNET)


def _diverged_hint(out: Path, epoch: int) -> str:
    if epoch == 0:
        return ("No epoch finished, so there is no checkpoint; start again with a lower training.lr or "
                "training.warmup_epochs >= 1.")
    return (f"The last good checkpoint, {out / CHECKPOINT} (epoch {epoch}), is kept. Training is deterministic, so "
            "a resume would diverge again: start a new run with a lower training.lr or training.warmup_epochs >= 1.")


def load_supernet(path: str | Path, space: SearchSpace, *, device: torch.device | str = "cpu") -> Supernet:
    """The supernet of ``space`` with the weights of a run's ``supernet.pt`` (a run folder or the file), on
    ``device`` (whatever device it was trained on). ``space`` may also be a narrower copy of the run's own space
    (:meth:`SearchSpace.outside`: fewer formats, kernels, depths, widths): the supernet is then the run's, and scores
    every candidate of ``space``."""
    path, state = _load_run_file(path, SUPERNET, _SUPERNET_KIND, "a trained supernet", "train-supernet")
    supernet = Supernet(_trained_space(path, state, space))
    supernet.load_state_dict(state["state_dict"])
    return supernet.to(device)


# ------------------------------------------------------------------------------------------------ run folder helpers
def _load_run_file(path: str | Path, name: str, kind: str, what: str, command: str) -> tuple[Path, dict[str, Any]]:
    """The file ``name`` of a run folder (or ``path`` itself when it is a file) and its contents, which must be of
    ``kind``: what ``automq {command}`` writes."""
    path = Path(path)
    path = path / name if path.is_dir() else path
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise CheckpointError(f"{path}: not {what} (expected the {name} that `automq {command}` writes)")
    return path, state


def _trained_space(path: Path, state: dict[str, Any], space: SearchSpace) -> SearchSpace:
    """The space whose supernet the weights fit: ``space`` itself, or the run's saved space when ``space`` is a
    narrower copy of it. Raises :class:`CheckpointError` otherwise, or when the validation splits differ."""
    trained = space
    if state.get("space") != space_fingerprint(space):
        saved = path.parent / SPACE_FILE
        trained = SearchSpace.from_file(saved) if saved.is_file() else None
        if trained is None or space_fingerprint(trained) != state.get("space"):
            reason = "its dataset, network or format menus differ"
        else:
            reason = space.outside(trained)
        if reason is not None:
            raise _other_space(path, state, space, f"{reason}. Use the space file saved beside it ({saved}) or a "
                                                   "narrower copy of it")
    _check_split(path, state, space)
    return trained


def _check_space(path: Path, state: dict[str, Any], space: SearchSpace) -> None:
    """A training checkpoint continues with its own space only (a narrower one would train other weights)."""
    if state.get("space") != space_fingerprint(space):
        raise _other_space(path, state, space, "its dataset, network or format menus differ. Use the space file "
                                               f"saved beside it ({path.parent / SPACE_FILE})")
    _check_split(path, state, space)


def _other_space(path: Path, state: dict[str, Any], space: SearchSpace, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} was trained on another search space (fingerprint {state.get('space')}, but "
                           f"{space.source} has {space_fingerprint(space)}: {reason}), or train a new supernet for "
                           "this space")


def _check_split(path: Path, state: dict[str, Any], space: SearchSpace, what: str = "supernet") -> None:
    trained, now = state.get("split") or _saved_split(path.parent / SPACE_FILE), data_split(space)
    if trained is not None and trained != now:
        raise CheckpointError(
            f"{path} was trained holding out {trained['val_size']} validation images (seed {trained['seed']}), but "
            f"{space.source} holds out {now['val_size']} (seed {now['seed']}), so its estimates would score images "
            f"the {what} trained on. Set dataset.val_size and seed as in {path.parent / SPACE_FILE}, or train a "
            f"new {what} for this split")


def _saved_split(space_file: Path) -> dict[str, int] | None:
    """The split of the space saved beside a run from before runs recorded it (None where it cannot be read)."""
    try:
        return data_split(SearchSpace.from_file(space_file))
    except (OSError, SpaceError):
        return None


def _load_checkpoint(path: Path, space: SearchSpace) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: nothing to resume (no checkpoint); start the run without --resume")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("kind") != _CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: not an automq training checkpoint; delete it or choose another --out")
    _check_space(path, state, space)
    return state


def _restore_metrics_line(out: Path, state: dict[str, Any]) -> None:
    """Append the checkpoint's metrics record when ``metrics.jsonl`` lacks it: the run was killed after saving
    the checkpoint but before (or while) appending its line. Checkpoints from before they carried it have none."""
    record = state.get("metrics")
    if record is not None and all(logged.get("epoch") != record["epoch"] for logged in read_jsonl(out / METRICS)):
        append_jsonl(out / METRICS, record)


def _resumed_config(path: Path, config: dict[str, Any], **given: float | None) -> tuple[TrainingSpec, int]:
    """The run's saved configuration; an explicitly given value that differs from it is an error, because
    the learning-rate schedule and the data order depend on it."""
    spec, seed = TrainingSpec(**{**_OLD_RUN_TRAINING, **config["training"]}), config["seed"]
    saved = {"epochs": spec.epochs, "train_subset": spec.train_size, "seed": seed, "lr": spec.lr}
    for name, value in given.items():
        if value is not None and value != saved[name]:
            raise CheckpointError(f"{path}: the run was started with {name}={saved[name]}, not {value}; a resume "
                                  f"keeps the original value (drop the option), or start a new run in another --out")
    return spec, seed


def _record_run(out: Path, space: SearchSpace, spec: TrainingSpec, seed: int, data_root: str | Path | None,
                *, resumed_at: int | None, init: FloatNetwork | None = None) -> None:
    """Copy the space file and write run.json (a resume appends to its list of resumes)."""
    if resumed_at is not None:
        info = _read_json(out / RUN_INFO)
        info.setdefault("resumes", []).append({"epoch": resumed_at, "command": sys.argv, "time": _now()})
        atomic_write_json(out / RUN_INFO, info)
        return
    write_run_info(out, space, {"training": dataclasses.asdict(spec), "seed": seed,
                                "data_root": None if data_root is None else str(data_root),
                                **({} if init is None else {"init_float": init.summary()})})


def write_run_info(out: Path, space: SearchSpace, config: dict[str, Any], name: str = RUN_INFO,
                   **extra: Any) -> None:
    """Copy the space file into ``out`` and write ``name`` there: the command, the space, ``config``, the package
    versions and the time, and ``extra``."""
    source = Path(space.source)
    if not source.is_file():
        raise SpaceError(f"training needs a space loaded from a file (SearchSpace.from_file), so that the run folder "
                         f"can keep a copy; this one comes from {space.source}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out / SPACE_FILE)
    atomic_write_json(out / name, {
        "command": sys.argv,
        "space": str(source.resolve()),
        "space_fingerprint": space_fingerprint(space),
        "config": config,
        "versions": _versions(),
        "time": _now(),
        **extra,
    })


def training_summary(run_dir: str | Path) -> dict[str, Any]:
    """What a training run folder holds, for the records of experiments that use it: epochs done, training images
    per epoch, the candidates trained per step (``num_random``, ``smallest``), training wall time and the last
    validation accuracies of the largest and smallest candidates (empty where ``metrics.jsonl`` is missing or
    holds no finished epoch)."""
    run_dir = Path(run_dir)
    epochs = [record for record in read_jsonl(run_dir / METRICS) if "epoch" in record]
    if not epochs:
        return {}
    last = epochs[-1]
    config = _read_json(run_dir / RUN_INFO).get("config", {})
    training = {**_OLD_RUN_TRAINING, **config.get("training", {})}
    return {"epochs": last["epoch"], "train_images": training.get("train_size"),
            "num_random": training.get("num_random"), "smallest": training["smallest"],
            # only where used, so the records of the runs before the option stay equal to the ones kept of them
            **({"uniform": training["uniform"]} if training.get("uniform") else {}),
            **({"init_float": _float_start(config["init_float"]), "lr": training.get("lr")}
               if config.get("init_float") else {}),
            "training_wall_s": sum(e.get("wall_s", 0.0) for e in epochs),
            "val_acc_largest": last.get("val_acc_largest"), "val_acc_smallest": last.get("val_acc_smallest")}


def _float_start(start: dict[str, Any]) -> dict[str, Any]:
    """The float network a run started from, with its training time from the ``float.json`` beside it where that
    is still there (the cost of the start belongs to the supernet's)."""
    record = _read_json(Path(start["source"]).parent / FLOAT_RECORD).get("record", {})
    return {**start, **({"wall_s": record["wall_s"]} if "wall_s" in record else {})}


def training_text(summary: dict[str, Any]) -> str:
    """:func:`training_summary` in words, for experiment records."""
    if "epochs" not in summary:
        return "training record not found"
    fixed = "the largest and the smallest" if summary.get("smallest", True) else "the largest"
    uniform = f" + {summary['uniform']} in one format throughout" if summary.get("uniform") else ""
    start = summary.get("init_float")
    trained = f", trained in {start['wall_s'] / 60:.0f} min" if start and "wall_s" in start else ""
    init = (f" from the float network `{start['source']}` ({start.get('accuracy', float('nan')):.4f} val "
            f"accuracy{trained}) at learning rate {summary.get('lr')}" if start else "")
    return (f"{summary['epochs']} epochs on {summary.get('train_images') or 'all'} train images{init}, {fixed} + "
            f"{summary.get('num_random', '?')} random{uniform} candidates per step, "
            f"{summary.get('training_wall_s', 0) / 60:.0f} min; val accuracy largest "
            f"{summary['val_acc_largest']:.3f}, smallest {summary['val_acc_smallest']:.3f}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _versions() -> dict[str, str]:
    packages = {name: importlib.metadata.version(name) for name in ("automq", "torch", "timm", "numpy")}
    return {**packages, "python": platform.python_version(), "platform": platform.platform(),
            "torch_threads": str(torch.get_num_threads())}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration of a run, restoring the caller's setting afterwards.

    On a GPU, cuBLAS is deterministic only with a fixed workspace, which it reads from the environment when its
    first handle is made; setting it here, before any kernel runs, keeps the user's own value if there is one.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
