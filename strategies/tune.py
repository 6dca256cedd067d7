"""The ``tune`` strategy: Optuna's multi-objective samplers over the space's decisions, run by Ray Tune.

Every candidate is one Optuna trial. Its parameters come from a define-by-run function,
:class:`SuggestCandidate`, that walks the space's builder (:meth:`SearchSpace.build`) and suggests only the
decisions that are active (a block's kernel, expansion and formats only when the stage depth reaches the block),
so no invalid candidate is ever sampled. The same function sets one Optuna constraint per budget of the space
file on the candidate's analytic costs, so constraint-aware samplers learn where the feasible region is; the
evaluation then rejects an infeasible candidate with its reason (status ``"infeasible"``) instead of scoring it.

Optuna needs objective values for every complete trial. An infeasible candidate is told its analytic costs and,
for accuracy and loss, which were never measured, the chance-level values of the dataset; NSGA-II/III and TPE
rank infeasible trials by their constraint violation alone, so those values never compete with measured ones (GP
fits them, but weighs its acquisition by the modelled probability of feasibility).

Two executors share this bookkeeping:

* ``workers >= 1`` (the default): Ray Tune with :class:`ray.tune.search.optuna.OptunaSearch` on a local or
  existing Ray cluster (see :mod:`automq.strategies._tune_ray`);
* ``workers = 0``: a plain in-process ask/tell loop with the same samplers, for tests and tiny runs.

A sampler that proposes a candidate already evaluated in this search (genetic samplers do so often in small
spaces) is told the recorded result at once, and the proposal is neither evaluated nor counted as a trial: a
trial is one distinct candidate evaluated. With a search log, each finished trial is appended as it ends, and a
resumed search re-tells the logged trials to the sampler instead of evaluating them again.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from automq.space.candidate import Candidate
from automq.cost import CostModel
from automq.search.strategy import Budget, Evaluator, Strategy, TrialRecorder, evaluate_candidate, register_strategy
from automq.search.trial import Trial

if TYPE_CHECKING:
    from automq.space.space import SearchSpace

CANDIDATE_KEY = "candidate"  # define-by-run result: the candidate's canonical JSON
MAX_POPULATION = 50
MAX_REPEATS = 200  # consecutive proposals of known candidates after which a sampler is taken to have converged


def _population(trials: int) -> int:
    """NSGA-II/III population: ten generations within the trial budget, between 8 and 50. On spaces/tiny_enum.yaml
    (hypervolume / exhaustive after 50 of 100 trials, mean of 10 seeds) ten generations gave 0.976, five 0.958
    and twenty 0.967."""
    return int(np.clip(trials // 10, 8, MAX_POPULATION))


SAMPLERS: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "nsga2": lambda seed, trials: optuna.samplers.NSGAIISampler(population_size=_population(trials), seed=seed),
    "nsga3": lambda seed, trials: optuna.samplers.NSGAIIISampler(population_size=_population(trials), seed=seed),
    # group=True models each set of co-occurring (conditional) decisions jointly; constant_liar spreads the
    # suggestions made while other trials are still running.
    "tpe": lambda seed, trials: optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                                            seed=seed),
    # conditional decisions fall back to independent random sampling in GP (documented, so not warned per trial)
    "gp": lambda seed, trials: optuna.samplers.GPSampler(seed=seed, deterministic_objective=True,
                                                          warn_independent_sampling=False),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
}


def create_sampler(name: str, *, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna multi-objective sampler by name (``nsga2, nsga3, tpe, gp, random``) for ``trials``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():  # GPSampler and TPE's `group` are flagged experimental; we pin Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name](seed, trials)


class SuggestCandidate:
    """Define-by-run search space of a :class:`SearchSpace` (``OptunaSearch(space=...)`` or plain ask/tell).

    Suggests the active decisions of one candidate, sets one constraint per budget (feasible iff <= 0) on its
    analytic costs, and returns ``{"candidate": canonical JSON}``. A module-level class rather than a closure, so
    Tune can pickle the searcher with it.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.cost_model = CostModel(space)
        self.distributions = {d.name: CategoricalDistribution(d.choices) for d in space.decisions()}

    def __call__(self, trial: optuna.Trial) -> dict[str, str]:
        # The space's builder asks only for active decisions; single-choice ones are constants, not parameters.
        candidate = self.space.build(
            lambda name, kind, choices: trial.suggest_categorical(name, choices) if len(choices) > 1 else choices[0])
        for metric, violation in constraint_values(self.space, self.cost_model.metrics(candidate)).items():
            trial.set_constraint(metric, violation)
        return {CANDIDATE_KEY: candidate.to_json()}


def constraint_values(space: SearchSpace, costs: Mapping[str, float]) -> dict[str, float]:
    """Relative budget violation per budget metric, ``(cost - budget) / budget``: feasible iff <= 0."""
    return {metric: (costs[metric] - limit) / max(limit, 1e-12) for metric, limit in space.budgets.items()}


def objective_values(space: SearchSpace, trial: Trial) -> list[float] | None:
    """The values Optuna is told for a finished trial, in the order of the space's objectives; ``None`` when the
    trial failed or a value is not finite (Optuna then records a failed trial and learns nothing from it)."""
    if trial.status == "failed":
        return None
    classes = space.dataset.num_classes or 2
    # accuracy and loss of an infeasible candidate were not measured: tell chance level (see the module notes)
    unmeasured = {"accuracy": 1.0 / classes, "loss": math.log(classes)}
    values = [float(trial.metrics.get(o.metric, unmeasured.get(o.metric, math.nan))) for o in space.objectives]
    return values if all(math.isfinite(v) for v in values) else None


def tell(study: optuna.Study, ot_trial: optuna.Trial, space: SearchSpace, trial: Trial) -> None:
    """Report a finished trial's outcome to the sampler."""
    values = objective_values(space, trial)
    study.tell(ot_trial, values, state=TrialState.COMPLETE if values is not None else TrialState.FAIL)


def retell(study: optuna.Study, suggest: SuggestCandidate, trials: Sequence[Trial]) -> None:
    """Add the trials of an interrupted search to a fresh study, so the sampler continues from them without
    evaluating them again."""
    for trial in trials:
        values = objective_values(suggest.space, trial)
        params = suggest.space.choices_of(trial.candidate)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if values is not None else TrialState.FAIL,
            values=values,
            params=params,
            distributions={name: suggest.distributions[name] for name in params},
            constraints=constraint_values(suggest.space, trial.metrics) if values is not None else None,
        ))


def seed_candidates(space: SearchSpace, limit: int) -> list[Candidate]:
    """Up to ``limit`` candidates a search evaluates first: the uniform-precision candidates of the largest
    architecture (every format pair of the menus, clamped to each layer's menu) and the smallest candidate, those
    within the space's budgets, spread evenly over their BitOps, cheapest first.

    They are what a user would otherwise deploy. A sampler that starts from random candidates starts in the middle
    of a large space (on mbv2_fmnist nearly every random candidate has some 2-bit layers), and 100 NSGA-II trials
    never reached the accuracy of uniform int8; seeded, its first generation spans the front from end to end.
    """
    model = CostModel(space)
    pool = [*space.uniform_references(), space.smallest()]
    costs = {c.id: model.metrics(c) for c in pool}
    unique = {c.id: c for c in pool if all(v <= 0 for v in constraint_values(space, costs[c.id]).values())}
    feasible = sorted(unique.values(), key=lambda c: costs[c.id]["bitops"])
    if len(feasible) <= limit:
        return feasible
    return [feasible[i] for i in sorted({round(k) for k in np.linspace(0, len(feasible) - 1, limit)})]


class Proposals:
    """Asks a study for candidates that this search has not evaluated yet.

    A proposal of a finished candidate is told that candidate's recorded result; a proposal of a candidate that
    is still being evaluated is dropped (told failed, which samplers ignore). ``define`` is the define-by-run
    function that turns an Optuna trial into ``{"candidate": JSON}``. The ``seeds`` not in ``history`` are
    enqueued, so the study proposes them first, in order.
    """

    def __init__(self, study: optuna.Study, space: SearchSpace, history: Sequence[Trial] = (),
                 seeds: Sequence[Candidate] = ()) -> None:
        self.study, self.space = study, space
        self.results = {trial.candidate.id: trial for trial in history}
        self.pending: set[str] = set()
        for candidate in seeds:
            if candidate.id not in self.results:
                study.enqueue_trial(space.choices_of(candidate))

    def ask(self, define: Callable[[optuna.Trial], Mapping[str, str]]) -> tuple[optuna.Trial, Candidate] | None:
        """A new Optuna trial and its unseen candidate, or ``None`` when the sampler only repeats itself."""
        for _ in range(MAX_REPEATS):
            ot_trial = self.study.ask()
            candidate = Candidate.from_json(define(ot_trial)[CANDIDATE_KEY])
            if candidate.id in self.results:
                tell(self.study, ot_trial, self.space, self.results[candidate.id])
            elif candidate.id in self.pending:
                self.study.tell(ot_trial, None, state=TrialState.FAIL)
            else:
                self.pending.add(candidate.id)
                return ot_trial, candidate
        return None

    def tell(self, ot_trial: optuna.Trial, trial: Trial) -> None:
        """Report the finished evaluation of a candidate returned by :meth:`ask`."""
        tell(self.study, ot_trial, self.space, trial)
        self.pending.discard(trial.candidate.id)
        self.results[trial.candidate.id] = trial

    def drop(self, ot_trial: optuna.Trial, candidate: Candidate) -> None:
        """Give up a candidate that was never evaluated (its Tune trial was stopped)."""
        self.study.tell(ot_trial, None, state=TrialState.FAIL)
        self.pending.discard(candidate.id)


def directions(space: SearchSpace) -> list[str]:
    """Optuna study directions of the space's objectives."""
    return ["maximize" if o.mode == "max" else "minimize" for o in space.objectives]


def evaluate_with_retries(candidate: Candidate, evaluator: Evaluator, *, strategy: str, retries: int,
                          info: dict[str, Any]) -> Trial:
    """:func:`evaluate_candidate`, tried again up to ``retries`` times while it fails (the in-process twin of
    Ray's ``FailureConfig(max_failures=...)``); the last failure is returned as a failed trial."""
    for attempt in range(retries + 1):
        trial = evaluate_candidate(-1, candidate, evaluator, strategy=strategy,
                                   info={**info, "attempts": attempt + 1})
        if trial.status != "failed":
            break
    return trial


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's per-study INFO lines while a search shows its own progress."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


@register_strategy
class TuneStrategy(Strategy):
    """Optuna multi-objective search (NSGA-II/III, TPE, GP, random) driven by Ray Tune.

    Args:
        sampler: ``nsga2`` (default), ``nsga3``, ``tpe`` (multivariate, grouped), ``gp`` or ``random``. ``gp``
            finds the best fronts on small spaces but fits its model on every ask: on mbv2_fmnist (about 70
            decisions) one ask took about a minute on 2 busy cores, so prefer nsga2 or tpe there.
        workers: concurrent evaluations: Ray Tune trials at once (``None``: every CPU of the local machine or of
            the cluster at ``address``); ``0`` runs the plain in-process loop without Ray.
        address: an existing Ray cluster (``auto``, ``ray://host:port`` or ``host:port``); ``None`` starts a
            private local one for the search and stops it afterwards.
        batch_size: candidates per Ray Tune trial. A Tune trial has a fixed cost (scheduling, result handling)
            that batching spreads over several evaluations; each candidate is still one Optuna trial, told to
            the sampler as soon as it finishes.
        max_failures: how often a failed evaluation is retried before it is recorded as failed with its error.
        seed_fraction: at most this share of the trials goes first to the uniform-precision candidates and the
            smallest one (:func:`seed_candidates`); ``0`` starts from the sampler's own proposals.
        gpus_per_trial: GPUs each Ray Tune trial asks for; a fraction up to 1 lets several trials share a GPU
            (0.25: four estimators on one GPU), whole numbers above it are whole GPUs. A trial with a GPU moves the
            estimator onto it; ``0`` (the default) runs trials on CPUs. Only Ray runs (``workers >= 1``) use it.
    """

    name = "tune"
    device_aware = True  # it only asks the evaluator for scores (Ray trials move it onto their GPU)

    def __init__(self, *, sampler: str = "nsga2", workers: int | None = None, address: str | None = None,
                 batch_size: int = 4, max_failures: int = 2, seed_fraction: float = 0.25,
                 gpus_per_trial: float = 0.0) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if workers is not None and workers < 0:
            raise ValueError(f"workers must be >= 0 (0 runs without Ray), got {workers}")
        if batch_size < 1 or max_failures < 0:
            raise ValueError(f"batch_size must be >= 1 and max_failures >= 0, got {batch_size} and {max_failures}")
        self.sampler, self.workers, self.address = sampler, workers, address
        if not 0 <= seed_fraction <= 1:
            raise ValueError(f"seed_fraction must be within [0, 1], got {seed_fraction}")
        self.batch_size, self.max_failures, self.seed_fraction = batch_size, max_failures, seed_fraction
        if not (0 <= gpus_per_trial <= 1 or float(gpus_per_trial).is_integer()):
            raise ValueError(f"gpus_per_trial must be 0, a fraction up to 1 (0.25: four trials share a GPU) or a "
                             f"whole number of GPUs, got {gpus_per_trial}")
        self.gpus_per_trial = gpus_per_trial

    @property
    def label(self) -> str:
        return f"{self.name}-{self.sampler}"

    def make_sampler(self, space: SearchSpace, *, seed: int, trials: int) -> optuna.samplers.BaseSampler:
        """The seeded Optuna sampler of a search of ``trials`` trials (the ``evolution`` strategy brings its own)."""
        return create_sampler(self.sampler, seed=seed, trials=trials)

    def seeds(self, space: SearchSpace, trials: int) -> list[Candidate]:
        """The candidates a search of ``trials`` trials evaluates first (:func:`seed_candidates`)."""
        return seed_candidates(space, int(self.seed_fraction * trials))

    def search(self, space: SearchSpace, evaluator: Evaluator, recorder: TrialRecorder, *, seed: int) -> None:
        """Tell the sampler the logged trials instead of evaluating them again, then record each new trial as it
        finishes."""
        history = recorder.history
        # a resumed run draws fresh random numbers: replaying the seed would re-suggest the logged candidates
        seed = int(np.random.SeedSequence([seed, len(history)]).generate_state(1)[0]) if history else seed
        suggest = SuggestCandidate(space)
        sampler = self.make_sampler(space, seed=seed, trials=recorder.total)
        seeds = self.seeds(space, recorder.total)
        with _quiet_optuna():
            if self.workers == 0:
                self._run_local(suggest, sampler, evaluator, recorder.budget, history, recorder.record, seeds)
            else:
                from automq.strategies._tune_ray import run_tune

                work_dir = recorder.state_dir / "ray" if recorder.state_dir is not None else None
                run_tune(self, suggest, sampler, evaluator, recorder.budget, history, recorder.record, seeds,
                         work_dir=work_dir)

    def _run_local(self, suggest: SuggestCandidate, sampler: optuna.samplers.BaseSampler, evaluator: Evaluator,
                   budget: Budget, history: Sequence[Trial], record: Callable[[Trial], None],
                   seeds: Sequence[Candidate]) -> None:
        study = optuna.create_study(directions=directions(suggest.space), sampler=sampler)
        retell(study, suggest, history)
        proposals = Proposals(study, suggest.space, history, seeds)
        start = time.monotonic()
        for _ in range(budget.evaluations):
            proposal = proposals.ask(suggest)
            if proposal is None or (budget.wall_s is not None and time.monotonic() - start > budget.wall_s):
                break
            ot_trial, candidate = proposal
            trial = evaluate_with_retries(candidate, evaluator, strategy=self.name, retries=self.max_failures,
                                          info={"optuna_trial": ot_trial.number, "pid": os.getpid()})
            proposals.tell(ot_trial, trial)
            record(trial)
