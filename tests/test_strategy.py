import json

import numpy as np
import pytest

from automq.cost import CostModel
from automq.search.results import SearchLog, load_trials
from automq.search.strategy import Budget, TrialRecorder, budget_violations, create_strategy, evaluate_candidate
from automq.search.trial import Trial

from _spaces import DS_STAGE, IR_STAGE

SPACE_CHANGES = {
    "network": {"stages": [DS_STAGE, {**IR_STAGE, "expand_ratio": [3, 6]}], "width_mult": [0.75, 1.0]},
    "formats": {"weights": ["int4", "int8"], "activations": ["int8"]},
}


@pytest.fixture(scope="module")
def space(tiny_space):
    return tiny_space(SPACE_CHANGES)


class CountingEvaluator:
    """Analytic costs plus a fake accuracy; counts how often accuracy was asked for."""

    def __init__(self, space, fail=False):
        self.space = space
        self.model = CostModel(space)
        self.calls = 0
        self.fail = fail

    def costs(self, candidate):
        return self.model.metrics(candidate)

    def __call__(self, candidate):
        self.calls += 1
        if self.fail:
            raise RuntimeError("evaluation exploded")
        return {"accuracy": 0.5, "loss": 1.0, **self.costs(candidate)}


def test_feasible_candidate_is_scored(space):
    evaluator = CountingEvaluator(space)
    trial = evaluate_candidate(3, space.smallest(), evaluator, strategy="test", info={"k": 1})
    assert trial.status == "ok" and trial.feasible and evaluator.calls == 1
    assert trial.metrics["accuracy"] == 0.5 and trial.number == 3 and trial.info == {"k": 1}


def test_budget_is_a_hard_constraint_with_a_reason(tiny_space):
    loose = tiny_space(SPACE_CHANGES)
    largest_bitops = CostModel(loose).metrics(loose.largest())["bitops"]
    smallest_bitops = CostModel(loose).metrics(loose.smallest())["bitops"]
    space = tiny_space(SPACE_CHANGES, budgets={"bitops": (largest_bitops + smallest_bitops) / 2})
    evaluator = CountingEvaluator(space)
    trial = evaluate_candidate(0, space.largest(), evaluator, strategy="test")
    assert trial.status == "infeasible" and evaluator.calls == 0  # never scored, never a silent penalty
    assert f"bitops = {largest_bitops:.6g} > budget" in trial.error
    assert budget_violations(space, CostModel(space).metrics(space.smallest())) == []


def test_crashed_evaluation_becomes_a_failed_trial(space):
    trial = evaluate_candidate(0, space.smallest(), CountingEvaluator(space, fail=True), strategy="test")
    assert trial.status == "failed" and "RuntimeError: evaluation exploded" in trial.error


def test_trial_round_trips_through_json_dict(space):
    candidate = space.sample(np.random.default_rng(0))
    trial = Trial(1, candidate, {"accuracy": 0.7, "bitops": 123.0}, strategy="random", info={"eta": 0.5})
    record = trial.to_dict()
    assert record["candidate_id"] == candidate.id
    assert Trial.from_dict(record) == trial


def test_invalid_status_and_budget_are_rejected(space):
    with pytest.raises(ValueError, match="status"):
        Trial(0, space.smallest(), {}, status="done")
    with pytest.raises(ValueError, match="evaluations"):
        Budget(evaluations=0)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(KeyError, match="available"):
        create_strategy("no-such-strategy")


def test_recorder_numbers_after_the_log_and_appends_each_trial_at_once(space, tmp_path):
    evaluator = CountingEvaluator(space)
    first = SearchLog(tmp_path, space, strategy="test")
    first.append(evaluate_candidate(0, space.smallest(), evaluator, strategy="test"))
    recorder = TrialRecorder(Budget(2), strategy="test", log=SearchLog(tmp_path, space, strategy="test", resume=True))
    assert recorder.total == 3 and recorder.seen(space.smallest()) and not recorder.seen(space.largest())
    trial = recorder.evaluate(space.largest(), evaluator, info={"k": 1})
    assert trial.number == 1 and trial.strategy == "test" and trial.info == {"k": 1}
    assert [t.number for t in load_trials(tmp_path)] == [0, 1]  # on disk before the strategy makes the next one
    assert recorder.seen(space.largest()) and not recorder.exhausted()
    recorder.record(evaluate_candidate(7, space.sample(np.random.default_rng(0)), evaluator, strategy="test"))
    assert recorder.exhausted() and [t.number for t in recorder.made] == [1, 2]


def test_recorder_plans_at_most_the_budget_and_stops_at_the_wall_clock(space, tmp_path):
    recorder = TrialRecorder(Budget(5), strategy="test", log=SearchLog(tmp_path, space, strategy="test"))
    recorder.plan(18)
    recorder.plan(3)
    assert json.loads((tmp_path / "run.json").read_text())["trials_planned"] == 3
    recorder.plan(18)
    assert json.loads((tmp_path / "run.json").read_text())["trials_planned"] == 5  # the budget caps the plan
    assert not TrialRecorder(Budget(5, wall_s=3600.0), strategy="test").exhausted()
    assert TrialRecorder(Budget(5, wall_s=0.0), strategy="test").exhausted()
