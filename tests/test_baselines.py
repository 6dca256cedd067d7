"""Baselines: ``uniform`` quantizes every layer alike with every format pair of the menus (nearest format where a
layer's menu lacks it), ``random`` spends exactly its evaluations on distinct feasible candidates, reproducibly."""

from __future__ import annotations

import pytest

from automq.space.candidate import Candidate
from automq.cost import CostModel
from automq.space.space import SearchSpace
from automq.strategies.baselines import RandomSearch, Uniform
from automq.search.strategy import Budget, create_strategy

from _spaces import SpaceFactory

SPACE_CHANGES = {
    "name": "baselines",
    "dataset": {"val_size": 64},
    "formats": {
        "weights": ["int4", "int8", "mxfp4_e2m1"],
        "activations": ["int8", "fp8_e4m3"],
        "overrides": [{"layers": "conv_stem|classifier", "weights": ["int8"], "activations": ["int8"]}],
    },
    "search": {"eval_size": 64, "calib_size": 64},
}


class CostOnlyEvaluator:
    """Analytic costs and a fake accuracy; counts its calls (the strategies' evaluations)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space, self.model, self.calls = space, CostModel(space), 0

    def costs(self, candidate: Candidate) -> dict[str, float]:
        return self.model.metrics(candidate)

    def __call__(self, candidate: Candidate) -> dict[str, float]:
        self.calls += 1
        return {"accuracy": 0.5, "loss": 1.0, **self.costs(candidate)}


@pytest.fixture(scope="module")
def space(tiny_space: SpaceFactory) -> SearchSpace:
    return tiny_space(SPACE_CHANGES)


def test_uniform_applies_every_pair_to_every_layer(space: SearchSpace) -> None:
    assert space.uniform_pairs() == [("int8", "int8"), ("int8", "fp8_e4m3"), ("mxfp4_e2m1", "int8"),
                                    ("mxfp4_e2m1", "fp8_e4m3"), ("int4", "int8"), ("int4", "fp8_e4m3")]
    evaluator = CostOnlyEvaluator(space)
    trials = create_strategy("uniform", archs=("largest", "smallest")).run(space, evaluator, Budget(100))
    assert len(trials) == evaluator.calls == 12
    assert [t.info["arch"] for t in trials] == ["largest"] * 6 + ["smallest"] * 6
    for trial in trials:
        space.validate_candidate(trial.candidate)
        w_fmt, a_fmt = trial.info["w_fmt"], trial.info["a_fmt"]
        assert trial.info["format"] == f"{w_fmt}/{a_fmt}"
        for name, w, a in trial.candidate.formats:
            if name in ("conv_stem", "classifier"):  # their menu is int8 only
                assert (w, a) == ("int8", "int8")
                assert (name in trial.info["clamped_layers"]) == ((w_fmt, a_fmt) != ("int8", "int8"))
            else:
                assert (w, a) == (w_fmt, a_fmt)
        expected = space.largest() if trial.info["arch"] == "largest" else space.smallest()
        assert trial.candidate.blocks == expected.blocks
    bitops = [t.metrics["bitops"] for t in trials[:6]]
    assert bitops[0] == max(bitops) and bitops[-1] == min(bitops)


def test_uniform_stops_at_the_evaluation_budget(space: SearchSpace) -> None:
    trials = Uniform().run(space, CostOnlyEvaluator(space), Budget(4))
    assert [t.info["format"] for t in trials] == ["int8/int8", "int8/fp8_e4m3", "mxfp4_e2m1/int8",
                                                  "mxfp4_e2m1/fp8_e4m3"]
    with pytest.raises(ValueError, match="archs"):
        Uniform(archs=("medium",))


def test_random_spends_its_evaluations_on_distinct_feasible_candidates(space: SearchSpace,
                                                                      tiny_space: SpaceFactory) -> None:
    model = CostModel(space)
    limit = 0.5 * model.metrics(space.largest())["bitops"]
    budgeted = tiny_space(SPACE_CHANGES, budgets={"bitops": limit})
    evaluator = CostOnlyEvaluator(budgeted)
    trials = create_strategy("random").run(budgeted, evaluator, Budget(15), seed=3)
    assert len(trials) == evaluator.calls == 15
    assert len({t.candidate.id for t in trials}) == 15
    assert all(t.status == "ok" and t.metrics["bitops"] <= limit for t in trials)
    assert any(t.info["draws"] > 1 for t in trials)  # the budget did reject some draws
    for trial in trials:
        budgeted.validate_candidate(trial.candidate)
    again = RandomSearch().run(budgeted, CostOnlyEvaluator(budgeted), Budget(15), seed=3)
    other = RandomSearch().run(budgeted, CostOnlyEvaluator(budgeted), Budget(15), seed=4)
    assert [t.candidate for t in again] == [t.candidate for t in trials]
    assert [t.candidate for t in other] != [t.candidate for t in trials]


def test_random_records_an_infeasible_trial_when_draws_run_out(space: SearchSpace, tiny_space: SpaceFactory) -> None:
    smallest = CostModel(space).metrics(space.smallest())["bitops"]
    tight = tiny_space(SPACE_CHANGES, budgets={"bitops": smallest})  # only the smallest fits
    evaluator = CostOnlyEvaluator(tight)
    trials = RandomSearch(max_draws=3).run(tight, evaluator, Budget(2), seed=0)
    assert [t.status for t in trials] == ["infeasible", "infeasible"] and evaluator.calls == 0
    assert "bitops" in trials[0].error
