"""LIMPQ: mixed precision from learned layer-wise importance (Tang et al., ECCV 2022, arXiv:2203.08368).

**Indicators.** LIMPQ observes that the learned LSQ step size ``s_l(b)`` of layer ``l`` at bit width ``b``
reflects how much the layer matters at that width, and learns all of them in ONE quantization-aware run (instead
of one run per layer and width). Here the run starts from a copy of the one-shot supernet (weights and per-format
scales), on the fixed architecture. ``schedule`` picks what each batch trains:

* ``"uniform_plus_random"`` (default, as the authors' code): every uniform configuration and one random mixed
  one, their gradients summed into one SGD step. A uniform configuration applies one format ``f`` (each format of
  the layers' menus in turn) to every layer's weights and activations; a menu without ``f`` contributes its
  format nearest to ``f`` in bits, of ``f``'s family first. So every format of every layer trains on every batch;
* ``"random"``: only the random configuration, every layer drawing its ``w_fmt`` and ``a_fmt`` uniformly from its
  menus (cheaper by the number of formats; the project's earlier variant).

The indicator of a format is the quantization step it learned:

* int formats: the learned LSQ step ``s`` (mean over channels for per-channel weight scales);
* scaled float formats (FP8/FP6/FP4): the learned range per level, ``s * max_value / (2^(bits-1) - 1)``, which is
  the LSQ step for an int format and, for a float grid, the step of a uniform grid of as many levels over the
  same learned clipping range;
* OCP MX formats learn no scale (each block of 32 takes a power of two from its own range). ``mx_step`` says
  what stands in for their step:

  - ``"element"`` (default): the learned step of the scaled format with the same element grid (``fp4_e2m1``
    for ``mxfp4_e2m1``, ``int8`` for ``mxint8``) in the same layer, times the ratio of the two formats' RMS
    rounding errors on the tensor (the weight, or a batch of the layer's inputs). The MX option then sits
    beside its element format on the joint training's scale, below it exactly when block scaling rounds that
    tensor more finely. A layer whose menu lacks the element format learned nothing to compare with: there the
    MX format takes the ``"error"`` step;
  - ``"error"`` (the project's earlier variant): the step of the uniform grid with the same rounding error,
    ``sqrt(12) * RMS(Q(x) - x)``. It has a step's units (for a uniform grid without clipping the two coincide)
    but is measured, not learned: it reflects the tensor's distribution, not the importance the joint training
    assigns, so an MX option competed on a different footing from the learned ones beside it.

  Cast formats (fp16/bf16, fp32) have no element counterpart and always take the error-derived step (fp32: 0).
  On the 8-epoch supernet the two tie (``experiments/results/bench_search_quality_default_8ep_limpq_mx.md``: each
  front 0 wins, 6 ties, 2 losses against the best uniform format on the test split); ``"element"`` is the default
  because it compares like with like.

``indicator`` says how they enter the ILP: ``"step"`` (default, the paper) uses the steps as they are;
``"normalised"`` (the project's earlier variant) divides each by the RMS of the tensor it quantizes, which keeps
MobileNetV2's depthwise weights (an order of magnitude larger than the pointwise ones) from ranking by magnitude
alone, but for int formats makes ``s / RMS`` nearly the same for every layer at a given width and so removes most
of the cross-layer signal the ILP needs.

**Erasing.** The joint training leaves some indicators non-monotone. As in the authors' search code, within one
layer, operand and format family, a format whose indicator is below that of the next wider format of the family
is erased: every option using it gets a prohibitive objective (larger than any choice without erased options),
so the ILP takes it only when no other choice meets the budgets.

**Search.** One integer linear program, as in the authors' released search code (``quantization_search/
search.py``): a joint one-hot choice ``x_{l,(w,a)}`` of the (weight, activation) pair per layer, which linearises
BitOps exactly (each pair has its own BitOps), minimising

    sum_l sum_{(w,a)} x_{l,(w,a)} * (I_a^l(a) + alpha * I_w^l(w))      (alpha balances weights and activations)

subject to ``sum_{(w,a)} x_{l,(w,a)} = 1`` for every layer and the budgets (BitOps, size, ...) as linear rows,
solved with HiGHS through :func:`scipy.optimize.milp`. Several budget levels give the front
(:class:`~automq.strategies._assign.FormatAssignmentStrategy`).

Not reproduced: the paper's switchable per-bit-width batch norms (the estimator recalibrates BN statistics for
every candidate instead).
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
from automq.numerics.formats import FixedPointElement, format_names, get_format
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
SCHEDULES = ("uniform_plus_random", "random")
INDICATOR_KINDS = ("step", "normalised")
MX_STEPS = ("element", "error")
Configuration = dict[str, tuple[str, str]]  # layer -> (w_fmt, a_fmt)


@dataclass(frozen=True)
class Indicators:
    """Importance indicators: ``weights[layer][w_fmt]`` and ``activations[layer][a_fmt]``."""

    weights: dict[str, dict[str, float]]
    activations: dict[str, dict[str, float]]

    def erased(self) -> dict[str, dict[str, set[str]]]:
        """The non-monotone formats, ``{"weights": {layer: formats}, "activations": ...}``: within a layer,
        operand and family, a format whose indicator is below the next wider format's (see the module docstring)."""
        return {operand: {layer: _non_monotone(by_format) for layer, by_format in table.items()}
                for operand, table in (("weights", self.weights), ("activations", self.activations))}

    def objective(self, formats: FormatProblem, alpha: float) -> np.ndarray:
        """``I_a(a) + alpha * I_w(w)`` of every ``(w, a)`` option, in the problem's flat order; an option with an
        erased format costs that plus a prohibitive constant: one more than the largest total any choice without
        erased options reaches (indicators are >= 0), so such a choice is always preferred when one fits."""
        problem, erased = formats.problem, self.erased()
        value = np.array([self.activations[layer][a] + alpha * self.weights[layer][w]
                          for layer, options in zip(problem.layers, problem.options) for w, a in options])
        is_erased = np.array([w in erased["weights"][layer] or a in erased["activations"][layer]
                              for layer, options in zip(problem.layers, problem.options) for w, a in options])
        kept = np.where(is_erased, 0.0, value)
        prohibitive = 1.0 + float(np.maximum.reduceat(kept, problem.starts).sum())
        return np.where(is_erased, value + prohibitive, value)


def _non_monotone(by_format: Mapping[str, float]) -> set[str]:
    """Formats whose indicator is below that of the next wider format of their family (LIMPQ's erased points)."""
    erased = set()
    for family in {get_format(f).family for f in by_format}:
        ordered = sorted((f for f in by_format if get_format(f).family == family),
                         key=lambda f: get_format(f).bits_per_element)
        erased |= {narrow for narrow, wide in zip(ordered, ordered[1:])
                   if get_format(narrow).bits_per_element < get_format(wide).bits_per_element
                   and by_format[narrow] < by_format[wide]}
    return erased


def uniform_configurations(menus: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> list[Configuration]:
    """One configuration per format of the menus (by bits): that format on every layer's weights and
    activations, or the menu's nearest one in bits (of the same family first) where the menu lacks it."""
    every = {f for w_menu, a_menu in menus.values() for f in (*w_menu, *a_menu)}
    ordered = sorted(every, key=lambda f: (get_format(f).bits_per_element, f))
    return [{layer: (_nearest(w_menu, fmt), _nearest(a_menu, fmt)) for layer, (w_menu, a_menu) in menus.items()}
            for fmt in ordered]


def _nearest(menu: tuple[str, ...], fmt: str) -> str:
    target = get_format(fmt)
    return min(menu, key=lambda f: (abs(get_format(f).bits_per_element - target.bits_per_element),
                                    get_format(f).family != target.family, menu.index(f)))


def random_configuration(menus: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]],
                         rng: np.random.Generator) -> Configuration:
    """Every layer's ``w_fmt`` and ``a_fmt`` drawn uniformly from its menus (weight first, layer by layer)."""
    return {layer: (str(rng.choice(w_menu)), str(rng.choice(a_menu))) for layer, (w_menu, a_menu) in menus.items()}


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
    schedule: str = "uniform_plus_random",
    indicator: str = "step",
    mx_step: str = "element",
    checkpoint: PhaseCheckpoint | None = None,
) -> Indicators:
    """The joint indicator-training run on a copy of ``supernet`` (the original is left untouched): ``steps``
    SGD steps of cross-entropy on ``train``, each over the configurations of ``schedule`` (see the module
    docstring), then the ``indicator`` of every format. With ``checkpoint``, the run saves its state there at
    intervals, and the indicators when it ends, and continues from what it finds there."""
    _check_scheme(schedule, indicator, mx_step)
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

    uniform = uniform_configurations(menus) if schedule == "uniform_plus_random" else []
    net.train()
    for images, labels in itertools.islice(endless_batches(train, batch_size, seed), step, steps):
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        for configuration in (*uniform, random_configuration(menus, rng)):
            _activate(layers, specs, configuration)
            F.cross_entropy(net(images), labels).backward()  # summed over the configurations, as the authors do
        nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        step += 1
        if checkpoint is not None:
            checkpoint.save_due(state)
    for name, layer in layers.items():
        layer.set_active(specs[name])
    indicators = _measure_indicators(net, layers, menus, next(endless_batches(train, batch_size, seed + 1))[0],
                                     normalise=indicator == "normalised", mx_step=mx_step)
    if checkpoint is not None:
        checkpoint.save({"indicators": dataclasses.asdict(indicators)})
    return indicators


def _check_scheme(schedule: str, indicator: str, mx_step: str) -> None:
    if schedule not in SCHEDULES or indicator not in INDICATOR_KINDS or mx_step not in MX_STEPS:
        raise ValueError(f"LIMPQ: schedule must be one of {SCHEDULES}, indicator one of {INDICATOR_KINDS} and "
                         f"mx_step one of {MX_STEPS}; got {schedule!r}, {indicator!r} and {mx_step!r}")


def _activate(layers: dict[str, ElasticQuantLayer], specs: Mapping[str, Any], configuration: Configuration) -> None:
    for name, layer in layers.items():
        w_fmt, a_fmt = configuration[name]
        layer.set_active(dataclasses.replace(specs[name], w_fmt=w_fmt, a_fmt=a_fmt))


@torch.no_grad()
def _measure_indicators(net: nn.Module, layers: dict[str, ElasticQuantLayer],
                        menus: dict[str, tuple[tuple[str, ...], tuple[str, ...]]], images: Tensor, *,
                        normalise: bool, mx_step: str = "element") -> Indicators:
    """The steps of every layer's formats, on its active weight and its inputs of ``images`` (MX formats' by
    ``mx_step``); with ``normalise``, each divided by the RMS of the tensor it quantizes."""
    inputs = _layer_inputs(net, layers, images.to(next(net.parameters()).device))
    weights, activations = {}, {}
    for name, layer in layers.items():
        w_menu, a_menu = menus[name]
        weight = layer.weight_of(layer.active)
        # an all-zero tensor keeps its raw steps
        w_unit, a_unit = (max(_rms(weight), 1e-12), max(_rms(inputs[name]), 1e-12)) if normalise else (1.0, 1.0)
        weights[name] = {f: _step(layer.w_quant, f, weight, mx_step) / w_unit for f in w_menu}
        activations[name] = {f: _step(layer.a_quant, f, inputs[name], mx_step) / a_unit for f in a_menu}
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


@torch.no_grad()
def _step(quantizer: Quantizer, fmt: str, x: Tensor, mx_step: str = "element") -> float:
    """The quantization step of ``fmt`` on ``x`` (see the module docstring): learned when the format has a
    learned scale; for an MX format with ``mx_step="element"``, its element format's, scaled by the ratio of
    their rounding errors; else that of the uniform grid with the same RMS error."""
    error = _rms(quantizer(x, fmt) - x)  # also initialises, from x, a scale the run happened never to draw
    if get_format(fmt).learnable_scale:
        return _learned_step(quantizer, fmt, x)
    counterpart = element_counterpart(fmt) if mx_step == "element" else None
    if counterpart not in quantizer.formats:  # None too: no counterpart, or the error-derived step asked for
        return math.sqrt(12.0) * error  # 0 for fp32
    counterpart_error = _rms(quantizer(x, counterpart) - x)
    return _learned_step(quantizer, counterpart, x) * error / counterpart_error if counterpart_error > 0 else 0.0


def _learned_step(quantizer: Quantizer, fmt: str, x: Tensor) -> float:
    """The learned range per level of ``fmt``, whose scale ``quantizer`` holds (mean over channels)."""
    spec = get_format(fmt)
    scale = quantizer.scale(fmt, x.shape[0] if quantizer.channels is not None else 1)
    return float(scale.detach().abs().mean()) * spec.max_value / (2.0 ** (spec.bits - 1) - 1)


def element_counterpart(fmt: str) -> str | None:
    """The registered format with a learned scale on the element grid of the MX format ``fmt`` (a float element:
    the float format of that element; MXINT8's fixed-point element: the int format of its bits), or ``None``."""
    spec = get_format(fmt)
    element = getattr(spec, "element", None)
    if spec.family != "mx" or element is None:
        return None
    for name in format_names():
        other = get_format(name)
        same_float = other.family == "float" and getattr(other, "element", None) == element
        same_int = isinstance(element, FixedPointElement) and other.family == "int" and other.bits == element.bits
        if other.learnable_scale and (same_float or same_int):
            return name
    return None


def _rms(x: Tensor) -> float:
    return float(x.float().square().mean().sqrt())


@register_strategy
class LIMPQ(FormatAssignmentStrategy):
    """LIMPQ on one architecture: a joint indicator-training run, then one ILP per budget level.

    Args:
        alpha: weight of the weight indicators against the activation ones (the authors' default: 2).
        steps: SGD steps of the joint indicator-training run.
        schedule: ``"uniform_plus_random"`` (every uniform configuration and one random one per batch, the
            authors' scheme) or ``"random"`` (one random configuration per batch).
        indicator: ``"step"`` (the learned steps, the paper) or ``"normalised"`` (divided by the RMS of the
            quantized tensor).
        mx_step: what stands in for an MX format's step: ``"element"`` (its element format's learned step times
            the ratio of their rounding errors) or ``"error"`` (the step of a uniform grid with its rounding error).
        batch_size, lr: of that run (SGD, Nesterov momentum 0.9, no weight decay).
        arch, metric, time_limit: see :class:`~automq.strategies._assign.FormatAssignmentStrategy`.
    """

    name = "limpq"
    options = "joint"

    def __init__(self, *, alpha: float = 2.0, steps: int = 300, batch_size: int = 128, lr: float = 0.01,
                 schedule: str = "uniform_plus_random", indicator: str = "step", mx_step: str = "element",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if alpha < 0 or steps < 1:
            raise ValueError(f"LIMPQ needs alpha >= 0 and steps >= 1, got alpha={alpha}, steps={steps}")
        _check_scheme(schedule, indicator, mx_step)
        self.alpha, self.steps, self.batch_size, self.lr = alpha, steps, batch_size, lr
        self.schedule, self.indicator, self.mx_step = schedule, indicator, mx_step

    def prepare(self, formats: FormatProblem, evaluator: Evaluator, *, seed: int,
                state_dir: Path | None = None) -> tuple[Solver, dict[str, Any]]:
        supernet, data = supernet_and_data(evaluator, self.name)
        start = time.perf_counter()
        checkpoint = PhaseCheckpoint(state_dir, CHECKPOINT_NAME, {
            "arch": formats.arch.id, "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "seed": seed,
            "schedule": self.schedule, "indicator": self.indicator, "mx_step": self.mx_step})
        indicators = learn_indicators(supernet, evaluator.space, formats.arch, data.train, steps=self.steps,
                                      batch_size=self.batch_size, lr=self.lr, seed=seed, schedule=self.schedule,
                                      indicator=self.indicator, mx_step=self.mx_step, checkpoint=checkpoint)
        seconds = time.perf_counter() - start
        logger.info("LIMPQ indicator training: %d steps in %.1f s", self.steps, seconds)
        objective = indicators.objective(formats, self.alpha)

        def solve(budgets: Mapping[str, float]) -> Solution:
            return solve_linear(formats.problem, objective, budgets, time_limit=self.time_limit)

        erased = sorted(f"{operand}:{layer}:{fmt}" for operand, table in indicators.erased().items()
                        for layer, names in table.items() for fmt in names)
        return solve, {"indicator_steps": self.steps, "indicator_s": seconds, "alpha": self.alpha,
                       "schedule": self.schedule, "indicator": self.indicator, "mx_step": self.mx_step,
                       "erased": erased}
