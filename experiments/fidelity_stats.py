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
                 seed: int = 0, resamples: int = BOOTSTRAP) -> dict[str, Any]:
    """:func:`correlations` plus 95% bootstrap intervals (``resamples`` resamples of the candidates) of tau and
    Spearman, and, given
    the scores of a ``baseline`` estimator of the same candidates, the paired bootstrap interval of the tau gain
    over it: a gain whose interval holds 0 is not measurable with this many candidates."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    figures: dict[str, Any] = correlations(x, y)
    if len(x) < 3:
        return figures
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(x), len(x)) for _ in range(resamples)]
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


# --- what a search needs (issue 16): order among candidates of similar cost, and between neighbours -----------------
LOCAL_WINDOW = 0.15
"""Two candidates are of similar cost when the larger BitOps is at most this share above the smaller."""


def similar_cost_pairs(cost: Sequence[float], window: float = LOCAL_WINDOW) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose costs are within ``window`` of each other (larger / smaller - 1)."""
    c = np.asarray(cost, float)
    return [(i, j) for i in range(len(c)) for j in range(i + 1, len(c))
            if max(c[i], c[j]) <= (1.0 + window) * min(c[i], c[j])]


def pair_agreement(x: Sequence[float], y: Sequence[float], pairs: Sequence[tuple[int, int]]) -> float:
    """The share of ``pairs`` that ``x`` orders as ``y`` does; a pair tied in either counts one half (a coin
    flip would order it). NaN without pairs."""
    if not len(pairs):
        return math.nan
    i, j = np.asarray(pairs).T
    x, y = np.asarray(x, float), np.asarray(y, float)
    product = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return float(np.mean((product + 1.0) / 2.0))  # 1 agrees, 0 disagrees, 1/2 tied


def local_tau(x: Sequence[float], y: Sequence[float], cost: Sequence[float], window: float = LOCAL_WINDOW) -> float:
    """Kendall tau (tau-a: concordant minus discordant pairs over all pairs) among the candidates of similar cost
    (:func:`similar_cost_pairs`): the ranking a Pareto search relies on, which cost alone cannot give."""
    return 2.0 * pair_agreement(x, y, similar_cost_pairs(cost, window)) - 1.0


def search_figures(x: Sequence[float], y: Sequence[float], cost: Sequence[float],
                   neighbours: Sequence[tuple[int, int]], seed: int = 0,
                   resamples: int = BOOTSTRAP) -> dict[str, Any]:
    """Kendall tau over all candidates, :func:`local_tau` and the neighbour pairs' :func:`pair_agreement` of the
    estimate ``x`` against the ground truth ``y``, with percentile-bootstrap 95% intervals (``resamples`` each):
    candidates resampled
    for the two taus (pairs of a candidate with its own copy left out), neighbour pairs resampled for the
    agreement (each pair is one comparison)."""
    x, y, cost = np.asarray(x, float), np.asarray(y, float), np.asarray(cost, float)
    figures: dict[str, Any] = {**_point_figures(x, y, cost, neighbours),
                               "local_pairs": len(similar_cost_pairs(cost)), "neighbour_pairs": len(neighbours)}
    for key, values in _bootstrap([x], y, cost, neighbours, seed, resamples).items():
        figures[f"{key}_ci95"] = ci95(values[0])
    return figures


def paired_difference(x: Sequence[float], baseline: Sequence[float], y: Sequence[float], cost: Sequence[float],
                      neighbours: Sequence[tuple[int, int]], seed: int = 0,
                      resamples: int = BOOTSTRAP) -> dict[str, Any]:
    """Each figure of :func:`search_figures` of the estimate ``x`` minus that of ``baseline`` (another estimator,
    or BitOps alone) against the same ground truth ``y``, with a paired bootstrap 95% interval: both are scored on
    the same resampled candidates (and neighbour pairs), so what they share cancels. ``x`` beats ``baseline`` on
    a figure where the interval lies above 0."""
    arrays = [np.asarray(v, float) for v in (x, baseline, y, cost)]
    x, baseline, y, cost = arrays
    ours, theirs = _point_figures(x, y, cost, neighbours), _point_figures(baseline, y, cost, neighbours)
    figures: dict[str, Any] = {key: ours[key] - theirs[key] for key in ours}
    for key, values in _bootstrap([x, baseline], y, cost, neighbours, seed, resamples).items():
        figures[f"{key}_ci95"] = ci95(values[0] - values[1])
    return figures


Study = tuple[Sequence[float], Sequence[float] | None, Sequence[float], Sequence[float], Sequence[tuple[int, int]]]
"""One study's part of a pooled figure: the estimate, the baseline it is compared with (``None``: the figure
itself), the ground truth, the costs and the neighbour pairs, as :func:`paired_difference` takes them."""


def pooled_figures(studies: Sequence[Study], seed: int = 0, resamples: int = BOOTSTRAP) -> dict[str, Any]:
    """:func:`search_figures` (baseline ``None``) or :func:`paired_difference` over several independent studies,
    each against its own ground truth (another float network, another machine), without comparing candidates of
    different studies: each figure is the studies' figures averaged with their comparisons as weights (candidate
    pairs, similar-cost pairs, neighbour pairs), so every comparison counts once, as in one study holding them
    all; its interval comes from resampling every study on its own, the replicates combined the same way."""
    points, replicates, weights = [], [], []
    for k, (x, baseline, y, cost, neighbours) in enumerate(studies):
        x, y, cost = (np.asarray(v, float) for v in (x, y, cost))
        estimates = [x] if baseline is None else [x, np.asarray(baseline, float)]
        figures = [_point_figures(e, y, cost, neighbours) for e in estimates]
        points.append({key: figures[0][key] - (figures[1][key] if baseline is not None else 0.0)
                       for key in figures[0]})
        replicates.append({key: v[0] - (v[1] if baseline is not None else 0.0)
                           for key, v in _bootstrap(estimates, y, cost, neighbours, seed + k, resamples).items()})
        weights.append({"kendall_tau": len(y) * (len(y) - 1) / 2, "kendall_tau_local": len(similar_cost_pairs(cost)),
                        "neighbour_agreement": len(neighbours)})
    pooled: dict[str, Any] = {"studies": len(studies)}
    for key in points[0]:
        counted = [k for k, w in enumerate(weights) if w[key]]  # a study without such comparisons adds none
        if not counted:
            pooled[key] = math.nan
            continue
        w = np.array([weights[k][key] for k in counted], float) / sum(weights[k][key] for k in counted)
        pooled[key] = float(np.dot(w, [points[k][key] for k in counted]))
        if all(key in replicates[k] for k in counted):
            pooled[f"{key}_ci95"] = ci95(np.tensordot(w, [replicates[k][key] for k in counted], axes=1))
    return pooled


def ratio_to_ceiling(x: Sequence[float], rerun: Sequence[float], y: Sequence[float], cost: Sequence[float],
                     neighbours: Sequence[tuple[int, int]], seed: int = 0,
                     resamples: int = BOOTSTRAP) -> dict[str, Any]:
    """Each figure of :func:`search_figures` of the estimate ``x`` over that of ``rerun`` (the ground truth ``y``
    trained again with another seed: its noise ceiling), both against ``y``, with a bootstrap 95% interval of the
    ratio taken on the same resamples, so that the ceiling's own sampling error is in the interval too (resamples
    on which the ceiling is not above 0, where a ratio means nothing, are left out)."""
    arrays = [np.asarray(v, float) for v in (x, rerun, y, cost)]
    x, rerun, y, cost = arrays
    ours, ceiling = _point_figures(x, y, cost, neighbours), _point_figures(rerun, y, cost, neighbours)
    figures: dict[str, Any] = {key: ours[key] / ceiling[key] if ceiling[key] > 0 else math.nan for key in ours}
    for key, values in _bootstrap([x, rerun], y, cost, neighbours, seed, resamples).items():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(values[1] > 0, values[0] / values[1], np.nan)
        figures[f"{key}_ci95"] = ci95(ratios)
    return figures


def _point_figures(x: np.ndarray, y: np.ndarray, cost: np.ndarray,
                   neighbours: Sequence[tuple[int, int]]) -> dict[str, float]:
    return {"kendall_tau": correlations(x, y)["kendall_tau"], "kendall_tau_local": local_tau(x, y, cost),
            "neighbour_agreement": pair_agreement(x, y, neighbours)}


def _bootstrap(estimates: Sequence[np.ndarray], y: np.ndarray, cost: np.ndarray,
               neighbours: Sequence[tuple[int, int]], seed: int, resamples: int) -> dict[str, np.ndarray]:
    """The bootstrap replicates of the figures of each of ``estimates`` (rows), all on the same resamples."""
    rng = np.random.default_rng(seed)
    replicates: dict[str, np.ndarray] = {}
    if len(y) >= 3 and resamples:
        taus, local = np.empty((len(estimates), resamples)), np.empty((len(estimates), resamples))
        for r in range(resamples):
            draw = rng.integers(0, len(y), len(y))
            distinct = [(i, j) for i, j in similar_cost_pairs(cost[draw]) if draw[i] != draw[j]]
            for k, x in enumerate(estimates):
                taus[k, r] = stats.kendalltau(x[draw], y[draw]).statistic
                local[k, r] = 2.0 * pair_agreement(x[draw], y[draw], distinct) - 1.0 if distinct else math.nan
        replicates["kendall_tau"], replicates["kendall_tau_local"] = taus, local
    if len(neighbours):
        pairs = np.asarray(neighbours)
        draws = [pairs[rng.integers(0, len(pairs), len(pairs))] for _ in range(resamples)]
        replicates["neighbour_agreement"] = np.array([[pair_agreement(x, y, d) for d in draws] for x in estimates])
    return replicates


def measured_noise_ceiling(repeats: Sequence[Sequence[float]], cost: Sequence[float],
                           neighbours: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """How well the ground truth agrees with a re-run of itself: for every two seeds ``s < t``, the
    :func:`search_figures` statistics (without intervals) of seed ``s``'s accuracies against seed ``t``'s over the
    re-run candidates, averaged over the seed pairs. ``repeats[k]`` holds the accuracies of re-run candidate ``k``
    by seed, ``cost[k]`` its BitOps; ``neighbours`` index pairs of re-run candidates."""
    seeds = min((len(r) for r in repeats), default=0)
    if len(repeats) < 3 or seeds < 2:
        return {}
    runs = np.asarray([list(r)[:seeds] for r in repeats], float).T  # seed x candidate
    per_pair = [{"kendall_tau": correlations(runs[s], runs[t])["kendall_tau"],
                 "kendall_tau_local": local_tau(runs[s], runs[t], cost),
                 "neighbour_agreement": pair_agreement(runs[s], runs[t], neighbours)}
                for s in range(seeds) for t in range(s + 1, seeds)]
    return {**{key: float(np.mean([p[key] for p in per_pair])) for key in per_pair[0]},
            "candidates": len(repeats), "seeds": seeds, "neighbour_pairs": len(neighbours),
            "local_pairs": len(similar_cost_pairs(cost))}


def neighbour_resolution(first: Sequence[float], again: Sequence[float],
                         neighbours: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """How far the ground truth is from ordering the neighbour pairs, from two runs of it (two seeds).

    A pair's difference ``y[j] - y[i]`` is measured once per run; the two runs' disagreement gives the noise of
    one run's difference (``difference_noise_sd``: the SD of the two runs' difference over pairs, over sqrt 2,
    so a shift common to all pairs is not counted), and the spread of the two-run mean beyond that noise gives
    the size of the true differences (``true_difference_rms``: the root mean square over pairs, 0 when the noise
    explains all of it). ``seeds_for_typical_pair``: runs per candidate a ground truth would need for a
    difference of that typical size to lie 2 standard errors from 0. ``resolved``: the pairs (indices into
    ``neighbours``) whose two-run mean difference already lies beyond 2 standard errors."""
    if len(neighbours) < 2:
        return {}
    i, j = np.asarray(neighbours).T
    y0, y1 = np.asarray(first, float), np.asarray(again, float)
    d0, d1 = y0[j] - y0[i], y1[j] - y1[i]
    noise = float(np.std(d1 - d0, ddof=1) / math.sqrt(2.0))
    mean = (d0 + d1) / 2.0
    true_rms = math.sqrt(max(0.0, float(np.mean(mean**2)) - noise**2 / 2.0))
    standard_error = noise / math.sqrt(2.0)
    return {"pairs": len(neighbours), "difference_noise_sd": noise, "true_difference_rms": true_rms,
            "mean_difference_se": standard_error,
            "seeds_for_typical_pair": math.ceil((2.0 * noise / true_rms) ** 2) if true_rms > 0 else None,
            "resolved": [k for k in range(len(mean)) if abs(mean[k]) > 2.0 * standard_error]}
