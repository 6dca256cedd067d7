"""automq.report.comparison.budget_rows and key_findings: the most accurate trial of every run within each uniform
baseline's BitOps, and mixed precision against the best uniform format, checked against hand-worked small cases."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from automq.report.comparison import DEFAULT_OBJECTIVES, Baseline, RunAnalysis, budget_rows, key_findings
from automq.search.results import SearchResult
from automq.search.trial import Trial

from _spaces import SpaceFactory

# differences and log-spaced values of a few float64 operations on values of order 1 (relative for budgets)
TOLERANCE = 16 * sys.float_info.epsilon


@pytest.fixture(scope="module")
def candidate(tiny_space: SpaceFactory):
    return tiny_space().largest()


def trial(candidate, number: int, accuracy: float, bitops: float, status: str = "ok") -> Trial:
    return Trial(number, candidate, {"accuracy": accuracy, "bitops": bitops}, status)


def run(label: str, trials: list[Trial]) -> RunAnalysis:
    result = SearchResult(Path(label), {"strategy": label}, trials)
    return RunAnalysis(label, result, DEFAULT_OBJECTIVES, {"bitops": 1.0}, [], 0.0, [])


def test_each_uniform_budget_gets_the_best_trial_per_run_and_the_winner(candidate) -> None:
    int4, fp4, int8 = (trial(candidate, 0, 0.80, 40.0), trial(candidate, 1, 0.79, 40.0), trial(candidate, 2, 0.85, 100.0))
    uniform = run("uniform", [int4, fp4, int8])
    mixed = run("tune", [trial(candidate, 0, 0.83, 39.0), trial(candidate, 1, 0.90, 60.0),
                         trial(candidate, 2, 0.99, 30.0, status="infeasible"),  # never counts
                         trial(candidate, 3, 0.84, 100.0)])
    baselines = [Baseline("int4", "uniform", int4), Baseline("fp4_e2m1", "uniform", fp4),
                 Baseline("int8", "uniform", int8)]
    rows = budget_rows([uniform, mixed], baselines)
    assert [(r.budget, r.label) for r in rows] == [(40.0, "uniform int4, fp4_e2m1"), (100.0, "uniform int8")]
    assert rows[0].best == {"uniform": int4, "tune": mixed.result.trials[0]}
    assert rows[0].winner == "tune" and rows[0].margin == pytest.approx(0.03, abs=TOLERANCE)
    assert rows[1].best["tune"] is mixed.result.trials[1] and rows[1].margin == pytest.approx(0.05, abs=TOLERANCE)


def test_a_run_with_nothing_within_a_budget_is_left_blank(candidate) -> None:
    low = trial(candidate, 0, 0.7, 10.0)
    rows = budget_rows([run("uniform", [low]), run("ssps", [trial(candidate, 0, 0.9, 50.0)])],
                       [Baseline("int2", "uniform", low)])
    assert rows[0].best["ssps"] is None and rows[0].winner == "uniform" and rows[0].margin is None


def test_without_baselines_three_log_spaced_budgets_span_the_trials(candidate) -> None:
    rows = budget_rows([run("random", [trial(candidate, 0, 0.6, 10.0), trial(candidate, 1, 0.8, 1000.0)])], [])
    assert [r.budget for r in rows] == pytest.approx([10.0, 100.0, 1000.0], rel=TOLERANCE)
    assert [r.best["random"].metrics["accuracy"] for r in rows] == [0.6, 0.6, 0.8]
    assert budget_rows([run("random", [])], []) == []


def test_budgets_that_add_no_searched_candidate_share_one_finding(candidate) -> None:
    int2, int4, int8 = (trial(candidate, 0, 0.82, 25.0), trial(candidate, 1, 0.84, 50.0),
                        trial(candidate, 2, 0.86, 100.0))
    baselines = [Baseline("int2", "uniform", int2), Baseline("int4", "uniform", int4),
                 Baseline("int8", "uniform", int8)]
    (first, w_fmt, a_fmt), *rest = candidate.formats
    mixed = dataclasses.replace(candidate, formats=((first, "int4" if w_fmt != "int4" else "int8", a_fmt), *rest))
    findings = key_findings([run("uniform", [int2, int4, int8]), run("limpq", [trial(mixed, 0, 0.83, 20.0)])],
                            baselines)
    assert [f for f in findings if f.startswith("At ")] == [
        "At ≤ 25 BitOps (best uniform format: int2, 82.00%), the best searched candidate reaches 83.00% "
        "(+1.00 points; limpq trial #0, 20 BitOps).",
        "At the 2 budgets from 50 to 100 BitOps (best uniform 84.00%-86.00%), the best searched candidate is still "
        "limpq trial #0 (83.00%), from the budget below.",
    ]


def test_findings_compare_mixed_precision_with_the_best_uniform_format_within_each_budget(candidate) -> None:
    # int4 is dominated by the cheaper int2 (more accurate for less), fp8 by int8 at the same cost, so no finding
    # is measured against either
    int2, int4, int8, fp8 = (trial(candidate, 0, 0.82, 25.0), trial(candidate, 1, 0.80, 40.0),
                             trial(candidate, 2, 0.85, 100.0), trial(candidate, 3, 0.84, 100.0))
    baselines = [Baseline("int2", "uniform", int2), Baseline("int4", "uniform", int4),
                 Baseline("fp8_e4m3", "uniform", fp8), Baseline("int8", "uniform", int8)]
    (first, w_fmt, a_fmt), *middle, (last, _, last_a) = candidate.formats
    assert w_fmt != "int4"  # the largest candidate is uniform: one layer changed makes it mixed precision
    mixed_first = dataclasses.replace(candidate, formats=((first, "int4", a_fmt), *middle, (last, w_fmt, last_a)))
    mixed_last = dataclasses.replace(candidate, formats=((first, w_fmt, a_fmt), *middle, (last, "int4", last_a)))
    # the int8 baseline's candidate is mixed by its formats, as the uniform strategy's candidates are when a
    # layer's menu forces another format; a strategy that finds that same candidate found no mixed precision
    int8 = dataclasses.replace(int8, candidate=mixed_last)
    baselines[-1] = Baseline("int8", "uniform", int8)
    mixed = run("limpq", [trial(mixed_first, 0, 0.81, 24.0), trial(mixed_first, 1, 0.86, 70.0),
                          trial(mixed_last, 2, 0.90, 90.0)])
    findings = key_findings([run("uniform", [int2, int4, int8, fp8]), mixed], baselines)
    comparisons = [f for f in findings if f.startswith("At ≤")]
    assert comparisons == [
        "At ≤ 25 BitOps (best uniform format: int2, 82.00%), the best searched candidate reaches 81.00% "
        "(-1.00 points; limpq trial #0, 24 BitOps).",
        "At ≤ 100 BitOps (best uniform format: int8, 85.00%), the best searched candidate reaches 86.00% "
        "(+1.00 points; limpq trial #1, 70 BitOps).",
    ]
