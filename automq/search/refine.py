"""Refining a finished search: the accuracies that decide its front, re-scored on the whole validation split.

A search scores each candidate on the first ``search.eval_size`` validation images (2,000 on the default space: a
binomial standard error of 0.8 points, more than most steps between neighbouring candidates). When it ends,
:func:`refine_front` re-scores, on every validation image, the trials that could be on the front: the
Pareto-optimal ones and each one that no front trial beats by more than ``margin_se`` paired standard errors
(:func:`~automq.oneshot.paired.paired_difference`, on the search's images) while being no worse in every other
objective; then any trial that the re-scored values leave on the front unrefined, until the whole front was
measured on the whole split. Only the front reaches a user, so this is where the estimate's resolution is spent.

A refined trial keeps its search-time values as ``accuracy_search``, ``accuracy_se_search`` and ``loss_search``;
``accuracy_images`` says how many images ``accuracy`` was measured on. ``trials.jsonl`` and ``pareto.json`` are
rewritten atomically. A trial already scored on the whole split (a resumed search) is not scored again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from automq.io import atomic_write_text
from automq.oneshot.paired import Correctness, binomial_se, paired_difference
from automq.search.pareto import Objective, loss_vectors, pareto_mask
from automq.search.results import TRIALS_FILE, SearchLog, pareto_trials
from automq.search.trial import Trial

if TYPE_CHECKING:
    from automq.space.candidate import Candidate

__all__ = ["MARGIN_SE", "Refiner", "near_front", "refine_front"]

MARGIN_SE = 2.0
"""Paired standard errors by which a front trial must beat another for the other not to be re-scored."""
SEARCH_KEYS = ("accuracy", "accuracy_se", "loss")
"""Metrics re-scored by a refinement; the search-time values are kept under ``<key>_search``."""


@runtime_checkable
class Refiner(Protocol):
    """What a refinement needs of an evaluator (:class:`~automq.oneshot.evaluate.OneShotEstimator` has it)."""

    val_images: int  # images of a search-time score
    max_images: int  # images of the whole validation split

    def estimate(self, candidate: Candidate, *, images: int | None = None) -> dict[str, float]: ...

    def correctness(self, candidate: Candidate, *, images: int | None = None) -> Correctness: ...


def refine_front(log: SearchLog, estimator: Refiner, *, margin_se: float = MARGIN_SE) -> list[Trial]:
    """Re-score the trials of ``log`` that could be on its front on all ``estimator.max_images`` images, record
    the refinement in ``log.run_info["refine"]`` and rewrite the search directory; returns the re-scored trials.

    Nothing happens when accuracy is not an objective or the search already scored on the whole split."""
    if "accuracy" not in (o.metric for o in log.objectives) or estimator.val_images >= estimator.max_images:
        return []
    feasible = [t for t in log.trials if t.feasible]
    chosen = near_front(feasible, log.objectives, estimator, margin_se=margin_se)
    pending, refined = chosen + _front(log, feasible), []
    # a trial scored on fewer images can overtake refined ones (the first images may be easier or harder than the
    # rest), so the front a user reads is refined until every trial on it was measured on the whole split
    while pending := [t for t in {t.number: t for t in pending}.values() if not _refined(t, estimator)]:
        for trial in pending:
            full = estimator.estimate(trial.candidate, images=estimator.max_images)
            searched = {f"{key}_search": trial.metrics[key] for key in SEARCH_KEYS if key in trial.metrics}
            trial.metrics = {**trial.metrics, **full, **searched}
        refined += pending
        pending = _front(log, feasible)
    log.run_info["refine"] = {"near_front": len(chosen), "rescored": len(refined),
                              "images": estimator.max_images, "margin_se": margin_se}
    if refined:
        lines = "".join(json.dumps(t.to_dict()) + "\n" for t in log.trials)
        atomic_write_text(log.dir / TRIALS_FILE, lines)
        log.write_pareto()
    return refined


def near_front(trials: Sequence[Trial], objectives: Sequence[Objective], estimator: Refiner, *,
               margin_se: float = MARGIN_SE) -> list[Trial]:
    """The ``trials`` on their search-time front, and those no front trial beats in accuracy by more than
    ``margin_se`` paired standard errors while being no worse in every other objective.

    Per-image correctness is asked of ``estimator`` only where the binomial errors cannot decide: the paired
    error never exceeds the sum of the two binomial errors, so a gap beyond ``margin_se`` times that sum is
    decided without scoring anything."""
    if not trials:
        return []
    metrics = [_search_metrics(t) for t in trials]
    losses = loss_vectors(metrics, objectives)
    accuracy = [o.metric for o in objectives].index("accuracy")
    others = [j for j in range(len(objectives)) if j != accuracy]
    on_front = pareto_mask(losses)
    front = np.flatnonzero(on_front)

    def binomial(i: int) -> float:
        return binomial_se(metrics[i]["accuracy"], estimator.val_images)

    def beaten(i: int) -> bool:
        for f in front:
            if not np.all(losses[f, others] <= losses[i, others]):
                continue
            if metrics[f]["accuracy"] - metrics[i]["accuracy"] > margin_se * (binomial(f) + binomial(i)):
                return True
            difference = paired_difference(estimator.correctness(trials[f].candidate),
                                           estimator.correctness(trials[i].candidate))
            if difference.value > margin_se * difference.se:
                return True
        return False

    return [t for i, t in enumerate(trials) if on_front[i] or not beaten(i)]


def _front(log: SearchLog, trials: list[Trial]) -> list[Trial]:
    return pareto_trials(trials, log.objectives, log.scales)[0]


def _refined(trial: Trial, estimator: Refiner) -> bool:
    return trial.metrics.get("accuracy_images") == estimator.max_images


def _search_metrics(trial: Trial) -> dict[str, Any]:
    """A trial's metrics as the search scored them (before any refinement)."""
    restored = {key: trial.metrics[f"{key}_search"] for key in SEARCH_KEYS if f"{key}_search" in trial.metrics}
    return {**trial.metrics, **restored}
