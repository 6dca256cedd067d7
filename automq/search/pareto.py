"""Pareto fronts and hypervolume over mixed objectives (accuracy up, costs down).

Optuna's own non-domination filter and WFG hypervolume do the work; this module only turns trial metrics into
the loss vectors they expect. One documented normalisation is used everywhere (search progress, benchmarks,
reports), so hypervolumes of different strategies are comparable:

* a maximised metric in [0, 1] (accuracy) becomes its shortfall ``1 - value``, reference 1.0;
* a minimised cost is divided by its ``scale`` (the largest candidate's cost in the space), reference 1.1, so
  the largest candidate still adds volume;
* any other maximised metric is negated and divided by its scale, reference 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front

COST_REFERENCE = 1.1


@dataclass(frozen=True)
class Objective:
    """One objective: a metric name as it appears in trial metrics, and ``"min"`` or ``"max"``."""

    metric: str
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"objective {self.metric!r}: mode must be 'min' or 'max', got {self.mode!r}")


def loss_vectors(
    metrics: Sequence[Mapping[str, float]],
    objectives: Sequence[Objective],
    scales: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Rows of normalised losses (smaller is better in every column), one row per metrics mapping."""
    scales = scales or {}
    columns = []
    for objective in objectives:
        values = np.array([float(m[objective.metric]) for m in metrics], dtype=float)
        scale = float(scales.get(objective.metric, 1.0))
        if objective.mode == "max" and objective.metric == "accuracy":
            columns.append(1.0 - values)
        elif objective.mode == "max":
            columns.append(-values / scale)
        else:
            columns.append(values / scale)
    return np.stack(columns, axis=1) if columns else np.zeros((len(metrics), 0))


def reference_point(objectives: Sequence[Objective]) -> np.ndarray:
    """The hypervolume reference point matching :func:`loss_vectors`' normalisation."""
    refs = []
    for objective in objectives:
        if objective.mode == "max":
            refs.append(1.0 if objective.metric == "accuracy" else 0.0)
        else:
            refs.append(COST_REFERENCE)
    return np.array(refs, dtype=float)


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of a loss matrix (duplicates of a front point are kept)."""
    if len(losses) == 0:
        return np.zeros(0, dtype=bool)
    return _is_pareto_front(np.asarray(losses, dtype=float), assume_unique_lexsorted=False)


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume dominated by ``losses`` up to ``reference``; points beyond the reference add nothing."""
    losses = np.asarray(losses, dtype=float)
    if len(losses) == 0:
        return 0.0
    inside = np.all(losses < reference, axis=1)
    if not inside.any():
        return 0.0
    front = losses[inside][pareto_mask(losses[inside])]
    return float(compute_hypervolume(np.unique(front, axis=0), reference, assume_pareto=True))


def front_hypervolume(
    metrics: Sequence[Mapping[str, float]],
    objectives: Sequence[Objective],
    scales: Mapping[str, float] | None = None,
) -> float:
    """Hypervolume of the (feasible) trials given by their metrics, with the module's normalisation."""
    return hypervolume(loss_vectors(metrics, objectives, scales), reference_point(objectives))
