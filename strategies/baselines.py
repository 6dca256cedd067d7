"""Reference points every search is compared with: uniform precision and random search.

* ``uniform``: every ``(w_fmt, a_fmt)`` pair of the space's default menus applied to every layer (layers whose
  menu lacks a format get the nearest one it has, see :meth:`SearchSpace.uniform`), on the largest architecture
  and optionally the smallest. Each trial's ``info`` names the format pair and the layers that were clamped; a
  resumed search evaluates the pairs it has not logged.
* ``random``: ``budget.evaluations`` candidates drawn uniformly from the whole space with the run's seed; draws
  that break a hard budget are redrawn (their analytic cost is free to check), so every evaluation is spent on a
  feasible candidate when one can be found. A resumed search continues the seeded sequence after the logged
  trials, so it makes the trials an uninterrupted one would.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from automq.errors import AutomqError
from automq.search.strategy import Evaluator, Strategy, TrialRecorder, budget_violations, register_strategy

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
    device_aware = True

    def __init__(self, *, archs: tuple[str, ...] = ("largest",)) -> None:
        unknown = [a for a in archs if a not in ARCHS]
        if unknown or not archs:
            raise ValueError(f"archs must be a non-empty subset of {ARCHS}, got {archs!r}")
        self.archs = tuple(archs)

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        planned = self.candidates(space)
        recorder.plan(len(planned))
        for candidate, info in planned:
            if recorder.exhausted():
                break
            if not recorder.seen(candidate):  # a resumed search skips the pairs it has logged
                recorder.evaluate(candidate, evaluator, info=info)

    def candidates(self, space: SearchSpace) -> list[tuple[Candidate, dict[str, Any]]]:
        """The distinct uniform candidates in trial order, each with its ``info``: format pair, clamped layers."""
        planned: dict[str, tuple[Candidate, dict[str, Any]]] = {}
        for arch, (w_fmt, a_fmt) in itertools.product(self.archs, space.uniform_pairs()):
            candidate = space.uniform(w_fmt, a_fmt, arch, clamp=True)
            clamped = [name for name, w, a in candidate.formats if (w, a) != (w_fmt, a_fmt)]
            info = {"format": f"{w_fmt}/{a_fmt}", "w_fmt": w_fmt, "a_fmt": a_fmt, "arch": arch,
                    "clamped_layers": clamped}
            planned.setdefault(candidate.id, (candidate, info))
        return list(planned.values())


@register_strategy
class RandomSearch(Strategy):
    """Random search over the whole space: ``budget.evaluations`` feasible uniform draws.

    Args:
        max_draws: draws allowed per trial to find a candidate within the hard budgets; when they run out, the
            last draw is recorded as an infeasible trial.
    """

    name = "random"
    device_aware = True

    def __init__(self, *, max_draws: int = 1000) -> None:
        if max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {max_draws}")
        self.max_draws = max_draws

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        rng = np.random.default_rng(seed)
        seen: set[str] = set()
        # A resumed search draws the logged trials' candidates again (their costs are analytic, so this is cheap)
        # to continue the seeded sequence where the interrupted one stopped.
        for logged in recorder.history:
            candidate, _ = self._draw(space, evaluator, rng, seen)
            if candidate.id != logged.candidate.id:
                raise AutomqError(
                    f"cannot resume: trial {logged.number} of the search is not the candidate random search draws "
                    f"there with seed {seed} and max_draws {self.max_draws}; resume with the seed, strategy and "
                    "options the search was started with (see its run.json), or search into a new --out folder")
            seen.add(candidate.id)
        while not recorder.exhausted():
            candidate, draws = self._draw(space, evaluator, rng, seen)
            seen.add(candidate.id)
            recorder.evaluate(candidate, evaluator, info={"draws": draws})

    def _draw(self, space: SearchSpace, evaluator: Evaluator, rng: np.random.Generator,
              seen: set[str]) -> tuple[Candidate, int]:
        """A new feasible candidate, or the last draw after ``max_draws``; and how many draws it took."""
        for draws in range(1, self.max_draws + 1):
            candidate = space.sample(rng)
            if candidate.id not in seen and not budget_violations(space, evaluator.costs(candidate)):
                return candidate, draws
        return candidate, self.max_draws

