"""Format-assignment integer programs: the ILP and IQP optima equal brute force on small random instances, every
solution respects its budgets, infeasible budgets raise a BudgetError naming the smallest reachable cost, and the
per-layer costs of a fixed architecture add up to the cost model's totals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from automq.cost import CostModel
from automq.errors import BudgetError
from automq.space import SearchSpace
from automq.strategies._assign import (
    AssignmentProblem,
    FormatProblem,
    local_search,
    quadratic_value,
    solve_linear,
    solve_quadratic,
    sweep_levels,
)

SPACE = {
    "name": "assign",
    "dataset": {"name": "synthetic", "input_size": 16, "in_chans": 1, "val_size": 200},
    "network": {
        "stem": {"channels": 8},
        "stages": [
            {"type": "ds", "channels": 8, "stride": 1, "depth": [1], "kernel_size": [3]},
            {"type": "ir", "channels": 16, "stride": 2, "depth": [1, 2], "kernel_size": [3, 5], "expand_ratio": [2, 3]},
        ],
        "head": {"channels": 32},
        "width_mult": [0.5, 1.0],
    },
    "formats": {
        "weights": ["int2", "int4", "int8", "fp4_e2m1", "mxfp4_e2m1"],
        "activations": ["int4", "int8", "fp8_e4m3"],
        "overrides": [{"layers": "conv_stem|classifier", "weights": ["int8"], "activations": ["int8"]}],
    },
    "objectives": [{"metric": "accuracy"}, {"metric": "bitops"}],
    "search": {"eval_size": 64, "calib_size": 64},
}


def random_problem(rng: np.random.Generator) -> AssignmentProblem:
    """2-6 layers with 1-3 options, integer costs on two metrics and a fixed offset."""
    sizes = rng.integers(1, 4, size=rng.integers(2, 7))
    n = int(sizes.sum())
    costs = {"bitops": rng.integers(1, 100, n).astype(float), "size": rng.integers(1, 50, n).astype(float)}
    return AssignmentProblem(tuple(f"l{i}" for i in range(len(sizes))), tuple(tuple(range(k)) for k in sizes),
                             costs, {"bitops": 7.0, "size": 3.0})


def random_budgets(problem: AssignmentProblem, rng: np.random.Generator) -> dict[str, float]:
    """A budget between the smallest and largest reachable value of each metric (often binding)."""
    return {m: problem.extreme_cost(m) + rng.uniform(0.1, 0.9) * (problem.extreme_cost(m, largest=True)
                                                               - problem.extreme_cost(m)) for m in problem.costs}


def brute_force(problem: AssignmentProblem, value, budgets: dict[str, float]) -> float:
    """The least ``value(choice)`` over every feasible choice (inf when none is)."""
    best = np.inf
    for choice in itertools.product(*(range(len(o)) for o in problem.options)):
        costs = problem.cost(choice)
        if all(costs[m] <= limit for m, limit in budgets.items()):
            best = min(best, value(choice))
    return best


def assert_within(costs: dict[str, float], budgets: dict[str, float]) -> None:
    assert all(costs[m] <= limit for m, limit in budgets.items()), (costs, budgets)


@pytest.mark.parametrize("seed", range(12))
def test_ilp_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(rng)
    budgets = random_budgets(problem, rng)
    objective = rng.normal(size=problem.size)
    expected = brute_force(problem, lambda c: objective[problem.flat(c)].sum(), budgets)
    if not np.isfinite(expected):  # both budgets binding at once can exclude every choice
        with pytest.raises(BudgetError, match="cannot all be met at once"):
            solve_linear(problem, objective, budgets)
        return
    solution = solve_linear(problem, objective, budgets)
    assert solution.objective == pytest.approx(expected, abs=1e-9)
    assert solution.costs == problem.cost(solution.choice)
    assert_within(solution.costs, budgets)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("psd", [False, True])
def test_iqp_equals_brute_force(seed: int, psd: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    problem = random_problem(rng)
    budgets = {"bitops": random_budgets(problem, rng)["bitops"]}
    a = rng.normal(size=(problem.size, problem.size))
    gram = a @ a.T if psd else a  # a non-symmetric G counts as its symmetric part
    expected = brute_force(problem, lambda c: quadratic_value(problem, (gram + gram.T) / 2, c), budgets)
    solution = solve_quadratic(problem, gram, budgets)
    assert solution.objective == pytest.approx(expected, abs=1e-7)
    assert_within(solution.costs, budgets)
    heuristic = local_search(problem, gram, budgets)
    assert_within(heuristic.costs, budgets)
    assert heuristic.objective >= expected - 1e-9


def test_iqp_above_the_size_limit_uses_local_search() -> None:
    rng = np.random.default_rng(7)
    problem = random_problem(rng)
    gram = rng.normal(size=(problem.size, problem.size))
    budgets = {"bitops": random_budgets(problem, rng)["bitops"]}
    solution = solve_quadratic(problem, gram, budgets, max_pair_variables=0)
    assert solution.method == "local search"
    assert_within(solution.costs, budgets)
    assert solution.objective == pytest.approx(quadratic_value(problem, (gram + gram.T) / 2, solution.choice))


def test_infeasible_budget_names_the_smallest_reachable_cost() -> None:
    problem = AssignmentProblem(("a", "b"), (("hi", "lo"), ("hi", "lo")),
                                {"bitops": np.array([8.0, 2.0, 6.0, 3.0])}, {"bitops": 10.0})
    assert problem.extreme_cost("bitops") == 15.0  # 10 + 2 + 3
    for solve in (lambda b: solve_linear(problem, np.zeros(4), b), lambda b: solve_quadratic(problem, np.eye(4), b)):
        with pytest.raises(BudgetError, match=r"bitops <= 14.*smallest bitops .* is 15"):
            solve({"bitops": 14.0})
        assert solve({"bitops": 15.0}).choice == (1, 1)
    with pytest.raises(BudgetError, match="cannot be assigned per layer"):
        solve_linear(problem, np.zeros(4), {"peak_act": 1.0})


def test_no_budget_picks_the_per_layer_best() -> None:
    problem = AssignmentProblem(("a", "b", "c"), ((0, 1), (0, 1, 2), (0,)), {"bitops": np.arange(6.0)})
    objective = np.array([0.5, 0.1, 3.0, -1.0, 2.0, 0.0])
    assert solve_linear(problem, objective, {}).choice == (1, 1, 0)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_dict(SPACE)


@pytest.mark.parametrize("options", ["joint", "weights"])
def test_format_problem_costs_add_up_to_the_cost_model(space: SearchSpace, options: str) -> None:
    arch = space.sample(3)
    formats = FormatProblem.build(space, arch, options=options)
    problem = formats.problem
    assert set(formats.fixed) == {"conv_stem", "classifier"} and "conv_stem" not in problem.layers
    model, rng = CostModel(space), np.random.default_rng(0)
    for _ in range(5):
        choice = [int(rng.integers(len(o))) for o in problem.options]
        candidate = formats.candidate(choice)
        space.validate_candidate(candidate)
        assert candidate.blocks == arch.blocks and candidate.width_mult == arch.width_mult
        totals = model.metrics(candidate)
        for metric, value in problem.cost(choice).items():
            assert value == pytest.approx(totals[metric], rel=1e-12)
    # highest precision first; "weights" keeps the activations at the menu's highest precision (int8: 8 bits,
    # first of the menu on the tie with fp8_e4m3)
    assert all(o[0] == ("int8", "int8") for o in problem.options)
    expected = 5 * 3 if options == "joint" else 5
    assert all(len(o) == expected for o in problem.options)
    if options == "weights":
        assert {a for o in problem.options for _, a in o} == {"int8"}


def test_peak_act_budget_removes_options(space: SearchSpace) -> None:
    arch = space.largest()
    full = FormatProblem.build(space, arch)
    limit = 0.75 * CostModel(space).metrics(arch)["peak_act"]
    cut = FormatProblem.build(space, arch, peak_act=limit)
    assert cut.problem.size < full.problem.size
    assert CostModel(space).metrics(cut.candidate([0] * len(cut.problem.layers)))["peak_act"] <= limit
    with pytest.raises(BudgetError, match="peak_act"):
        FormatProblem.build(space, arch, peak_act=1.0)


def test_sweep_levels_span_the_reachable_range() -> None:
    problem = AssignmentProblem(("a",), ((0, 1, 2),), {"bitops": np.array([4.0, 2.0, 1.0])}, {"bitops": 1.0})
    assert sweep_levels(problem, "bitops", 3, None) == [2.0, 3.5, 5.0]
    assert sweep_levels(problem, "bitops", 2, 4.0) == [2.0, 4.0]
    assert sweep_levels(problem, "bitops", 1, None) == [5.0]
