"""Choosing one option per layer under additive budgets: the integer programs behind LIMPQ and CLADO.

An :class:`AssignmentProblem` holds, for every layer, its options (format choices) and what each option adds to
every cost metric; budgets cap the sums. Two objectives over the one-hot choice vector ``x`` are solved with
:func:`scipy.optimize.milp` (HiGHS):

* linear, ``c^T x`` (LIMPQ, :func:`solve_linear`): a multiple-choice knapsack ILP, solved exactly;
* quadratic, ``x^T G x`` (CLADO, :func:`solve_quadratic`): each product ``x_a x_b`` of options of two different
  layers becomes a continuous ``y_ab >= 0`` tied to ``x`` by the one-hot reformulation-linearisation equalities
  ``sum_{b in layer j} y_ab = x_a`` (and symmetrically), which force ``y_ab = x_a x_b`` exactly for one-hot
  ``x`` and relax more tightly than the textbook ``y <= x_a, y <= x_b, y >= x_a + x_b - 1``.

The quadratic MILP is hard for HiGHS beyond toy sizes (dense projected ``G``: 55 options take ~10-20 s on one
core), so :func:`solve_quadratic` always runs :func:`local_search` too (greedy repair into the budget, or, when
that one-layer-at-a-time repair gets stuck on budgets that are only jointly tight, a feasible start from the exact
linear ILP; then best-improvement single- and two-layer moves), returns it at once when it reaches the PSD lower
bound 0, uses it instead of the MILP above ``max_pair_variables`` or when HiGHS finds nothing in its time limit,
and otherwise returns the better of the two; :attr:`Solution.method` records which. Every solution is re-checked
against the budgets in exact arithmetic.

Nothing here knows about networks or formats: :mod:`automq.strategies._assign` builds the problem of an
architecture.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, csr_array

from automq.errors import BudgetError

logger = logging.getLogger(__name__)

# Above this many pair variables the quadratic MILP is not attempted. The weight formats of mpq_only's MobileNetV2
# (36 layers, 168 options) need ~13,600; with 6 options on 53 layers (~50,000) HiGHS found nothing better than the
# local search within a minute.
MAX_PAIR_VARIABLES = 20_000
# Re-solves with tightened budgets when a solution breaks a budget in exact arithmetic: HiGHS accepts rows
# violated by ~1e-7 of their (scaled) bound.
_RETRIES = 3


@dataclass(frozen=True)
class AssignmentProblem:
    """Choose exactly one option per layer; each option adds a fixed amount to every cost metric.

    ``options[i]`` labels the options of layer ``i`` (for example ``(w_fmt, a_fmt)`` pairs); ``costs[metric]`` is
    a flat array over all options, layer after layer, in that order; ``offsets[metric]`` is the part of the cost
    no choice changes (layers that are not assigned), so that budgets refer to whole-model costs.
    """

    layers: tuple[str, ...]
    options: tuple[tuple[Hashable, ...], ...]
    costs: Mapping[str, np.ndarray]
    offsets: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.options) or any(len(o) == 0 for o in self.options):
            raise ValueError("AssignmentProblem: every layer needs a non-empty tuple of options")
        costs = {m: np.asarray(c, dtype=np.float64) for m, c in self.costs.items()}
        for metric, cost in costs.items():
            if cost.shape != (self.size,):
                raise ValueError(f"AssignmentProblem.costs[{metric!r}]: expected shape ({self.size},), "
                                 f"got {cost.shape}")
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "offsets", {m: float(self.offsets.get(m, 0.0)) for m in costs})

    @property
    def size(self) -> int:
        """Total number of options (the length of the one-hot vector)."""
        return sum(len(o) for o in self.options)

    @property
    def starts(self) -> np.ndarray:
        """Flat index of the first option of every layer."""
        return np.concatenate([[0], np.cumsum([len(o) for o in self.options])[:-1]]).astype(np.int64)

    @property
    def layer_of(self) -> np.ndarray:
        """Layer index of every flat option."""
        return np.repeat(np.arange(len(self.layers)), [len(o) for o in self.options])

    def flat(self, choice: Sequence[int]) -> np.ndarray:
        """Flat option indices of a choice (one option index per layer)."""
        return self.starts + np.asarray(choice, dtype=np.int64)

    def cost(self, choice: Sequence[int]) -> dict[str, float]:
        """Whole-model cost of every metric for a choice."""
        idx = self.flat(choice)
        return {m: self.offsets[m] + float(c[idx].sum()) for m, c in self.costs.items()}

    def extreme_cost(self, metric: str, *, largest: bool = False) -> float:
        """The smallest (or largest) whole-model ``metric`` any choice reaches."""
        pick = np.maximum if largest else np.minimum
        return self.offsets[metric] + float(pick.reduceat(self.costs[metric], self.starts).sum())

    def labels(self, choice: Sequence[int]) -> dict[str, Hashable]:
        """``{layer: option label}`` of a choice."""
        return {layer: opts[k] for layer, opts, k in zip(self.layers, self.options, choice)}


@dataclass(frozen=True)
class Solution:
    """The chosen option index per layer, its objective and costs, and how it was found."""

    choice: tuple[int, ...]
    objective: float
    costs: dict[str, float]
    method: str
    seconds: float


def check_budgets(problem: AssignmentProblem, budgets: Mapping[str, float]) -> None:
    """Raise :class:`BudgetError` naming the smallest reachable cost when a budget is below it."""
    unknown = sorted(set(budgets) - set(problem.costs))
    if unknown:
        raise BudgetError(
            f"budgets on {unknown} cannot be assigned per layer; supported metrics: {sorted(problem.costs)}"
        )
    for metric, limit in budgets.items():
        smallest = problem.extreme_cost(metric)
        if smallest > limit:
            raise BudgetError(
                f"budget {metric} <= {limit:.6g} is infeasible: the smallest {metric} reachable on this architecture "
                f"with its format menus is {smallest:.6g}; raise the {metric} budget to at least {smallest:.6g} "
                "or allow lower-precision formats"
            )


def solve_linear(
    problem: AssignmentProblem, objective: np.ndarray, budgets: Mapping[str, float], *, time_limit: float = 60.0
) -> Solution:
    """Minimise ``sum_i objective[x_i]`` under ``budgets`` exactly (multiple-choice knapsack ILP)."""
    objective = np.asarray(objective, dtype=np.float64)
    if objective.shape != (problem.size,):
        raise ValueError(f"objective: expected shape ({problem.size},), got {objective.shape}")
    return _solve_milp(problem, objective, None, budgets, time_limit)


def solve_quadratic(
    problem: AssignmentProblem,
    gram: np.ndarray,
    budgets: Mapping[str, float],
    *,
    time_limit: float = 60.0,
    max_pair_variables: int = MAX_PAIR_VARIABLES,
) -> Solution:
    """Minimise ``x^T G x`` over one-hot choices under ``budgets``.

    :func:`local_search` runs first; when ``G`` is positive semi-definite and it reaches 0, that is optimal.
    Otherwise the exact MILP (``G`` scaled to unit magnitude for HiGHS) is used up to ``max_pair_variables``
    pair variables; above that, or when HiGHS finds no incumbent within ``time_limit``, the local-search result
    is returned; when HiGHS stops at the time limit with an unproven incumbent, the better of the two.
    ``method`` says which.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.shape != (problem.size, problem.size):
        raise ValueError(f"G: expected shape ({problem.size}, {problem.size}), got {gram.shape}")
    start = time.perf_counter()
    gram = (gram + gram.T) / 2
    scale = max(float(np.abs(gram).max()), 1e-300)
    heuristic = local_search(problem, gram, budgets, time_limit=time_limit)
    if heuristic.objective <= 1e-12 * scale and np.linalg.eigvalsh(gram)[0] >= -1e-9 * scale:
        # G is PSD, so x^T G x >= 0: an assignment of value 0 is optimal, no need to prove it by branching
        return dataclasses.replace(heuristic, method="local search (optimal: PSD lower bound 0)")
    pairs = _cross_pairs(problem)
    if len(pairs[0]) > max_pair_variables:
        logger.info("IQP has %d pair variables > %d: using local search", len(pairs[0]), max_pair_variables)
        return heuristic
    try:
        exact = _solve_milp(problem, np.diag(gram) / scale, (gram / scale, pairs), budgets, time_limit)
    except TimeoutError as exc:
        logger.warning("%s; using local search", exc)
        # the time spent waiting for HiGHS is part of what this solution cost
        return dataclasses.replace(heuristic, method=f"local search ({exc})", seconds=time.perf_counter() - start)
    exact = dataclasses.replace(exact, objective=exact.objective * scale)
    if exact.method == "milp":
        return exact
    best = min(exact, heuristic, key=lambda solution: solution.objective)
    return dataclasses.replace(best, seconds=time.perf_counter() - start)


def quadratic_value(problem: AssignmentProblem, gram: np.ndarray, choice: Sequence[int]) -> float:
    """``x^T G x`` for the one-hot vector of ``choice``."""
    idx = problem.flat(choice)
    return float(gram[np.ix_(idx, idx)].sum())


def _cross_pairs(problem: AssignmentProblem) -> tuple[np.ndarray, np.ndarray]:
    """All option pairs ``(a, b)``, ``a < b``, that belong to different layers (the ``y_ab`` variables)."""
    layer = problem.layer_of
    a, b = np.triu_indices(problem.size, k=1)
    keep = layer[a] != layer[b]
    return a[keep], b[keep]


def _solve_milp(
    problem: AssignmentProblem,
    linear: np.ndarray,
    quadratic: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None,
    budgets: Mapping[str, float],
    time_limit: float,
) -> Solution:
    check_budgets(problem, budgets)
    n = problem.size
    c, rows = linear, []
    if quadratic is not None:
        gram, (pa, pb) = quadratic
        c = np.concatenate([linear, 2 * gram[pa, pb]])
        rows.append(_pair_rows(problem, pa, pb))
    n_vars = len(c)
    rows.append(_one_hot_rows(problem, n_vars))
    integrality = np.zeros(n_vars)
    integrality[:n] = 1
    limits = dict(budgets)
    start = time.perf_counter()
    for _ in range(_RETRIES):
        constraints = [*rows, *_budget_rows(problem, limits, n_vars)]
        result = milp(c, integrality=integrality, bounds=Bounds(0, 1), constraints=constraints,
                      options={"time_limit": time_limit})
        if result.x is None:
            if result.status == 1:
                raise TimeoutError(f"HiGHS found no assignment within {time_limit:g} s")
            _raise_jointly_infeasible(problem, budgets)
        choice = _decode(problem, result.x[:n])
        costs = problem.cost(choice)
        excess = {m: costs[m] - budgets[m] for m in budgets if costs[m] > budgets[m]}
        if not excess:
            break
        # Accepted within HiGHS's feasibility tolerance but over budget in exact arithmetic: tighten and re-solve.
        limits = {m: limits[m] - 2 * excess.get(m, 0.0) for m in limits}
    else:
        _raise_jointly_infeasible(problem, budgets)
    seconds = time.perf_counter() - start
    method = "milp" if result.status == 0 else f"milp (time limit, gap {result.mip_gap:.2g})"
    value = _objective(problem, linear, quadratic, choice)
    logger.info("%s solved %d layers x %d options in %.3f s", method, len(problem.layers), n, seconds)
    return Solution(tuple(choice), value, costs, method, seconds)


def _objective(
    problem: AssignmentProblem,
    linear: np.ndarray,
    quadratic: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None,
    choice: Sequence[int],
) -> float:
    if quadratic is not None:
        return quadratic_value(problem, quadratic[0], choice)
    return float(linear[problem.flat(choice)].sum())


def _one_hot_rows(problem: AssignmentProblem, n_vars: int) -> LinearConstraint:
    n = problem.size
    matrix = coo_array((np.ones(n), (problem.layer_of, np.arange(n))), shape=(len(problem.layers), n_vars))
    return LinearConstraint(csr_array(matrix), 1, 1)


def _pair_rows(problem: AssignmentProblem, pa: np.ndarray, pb: np.ndarray) -> LinearConstraint:
    """``sum_{b in layer j} y_ab - x_a = 0`` for every option ``a`` and every other layer ``j`` (both sides)."""
    n, layer, n_layers = problem.size, problem.layer_of, len(problem.layers)
    y = n + np.arange(len(pa))
    # One row per (option, other layer): the row of pair (a, b) is (a, layer[b]) for a and (b, layer[a]) for b.
    row_a = pa * n_layers + layer[pb]
    row_b = pb * n_layers + layer[pa]
    keys, rows = np.unique(np.concatenate([row_a, row_b]), return_inverse=True)
    option_of_row = keys // n_layers
    r = np.concatenate([rows, np.arange(len(keys))])
    cols = np.concatenate([y, y, option_of_row])
    vals = np.concatenate([np.ones(2 * len(pa)), -np.ones(len(keys))])
    matrix = coo_array((vals, (r, cols)), shape=(len(keys), n + len(pa)))
    return LinearConstraint(csr_array(matrix), 0, 0)


def _budget_rows(problem: AssignmentProblem, limits: Mapping[str, float], n_vars: int) -> list[LinearConstraint]:
    rows = []
    for metric, limit in limits.items():
        cost = problem.costs[metric]
        # Scaled to O(1) so that HiGHS's absolute feasibility tolerance is relative to the model's cost.
        scale = max(float(np.abs(cost).max()), 1e-300)
        row = np.zeros(n_vars)
        row[: problem.size] = cost / scale
        rows.append(LinearConstraint(row[None, :], -np.inf, (limit - problem.offsets[metric]) / scale))
    return rows


def _decode(problem: AssignmentProblem, x: np.ndarray) -> list[int]:
    return [int(np.argmax(x[s : s + len(o)])) for s, o in zip(problem.starts, problem.options)]


def _raise_jointly_infeasible(problem: AssignmentProblem, budgets: Mapping[str, float]) -> None:
    smallest = ", ".join(f"{m} >= {problem.extreme_cost(m):.6g}" for m in budgets)
    raise BudgetError(
        f"the budgets {dict(budgets)} cannot all be met at once on this architecture, although each alone can "
        f"(smallest reachable: {smallest}); relax one of them"
    )


def local_search(
    problem: AssignmentProblem,
    gram: np.ndarray,
    budgets: Mapping[str, float],
    *,
    max_rounds: int = 10_000,
    time_limit: float = 60.0,
) -> Solution:
    """Heuristic for ``min x^T G x`` under budgets: start from the per-layer best option, repair greedily into
    the budget (each step takes the move with the least objective increase per unit of budget excess removed),
    then take best-improvement single-layer or two-layer moves that stay within budget until none improves.

    With several budgets the greedy repair can get stuck although feasible choices exist (every single-layer
    move that lowers one excess raises another); it then starts instead from the exact linear ILP's choice
    minimising the diagonal of ``G`` (``time_limit`` bounds that ILP), so any instance with a feasible choice
    gets one, and only jointly infeasible budgets raise :class:`BudgetError`."""
    check_budgets(problem, budgets)
    start = time.perf_counter()
    gram = (gram + gram.T) / 2
    state = _SearchState(problem, gram, budgets)
    if not state.repair():
        state = _SearchState(problem, gram, budgets, start=_feasible_start(problem, gram, budgets, time_limit))
    for _ in range(max_rounds):
        if not state.improve():
            break
    seconds = time.perf_counter() - start
    choice = state.choice()
    logger.info("local search over %d layers finished in %.3f s", len(problem.layers), seconds)
    return Solution(tuple(choice), quadratic_value(problem, gram, choice), problem.cost(choice), "local search",
                    seconds)


def _feasible_start(
    problem: AssignmentProblem, gram: np.ndarray, budgets: Mapping[str, float], time_limit: float
) -> list[int]:
    """A choice within every budget, from the linear ILP on the diagonal of ``G`` (exact, so it finds one
    whenever one exists; it raises the jointly-infeasible :class:`BudgetError` otherwise)."""
    try:
        return list(solve_linear(problem, np.diag(gram), budgets, time_limit=time_limit).choice)
    except TimeoutError as exc:
        raise BudgetError(
            f"no assignment within the budgets {dict(budgets)} was found ({exc}); relax a budget"
        ) from None


class _SearchState:
    """One-hot state with ``s = G x`` kept current, so that the objective change of a move is O(1).

    It starts from ``start`` (one option index per layer) or, by default, from every layer's best option on the
    diagonal of ``G``."""

    def __init__(
        self,
        problem: AssignmentProblem,
        gram: np.ndarray,
        budgets: Mapping[str, float],
        start: Sequence[int] | None = None,
    ) -> None:
        self.problem, self.gram, self.budgets = problem, gram, dict(budgets)
        self.metrics = list(budgets)
        self.cost = np.stack([problem.costs[m] for m in self.metrics]) if self.metrics else np.zeros((0, problem.size))
        self.room = np.array([budgets[m] - problem.offsets[m] for m in self.metrics])
        self.layer = problem.layer_of
        if start is None:
            diag = np.diag(gram)
            start = [int(np.argmin(diag[s : s + len(o)])) for s, o in zip(problem.starts, problem.options)]
        self.chosen = problem.flat(start)
        self.s = gram[:, self.chosen].sum(axis=1)
        self.pair_a, self.pair_b = _cross_pairs(problem)  # two-layer moves: destinations in different layers

    def choice(self) -> list[int]:
        return list(self.chosen - self.problem.starts)

    def _moves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every single-layer move ``old -> new``: objective change and cost change per metric."""
        new = np.arange(self.problem.size)
        old = self.chosen[self.layer]
        g = self.gram
        delta = 2 * (self.s[new] - self.s[old]) + g[new, new] - 2 * g[new, old] + g[old, old]
        return old, delta, self.cost[:, new] - self.cost[:, old]

    def _apply(self, *moves: tuple[int, int]) -> None:
        for old, new in moves:
            self.chosen[self.layer[new]] = new
            self.s += self.gram[:, new] - self.gram[:, old]

    def _excess(self, extra: np.ndarray | float = 0.0) -> np.ndarray:
        used = self.cost[:, self.chosen].sum(axis=1, keepdims=True) + extra
        return np.maximum(used - self.room[:, None], 0).sum(axis=0)

    def repair(self) -> bool:
        """Move greedily into the budgets; False when no single-layer move lowers the total excess any more."""
        while self._excess()[0] > 0:
            old, delta, dcost = self._moves()
            gain = self._excess()[0] - self._excess(dcost)
            ratio = np.where(gain > 0, np.maximum(delta, 0) / np.maximum(gain, 1e-300), np.inf)
            best = int(np.argmin(ratio))
            if not np.isfinite(ratio[best]):
                return False
            self._apply((int(old[best]), best))
        return True

    def improve(self) -> bool:
        old, delta, dcost = self._moves()
        base = self.cost[:, self.chosen].sum(axis=1, keepdims=True)
        fits = np.all(base + dcost <= self.room[:, None], axis=0)
        single = np.where(fits, delta, np.inf)
        # Two moves in different layers: both objective deltas plus their interaction term.
        g, a, b = self.gram, self.pair_a, self.pair_b
        pair = delta[a] + delta[b] + 2 * (g[a, b] - g[a, old[b]] - g[old[a], b] + g[old[a], old[b]])
        pair_fits = np.all(base + dcost[:, a] + dcost[:, b] <= self.room[:, None], axis=0)
        pair = np.where(pair_fits, pair, np.inf)
        best_single = int(np.argmin(single))
        best_pair = int(np.argmin(pair)) if len(pair) else -1
        if best_pair >= 0 and pair[best_pair] < min(single[best_single], -1e-12):
            self._apply((int(old[a[best_pair]]), int(a[best_pair])), (int(old[b[best_pair]]), int(b[best_pair])))
            return True
        if single[best_single] < -1e-12:
            self._apply((int(old[best_single]), best_single))
            return True
        return False
