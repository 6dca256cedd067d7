import io
import json
from pathlib import Path

import pytest
from test_tune import ProxyEvaluator

import automq.search.driver
from automq.cost import CostModel
from automq.errors import AutomqError, SpaceError
from automq.search.results import load_trials
from automq.search.driver import ProgressLog, run_search
from automq.space.space import SearchSpace
from automq.search.strategy import Strategy, evaluate_candidate
from automq.search.trial import Trial

REPO = Path(__file__).resolve().parent.parent
LOCAL_NSGA2 = {"sampler": "nsga2", "workers": 0}


@pytest.fixture(scope="module")
def tiny():
    return SearchSpace.from_file(REPO / "spaces/tiny_enum.yaml")


def brute_force_front(trials):
    """Feasible trials no other feasible trial beats on accuracy (max) and BitOps (min)."""
    ok = [t for t in trials if t.status == "ok"]

    def dominated(t):
        return any(o.metrics["accuracy"] >= t.metrics["accuracy"] and o.metrics["bitops"] <= t.metrics["bitops"]
                   and (o.metrics["accuracy"], o.metrics["bitops"]) != (t.metrics["accuracy"], t.metrics["bitops"])
                   for o in ok)

    return {t.number for t in ok if not dominated(t)}


def test_run_search_writes_the_search_directory(tiny, tmp_path):
    log = run_search(tiny, out=tmp_path, strategy="tune", trials=12, options=LOCAL_NSGA2,
                     evaluator=ProxyEvaluator(tiny), progress=False)
    saved = load_trials(tmp_path)
    assert [t.number for t in saved] == list(range(12)) and len(log.trials) == 12
    for trial in saved:
        tiny.validate_candidate(trial.candidate)
        assert trial.metrics["bitops"] == CostModel(tiny).metrics(trial.candidate)["bitops"]
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert {t["number"] for t in pareto["trials"]} == brute_force_front(saved)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "finished" and run["label"] == "tune-nsga2" and run["trials"]["ok"] == 12
    assert run["options"] == LOCAL_NSGA2 and (tmp_path / "space.yaml").is_file()


def test_progress_line_shows_trials_front_and_hypervolume(tiny, tmp_path):
    evaluator, stream = ProxyEvaluator(tiny), io.StringIO()  # not a terminal: a line at the start and the end
    log = ProgressLog(tmp_path, tiny, strategy="tune", total=3, stream=stream)
    for number in range(3):
        log.append(evaluate_candidate(number, tiny.sample(number), evaluator, strategy="tune"))
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("tune: 1/3 trials (0 infeasible, 0 failed) | front 1 | HV ")
    assert f"3/3 trials (0 infeasible, 0 failed) | front {len(pareto['trials'])} | " \
           f"HV {pareto['hypervolume']:.4f} | 0:00:0" in lines[1]


def test_progress_line_is_rewritten_in_place_on_a_terminal(tiny, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream, evaluator = Terminal(), ProxyEvaluator(tiny)
    log = ProgressLog(tmp_path, tiny, strategy="tune", total=4, stream=stream)
    for number in range(4):
        log.append(evaluate_candidate(number, tiny.sample(number), evaluator, strategy="tune"))
    log.close()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1 and "4/4 trials" in text.split("\r")[-1]


def test_resume_runs_only_the_missing_trials(tiny, tmp_path):
    run_search(tiny, out=tmp_path, trials=8, options=LOCAL_NSGA2, evaluator=ProxyEvaluator(tiny), progress=False)
    first = [t.to_dict() for t in load_trials(tmp_path)]
    with pytest.raises(AutomqError, match="already holds 8 trials; pass --resume"):
        run_search(tiny, out=tmp_path, trials=14, options=LOCAL_NSGA2, evaluator=ProxyEvaluator(tiny))
    evaluator = ProxyEvaluator(tiny)
    run_search(tiny, out=tmp_path, trials=14, resume=True, options=LOCAL_NSGA2, evaluator=evaluator, progress=False)
    saved = load_trials(tmp_path)
    assert [t.to_dict() for t in saved[:8]] == first and [t.number for t in saved] == list(range(14))
    assert len(evaluator.calls) == 6
    finished = ProxyEvaluator(tiny)
    run_search(tiny, out=tmp_path, trials=14, resume=True, options=LOCAL_NSGA2, evaluator=finished, progress=False)
    assert finished.calls == [] and len(load_trials(tmp_path)) == 14


def test_resume_refuses_a_different_space(tiny, tmp_path):
    run_search(tiny, out=tmp_path, trials=2, options=LOCAL_NSGA2, evaluator=ProxyEvaluator(tiny), progress=False)
    other = SearchSpace.from_file(REPO / "spaces/mbv2_fmnist.yaml")
    with pytest.raises(SpaceError, match="differs from .*space.yaml"):
        run_search(other, out=tmp_path, trials=4, resume=True, options=LOCAL_NSGA2, evaluator=ProxyEvaluator(other))


@pytest.mark.parametrize("kwargs, message", [
    ({}, "--supernet is required"),
    ({"strategy": "annealing"}, "unknown strategy 'annealing'"),
    ({"options": {"sampler": "cmaes"}}, "unknown sampler 'cmaes'"),
    ({"options": {"colour": "red"}}, "unexpected keyword argument 'colour'"),
    ({"trials": 0}, "at least 1"),
])
def test_user_mistakes_raise_automq_errors(tiny, tmp_path, kwargs, message):
    with pytest.raises(AutomqError, match=message):
        run_search(tiny, out=tmp_path, **kwargs)
    assert not (tmp_path / "trials.jsonl").exists()


class FixedStrategy(Strategy):
    """A strategy with the default :meth:`Strategy.stream`: it returns its trials when it ends."""

    name = "fixed"

    def __init__(self):
        self.seeds = []

    def run(self, space, evaluator, budget, *, seed=0):
        self.seeds.append(seed)
        return [evaluate_candidate(0, space.sample(seed + n), evaluator, strategy=self.name)
                for n in range(budget.evaluations)]


def test_strategies_that_do_not_stream_are_recorded_when_they_return(tiny, tmp_path, monkeypatch):
    strategy = FixedStrategy()
    monkeypatch.setattr(automq.search.driver, "create_strategy", lambda name, **options: strategy)
    run_search(tiny, out=tmp_path, strategy="fixed", trials=3, seed=7, evaluator=ProxyEvaluator(tiny), progress=False)
    run_search(tiny, out=tmp_path, strategy="fixed", trials=5, seed=7, resume=True, evaluator=ProxyEvaluator(tiny),
               progress=False)
    saved = load_trials(tmp_path)
    assert [t.number for t in saved] == list(range(5))
    assert strategy.seeds == [7, 10]  # a resumed run is seeded past the trials already made
    assert all(isinstance(t, Trial) and t.strategy == "fixed" for t in saved)
    assert json.loads((tmp_path / "run.json").read_text())["label"] == "fixed"  # the default label: the name
