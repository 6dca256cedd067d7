"""Comparing search runs: Pareto sets, hypervolume histories, uniform-precision baselines, key findings and the
one-shot fidelity check, computed from loaded search directories (:mod:`automq.search.results`).

Hypervolume is :mod:`automq.search.pareto`'s, with each run's own normalisation scales (from its ``pareto.json``, else
recomputed from its ``space.yaml``), so the numbers match what the search itself reported. Nothing here raises on
damaged input: problems are appended to a ``notes`` list that the report shows at the top.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from automq.errors import AutomqError
from automq.search.pareto import Objective, hypervolume, loss_vectors, pareto_mask, reference_point
from automq.search.results import (PARETO_FILE, SPACE_FILE, SearchResult, hypervolume_scales, pareto_trials,
                            space_objectives)
from automq.space.space import SearchSpace
from automq.search.trial import Trial

DEFAULT_OBJECTIVES = (Objective("accuracy", "max"), Objective("bitops", "min"))


# ------------------------------------------------------------------------------------------------ analysis
@dataclass
class RunAnalysis:
    """One search directory, analysed: label, objectives, Pareto set and hypervolume after each trial."""

    label: str
    result: SearchResult
    objectives: tuple[Objective, ...]
    scales: dict[str, float]
    front: list[Trial]
    hypervolume: float
    curve: list[float]

    @property
    def strategy(self) -> str:
        return str(self.result.run.get("strategy") or next((t.strategy for t in self.result.trials if t.strategy),
                                                           "unknown"))

    @property
    def is_uniform(self) -> bool:
        """A run of the ``uniform`` strategy: its trials are the precision baselines, not a competing front."""
        return self.strategy == "uniform"

    def counts(self) -> dict[str, int]:
        return {s: sum(t.status == s for t in self.result.trials) for s in ("ok", "infeasible", "failed")}

    def summary(self) -> dict[str, Any]:
        """The run's row of ``summary.json``."""
        run = self.result.run
        counts = self.counts()
        return {
            "run": self.label, "path": str(self.result.path), "strategy": self.strategy,
            "status": run.get("status", "unknown"), "command": run.get("command"),
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
            "hypervolume_scales": self.scales, "reference_point": reference_point(self.objectives).tolist(),
            "hypervolume": self.hypervolume, "front_size": len(self.front),
            "wall_s": run.get("wall_s"), "trial_wall_s": sum(t.wall_s for t in self.result.trials),
            # Infeasible candidates are rejected on analytic costs; only ok trials reached the estimator.
            "supernet_evaluations": run.get("supernet_evaluations", counts["ok"]),
            "trials": len(self.result.trials), "counts": counts, "hypervolume_curve": self.curve,
        }


def usable(trials: Sequence[Trial], metrics: Sequence[str]) -> list[Trial]:
    """The feasible trials that carry every metric in ``metrics`` as a finite number."""
    return [t for t in trials if t.feasible and all(_finite(t.metrics.get(m)) for m in metrics)]


def hypervolume_curve(trials: Sequence[Trial], objectives: Sequence[Objective],
                      scales: Mapping[str, float]) -> list[float]:
    """Hypervolume of the usable trials among the first k, for every k (trials in the order they finished)."""
    reference = reference_point(objectives)
    metrics = [o.metric for o in objectives]
    kept: list[np.ndarray] = []
    volume, curve = 0.0, []
    for trial in trials:
        if usable([trial], metrics):
            loss = loss_vectors([trial.metrics], objectives, scales)[0]
            if not any(np.all(k <= loss) for k in kept):  # a dominated or repeated point adds no volume
                kept.append(loss)
                volume = hypervolume(np.array(kept), reference)
        curve.append(volume)
    return curve


def analyse_runs(results: Sequence[SearchResult], notes: list[str]) -> list[RunAnalysis]:
    """Objectives, scales, fronts and hypervolumes of every loaded run; problems are appended to ``notes``."""
    resolved = [_objectives_and_scales(result, notes) for result in results]
    known = [scales for _, scales in resolved if scales is not None]
    lacking = [str(r.path) for r, (_, scales) in zip(results, resolved) if scales is None]
    if lacking and known:
        notes.append(f"{', '.join(lacking)}: no recorded hypervolume scales; using those of the first run that "
                     "has them")
    elif lacking:
        notes.append("No run records its hypervolume scales; costs are normalised by the largest value seen in "
                     "these runs, so hypervolumes compare these runs with each other but not with other reports.")
    shared = known[0] if known else _observed_maxima([t for r in results for t in r.trials])
    runs = [_analyse_run(result, label, objectives, shared if scales is None else scales, notes)
            for result, label, (objectives, scales) in zip(results, _unique_labels(results), resolved)]
    if len({(r.objectives, tuple(r.scales.get(o.metric) for o in r.objectives)) for r in runs}) > 1:
        notes.append("The runs do not share objectives and scales; their hypervolumes are not comparable.")
    return runs


def _analyse_run(result: SearchResult, label: str, objectives: tuple[Objective, ...], scales: dict[str, float],
                 notes: list[str]) -> RunAnalysis:
    metrics = [o.metric for o in objectives]
    scored = usable(result.trials, metrics)
    feasible = sum(t.feasible for t in result.trials)
    if feasible > len(scored):
        notes.append(f"{result.path}: {feasible - len(scored)} ok trials lack one of the objective metrics "
                     f"{metrics}; they are left out of the front and the hypervolume")
    if result.trials and not feasible:
        notes.append(f"{result.path}: none of its {len(result.trials)} trials is feasible (see the failed and "
                     "infeasible counts under Search cost, and the error column of trials.csv)")
    front, volume = pareto_trials(scored, objectives, scales)
    return RunAnalysis(label, result, objectives, scales, front, volume,
                       hypervolume_curve(result.trials, objectives, scales))


def _objectives_and_scales(result: SearchResult, notes: list[str]) -> tuple[tuple[Objective, ...],
                                                                            dict[str, float] | None]:
    pareto = _read_json(result.path / PARETO_FILE, notes)
    if isinstance(pareto, dict) and pareto.get("objectives") and "hypervolume_scales" in pareto:
        try:
            objectives = tuple(Objective(o["metric"], o["mode"]) for o in pareto["objectives"])
            return objectives, {k: float(v) for k, v in pareto["hypervolume_scales"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            notes.append(f"{result.path / PARETO_FILE}: malformed objectives or scales ({exc}); ignored")
    space_file = result.path / SPACE_FILE
    if space_file.is_file():
        try:
            space = SearchSpace.from_file(space_file)
            return tuple(space_objectives(space)), hypervolume_scales(space)
        except AutomqError as exc:
            notes.append(f"{space_file}: cannot be used ({exc})")
    notes.append(f"{result.path}: neither {PARETO_FILE} nor a valid {SPACE_FILE}; assuming the objectives "
                 "accuracy (max) and bitops (min)")
    return DEFAULT_OBJECTIVES, None


def _observed_maxima(trials: Sequence[Trial]) -> dict[str, float]:
    maxima: dict[str, float] = {}
    for trial in trials:
        for metric, value in trial.metrics.items():
            if _finite(value) and value > maxima.get(metric, 0.0):
                maxima[metric] = float(value)
    return maxima


def _unique_labels(results: Sequence[SearchResult]) -> list[str]:
    """Run labels for legends: the strategy (or run label), disambiguated by folder name when repeated."""
    names = [r.strategy if r.run else next((t.strategy for t in r.trials if t.strategy), r.path.name)
             for r in results]
    labels = [f"{n} ({r.path.name})" if names.count(n) > 1 else n for n, r in zip(names, results)]
    return [f"{label} [{i + 1}]" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


# ------------------------------------------------------------------------------------------------ baselines
@dataclass(frozen=True)
class Baseline:
    """A uniform-precision trial, named by its format, used as a labelled reference point."""

    name: str
    run: str
    trial: Trial


def uniform_format(trial: Trial, strategy: str) -> str | None:
    """The format of a uniform-precision trial (``info["format"]`` of the uniform strategy, or the single
    format a candidate uses everywhere); ``None`` for a mixed-precision candidate."""
    if strategy == "uniform" and trial.info.get("format"):
        return str(trial.info["format"])
    weights = {w for _, w, _ in trial.candidate.formats}
    activations = {a for _, _, a in trial.candidate.formats}
    if len(weights) != 1 or len(activations) != 1:
        return None
    (w_fmt,), (a_fmt,) = weights, activations
    return w_fmt if w_fmt == a_fmt else f"W {w_fmt} / A {a_fmt}"


def find_baselines(runs: Sequence[RunAnalysis]) -> list[Baseline]:
    """Every feasible uniform-precision trial of every run, once per (format, candidate)."""
    found: dict[tuple[str, str], Baseline] = {}
    for run in runs:
        for trial in usable(run.result.trials, ["accuracy"]):
            name = uniform_format(trial, trial.strategy or run.strategy)
            if name is not None:
                found.setdefault((name, trial.candidate.id), Baseline(name, run.label, trial))
    return list(found.values())


def front_2d(trials: Sequence[Trial], cost: str) -> list[Trial]:
    """The trials not dominated in (accuracy up, ``cost`` down)."""
    trials = usable(trials, ["accuracy", cost])
    mask = pareto_mask(loss_vectors([t.metrics for t in trials], [Objective("accuracy", "max"),
                                                                   Objective(cost, "min")]))
    return [t for t, keep in zip(trials, mask) if keep]


# ------------------------------------------------------------------------------------------------ findings
SEARCH_TIME_CAVEAT = ("These accuracies are the validation estimates the search saw; they choose candidates but "
                      "decide no win: `automq final` measures wins on the test split with paired standard errors.")


def key_findings(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline]) -> list[str]:
    """A few sentences generated from the data: best hypervolume, best accuracy per budget, mixed vs uniform, all
    by the accuracies the search saw (:func:`search_findings`, then :func:`validation_budget_findings`)."""
    return search_findings(runs) + validation_budget_findings(runs, baselines)


def search_findings(runs: Sequence[RunAnalysis]) -> list[str]:
    """The run with the highest hypervolume and the most accurate feasible candidate (or why there is none)."""
    feasible = _feasible(runs)
    if not feasible:
        return ["No run has a feasible trial with an accuracy yet, so there is no front to compare."]
    ranked = sorted((r for r in runs if r.result.trials), key=lambda r: -r.hypervolume)
    others = ", ".join(f"{r.label} {r.hypervolume:.4f}" for r in ranked[1:])
    run, best = max(feasible, key=lambda rt: rt[1].metrics["accuracy"])
    return [f"Highest hypervolume: {ranked[0].label} with {ranked[0].hypervolume:.4f}"
            + (f" (others: {others})." if others else "."),
            f"Most accurate feasible candidate: {_pct(best.metrics['accuracy'])} "
            f"({run.label} trial #{best.number}{_cost_suffix(best)})."]


def validation_budget_findings(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline]) -> list[str]:
    """Per budget of the uniform front (or of a log-spaced ladder without baselines), the best searched candidate
    against the best uniform format by validation accuracy, closed by :data:`SEARCH_TIME_CAVEAT`: these figures are
    what the search saw, not the test-split verdicts of :mod:`automq.report.final`."""
    feasible = _feasible(runs)
    cost = "bitops" if any(_finite(t.metrics.get("bitops")) for _, t in feasible) else None
    if cost is None:
        return []
    findings = []
    # searched: neither a baseline's candidate (a strategy may pick one too) nor one format everywhere; on a space
    # with architecture choices such a candidate may differ from the baselines in its architecture, not its formats
    uniform_ids = {b.trial.candidate.id for b in baselines}
    searched = [(r, t) for r, t in feasible
                if uniform_format(t, t.strategy or r.strategy) is None and t.candidate.id not in uniform_ids]
    best: tuple[RunAnalysis, Trial] | None = None
    unchanged: list[Trial] = []  # uniform references of higher budgets that add no searched candidate
    for name, reference in uniform_front(baselines, cost):
        budget = reference.metrics[cost]
        within = [(r, t) for r, t in searched if t.metrics.get(cost, math.inf) <= budget * (1 + 1e-9)]
        head = f"At ≤ {_g(budget)} BitOps (best uniform format: {name}, {_pct(reference.metrics['accuracy'])})"
        if not within:
            findings.append(f"{head}, no searched candidate was found.")
            continue
        r, t = max(within, key=lambda rt: rt[1].metrics["accuracy"])
        if best is not None and t is best[1]:
            unchanged.append(reference)
            continue
        findings += _unchanged_finding(best, unchanged, cost)
        best, unchanged = (r, t), []
        gain = 100 * (t.metrics["accuracy"] - reference.metrics["accuracy"])
        findings.append(f"{head}, the best searched candidate reaches {_pct(t.metrics['accuracy'])} "
                        f"({gain:+.2f} points; {r.label} trial #{t.number}, {_g(t.metrics[cost])} BitOps).")
    findings += _unchanged_finding(best, unchanged, cost)
    if not baselines:
        findings += _budget_ladder(feasible, cost)
    return (findings + [SEARCH_TIME_CAVEAT]) if findings else []


def _feasible(runs: Sequence[RunAnalysis]) -> list[tuple[RunAnalysis, Trial]]:
    return [(run, t) for run in runs for t in usable(run.result.trials, ["accuracy"])]


def _unchanged_finding(best: tuple[RunAnalysis, Trial] | None, references: Sequence[Trial], cost: str) -> list[str]:
    """One sentence for a run of uniform budgets under which the searches found nothing better than ``best``, the
    best searched candidate of the budget below them (rather than one repeated sentence per budget)."""
    if best is None or not references:
        return []
    (r, t), accs = best, [ref.metrics["accuracy"] for ref in references]
    low, high = references[0].metrics[cost], references[-1].metrics[cost]
    head = (f"At ≤ {_g(low)} BitOps (best uniform {_pct(accs[0])})" if len(references) == 1 else
            f"At the {len(references)} budgets from {_g(low)} to {_g(high)} BitOps (best uniform "
            f"{_pct(min(accs))}-{_pct(max(accs))})")
    return [f"{head}, the best searched candidate is still {r.label} trial #{t.number} "
            f"({_pct(t.metrics['accuracy'])}), from the budget below."]


@dataclass(frozen=True)
class BudgetRow:
    """The most accurate feasible trial of every run within one cost budget, and which run wins there."""

    budget: float
    label: str  # what the budget is, e.g. "uniform int4" or "log-spaced"
    best: dict[str, Trial | None]  # run label -> its most accurate trial within the budget (None: none fits)

    @property
    def winner(self) -> str | None:
        """The run with the most accurate trial within the budget (the first listed on a tie)."""
        scored = {run: t.metrics["accuracy"] for run, t in self.best.items() if t is not None}
        return max(scored, key=scored.__getitem__) if scored else None

    @property
    def margin(self) -> float | None:
        """Accuracy of the winner minus the best of the other runs (``None`` when fewer than two runs fit)."""
        values = sorted((t.metrics["accuracy"] for t in self.best.values() if t is not None), reverse=True)
        return values[0] - values[1] if len(values) > 1 else None


def budget_rows(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline], cost: str = "bitops") -> list[BudgetRow]:
    """Which run finds the most accurate candidate within each budget on ``cost``.

    The budgets are the costs of the uniform-precision baselines (a user who would otherwise deploy one format
    everywhere asks what the same cost buys), or, without baselines, three log-spaced levels between the cheapest
    and the dearest feasible trial. Uniform runs are compared too: a row a uniform run wins is a budget where
    mixed precision found nothing better.
    """
    usable_runs = {run.label: usable(run.result.trials, ["accuracy", cost]) for run in runs}
    levels = uniform_budgets(baselines, cost)
    if not levels:
        values = [t.metrics[cost] for trials in usable_runs.values() for t in trials if t.metrics[cost] > 0]
        levels = [(float(b), "log-spaced") for b in np.geomspace(min(values), max(values), 3)] if values else []
    rows = []
    for budget, label in levels:
        best = {run: max((t for t in trials if t.metrics[cost] <= budget * (1 + 1e-9)),
                         key=lambda t: t.metrics["accuracy"], default=None)
                for run, trials in usable_runs.items()}
        rows.append(BudgetRow(budget, label, best))
    return rows


def uniform_budgets(baselines: Sequence[Baseline], cost: str) -> list[tuple[float, str]]:
    """The distinct ``cost`` values of the uniform formats' best baselines, cheapest first, each labelled with the
    formats that cost it (``"uniform int4, fp4_e2m1"``: formats of equal cost share one budget)."""
    formats_at: dict[float, list[str]] = {}
    for name, trial in _best_per_format(baselines, cost):
        formats_at.setdefault(trial.metrics[cost], []).append(name)
    return [(budget, "uniform " + ", ".join(names)) for budget, names in formats_at.items()]


def _best_per_format(baselines: Sequence[Baseline], cost: str) -> list[tuple[str, Trial]]:
    """The most accurate baseline of each format that has a cost, cheapest format first."""
    best: dict[str, Trial] = {}
    for b in baselines:
        if _finite(b.trial.metrics.get(cost)) and (b.name not in best or
                                                   b.trial.metrics["accuracy"] > best[b.name].metrics["accuracy"]):
            best[b.name] = b.trial
    return sorted(best.items(), key=lambda item: item[1].metrics[cost])


def uniform_front(baselines: Sequence[Baseline], cost: str) -> list[tuple[str, Trial]]:
    """The uniform formats that are the most accurate uniform choice within their own cost, cheapest first: a
    format that a cheaper one matches or beats is not what a user would deploy, so searched candidates are compared
    with the best uniform format within each budget rather than with every format."""
    front, best = [], -math.inf
    by_cost = sorted(_best_per_format(baselines, cost), key=lambda item: (item[1].metrics[cost],
                                                                          -item[1].metrics["accuracy"]))
    for name, trial in by_cost:  # of formats with equal cost, the most accurate comes first and alone counts
        if trial.metrics["accuracy"] > best:
            front.append((name, trial))
            best = trial.metrics["accuracy"]
    return front


def _budget_ladder(feasible: Sequence[tuple[RunAnalysis, Trial]], cost: str) -> list[str]:
    """Without baselines, budgets at three log-spaced levels between the cheapest and dearest feasible trial."""
    values = [t.metrics[cost] for _, t in feasible if _finite(t.metrics.get(cost)) and t.metrics[cost] > 0]
    if not values:
        return []
    lines = []
    for budget in np.geomspace(min(values), max(values), 3):
        run, t = max(((r, t) for r, t in feasible if t.metrics.get(cost, math.inf) <= budget * (1 + 1e-9)),
                     key=lambda rt: rt[1].metrics["accuracy"])
        lines.append(f"Best accuracy at ≤ {_g(budget)} BitOps: {_pct(t.metrics['accuracy'])} "
                     f"({run.label} trial #{t.number}).")
    return lines


def _cost_suffix(trial: Trial) -> str:
    return f", {_g(trial.metrics['bitops'])} BitOps" if _finite(trial.metrics.get("bitops")) else ""


# ------------------------------------------------------------------------------------------------ fidelity
def load_fidelity(paths: Sequence[Path], notes: list[str]) -> list[dict[str, Any]]:
    """Candidates with both a one-shot and a stand-alone accuracy, from ``{"candidates": [...]}`` files."""
    records: list[dict[str, Any]] = []
    for path in paths:
        data = _read_json(path, notes, missing_ok=False)
        entries = data.get("candidates") if isinstance(data, dict) else None
        if data is not None and not isinstance(entries, list):
            notes.append(f"{path}: expected a JSON object with a \"candidates\" list; ignored")
        good = [e for e in entries or [] if isinstance(e, dict) and _finite(e.get("oneshot_accuracy"))
                and _finite(e.get("standalone_accuracy"))]
        if entries and len(good) < len(entries):
            notes.append(f"{path}: {len(entries) - len(good)} of {len(entries)} candidates lack a numeric "
                         "oneshot_accuracy or standalone_accuracy; skipped")
        records += good
    return records


def fidelity_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rank agreement of one-shot estimates with stand-alone accuracy (Kendall tau, Spearman rho); when every
    record also has its ``oneshot_loss``, the same for the loss (lower ranks higher) under ``loss_*`` keys: in the
    fidelity study the loss ranked closer to stand-alone accuracy than the accuracy did in 6 of 9 comparisons."""
    standalone = [float(r["standalone_accuracy"]) for r in records]
    result = {"n": len(records), **_rank_agreement([float(r["oneshot_accuracy"]) for r in records], standalone)}
    if records and all(_finite(r.get("oneshot_loss")) for r in records):
        loss = _rank_agreement([-float(r["oneshot_loss"]) for r in records], standalone)
        result |= {f"loss_{key}": value for key, value in loss.items()}
    return result


def _rank_agreement(scores: Sequence[float], truth: Sequence[float]) -> dict[str, float | None]:
    if len(scores) < 2:
        return {"kendall_tau": None, "kendall_p": None, "spearman_rho": None, "spearman_p": None}
    tau, rho = stats.kendalltau(scores, truth), stats.spearmanr(scores, truth)
    return {"kendall_tau": _or_none(tau.statistic), "kendall_p": _or_none(tau.pvalue),
            "spearman_rho": _or_none(rho.statistic), "spearman_p": _or_none(rho.pvalue)}


# ------------------------------------------------------------------------------------------------ helpers
def _read_json(path: Path, notes: list[str], *, missing_ok: bool = True) -> Any:
    """Parsed JSON, or ``None`` with a note when the file is unreadable (silently when merely absent)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not missing_ok:
            notes.append(f"{path}: no such file")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path}: not readable as JSON ({exc}); ignored")
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _g(value: float) -> str:
    """Three significant digits with a short exponent: ``1.56e8`` rather than ``1.56e+08``."""
    return f"{value:.3g}".replace("e+0", "e").replace("e+", "e")


def _pct(accuracy: float) -> str:
    return f"{100 * accuracy:.2f}%"
