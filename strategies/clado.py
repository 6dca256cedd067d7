"""CLADO: cross-layer-dependency-aware mixed precision by integer quadratic programming (Deng et al., 2023,
arXiv:2307.05657).

**Sensitivities.** With forward passes only, on a small calibration subset of the training split, CLADO measures
the loss change ``dL_i(s)`` of quantizing layer ``i`` alone to option ``s`` (every other layer at its highest
precision) and ``dL_ij(s, t)`` of quantizing layers ``i`` and ``j`` together. Over the (layer, option) pairs it
builds the matrix ``G``:

* ``G[(i,s),(i,s)] = 2 dL_i(s)``; two options of one layer: 0 (they never co-occur);
* ``G[(i,s),(j,t)] = dL_ij(s,t) - dL_i(s) - dL_j(t)`` for ``i != j`` (measured once per unordered pair),

so that ``x^T G x / 2`` is the second-order estimate of the loss change of the assignment ``x`` (one-hot per
layer): the sum of single-layer effects plus every pairwise interaction. The highest-precision option changes
nothing, so its row is zero and is never measured. ``G`` is projected onto the nearest positive semi-definite
matrix (negative eigenvalues set to zero), as the paper does to make the estimate a convex, non-negative function;
the all-highest-precision assignment then has the minimum value 0, which is the sanity check the authors report
their released code fails.

**Reference.** The paper measures every loss change against the full-precision model. Here the reference is each
layer at the top of its menus (:func:`reference_choice`): fp32 wherever the space's menus hold it, as in the paper;
the shipped spaces stop at int8/FP8, and there the reference is the best model the supernet can run. It cannot run
fp32 there: a supernet layer runs only the formats it was trained with (its quantizers hold no fp32 state and
refuse a format outside their menu), and latent weights that were never trained to work unquantized would measure
a model no candidate is. A space that wants the paper's reference adds fp32 to its menus (and trains it).

**Cost.** For ``n`` non-reference options the measurement needs ``n`` single and about ``n^2 / 2`` pair loss
evaluations: ``spaces/mpq_only.yaml`` (36 searched layers; 5 non-reference weight formats on 24 of them, 1 on the
12 depthwise ones) needs 132 + 8,406. The network is run as a chain of units (stem, each block, head), and every
evaluation only computes the units from the first changed one: the unquantized unit inputs are cached once per
calibration batch, and the inputs downstream of layer ``i`` quantized to ``s`` once per ``(i, s)``, so a pair
``(i, j)`` recomputes only the units from ``j``'s on. The trials' ``info`` records the evaluations, the unit
forwards (against the ``evaluations * units`` a naive loop would run) and the seconds. Measured on one CPU core:
the 132 singles of mpq_only on 256 images take 20 s (half the unit forwards of a naive loop), so the full
measurement on 1,024 images takes about an hour there, and seconds on a GPU.

**Search.** ``min x^T G x`` over one-hot choices under the budgets, exactly as a MILP (see
:func:`~automq.strategies._solvers.solve_quadratic`, which falls back to a logged local search above a size
limit). ``clado_diag`` keeps only the diagonal (no cross-layer terms), the baseline the paper improves on; its
problem is linear and solved as an ILP.

By default only weight formats are searched, with activations at each layer's highest precision, as in the paper
(``options="joint"`` searches ``(w_fmt, a_fmt)`` pairs: 468 + 105,894 evaluations on mpq_only, 12 times more).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from automq.data import fixed_batches
from automq.model.elastic import ElasticQuantLayer
from automq.strategies._assign import (
    FormatAssignmentStrategy,
    FormatProblem,
    Solver,
    highest_precision,
    supernet_and_data,
)
from automq.strategies._checkpoint import PhaseCheckpoint
from automq.strategies._solvers import MAX_PAIR_VARIABLES, Solution, solve_linear, solve_quadratic
from automq.search.strategy import Evaluator, register_strategy
from automq.model.supernet import recalibrate_bn

if TYPE_CHECKING:
    from pathlib import Path

    from automq.model.supernet import Supernet

logger = logging.getLogger(__name__)

Unit = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Sensitivities:
    """Measured loss changes over the flat options of a :class:`FormatProblem`.

    ``single[a] = dL`` of option ``a`` alone; ``interaction[a, b] = dL_ab - dL_a - dL_b`` for options of two
    different layers (symmetric; all zero when pairs were not measured). Reference options have zeros.
    """

    single: np.ndarray
    interaction: np.ndarray
    evaluations: int
    unit_forwards: int
    units: int
    images: int
    seconds: float

    def matrix(self) -> np.ndarray:
        """CLADO's ``G`` before projection: ``2 dL`` on the diagonal, the interactions off it."""
        return np.diag(2.0 * self.single) + self.interaction

    def summary(self) -> dict[str, Any]:
        """What the measurement cost, for the trials' ``info``."""
        return {"calib_images": self.images, "loss_evaluations": self.evaluations, "measure_s": self.seconds,
                "unit_forwards": self.unit_forwards, "naive_unit_forwards": self.evaluations * self.units}


def nearest_psd(matrix: np.ndarray) -> np.ndarray:
    """The positive semi-definite matrix nearest to ``matrix`` in Frobenius norm: symmetrise, then set the
    negative eigenvalues to zero (Higham 1988)."""
    symmetric = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(symmetric)
    projected = (vectors * np.maximum(values, 0.0)) @ vectors.T
    return (projected + projected.T) / 2


def reference_choice(formats: FormatProblem) -> list[int]:
    """Per assigned layer, the index of its highest-precision option (both operands at the menu's top)."""
    choice = []
    for options in formats.problem.options:
        top = (highest_precision([w for w, _ in options]), highest_precision([a for _, a in options]))
        choice.append(options.index(top))
    return choice


def network_units(net: Supernet) -> tuple[list[Unit], dict[str, int]]:
    """The active network as a chain of units (stem, every active block, head with pooling and classifier)
    whose composition is ``net.forward``, and the unit of every quantized layer."""
    units: list[Unit] = [lambda x: net.bn1(net.conv_stem(x))]
    unit_of = {"conv_stem": 0}
    for i, (stage, depth) in enumerate(zip(net.blocks, net.active().depths)):
        for j, block in enumerate(islice(stage, depth)):
            for name, child in block.named_children():
                if isinstance(child, ElasticQuantLayer):
                    unit_of[f"blocks.{i}.{j}.{name}"] = len(units)
            units.append(block)
    unit_of["conv_head"] = unit_of["classifier"] = len(units)
    units.append(lambda x: net.classifier(F.adaptive_avg_pool2d(net.bn2(net.conv_head(x)), 1).flatten(1)))
    return units, unit_of


class _Runner:
    """Runs unit chains from any unit and counts the unit forwards."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.units, self.forwards = units, 0

    def boundaries(self, x: Tensor, start: int) -> list[Tensor | None]:
        """Inputs of every unit from ``start`` on (earlier entries ``None``), plus the logits last."""
        out: list[Tensor | None] = [None] * start + [x]
        for unit in self.units[start:]:
            out.append(unit(out[-1]))
        self.forwards += len(self.units) - start
        return out

    def logits(self, x: Tensor, start: int) -> Tensor:
        for unit in self.units[start:]:
            x = unit(x)
        self.forwards += len(self.units) - start
        return x


@dataclass
class _Tally:
    """The loss sums of a measurement in progress, and how far it got: ``batches`` finished, and in the batch
    after them ``rows`` pair rows done (``-1``: its clean pass and singles not done yet)."""

    single: np.ndarray
    pair: np.ndarray
    loss0: float = 0.0
    images: int = 0
    forwards: int = 0
    batches: int = 0
    rows: int = -1

    def state(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "single": torch.from_numpy(self.single),
                "pair": torch.from_numpy(self.pair)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Tally:
        return cls(**{**state, "single": state["single"].numpy(), "pair": state["pair"].numpy()})


@torch.inference_mode()
def measure_sensitivities(
    supernet: Supernet, formats: FormatProblem, batches: Sequence[tuple[Tensor, Tensor]], *, pairs: bool = True,
    checkpoint: PhaseCheckpoint | None = None,
) -> Sensitivities:
    """``dL`` of every single option and (with ``pairs``) of every option pair of two layers, on ``batches``.

    Works on a copy of ``supernet`` at the reference assignment, with its BN statistics recomputed on ``batches``
    and in eval mode, so that only the formats differ between evaluations. With ``checkpoint``, the loss sums (and
    the quantizer scales the measurement initialised) are saved there at intervals, and the measurement continues
    from the pair row it finds there.
    """
    start = time.perf_counter()
    problem = formats.problem
    net = copy.deepcopy(supernet)
    net.set_active(formats.candidate(reference_choice(formats)))
    recalibrate_bn(net, batches)
    net.eval()
    units, unit_of = network_units(net)
    runner = _Runner(units)
    layers = net.quant_layers()
    base = {name: layers[name].active for name in problem.layers}
    variants = [(a, name, w, act) for a, (name, (w, act)) in enumerate(_flat_options(formats))
                if (w, act) != (base[name].w_fmt, base[name].a_fmt)]
    device = next(net.parameters()).device

    def use(name: str, w_fmt: str, a_fmt: str) -> None:
        layers[name].set_active(dataclasses.replace(base[name], w_fmt=w_fmt, a_fmt=a_fmt))

    measured = [(a, b) for k, (a, name, *_) in enumerate(variants) for b, other, *_ in variants[k + 1:]
                if pairs and other != name]
    saved = checkpoint.load() if checkpoint is not None else None
    tally = _Tally(np.zeros(problem.size), np.zeros((problem.size, problem.size)))
    if saved is not None:
        net.load_state_dict(saved["net"])
        tally = _Tally.from_state(saved["tally"])
        runner.forwards = tally.forwards

    def save_due() -> None:
        if checkpoint is not None:
            tally.forwards = runner.forwards
            checkpoint.save_due(lambda: {"net": net.state_dict(), "tally": tally.state()})

    for x, y in batches[tally.batches:]:
        x, y = x.to(device), y.to(device)
        clean = runner.boundaries(x, 0)
        if tally.rows < 0:
            tally.loss0 += _loss_sum(clean[-1], y)
            # Singles first, so that a quantizer scale the supernet never initialised is initialised from clean
            # inputs, whatever the order of the pairs.
            for a, name, w_fmt, a_fmt in variants:
                use(name, w_fmt, a_fmt)
                tally.single[a] += _loss_sum(runner.logits(clean[unit_of[name]], unit_of[name]), y)
                layers[name].set_active(base[name])
            tally.rows = 0
        else:  # resumed inside this batch: its clean pass is counted in the saved tally already
            runner.forwards = tally.forwards
        save_due()
        for k in range(tally.rows, len(variants) if pairs else 0):
            _pair_row(k, variants, x=clean[unit_of[variants[k][1]]], y=y, runner=runner, unit_of=unit_of, use=use,
                      reset=lambda name: layers[name].set_active(base[name]), pair=tally.pair)
            tally.rows = k + 1
            save_due()
        tally.images, tally.batches, tally.rows = tally.images + len(y), tally.batches + 1, -1
        save_due()
    if checkpoint is not None:
        tally.forwards = runner.forwards
        checkpoint.save({"net": net.state_dict(), "tally": tally.state()})
    index = np.array([a for a, *_ in variants], dtype=np.int64)
    d_single = np.zeros(problem.size)
    d_single[index] = (tally.single[index] - tally.loss0) / tally.images
    interaction = np.zeros_like(tally.pair)
    for a, b in measured:
        d_pair = (tally.pair[a, b] - tally.loss0) / tally.images
        interaction[a, b] = interaction[b, a] = d_pair - d_single[a] - d_single[b]
    seconds = time.perf_counter() - start
    evaluations = len(variants) + len(measured)
    logger.info("CLADO: %d loss evaluations on %d images in %.1f s (%d unit forwards of %d units)",
                evaluations, tally.images, seconds, runner.forwards, len(units))
    return Sensitivities(d_single, interaction, evaluations, runner.forwards, len(units), tally.images, seconds)


def _pair_row(k: int, variants: Sequence[tuple[int, str, str, str]], *, x: Tensor, y: Tensor, runner: _Runner,
              unit_of: Mapping[str, int], use: Callable[[str, str, str], None], reset: Callable[[str], None],
              pair: np.ndarray) -> None:
    """Add the loss sums of variant ``k`` paired with every later variant of another layer to ``pair``; ``x`` is
    the clean input of variant ``k``'s unit."""
    a, name, w_fmt, a_fmt = variants[k]
    use(name, w_fmt, a_fmt)
    u = unit_of[name]
    shifted = runner.boundaries(x, u)  # the unit inputs downstream of layer `name` change
    for b, other, w2, a2 in variants[k + 1:]:
        if other == name:
            continue
        use(other, w2, a2)
        v = unit_of[other]
        logits = runner.logits(x, u) if v == u else runner.logits(shifted[v], v)
        pair[a, b] += _loss_sum(logits, y)
        reset(other)
    reset(name)


def _flat_options(formats: FormatProblem) -> list[tuple[str, tuple[str, str]]]:
    return [(layer, option) for layer, opts in zip(formats.problem.layers, formats.problem.options) for option in opts]


def _loss_sum(logits: Tensor, labels: Tensor) -> float:
    return float(F.cross_entropy(logits.float(), labels, reduction="sum"))


@register_strategy
class CLADO(FormatAssignmentStrategy):
    """CLADO on one architecture: measure ``G`` once, then one integer quadratic program per budget level.

    Args:
        calib_images: training images the sensitivities are measured on (the first of the train split).
        batch_size: images per forward pass of the measurement.
        options: ``"weights"`` (the paper) or ``"joint"`` (weight and activation formats).
        max_pair_variables: size limit of the exact MILP before the local-search fallback.
        arch, metric, time_limit: see :class:`~automq.strategies._assign.FormatAssignmentStrategy`.
    """

    name = "clado"
    cross_layer: ClassVar[bool] = True

    def __init__(self, *, calib_images: int = 1024, batch_size: int = 256, options: str = "weights",
                 max_pair_variables: int = MAX_PAIR_VARIABLES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if calib_images < 1 or batch_size < 1:
            raise ValueError(f"{self.name} needs calib_images >= 1 and batch_size >= 1, got {calib_images} and "
                             f"{batch_size}")
        self.calib_images, self.batch_size = calib_images, batch_size
        self.options, self.max_pair_variables = options, max_pair_variables

    def prepare(self, formats: FormatProblem, evaluator: Evaluator, *, seed: int,
                state_dir: Path | None = None) -> tuple[Solver, dict[str, Any]]:
        supernet, data = supernet_and_data(evaluator, self.name)
        batches = fixed_batches(data.train, self.calib_images, self.batch_size)
        checkpoint = PhaseCheckpoint(state_dir, f"{self.name}_sensitivities", {
            "arch": formats.arch.id, "options": self.options, "calib_images": self.calib_images,
            "batch_size": self.batch_size})
        sensitivities = measure_sensitivities(supernet, formats, batches, pairs=self.cross_layer, checkpoint=checkpoint)
        gram = nearest_psd(sensitivities.matrix())
        problem = formats.problem

        def solve(budgets: Mapping[str, float]) -> Solution:
            if self.cross_layer:
                return solve_quadratic(problem, gram, budgets, time_limit=self.time_limit,
                                       max_pair_variables=self.max_pair_variables)
            return solve_linear(problem, np.diag(gram), budgets, time_limit=self.time_limit)

        return solve, sensitivities.summary()


@register_strategy
class CLADODiagonal(CLADO):
    """CLADO without cross-layer terms (``G`` diagonal): the independent-sensitivity baseline of the paper."""

    name = "clado_diag"
    cross_layer = False
