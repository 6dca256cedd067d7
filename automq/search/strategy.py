"""The strategy interface every search method implements.

A strategy explores a :class:`~automq.space.SearchSpace` with an evaluator (usually the one-shot estimator) under
a :class:`Budget`, and returns :class:`Trial` records. Strategies live in ``automq.strategies`` and register
themselves by name with :func:`register_strategy`, so the CLI, the experiments and the shared test-suite can
iterate over all of them. Budgets from the space file are hard constraints: :func:`evaluate_candidate` checks the
analytic costs first and records an infeasible candidate with its reason instead of scoring it. A strategy records
each trial through a :class:`TrialRecorder` the moment it is made, so that ``automq search`` streams it to
``trials.jsonl`` and a killed search keeps every finished trial.
"""

from __future__ import annotations

import inspect
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
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

class TrialRecorder:
    """What a strategy records its trials through, as each one is made, and the budget of the run.

    With a search log (``automq search``), each trial is appended to ``trials.jsonl`` the moment it is recorded, so
    a killed search loses none of them; ``history`` holds the trials the log had before this run, which a resumed
    strategy continues from, and ``state_dir`` the search directory, where a strategy that trains before it
    samples keeps the checkpoints of that training. Without a log (``Strategy.run`` in a script) the trials are
    only collected in ``made``.
    """

    def __init__(self, budget: Budget, *, strategy: str, log: SearchLog | None = None) -> None:
        self.budget, self.strategy, self.log = budget, strategy, log
        self.history: list[Trial] = list(log.trials) if log is not None else []
        self.made: list[Trial] = []
        self.started = time.perf_counter()
        self._ids = {trial.candidate.id for trial in self.history}

    @property
    def state_dir(self) -> Path | None:
        """The search directory, for checkpoints of a training phase (``None`` without a log)."""
        return self.log.dir if self.log is not None else None

    @property
    def total(self) -> int:
        """Trials of the whole search, the logged ones included: what an uninterrupted search was given."""
        return len(self.history) + self.budget.evaluations

    @property
    def deadline(self) -> float | None:
        """The ``time.perf_counter()`` at which the wall-clock budget runs out (``None``: no limit)."""
        return None if self.budget.wall_s is None else self.started + self.budget.wall_s

    def exhausted(self) -> bool:
        """Whether this run has made all its trials or spent its wall-clock time."""
        out_of_time = self.deadline is not None and time.perf_counter() > self.deadline
        return len(self.made) >= self.budget.evaluations or out_of_time

    def seen(self, candidate: Candidate) -> bool:
        """Whether ``candidate`` is already a trial of this search (logged before, or made by this run)."""
        return candidate.id in self._ids

    def plan(self, count: int) -> None:
        """Declare how many trials the whole search will have when the strategy knows it is fewer than the budget
        (``uniform``: one per format pair), so that progress shows the true total."""
        if self.log is not None:
            self.log.plan(min(count, self.total))

    def evaluate(self, candidate: Candidate, evaluator: Evaluator, *, info: Mapping[str, Any] | None = None) -> Trial:
        """Score ``candidate`` (:func:`evaluate_candidate`) and record the trial."""
        return self.record(evaluate_candidate(-1, candidate, evaluator, strategy=self.strategy, info=info))

    def record(self, trial: Trial) -> Trial:
        """Number ``trial`` after the search's trials and record it (appended to the log at once)."""
        trial = replace(trial, number=len(self.history) + len(self.made))
        self.made.append(trial)
        self._ids.add(trial.candidate.id)
        if self.log is not None:
            self.log.append(trial)
        return trial


class Strategy(ABC):
    """A search method. Subclasses set ``name`` and implement :meth:`search`; keyword-only constructors hold
    their hyper-parameters, so a strategy is fully described by its name and constructor arguments.

    :meth:`search` records every trial through a :class:`TrialRecorder` as soon as it is made; :meth:`run`
    builds the recorder, on the search directory's :class:`~automq.search.results.SearchLog` when given one
    (``automq search``, which also resumes through it).
    """

    name: ClassVar[str]
    device_aware: ClassVar[bool] = False
    """Whether the strategy runs with its evaluator on a GPU. Those that only ask the evaluator for scores do; those
    that train or score networks of their own still create some of their tensors on the CPU, so ``run_search``
    refuses to build them a GPU estimator."""

    @property
    def label(self) -> str:
        """How reports and the progress line name this configuration (e.g. ``tune-nsga2``); default: the name."""
        return self.name

    @abstractmethod
    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        """Explore ``space`` until ``recorder.exhausted()``, recording each trial with ``recorder`` as it is made;
        a resumed search (``recorder.history`` not empty) continues after the logged trials."""

    def run(self, space: SearchSpace, evaluator: Evaluator, budget: Budget, *, seed: int = 0,
            log: SearchLog | None = None) -> list[Trial]:
        """Make up to ``budget.evaluations`` new trials and return them, in order; with ``log``, append each to
        it as it is made, numbered after the trials it already holds, and continue the search they began."""
        recorder = TrialRecorder(budget, strategy=self.name, log=log)
        self.search(space, evaluator, recorder, seed=seed)
        return recorder.made


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

def strategy_class(name: str) -> type[Strategy]:
    """The registered strategy class called ``name`` (``KeyError`` listing the names when there is none)."""
    names = strategy_names()
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; available: {', '.join(names)}")
    return _REGISTRY[name]


def strategy_options(name: str) -> frozenset[str]:
    """The keyword arguments the strategy ``name`` takes (its hyper-parameters), e.g. for the CLI's shortcuts."""
    parameters = inspect.signature(strategy_class(name).__init__).parameters
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in parameters.values() if p.kind in named and p.name != "self")


def create_strategy(name: str, **kwargs: Any) -> Strategy:
    """Instantiate a registered strategy by name."""
    return strategy_class(name)(**kwargs)
