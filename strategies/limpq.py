"""LIMPQ: mixed precision from learned layer-wise importance (Tang et al., ECCV 2022, arXiv:2203.08368).

**Indicators.** LIMPQ observes that the learned LSQ step size ``s_l(b)`` of layer ``l`` at bit width ``b``
reflects how much the layer matters at that width, and learns all of them in ONE quantization-aware run in which
every layer draws its weight and its activation bit width at random at every step (instead of one run per layer
and width). Here the run starts from a copy of the one-shot supernet (weights and per-format scales), on the fixed
architecture, with every layer drawing its ``w_fmt`` and ``a_fmt`` uniformly from its menus at every step. The
indicator of a format is the quantization step it learned, made comparable across formats and layers:

* int formats: the learned LSQ step ``s`` (mean over channels for per-channel weight scales), as in the paper;
* scaled float formats (FP8/FP6/FP4): the learned range per level, ``s * max_value / (2^(bits-1) - 1)``, which is
  the LSQ step for an int format and, for a float grid, the step of a uniform grid of as many levels over the
  same learned clipping range;
* formats without a learned scale (OCP MX, fp16/bf16 casts, fp32): the step of the uniform grid with the same
  error, ``sqrt(12) * RMS(Q(x) - x)``, measured on the weight and on a batch of the layer's inputs (fp32: 0);

each divided by the RMS of the tensor it quantizes (the weight, or the layer's input batch). The paper compares
raw steps; the normalisation keeps MobileNetV2's depthwise weights (an order of magnitude larger than the
pointwise ones) and the different units of weights and activations from deciding the ranking by magnitude alone.
It is constant per layer and operand, so it does not change the order of one layer's formats.

**Search.** One integer linear program, as in the authors' released search code (``quantization_search/
search.py``): a joint one-hot choice ``x_{l,(w,a)}`` of the (weight, activation) pair per layer, which linearises
BitOps exactly (each pair has its own BitOps), minimising

    sum_l sum_{(w,a)} x_{l,(w,a)} * (I_a^l(a) + alpha * I_w^l(w))      (alpha balances weights and activations)

subject to ``sum_{(w,a)} x_{l,(w,a)} = 1`` for every layer and the budgets (BitOps, size, ...) as linear rows,
solved with HiGHS through :func:`scipy.optimize.milp`. Several budget levels give the front
(:class:`~automq.strategies._assign.FormatAssignmentStrategy`).

Not reproduced: the paper's switchable per-bit-width batch norms (the estimator recalibrates BN statistics for
every candidate instead) and its post-hoc erasing of non-monotone indicators.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automq.model.arch import layer_specs
from automq.numerics.formats import get_format
from automq.numerics.quant import Quantizer
from automq.strategies._assign import FormatAssignmentStrategy, FormatProblem, Solver, supernet_and_data
from automq.strategies._checkpoint import PhaseCheckpoint
from automq.strategies._solvers import Solution, solve_linear
from automq.search.strategy import Evaluator, register_strategy
from automq.oneshot.train import GRAD_CLIP_NORM, endless_batches

if TYPE_CHECKING:
    from pathlib import Path

    from torch.utils.data import Dataset

    from automq.space.candidate import Candidate
    from automq.model.elastic import ElasticQuantLayer
    from automq.space.space import SearchSpace
    from automq.model.supernet import Supernet

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "limpq_indicators"  # in the search directory: the indicator run's state, then its result


@dataclass(frozen=True)
class Indicators:
    """Normalised importance indicators: ``weights[layer][w_fmt]`` and ``activations[layer][a_fmt]``."""

    weights: dict[str, dict[str, float]]
    activations: dict[str, dict[str, float]]

    def objective(self, formats: FormatProblem, alpha: float) -> np.ndarray:
        """``I_a(a) + alpha * I_w(w)`` of every ``(w, a)`` option, in the problem's flat order."""
        problem = formats.problem
        return np.array([self.activations[layer][a] + alpha * self.weights[layer][w]
                         for layer, options in zip(problem.layers, problem.options) for w, a in options])


def learn_indicators(
    supernet: Supernet,
    space: SearchSpace,
    arch: Candidate,
    train: Dataset,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 0.01,
    seed: int = 0,
    checkpoint: PhaseCheckpoint | None = None,
) -> Indicators:
    """The joint indicator-training run on a copy of ``supernet`` (the original is left untouched): ``steps``
    SGD steps of cross-entropy on ``train``, every layer of ``arch`` drawing its formats at every step. With
    ``checkpoint``, the run saves its state there at intervals, and the indicators when it ends, and continues
    from what it finds there."""
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None and "indicators" in saved:
        return Indicators(**saved["indicators"])
    net = copy.deepcopy(supernet)
    net.set_active(arch)
    specs = {spec.name: spec for spec in layer_specs(space, arch)}
    layers = {name: layer for name, layer in net.quant_layers().items() if name in specs}
    menus = {name: space.layer_menu(name) for name in layers}
    device = next(net.parameters()).device
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True)
    step = 0
    if saved is not None:
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        step = saved["step"]

    def state() -> dict[str, Any]:
        return {"step": step, "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng.bit_generator.state}

    net.train()
    for images, labels in itertools.islice(endless_batches(train, batch_size, seed), step, steps):
        for name, layer in layers.items():
            w_menu, a_menu = menus[name]
            layer.set_active(dataclasses.replace(specs[name], w_fmt=str(rng.choice(w_menu)),
                                                 a_fmt=str(rng.choice(a_menu))))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(images.to(device)), labels.to(device)).backward()
        nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        step += 1
        if checkpoint is not None:
            checkpoint.save_due(state)
    for name, layer in layers.items():
        layer.set_active(specs[name])
    indicators = _measure_indicators(net, layers, menus, next(endless_batches(train, batch_size, seed + 1))[0])
    if checkpoint is not None:
        checkpoint.save({"indicators": dataclasses.asdict(indicators)})
    return indicators


@torch.no_grad()
def _measure_indicators(net: nn.Module, layers: dict[str, ElasticQuantLayer],
                        menus: dict[str, tuple[tuple[str, ...], tuple[str, ...]]], images: Tensor) -> Indicators:
    """The normalised steps of every layer's formats, on its active weight and its inputs of ``images``."""
    inputs = _layer_inputs(net, layers, images.to(next(net.parameters()).device))
    weights, activations = {}, {}
    for name, layer in layers.items():
        w_menu, a_menu = menus[name]
        weight = layer.weight_of(layer.active)
        w_rms, a_rms = max(_rms(weight), 1e-12), max(_rms(inputs[name]), 1e-12)  # an all-zero tensor: raw steps
        weights[name] = {f: _step(layer.w_quant, f, weight) / w_rms for f in w_menu}
        activations[name] = {f: _step(layer.a_quant, f, inputs[name]) / a_rms for f in a_menu}
    return Indicators(weights, activations)


@torch.no_grad()
def _layer_inputs(net: nn.Module, layers: dict[str, ElasticQuantLayer], images: Tensor) -> dict[str, Tensor]:
    """The input of every layer on one batch, in eval mode."""
    inputs: dict[str, Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda _, args, name=name: inputs.__setitem__(name, args[0]))
             for name, layer in layers.items()]
    was_training = net.training
    try:
        net.eval()
        net(images)
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return inputs


def _step(quantizer: Quantizer, fmt: str, x: Tensor) -> float:
    """The quantization step of ``fmt`` on ``x`` (see the module docstring): learned when the format has a
    learned scale, else that of the uniform grid with the same RMS error."""
    spec = get_format(fmt)
    quantized = quantizer(x, fmt)  # also initialises, from x, a scale the run happened never to draw
    if not spec.learnable_scale:
        return math.sqrt(12.0) * _rms(quantized - x)  # 0 for fp32
    scale = quantizer.scales[fmt][: x.shape[0] if quantizer.channels is not None else 1]
    return float(scale.detach().abs().mean()) * spec.max_value / (2.0 ** (spec.bits - 1) - 1)


def _rms(x: Tensor) -> float:
    return float(x.float().square().mean().sqrt())


@register_strategy
class LIMPQ(FormatAssignmentStrategy):
    """LIMPQ on one architecture: a joint indicator-training run, then one ILP per budget level.

    Args:
        alpha: weight of the weight indicators against the activation ones (the authors' default: 2).
        steps: SGD steps of the joint indicator-training run.
        batch_size, lr: of that run (SGD, Nesterov momentum 0.9, no weight decay).
        arch, metric, time_limit: see :class:`~automq.strategies._assign.FormatAssignmentStrategy`.
    """

    name = "limpq"
    options = "joint"

    def __init__(self, *, alpha: float = 2.0, steps: int = 300, batch_size: int = 128, lr: float = 0.01,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if alpha < 0 or steps < 1:
            raise ValueError(f"LIMPQ needs alpha >= 0 and steps >= 1, got alpha={alpha}, steps={steps}")
        self.alpha, self.steps, self.batch_size, self.lr = alpha, steps, batch_size, lr

    def prepare(self, formats: FormatProblem, evaluator: Evaluator, *, seed: int,
                state_dir: Path | None = None) -> tuple[Solver, dict[str, Any]]:
        supernet, data = supernet_and_data(evaluator, self.name)
        start = time.perf_counter()
        checkpoint = PhaseCheckpoint(state_dir, CHECKPOINT_NAME, {
            "arch": formats.arch.id, "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "seed": seed})
        indicators = learn_indicators(supernet, evaluator.space, formats.arch, data.train, steps=self.steps,
                                      batch_size=self.batch_size, lr=self.lr, seed=seed, checkpoint=checkpoint)
        seconds = time.perf_counter() - start
        logger.info("LIMPQ indicator training: %d steps in %.1f s", self.steps, seconds)
        objective = indicators.objective(formats, self.alpha)

        def solve(budgets: Mapping[str, float]) -> Solution:
            return solve_linear(formats.problem, objective, budgets, time_limit=self.time_limit)

        return solve, {"indicator_steps": self.steps, "indicator_s": seconds, "alpha": self.alpha}
