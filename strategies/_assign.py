"""Per-layer format assignment of a fixed architecture, shared by LIMPQ and CLADO.

:class:`FormatProblem` builds the :class:`~automq.strategies._solvers.AssignmentProblem` of an architecture of a
space (its layers' ``(w_fmt, a_fmt)`` options, with per-layer costs from :class:`~automq.cost.CostModel`), and
:class:`FormatAssignmentStrategy` is the base of the strategies that sweep a budget over it to trace a front,
solving one integer program (:mod:`automq.strategies._solvers`) per budget level.
"""

from __future__ import annotations

import dataclasses
import itertools
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from automq.model.arch import layer_specs
from automq.space.candidate import Candidate
from automq.cost import METRIC_KEYS, CostModel, LayerCost
from automq.errors import BudgetError, SpaceError
from automq.numerics.formats import get_format
from automq.strategies._solvers import AssignmentProblem, Solution, check_budgets
from automq.search.strategy import Evaluator, Strategy, TrialRecorder

if TYPE_CHECKING:
    from pathlib import Path

    from automq.data import DataSplits
    from automq.space.space import SearchSpace
    from automq.model.supernet import Supernet

# ------------------------------------------------------------------------------ formats of a fixed architecture
# Space metrics whose whole-model value is a sum over layers (peak_act is a maximum: handled by filtering options).
ADDITIVE_METRICS = ("bitops", "size", "macs", "params", "energy", "latency")
OPTION_KINDS = ("joint", "weights")


def highest_precision(menu: Sequence[str]) -> str:
    """The most-bit format of a menu (the first on ties), as :meth:`SearchSpace.largest` picks it."""
    return max(menu, key=_bits)


def _bits(name: str) -> float:
    return get_format(name).bits_per_element


@dataclass(frozen=True)
class FormatProblem:
    """The format assignment of one architecture: the layers whose menus leave a choice, with their
    ``(w_fmt, a_fmt)`` options and per-option costs, and the formats of the layers that have no choice."""

    arch: Candidate
    problem: AssignmentProblem
    fixed: Mapping[str, tuple[str, str]]
    order: tuple[str, ...]  # every layer of ``arch`` in network order

    @classmethod
    def build(
        cls, space: SearchSpace, arch: Candidate, *, options: str = "joint", peak_act: float | None = None
    ) -> FormatProblem:
        """``options="joint"``: every ``(w_fmt, a_fmt)`` pair of a layer's menus, so that BitOps, a product of
        the two choices, stays linear in the one-hot vector; ``"weights"``: weight formats only, activations at
        the menu's highest precision. Options are ordered from the highest precision down. A ``peak_act`` budget
        removes the options whose own activation bytes exceed it, which is exact because the whole-model value
        is the maximum over layers."""
        if options not in OPTION_KINDS:
            raise ValueError(f"options must be one of {OPTION_KINDS}, got {options!r}")
        model = CostModel(space)
        metrics = [m for m in ADDITIVE_METRICS if m != "latency" or model.latency_table is not None]
        layers, labels, costs, fixed = [], [], {m: [] for m in metrics}, {}
        offsets = dict.fromkeys(metrics, 0.0)
        specs = layer_specs(space, arch)
        for spec in specs:
            w_menu, a_menu = space.layer_menu(spec.name)
            a_menu = a_menu if options == "joint" else (highest_precision(a_menu),)
            # highest precision first, so that every tie (in a heuristic's argmin, say) favours precision
            pairs = sorted(itertools.product(w_menu, a_menu), key=lambda pair: (-_bits(pair[0]), -_bits(pair[1])))
            priced = [model.layer_cost(dataclasses.replace(spec, w_fmt=w, a_fmt=a)) for w, a in pairs]
            if peak_act is not None:
                pairs, priced = _within_peak(spec.name, pairs, priced, peak_act)
            if len(pairs) == 1:
                fixed[spec.name] = pairs[0]
                for m in metrics:
                    offsets[m] += _layer_metric(priced[0], m)
                continue
            layers.append(spec.name)
            labels.append(tuple(pairs))
            for m in metrics:
                costs[m].extend(_layer_metric(c, m) for c in priced)
        problem = AssignmentProblem(tuple(layers), tuple(labels), costs, offsets)
        return cls(arch, problem, fixed, tuple(spec.name for spec in specs))

    def candidate(self, choice: Sequence[int]) -> Candidate:
        """The candidate of ``arch`` with the chosen option on every assigned layer."""
        chosen = {**self.fixed, **self.problem.labels(choice)}
        formats = tuple((name, *chosen[name]) for name in self.order)
        return Candidate(self.arch.width_mult, self.arch.blocks, formats)


def _layer_metric(cost: LayerCost, metric: str) -> float:
    return float(getattr(cost, METRIC_KEYS[metric]))


def _within_peak(
    layer: str, pairs: list[tuple[str, str]], priced: list[LayerCost], limit: float
) -> tuple[list[tuple[str, str]], list[LayerCost]]:
    keep = [n for n, c in enumerate(priced) if c.act_bytes <= limit]
    if not keep:
        smallest = min(c.act_bytes for c in priced)
        raise BudgetError(f"budget peak_act <= {limit:.6g} is infeasible: layer {layer} needs at least "
                          f"{smallest:.6g} activation bytes in any format of its menu; raise the peak_act budget")
    return [pairs[n] for n in keep], [priced[n] for n in keep]


def sweep_levels(problem: AssignmentProblem, metric: str, count: int, cap: float | None) -> list[float]:
    """``count`` budgets on ``metric`` evenly spaced from the smallest reachable value to the largest (or to
    ``cap``, the space's hard budget); a single level is the top one."""
    low, high = problem.extreme_cost(metric), problem.extreme_cost(metric, largest=True)
    if cap is not None:
        high = min(high, cap)
    if count == 1:
        return [high]
    return list(np.linspace(low, high, count))


Solver = Callable[[Mapping[str, float]], Solution]


class FormatAssignmentStrategy(Strategy):
    """Base of the sensitivity-based strategies: per-layer formats of one fixed architecture.

    :meth:`prepare` measures what the objective needs, once per run; then one integer program is solved per
    budget level, sweeping ``metric`` (default: the space's first minimised additive objective) over as many
    levels as the search has trials, from its smallest to its largest reachable value, with the space's hard
    budgets on every solve. Each distinct solution is scored and recorded as soon as it is solved; a resumed
    search skips the solutions it has logged.

    Args:
        arch: the architecture whose formats are assigned: ``"largest"``, ``"smallest"`` or a candidate of
            the space (its formats are ignored), e.g. one picked by another strategy.
        metric: the cost metric swept to trace the front; additive metrics only.
        time_limit: seconds HiGHS may spend on one integer program.
    """

    options: str = "joint"  # see FormatProblem.build

    def __init__(self, *, arch: Candidate | str = "largest", metric: str | None = None,
                 time_limit: float = 60.0) -> None:
        if metric is not None and metric not in ADDITIVE_METRICS:
            raise ValueError(f"metric must be one of {ADDITIVE_METRICS} (a per-layer sum), got {metric!r}")
        if isinstance(arch, str) and arch not in ("largest", "smallest"):
            raise ValueError(f"arch must be 'largest', 'smallest' or a Candidate, got {arch!r}")
        self.arch, self.metric, self.time_limit = arch, metric, time_limit

    @abstractmethod
    def prepare(self, formats: FormatProblem, evaluator: Evaluator, *, seed: int,
                state_dir: Path | None = None) -> tuple[Solver, dict[str, Any]]:
        """Measure the objective's inputs; return the solver of one ``{metric: limit}`` budget and a JSON
        summary of what the measurement cost (recorded in every trial's ``info``). With ``state_dir`` (the
        search directory), checkpoint the measurement there and continue it from the checkpoint found there."""

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        formats = FormatProblem.build(space, self._arch(space), options=self.options,
                                      peak_act=space.budgets.get("peak_act"))
        hard = {m: v for m, v in space.budgets.items() if m in ADDITIVE_METRICS}
        check_budgets(formats.problem, hard)  # before the (expensive) measurement
        metric = self.metric or sweep_metric(space)
        if metric not in formats.problem.costs:
            raise SpaceError(f"{space.source}: {self.name} sweeps {metric}, which needs a latency_table in the "
                             "space file; add one or choose another metric")
        # the levels of the whole search, so that a resumed one solves the levels the interrupted one did
        levels = sweep_levels(formats.problem, metric, recorder.total, hard.get(metric))
        recorder.plan(len(levels))
        solve, summary = self.prepare(formats, evaluator, seed=seed, state_dir=recorder.state_dir)
        for level in levels:
            if recorder.exhausted():
                break
            solution = solve({**hard, metric: float(level)})
            candidate = formats.candidate(solution.choice)
            if recorder.seen(candidate):  # a neighbouring level gave the same assignment, or it was logged
                continue
            recorder.evaluate(candidate, evaluator, info={
                **summary, "budget": {metric: float(level)}, "solver": solution.method, "solve_s": solution.seconds,
                "objective": solution.objective})

    def _arch(self, space: SearchSpace) -> Candidate:
        if isinstance(self.arch, Candidate):
            space.validate_candidate(self.arch)
            return self.arch
        return space.largest() if self.arch == "largest" else space.smallest()


def supernet_and_data(evaluator: Evaluator, strategy: str) -> tuple[Supernet, DataSplits]:
    """The supernet and data splits of an estimator-backed evaluator, which strategies that measure the network
    themselves need besides its scores."""
    supernet, data = getattr(evaluator, "supernet", None), getattr(evaluator, "data", None)
    if supernet is None or data is None:
        raise TypeError(f"{strategy} measures the supernet itself and needs an evaluator with .supernet and .data "
                        f"(automq.oneshot.evaluate.OneShotEstimator); got {type(evaluator).__name__}")
    return supernet, data


def sweep_metric(space: SearchSpace) -> str:
    """The cost metric a strategy sweeps levels of when not told one: the first minimised objective that is a
    per-layer sum (so a level is an additive constraint), BitOps when the space has none."""
    return next((o.metric for o in space.objectives if o.mode == "min" and o.metric in ADDITIVE_METRICS), "bitops")
