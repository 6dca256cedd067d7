"""Integer programs of a per-layer choice: the ILP and IQP optima equal brute force on small random instances,
every solution respects its budgets, and infeasible budgets raise a BudgetError naming the smallest reachable
cost."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from automq.errors import BudgetError
from automq.strategies import _solvers
from automq.strategies._solvers import AssignmentProblem, local_search, solve_linear, solve_quadratic

EPS64 = np.finfo(np.float64).eps


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


def one_hot_quadratic(problem: AssignmentProblem, gram: np.ndarray, choice) -> float:
    """``x^T G x`` with ``x`` the one-hot vector of ``choice`` written out (the solvers' objective)."""
    x = np.zeros(problem.size)
    x[problem.flat(choice)] = 1.0
    return float(x @ gram @ x)


def sum_tolerance(terms: np.ndarray, roundings: int = 1) -> float:
    """Float64 error bound of a sum of some of ``terms`` in any order: ``roundings`` of eps/2 per term (the
    additions, and any scaling of each term), relative to the largest sum of magnitudes, with a factor 2."""
    return roundings * EPS64 * float(np.abs(terms).sum())


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
    assert solution.objective == pytest.approx(expected, abs=sum_tolerance(objective))
    assert solution.costs == problem.cost(solution.choice)
    assert_within(solution.costs, budgets)


def assert_exact_and_local_search_agree_with_brute_force(problem, gram, budgets) -> float:
    """The exact solver reaches the brute-force optimum of x^T G x and the local search stays feasible and no
    better than it; returns the optimum."""
    symmetric = (gram + gram.T) / 2  # a non-symmetric G counts as its symmetric part
    expected = brute_force(problem, lambda c: one_hot_quadratic(problem, symmetric, c), budgets)
    # the MILP scales G to unit magnitude and back: two more roundings per term
    tolerance = sum_tolerance(symmetric, roundings=3)
    solution = solve_quadratic(problem, gram, budgets)
    assert solution.objective == pytest.approx(expected, abs=tolerance)
    assert_within(solution.costs, budgets)
    heuristic = local_search(problem, gram, budgets)
    assert_within(heuristic.costs, budgets)
    assert heuristic.objective >= expected - tolerance
    return expected


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("psd", [False, True])
def test_iqp_equals_brute_force(seed: int, psd: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    problem = random_problem(rng)
    budgets = {"bitops": random_budgets(problem, rng)["bitops"]}
    a = rng.normal(size=(problem.size, problem.size))
    gram = a @ a.T if psd else a  # a non-symmetric G counts as its symmetric part
    assert_exact_and_local_search_agree_with_brute_force(problem, gram, budgets)


def test_iqp_above_the_size_limit_uses_local_search() -> None:
    rng = np.random.default_rng(7)
    problem = random_problem(rng)
    gram = rng.normal(size=(problem.size, problem.size))
    budgets = {"bitops": random_budgets(problem, rng)["bitops"]}
    solution = solve_quadratic(problem, gram, budgets, max_pair_variables=0)
    assert solution.method == "local search"
    assert_within(solution.costs, budgets)
    symmetric = (gram + gram.T) / 2
    expected = one_hot_quadratic(problem, symmetric, solution.choice)
    assert solution.objective == pytest.approx(expected, abs=sum_tolerance(symmetric))


def test_a_milp_timeout_falls_back_to_local_search_and_counts_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    problem = random_problem(rng)
    gram = rng.normal(size=(problem.size, problem.size))
    budgets = {"bitops": random_budgets(problem, rng)["bitops"]}

    def slow_timeout(*_args, **_kwargs):
        time.sleep(0.2)
        raise TimeoutError("HiGHS found no assignment within 0.2 s")

    monkeypatch.setattr(_solvers, "_solve_milp", slow_timeout)
    solution = solve_quadratic(problem, gram, budgets)
    assert solution.method == "local search (HiGHS found no assignment within 0.2 s)"
    assert solution.seconds >= 0.2
    assert solution.choice == local_search(problem, (gram + gram.T) / 2, budgets).choice
    assert_within(solution.costs, budgets)


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


def multi_budget_problem(rng: np.random.Generator, n_metrics: int) -> tuple[AssignmentProblem, dict[str, float]]:
    """3-5 layers with 2-3 options and ``n_metrics`` independent integer cost metrics, with every budget equal to
    the cost of one random choice: each budget alone leaves room, but together they admit only that choice and
    the choices below it on every metric at once (jointly tight)."""
    sizes = rng.integers(2, 4, size=rng.integers(3, 6))
    n = int(sizes.sum())
    metrics = ("bitops", "size", "peak_act")[:n_metrics]
    problem = AssignmentProblem(tuple(f"l{i}" for i in range(len(sizes))), tuple(tuple(range(k)) for k in sizes),
                                {m: rng.integers(1, 100, n).astype(float) for m in metrics})
    return problem, problem.cost([int(rng.integers(k)) for k in sizes])


# Seeds 16 (2 budgets), 39 and 41 (3 budgets) are instances where the greedy one-layer repair gets stuck.
@pytest.mark.parametrize("seed", range(60))
def test_iqp_with_jointly_tight_budgets_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem, budgets = multi_budget_problem(rng, n_metrics=2 + seed % 2)
    gram = rng.normal(size=(problem.size, problem.size))
    expected = assert_exact_and_local_search_agree_with_brute_force(problem, gram, budgets)
    assert np.isfinite(expected)  # the choice that set the budgets is feasible


@pytest.mark.parametrize("seed", range(20))
def test_ilp_with_three_budgets_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    problem, budgets = multi_budget_problem(rng, n_metrics=3)
    objective = rng.normal(size=problem.size)
    expected = brute_force(problem, lambda c: objective[problem.flat(c)].sum(), budgets)
    solution = solve_linear(problem, objective, budgets)
    assert solution.objective == pytest.approx(expected, abs=sum_tolerance(objective))
    assert_within(solution.costs, budgets)


def test_jointly_infeasible_budgets_raise_one_budget_error() -> None:
    # Option 0 is cheap in bitops, option 1 in size: each budget alone is met, both together by no choice.
    problem = AssignmentProblem(("a", "b"), ((0, 1), (0, 1)),
                                {"bitops": np.array([1.0, 10.0, 1.0, 10.0]), "size": np.array([10.0, 1.0, 10.0, 1.0])})
    for solve in (lambda: local_search(problem, np.eye(4), {"bitops": 5.0, "size": 5.0}),
                  lambda: solve_quadratic(problem, np.eye(4), {"bitops": 5.0, "size": 5.0})):
        with pytest.raises(BudgetError, match="cannot all be met at once"):
            solve()
