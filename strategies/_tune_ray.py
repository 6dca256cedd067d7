"""Ray Tune executor of the ``tune`` strategy (imported only when a search uses Ray).

* :class:`BatchedOptunaSearch` is Ray's :class:`~ray.tune.search.optuna.OptunaSearch` (objective metrics and
  modes as lists, the define-by-run :class:`~automq.strategies.tune.SuggestCandidate`, a named sampler) whose
  Tune trials each evaluate ``batch_size`` candidates, one Optuna trial per candidate: a Tune trial has a fixed
  cost (scheduling, result handling) that batching spreads over several evaluations.
* :func:`evaluate_batch` is the trainable. The evaluator (for the one-shot estimator: the supernet weights and
  the calibration and validation images) is put in the object store once; every worker process deserializes it
  on its first trial and keeps it (:class:`Resident`), and Tune reuses the worker actors across trials.
* :class:`RecordTrials` turns the candidates the trainable reports into :class:`~automq.search.strategy.Trial` records
  as they finish. A failed evaluation makes the Tune trial raise at the end of its batch, so Ray retries it
  (``FailureConfig(max_failures)``); a retry evaluates the batch again, but candidates already recorded are not
  recorded twice, and a failure is recorded, with its error, only when the retries run out.

Measured on 2 cores (experiments/results/bench_tune_scaling.md): with actor reuse and the resident evaluator, Ray
costs well under 20% of a default-scale one-shot evaluation per trial, batches or not; batches of 4 keep it lower
when evaluations are short.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from automq.ray_cluster import ray_session
from automq.space.candidate import Candidate
from automq.strategies.tune import Proposals, SuggestCandidate, objective_values, retell
from automq.search.strategy import Budget, Evaluator, evaluate_candidate
from automq.search.trial import Trial

if TYPE_CHECKING:
    from automq.strategies.tune import TuneStrategy

CANDIDATES = "candidates"  # config key: the batch, canonical candidate JSON
INDEX, RECORD = "index", "record"  # result keys: the candidate's position in the batch and its Trial record
_RESIDENT: dict[str, Any] = {}  # per worker process: object-ref hex -> the evaluator, deserialized once


class EvaluationFailed(RuntimeError):
    """Raised by the trainable after its batch when some evaluation failed, so that Ray retries the trial."""


@dataclass(frozen=True)
class Resident:
    """An object-store reference to the evaluator that each worker process deserializes once and keeps."""

    ref: ray.ObjectRef

    def get(self) -> Evaluator:
        key = self.ref.hex()
        if key not in _RESIDENT:
            _RESIDENT.clear()  # one search at a time per worker: drop a previous search's supernet
            _RESIDENT[key] = _on_trial_device(ray.get(self.ref))
        return _RESIDENT[key]


def _on_trial_device(evaluator: Evaluator) -> Evaluator:
    """The evaluator moved onto the GPU Ray gave this trial (``gpus_per_trial``), when it can move and got one;
    Ray sets ``CUDA_VISIBLE_DEVICES`` to the trial's GPUs, so ``cuda`` is the first of them."""
    if hasattr(evaluator, "to") and ray.get_gpu_ids():
        evaluator.to("cuda")
    return evaluator


def _put_from_cpu(evaluator: Evaluator) -> ray.ObjectRef:
    """The evaluator in the object store with its tensors on the CPU, so that a trial without a GPU can load it;
    a GPU-resident evaluator is moved back where it was afterwards (the driver refines the front with it)."""
    device = getattr(evaluator, "device", None)
    if device is None or device.type == "cpu":
        return ray.put(evaluator)
    evaluator.to("cpu")
    try:
        return ray.put(evaluator)
    finally:
        evaluator.to(device)


def evaluate_batch(config: dict[str, Any], *, resident: Resident, strategy: str) -> None:
    """Tune trainable: evaluate the batch's candidates in order and report each one as it finishes."""
    evaluator = resident.get()
    context = ray.get_runtime_context()
    node_id, node_ip = context.get_node_id(), ray.util.get_node_ip_address()
    info = {"node_id": node_id, "node_ip": node_ip, "pid": os.getpid(), "tune_trial": tune.get_context().get_trial_id()}
    failures = []
    for index, text in enumerate(config[CANDIDATES]):
        trial = evaluate_candidate(-1, Candidate.from_json(text), evaluator, strategy=strategy, info=info)
        trial = replace(trial, worker=f"{node_ip}:{node_id[:8]}")
        # Tune insists on the searcher's metrics in every result; the record travels as JSON, unflattened
        values = objective_values(evaluator.space, trial) or [math.nan] * len(evaluator.space.objectives)
        metrics = {o.metric: value for o, value in zip(evaluator.space.objectives, values)}
        tune.report({**metrics, INDEX: index, RECORD: json.dumps(trial.to_dict())})
        if trial.status == "failed":
            failures.append(f"candidate {index}: {trial.error}")
    if failures:
        raise EvaluationFailed("\n".join(failures))


class BatchedOptunaSearch(OptunaSearch):
    """:class:`OptunaSearch` that gives each Tune trial a batch of up to ``batch_size`` unseen candidates.

    Each candidate is its own Optuna trial, asked through the define-by-run ``space`` (repeats are answered by
    :class:`~automq.strategies.tune.Proposals`) and told as soon as the trainable reports it; candidates a Tune
    trial never reported (it errored for good or was stopped) are told as failed when it completes. ``total``
    candidates are handed out in all, fewer if the sampler only repeats itself.
    """

    def __init__(self, space: SuggestCandidate, *, metric: list[str], mode: list[str],
                 sampler: optuna.samplers.BaseSampler, batch_size: int, total: int,
                 history: Sequence[Trial] = (), seeds: Sequence[Candidate] = ()) -> None:
        super().__init__(space=space, metric=metric, mode=mode, sampler=sampler)
        retell(self._ot_study, space, history)
        self.proposals = Proposals(self._ot_study, space.space, history, seeds)
        self._batch_size, self._left = batch_size, total
        self._batches: dict[str, list[tuple[optuna.Trial, Candidate]]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._told: set[tuple[str, int]] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id not in self._configs:
            batch = []
            while len(batch) < min(self._batch_size, self._left):
                proposal = self.proposals.ask(self._define)
                if proposal is None:
                    self._left = 0
                    break
                batch.append(proposal)
            if not batch:
                return Searcher.FINISHED
            self._left -= len(batch)
            self._batches[trial_id] = batch
            self._configs[trial_id] = {CANDIDATES: [candidate.to_json() for _, candidate in batch]}
        return self._configs[trial_id]

    def _define(self, ot_trial: optuna.Trial) -> dict[str, Any]:
        return self._suggest_from_define_by_run_func(self._space, ot_trial)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial, index = Trial.from_dict(json.loads(result[RECORD])), result[INDEX]
        if trial.status != "failed" and (trial_id, index) not in self._told:  # a failure may succeed on a retry
            self._told.add((trial_id, index))
            self.proposals.tell(self._batches[trial_id][index][0], trial)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        for index, (ot_trial, candidate) in enumerate(self._batches.pop(trial_id, [])):
            if (trial_id, index) not in self._told:
                self.proposals.drop(ot_trial, candidate)
        self._configs.pop(trial_id, None)


class RecordTrials(tune.Callback):
    """Hands each candidate a Tune trial reports to ``record`` once; failed ones only when Ray gives up."""

    def __init__(self, record: Callable[[Trial], None]) -> None:
        self._record = record
        self._done: set[tuple[str, int]] = set()
        self._failed: dict[tuple[str, int], Trial] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        record, key = Trial.from_dict(json.loads(result[RECORD])), (trial.trial_id, result[INDEX])
        if key in self._done:
            return  # a retried batch reports its finished candidates again
        record.info["attempts"] = trial.num_failures + 1
        if record.status == "failed":
            self._failed[key] = record
        else:
            self._failed.pop(key, None)
            self._emit(key, record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = str(trial.get_error() or "the Ray trial failed")
        for index, text in enumerate(trial.config[CANDIDATES]):
            key = (trial.trial_id, index)
            if key in self._done:
                continue
            failed = self._failed.pop(key, None) or Trial(
                -1, Candidate.from_json(text), {}, "failed", f"never evaluated: {error}", "tune")
            self._emit(key, replace(failed, info={**failed.info, "attempts": trial.num_failures}))

    def _emit(self, key: tuple[str, int], record: Trial) -> None:
        self._done.add(key)
        self._record(record)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id  # the default embeds the whole config (a batch of candidate JSON)


def run_tune(strategy: TuneStrategy, suggest: SuggestCandidate, sampler: optuna.samplers.BaseSampler,
             evaluator: Evaluator, budget: Budget, history: Sequence[Trial], record: Callable[[Trial], None],
             seeds: Sequence[Candidate] = (), *, work_dir: Path | None) -> None:
    """Run ``budget.evaluations`` candidates as Tune trials of ``strategy.batch_size`` candidates each."""
    with tempfile.TemporaryDirectory(prefix="automq-tune-") as scratch:
        work_dir = Path(work_dir or scratch)
        with ray_session(strategy.address, strategy.workers, work_dir) as workers:
            space = suggest.space
            search = BatchedOptunaSearch(
                suggest, metric=[o.metric for o in space.objectives], mode=[o.mode for o in space.objectives],
                sampler=sampler, batch_size=strategy.batch_size, total=budget.evaluations, history=history,
                seeds=seeds)
            trainable = tune.with_parameters(evaluate_batch, resident=Resident(_put_from_cpu(evaluator)),
                                             strategy=strategy.name)
            if strategy.gpus_per_trial:
                trainable = tune.with_resources(trainable, {"cpu": 1, "gpu": strategy.gpus_per_trial})
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search, num_samples=math.ceil(budget.evaluations / strategy.batch_size),
                    max_concurrent_trials=workers, reuse_actors=True, time_budget_s=budget.wall_s,
                    trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    storage_path=str((work_dir / "tune").resolve()), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=strategy.max_failures),
                    callbacks=[RecordTrials(record)]),
            )
            with redirect_stdout(io.StringIO()):  # Tune's console banner ignores verbose=0; we show progress
                tuner.fit()
