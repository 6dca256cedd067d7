"""Rank statistics shared by the fidelity experiments (``oneshot_fidelity.py``, its ``--reuse-standalone``
variants, ``supernet_recipes.py``): correlations with bootstrap intervals and paired gains, and reading a study."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

TARGET_TAU, TARGET_SPEARMAN = 0.93, 0.9  # One-Shot MPQ (CVPR 2023), and the fallback
BOOTSTRAP = 2000


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Kendall tau (b), Spearman rho and Pearson r of two paired score lists (NaN below 3 pairs)."""
    if len(x) < 3:
        return {"kendall_tau": math.nan, "spearman": math.nan, "pearson": math.nan}
    return {"kendall_tau": float(stats.kendalltau(x, y).statistic),
            "spearman": float(stats.spearmanr(x, y).statistic),
            "pearson": float(stats.pearsonr(x, y).statistic)}


def rank_figures(x: Sequence[float], y: Sequence[float], baseline: Sequence[float] | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """:func:`correlations` plus 95% bootstrap intervals (candidates resampled) of tau and Spearman, and, given
    the scores of a ``baseline`` estimator of the same candidates, the paired bootstrap interval of the tau gain
    over it: a gain whose interval holds 0 is not measurable with this many candidates."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    figures: dict[str, Any] = correlations(x, y)
    if len(x) < 3:
        return figures
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(x), len(x)) for _ in range(BOOTSTRAP)]
    taus = np.array([stats.kendalltau(x[i], y[i]).statistic for i in draws])
    figures["kendall_tau_ci95"] = ci95(taus)
    figures["spearman_ci95"] = ci95([stats.spearmanr(x[i], y[i]).statistic for i in draws])
    if baseline is not None:
        base = np.asarray(baseline, float)
        figures["tau_gain_over_baseline"] = figures["kendall_tau"] - float(stats.kendalltau(base, y).statistic)
        figures["tau_gain_ci95"] = ci95(taus - np.array([stats.kendalltau(base[i], y[i]).statistic
                                                             for i in draws]))
    return figures


def ci95(values: Sequence[float]) -> list[float]:
    """The 2.5 and 97.5 percentiles: a percentile-bootstrap 95% interval."""
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def column(rows: Sequence[dict[str, Any]], key: str) -> list[Any]:
    return [r[key] for r in rows]


def fmt_ci(figures: dict[str, Any], key: str) -> str:
    low, high = figures.get(f"{key}_ci95", (math.nan, math.nan))
    return f"{figures[key]:.3f} [{low:.2f}, {high:.2f}]"


def load_study(path: Path) -> dict[str, Any]:
    """A finished study's JSON, checked to hold what re-scoring needs."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read a fidelity study JSON ({exc})") from None
    rows = [r for r in result.get("candidates", []) if r.get("standalone_accuracy") is not None]
    if len(rows) < 3 or not all("candidate" in r for r in rows):
        raise SystemExit(f"{path}: needs at least 3 candidates with stand-alone scores and their definitions "
                         "(`candidate`); re-run the study with this script to write them")
    return {**result, "candidates": rows}


def scores_by_id(path: Path, key: str) -> dict[str, float]:
    """One score (``standalone_accuracy``, ``oneshot_accuracy``) of every candidate of another study, by id."""
    result = json.loads(path.read_text())
    return {r["id"]: r[key] for r in result["candidates"] if r.get(key) is not None}
