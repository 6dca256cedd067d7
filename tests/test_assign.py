"""Format assignment of a fixed architecture: the per-layer costs add up to the cost model's totals, a peak_act
budget removes options, and the budget levels a strategy sweeps span the reachable range."""

from __future__ import annotations

import numpy as np
import pytest

from automq.cost import CostModel
from automq.errors import BudgetError
from automq.space.space import SearchSpace
from automq.strategies._assign import FormatProblem, sweep_levels
from automq.strategies._solvers import AssignmentProblem

from _spaces import SpaceFactory

SPACE_CHANGES = {
    "name": "assign",
    "dataset": {"val_size": 200},
    "formats": {
        "weights": ["int2", "int4", "int8", "fp4_e2m1", "mxfp4_e2m1"],
        "activations": ["int4", "int8", "fp8_e4m3"],
        "overrides": [{"layers": "conv_stem|classifier", "weights": ["int8"], "activations": ["int8"]}],
    },
    "search": {"eval_size": 64, "calib_size": 64},
}


@pytest.fixture(scope="module")
def space(tiny_space: SpaceFactory) -> SearchSpace:
    return tiny_space(SPACE_CHANGES)


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
        for metric, value in problem.cost(choice).items():  # per-layer sums in two orders: a rounding per layer
            assert value == pytest.approx(totals[metric], rel=len(candidate.formats) * np.finfo(np.float64).eps)
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
