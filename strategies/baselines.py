"""Reference points every search is compared with: uniform precision and random search.

* ``uniform``: every ``(w_fmt, a_fmt)`` pair of the space's default menus applied to every layer (layers whose
  menu lacks a format get the nearest one it has, see :meth:`SearchSpace.uniform`), on the largest architecture
  and optionally the smallest. Each trial's ``info`` names the format pair and the layers that were clamped.
* ``random``: ``budget.evaluations`` candidates drawn uniformly from the whole space with the run's seed; draws
  that break a hard budget are redrawn (their analytic cost is free to check), so every evaluation is spent on a
  feasible candidate when one can be found.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import numpy as np

from automq.numerics.formats import get_format
from automq.search.strategy import Budget, Evaluator, Strategy, budget_violations, evaluate_candidate, register_strategy
from automq.search.trial import Trial

if TYPE_CHECKING:
    from automq.space.candidate import Candidate
    from automq.space.space import SearchSpace

ARCHS = ("largest", "smallest")


@register_strategy
class Uniform(Strategy):
    """Uniform precision: one trial per (architecture, format pair), highest precision first.

    Args:
        archs: which architectures to quantize uniformly, among ``"largest"`` and ``"smallest"``.
    """

    name = "uniform"

    def __init__(self, *, archs: tuple[str, ...] = ("largest",)) -> None:
        unknown = [a for a in archs if a not in ARCHS]
        if unknown or not archs:
            raise ValueError(f"archs must be a non-empty subset of {ARCHS}, got {archs!r}")
        self.archs = tuple(archs)

    def run(self, space: SearchSpace, evaluator: Evaluator, budget: Budget, *, seed: int = 0) -> list[Trial]:
        start = time.perf_counter()
        trials: list[Trial] = []
        for arch, (w_fmt, a_fmt) in itertools.product(self.archs, uniform_pairs(space)):
            if len(trials) == budget.evaluations or _out_of_time(budget, start):
                break
            candidate = space.uniform(w_fmt, a_fmt, arch, clamp=True)
            clamped = [name for name, w, a in candidate.formats if (w, a) != (w_fmt, a_fmt)]
            info = {"format": f"{w_fmt}/{a_fmt}", "w_fmt": w_fmt, "a_fmt": a_fmt, "arch": arch,
                    "clamped_layers": clamped}
            trials.append(evaluate_candidate(len(trials), candidate, evaluator, strategy=self.name, info=info))
        return trials


def uniform_pairs(space: SearchSpace) -> list[tuple[str, str]]:
    """Every ``(w_fmt, a_fmt)`` of the space's default menus, most bits first (weights, then activations)."""
    pairs = itertools.product(space.weight_formats, space.activation_formats)
    return sorted(pairs, key=lambda p: (-get_format(p[0]).bits_per_element, -get_format(p[1]).bits_per_element))


@register_strategy
class RandomSearch(Strategy):
    """Random search over the whole space: ``budget.evaluations`` feasible uniform draws.

    Args:
        max_draws: draws allowed per trial to find a candidate within the hard budgets; when they run out, the
            last draw is recorded as an infeasible trial.
    """

    name = "random"

    def __init__(self, *, max_draws: int = 1000) -> None:
        if max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {max_draws}")
        self.max_draws = max_draws

    def run(self, space: SearchSpace, evaluator: Evaluator, budget: Budget, *, seed: int = 0) -> list[Trial]:
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        trials: list[Trial] = []
        seen: set[str] = set()
        while len(trials) < budget.evaluations and not _out_of_time(budget, start):
            candidate, draws = self._draw(space, evaluator, rng, seen)
            seen.add(candidate.id)
            trials.append(evaluate_candidate(len(trials), candidate, evaluator, strategy=self.name,
                                             info={"draws": draws}))
        return trials

    def _draw(self, space: SearchSpace, evaluator: Evaluator, rng: np.random.Generator,
              seen: set[str]) -> tuple[Candidate, int]:
        """A new feasible candidate, or the last draw after ``max_draws``; and how many draws it took."""
        for draws in range(1, self.max_draws + 1):
            candidate = space.sample(rng)
            if candidate.id not in seen and not budget_violations(space, evaluator.costs(candidate)):
                return candidate, draws
        return candidate, self.max_draws


def _out_of_time(budget: Budget, start: float) -> bool:
    return budget.wall_s is not None and time.perf_counter() - start > budget.wall_s
