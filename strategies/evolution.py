"""The ``evolution`` strategy: evolutionary multi-objective search around the current front, run by Ray Tune.

Why (issue 17): Optuna's NSGA-II and TPE spend their trials on random mid-size architectures and rarely visit the
full-width candidates with mixed formats next to the uniform-precision points, where the best fronts lie. The
peers that search this kind of space evolve around the current best instead (OFA and APQ mutate the best
candidates, BatchQuant runs NSGA-II with large populations, HAWQ and AIMET lower one layer's precision at a time
from a uniform point). One-shot evaluations cost well under a second, so thousands of them are affordable.

Three layers, each usable without the next:

* a pure, seeded core over candidates and loss vectors: NSGA-II survival (:func:`select_population`: whole
  non-dominated fronts, the last one cut by crowding distance), binary tournaments, and :func:`breed` (uniform
  crossover, then a local mutation of one or a few decisions, :func:`mutate_locally`, which mostly moves a decision
  to its neighbouring choice: the next format of the layer's menu by bits, the next kernel, expansion, depth or
  width). Breeding is steady-state: every offspring is bred from the population of all results told so far, which
  suits asynchronous workers;
* :class:`EvolutionSampler`, an Optuna sampler that breeds one offspring per Optuna trial and answers the
  define-by-run suggestions from it, never proposing a candidate already in the study or outside the budgets;
* :class:`EvolutionStrategy`, the ``tune`` strategy with this sampler: the same Ray Tune executor (batches,
  retries, clusters), the same search log, and the same resume, which re-tells the logged trials to the sampler,
  so the population continues from them. Its seeds are the feasible uniform-precision candidates, the smallest and
  the largest, and optionally the candidates of earlier searches (``seed_from``: a LIMPQ or CLADO search's
  assignments).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from automq.cost import CostModel
from automq.errors import CandidateError
from automq.numerics.formats import get_format
from automq.search.pareto import pareto_mask
from automq.search.results import load_trials
from automq.search.strategy import register_strategy
from automq.space.candidate import Candidate
from automq.strategies.tune import TuneStrategy, constraint_values

if TYPE_CHECKING:
    from automq.space.space import SearchSpace

MIN_POPULATION, MAX_POPULATION = 16, 100
ANOTHER_MUTATION_PROB = 0.5  # mutate one decision, a second with this probability, a third with its square, ...
MAX_BREEDS = 200  # offspring bred per proposal before the sampler settles for a random candidate
_BLOCK_DECISION = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)")


def default_population(trials: int) -> int:
    """Population of a search of ``trials`` evaluations: a tenth of them, between 16 and 100."""
    return int(np.clip(trials // 10, MIN_POPULATION, MAX_POPULATION))


# ------------------------------------------------------------------------------------------------ the pure core
def crowding_distances(losses: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of one front: the sum over objectives of the gap between its two
    neighbours, divided by the objective's range; the extremes of every objective get infinity."""
    count, objectives = losses.shape
    if count <= 2:
        return np.full(count, np.inf)
    distance = np.zeros(count)
    for column in range(objectives):
        order = np.argsort(losses[:, column], kind="stable")
        values = losses[order, column]
        distance[order[[0, -1]]] = np.inf
        if values[-1] > values[0]:
            distance[order[1:-1]] += (values[2:] - values[:-2]) / (values[-1] - values[0])
    return distance


def select_population(losses: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NSGA-II survival of ``size`` rows of a loss matrix (smaller is better in every column).

    Whole non-dominated fronts are taken in order; the front that does not fit is cut to its most isolated rows
    (largest crowding distance first). Returns the chosen row indices, their front numbers (0: non-dominated) and
    their crowding distances within their front.
    """
    chosen, ranks, crowding = [], [], []
    left = np.arange(len(losses))
    rank = 0
    while left.size and len(chosen) < size:
        on_front = pareto_mask(losses[left])
        front, left = left[on_front], left[~on_front]
        distance = crowding_distances(losses[front])
        keep = np.argsort(-distance, kind="stable")[:size - len(chosen)]
        chosen += front[keep].tolist()
        ranks += [rank] * len(keep)
        crowding += distance[keep].tolist()
        rank += 1
    return np.array(chosen, dtype=int), np.array(ranks, dtype=int), np.array(crowding, dtype=float)


def tournament(ranks: np.ndarray, crowding: np.ndarray, rng: np.random.Generator) -> int:
    """Binary tournament: of two members drawn at random, the one on the better front, then the more isolated."""
    first, second = (int(i) for i in rng.integers(len(ranks), size=2))
    return min((first, second), key=lambda i: (ranks[i], -crowding[i]))


def ordered_choices(kind: str, choices: Sequence[Any]) -> list[Any]:
    """A decision's choices in the order that makes neighbours similar: formats by bits per element (ties keep the
    menu's order), architecture values by size."""
    if kind in ("w_fmt", "a_fmt"):
        return sorted(choices, key=lambda name: get_format(name).bits_per_element)
    return sorted(choices)


def step(value: Any, ordered: Sequence[Any], rng: np.random.Generator, jump_prob: float) -> Any:
    """A different choice: with probability ``jump_prob`` any other one, else a neighbour of ``value`` in
    ``ordered`` (either side with equal probability; at an end, the one neighbour)."""
    others = [choice for choice in ordered if choice != value]
    if rng.random() < jump_prob:
        return others[int(rng.integers(len(others)))]
    index = ordered.index(value)
    neighbours = [ordered[i] for i in (index - 1, index + 1) if 0 <= i < len(ordered)]
    return neighbours[int(rng.integers(len(neighbours)))]


def mutate_locally(space: SearchSpace, candidate: Candidate, rng: np.random.Generator, *,
                   jump_prob: float) -> Candidate:
    """``candidate`` with one or a few of its active decisions changed (:func:`step`), always a new candidate.

    A block that a deeper stage activates copies the decisions of the block before it (its kernel, expansion and
    formats), so growing a uniform-precision network keeps it uniform.
    """
    current = space.choices_of(candidate)
    names = list(current)
    count = 1
    while count < len(names) and rng.random() < ANOTHER_MUTATION_PROB:
        count += 1
    moved = {names[i] for i in rng.choice(len(names), size=count, replace=False)}
    picked: dict[str, Any] = {}

    def pick(name: str, kind: str, choices: tuple) -> Any:
        if name in moved:
            value = step(current[name], ordered_choices(kind, choices), rng, jump_prob)
        elif name in current:
            value = current[name]
        else:  # a single-choice decision, or one of a block the mutation activated
            value = _inherited(name, picked, choices, rng)
        picked[name] = value
        return value

    return space.build(pick)


def _inherited(name: str, picked: Mapping[str, Any], choices: tuple, rng: np.random.Generator) -> Any:
    """The value of decision ``name`` of block j taken from block j - 1 of its stage, where that value is a choice
    here; otherwise a uniform draw (or the only choice)."""
    match = _BLOCK_DECISION.fullmatch(name)
    if match and int(match[2]) > 0:
        previous = picked.get(f"blocks.{match[1]}.{int(match[2]) - 1}.{match[3]}")
        if previous in choices:
            return previous
    return choices[int(rng.integers(len(choices)))]


def breed(space: SearchSpace, population: Sequence[Candidate], ranks: np.ndarray, crowding: np.ndarray,
          rng: np.random.Generator, *, crossover_prob: float, jump_prob: float) -> Candidate:
    """One offspring of a population: a tournament winner, crossed over (probability ``crossover_prob``) with a
    second winner, then mutated locally."""
    child = population[tournament(ranks, crowding, rng)]
    if rng.random() < crossover_prob:
        child = space.crossover(child, population[tournament(ranks, crowding, rng)], rng)
    return mutate_locally(space, child, rng, jump_prob=jump_prob)


# ------------------------------------------------------------------------------------------------ Optuna sampler
class EvolutionSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler that breeds one candidate per trial from the study's results (:func:`breed`).

    The population is chosen from the study's complete, feasible trials (:func:`select_population` on their
    objective values, every direction turned into a loss). Each new trial gets one offspring that is neither in
    the study yet (finished, running or dropped) nor over the space's budgets; the define-by-run function's
    suggestions are answered from it. The first generation, the study's first ``population`` candidates, is the
    enqueued seeds (Optuna's fixed parameters, which never reach the sampler) and then random feasible candidates,
    as in NSGA-II; later, a random feasible candidate stands in only when ``MAX_BREEDS`` offspring in a row were
    all known or infeasible.
    """

    def __init__(self, space: SearchSpace, *, population: int, crossover_prob: float = 0.5, jump_prob: float = 0.2,
                 seed: int | None = None) -> None:
        self.space, self.population = space, population
        self.crossover_prob, self.jump_prob = crossover_prob, jump_prob
        self._rng = np.random.default_rng(seed)
        self._cost_model = CostModel(space)
        self._offspring: dict[int, dict[str, Any]] = {}  # trial number -> the choices bred for it
        # What the study's trials hold, read once per trial (a candidate's id costs a JSON dump and a hash):
        self._candidates: dict[int, tuple[str, Candidate]] = {}  # trial number -> id, candidate (parameters set)
        self._known: set[str] = set()  # ids of every candidate the study holds
        self._finished: set[int] = set()  # trial numbers that will not change again
        self._results: dict[str, tuple[Candidate, np.ndarray]] = {}  # id -> candidate, losses (feasible, complete)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return {}  # every parameter comes from sample_independent, where the whole offspring is bred at once

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: Mapping[str, Any]) -> dict:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> Any:
        if trial.number not in self._offspring:
            self._read(study.get_trials(deepcopy=False), study.directions)
            self._offspring[trial.number] = self.space.choices_of(self.propose())
        return self._offspring[trial.number][param_name]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._offspring.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()

    def propose(self) -> Candidate:
        """A feasible candidate that the study does not hold, bred from the population of its results."""
        if len(self._known) < self.population:  # the first generation: the seeds, then random candidates
            return self._random_feasible()
        population, ranks, crowding = self._population()
        for _ in range(MAX_BREEDS if population else 0):
            child = breed(self.space, population, ranks, crowding, self._rng, crossover_prob=self.crossover_prob,
                          jump_prob=self.jump_prob)
            if child.id not in self._known and self._feasible(child):
                return child
        return self._random_feasible()

    def _read(self, trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> None:
        """Take in the candidates of new trials, and the results of trials that finished, objective values in the
        order of ``directions`` turned into losses (each candidate's first result counts)."""
        signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
        for trial in trials:
            if trial.number in self._finished:
                continue
            if trial.number not in self._candidates and trial.params:
                try:
                    candidate = self.space.candidate_from_choices(trial.params)
                except CandidateError:
                    continue  # the trial being defined now: its parameters are not all set yet
                self._candidates[trial.number] = candidate.id, candidate
                self._known.add(candidate.id)
            if trial.state.is_finished():
                self._finished.add(trial.number)
                feasible = all(v <= 0 for v in (trial.constraints or {}).values())
                if trial.state == TrialState.COMPLETE and feasible and trial.number in self._candidates:
                    key, candidate = self._candidates[trial.number]
                    self._results.setdefault(key, (candidate, signs * np.array(trial.values, dtype=float)))

    def _population(self) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
        """The surviving members of the results, their fronts and crowding distances."""
        if not self._results:
            return [], np.zeros(0, dtype=int), np.zeros(0)
        members, losses = zip(*self._results.values())
        chosen, ranks, crowding = select_population(np.array(losses), self.population)
        return [members[i] for i in chosen], ranks, crowding

    def _feasible(self, candidate: Candidate) -> bool:
        return within_budgets(self.space, self._cost_model.metrics(candidate))

    def _random_feasible(self) -> Candidate:
        for _ in range(MAX_BREEDS):
            candidate = self.space.sample(self._rng)
            if candidate.id not in self._known and self._feasible(candidate):
                return candidate
        return candidate  # the study's de-duplication and the budget check answer it without an evaluation


# ------------------------------------------------------------------------------------------------ the strategy
@register_strategy
class EvolutionStrategy(TuneStrategy):
    """Evolutionary multi-objective search around the current front (:class:`EvolutionSampler`), run by Ray Tune.

    Args:
        population: members the offspring are bred from, and the size of the first generation (the seeds, then
            random candidates); ``None``: a tenth of the trials, 16 to 100.
        crossover_prob: share of offspring bred from two parents (uniform crossover) before their mutation.
        jump_prob: share of mutated decisions that jump to any other choice instead of a neighbouring one.
        seed_from: search directories (``--out`` of earlier searches, e.g. a ``limpq`` or ``clado`` search's
            assignments) whose candidates are evaluated first too, after the uniform-precision ones.
        workers, address, batch_size, max_failures, seed_fraction, gpus_per_trial: as for ``tune``; the seeds
            also include the largest candidate.
    """

    name = "evolution"

    def __init__(self, *, population: int | None = None, crossover_prob: float = 0.5, jump_prob: float = 0.2,
                 seed_from: Sequence[str] = (), workers: int | None = None, address: str | None = None,
                 batch_size: int = 4, max_failures: int = 2, seed_fraction: float = 0.25,
                 gpus_per_trial: float = 0.0) -> None:
        super().__init__(workers=workers, address=address, batch_size=batch_size, max_failures=max_failures,
                         seed_fraction=seed_fraction, gpus_per_trial=gpus_per_trial)
        if population is not None and population < 2:
            raise ValueError(f"population must be >= 2 (or None for a tenth of the trials), got {population}")
        for name, value in (("crossover_prob", crossover_prob), ("jump_prob", jump_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if isinstance(seed_from, str):
            seed_from = (seed_from,)
        self.population, self.crossover_prob, self.jump_prob = population, crossover_prob, jump_prob
        self.seed_from = tuple(str(path) for path in seed_from)
        self.sampler = self.name  # TuneStrategy's sampler name; make_sampler builds this strategy's own

    @property
    def label(self) -> str:
        return self.name

    def make_sampler(self, space: SearchSpace, *, seed: int, trials: int) -> EvolutionSampler:
        """The :class:`EvolutionSampler` of a search of ``trials`` trials."""
        return EvolutionSampler(space, population=self.population or default_population(trials),
                                crossover_prob=self.crossover_prob, jump_prob=self.jump_prob, seed=seed)

    def seeds(self, space: SearchSpace, trials: int) -> list[Candidate]:
        """The uniform-precision seeds of ``tune``, then the largest candidate and the candidates of the
        ``seed_from`` searches that are within the budgets, each once."""
        model = CostModel(space)
        extra = [c for c in [space.largest(), *seed_candidates_from(space, self.seed_from)]
                 if within_budgets(space, model.metrics(c))]
        return list({c.id: c for c in [*super().seeds(space, trials), *extra]}.values())


def within_budgets(space: SearchSpace, costs: Mapping[str, float]) -> bool:
    """Whether analytic ``costs`` meet every budget of ``space``."""
    return all(v <= 0 for v in constraint_values(space, costs).values())


def seed_candidates_from(space: SearchSpace, folders: Sequence[str]) -> list[Candidate]:
    """The candidates of the searches in ``folders`` (their ``trials.jsonl``), in trial order.

    Raises :class:`CandidateError` when a folder holds no trials or a candidate is not one of ``space``.
    """
    candidates = []
    for folder in folders:
        trials = load_trials(folder)
        if not trials:
            raise CandidateError(f"seed_from: {folder} holds no trials (no readable {Path(folder) / 'trials.jsonl'}); "
                                 "give the --out folder of a finished search")
        for trial in trials:
            try:
                space.validate_candidate(trial.candidate)
            except CandidateError as exc:
                raise CandidateError(f"seed_from: a trial of {folder} is not a candidate of {space.source}: "
                                     f"{exc}") from None
            candidates.append(trial.candidate)
    return candidates
