"""The strategy interface every search method implements.

A strategy explores a :class:`~automq.space.SearchSpace` with an evaluator (usually the one-shot estimator) under
a :class:`Budget`, and returns :class:`Trial` records. Strategies live in ``automq.strategies`` and register
themselves by name with :func:`register_strategy`, so the CLI, the experiments and the shared test-suite can
iterate over all of them. Budgets from the space file are hard constraints: :func:`evaluate_candidate` checks the
analytic costs first and records an infeasible candidate with its reason instead of scoring it.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from automq.search.trial import Trial
from automq.space.candidate import Candidate

if TYPE_CHECKING:
    from automq.search.results import SearchLog
    from automq.space.space import SearchSpace

class Evaluator(Protocol):
    """Scores a candidate: returns accuracy/loss and the cost metrics, keyed by metric name."""

    space: SearchSpace

    def costs(self, candidate: Candidate) -> dict[str, float]: ...

    def __call__(self, candidate: Candidate) -> dict[str, float]: ...

@dataclass(frozen=True)
class Budget:
    """How much a strategy may spend: evaluator calls (trials) and, optionally, wall-clock seconds."""

    evaluations: int
    wall_s: float | None = None

    def __post_init__(self) -> None:
        if self.evaluations < 1:
            raise ValueError(f"Budget.evaluations must be >= 1, got {self.evaluations}")

def budget_violations(space: SearchSpace, metrics: Mapping[str, float]) -> list[str]:
    """Human-readable reasons why ``metrics`` break the space's hard budgets (empty when feasible)."""
    return [
        f"{metric} = {metrics[metric]:.6g} > budget {limit:.6g}"
        for metric, limit in space.budgets.items()
        if metrics[metric] > limit
    ]

def evaluate_candidate(
    number: int,
    candidate: Candidate,
    evaluator: Evaluator,
    *,
    strategy: str,
    info: Mapping[str, Any] | None = None,
) -> Trial:
    """Score one candidate as a :class:`Trial`: infeasible ones are rejected on their analytic costs, and an
    exception inside the evaluator becomes a failed trial carrying the error, so a search never dies of one."""
    start = time.perf_counter()
    info = dict(info or {})
    try:
        costs = evaluator.costs(candidate)
        reasons = budget_violations(evaluator.space, costs)
        if reasons:
            return Trial(number, candidate, costs, "infeasible", "; ".join(reasons), strategy,
                         time.perf_counter() - start, info=info)
        metrics = evaluator(candidate)
        return Trial(number, candidate, metrics, "ok", None, strategy, time.perf_counter() - start, info=info)
    except Exception as exc:  # a crashed evaluation is a result to record, not a reason to stop the search
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        return Trial(number, candidate, {}, "failed", error, strategy, time.perf_counter() - start, info=info)

class Strategy(ABC):
    """A search method. Subclasses set ``name`` and implement :meth:`run`; keyword-only constructors hold
    their hyper-parameters, so a strategy is fully described by its name and constructor arguments.

    ``automq search`` drives a strategy through :meth:`stream`, which records its trials in the search directory's
    :class:`~automq.search.results.SearchLog`; the default records what :meth:`run` returns, and a strategy that can
    record each trial as it finishes, or continue a resumed search from the logged trials, overrides it.
    """

    name: ClassVar[str]

    @property
    def label(self) -> str:
        """How reports and the progress line name this configuration (e.g. ``tune-nsga2``); default: the name."""
        return self.name

    @abstractmethod
    def run(self, space: SearchSpace, evaluator: Evaluator, budget: Budget, *, seed: int = 0) -> list[Trial]:
        """Explore ``space`` within ``budget`` and return every trial made, in order."""

    def stream(self, space: SearchSpace, evaluator: Evaluator, budget: Budget, log: SearchLog, *,
               seed: int = 0) -> None:
        """Make ``budget.evaluations`` more trials and append them to ``log``, numbered after its trials.

        The default appends the trials of :meth:`run` when it returns, seeded past the trials already in ``log``
        so that a resumed search does not draw its first candidates again.
        """
        done = len(log.trials)
        for number, trial in enumerate(self.run(space, evaluator, budget, seed=seed + done), start=done):
            trial.number = number
            log.append(trial)

_REGISTRY: dict[str, type[Strategy]] = {}

def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls

def strategy_names() -> list[str]:
    """Names of all registered strategies (importing ``automq.strategies`` registers the built-in ones)."""
    import automq.strategies  # noqa: F401  (registration side effect)

    return sorted(_REGISTRY)

def create_strategy(name: str, **kwargs: Any) -> Strategy:
    """Instantiate a registered strategy by name."""
    names = strategy_names()
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; available: {', '.join(names)}")
    return _REGISTRY[name](**kwargs)
