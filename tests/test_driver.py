import io
import json
from pathlib import Path

import pytest
from test_tune import ProxyEvaluator

from automq.cost import CostModel
from automq.errors import AutomqError, SpaceError
from automq.search.results import load_trials
from automq.search.driver import ProgressLog, run_search
from automq.space.space import SearchSpace
from automq.search.strategy import evaluate_candidate

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
    run_search(tiny, out=tmp_path, strategy="tune", trials=8,
               options=LOCAL_NSGA2, evaluator=ProxyEvaluator(tiny), progress=False)
    first = [t.to_dict() for t in load_trials(tmp_path)]
    with pytest.raises(AutomqError, match="already holds 8 trials; pass --resume"):
        run_search(tiny, out=tmp_path, strategy="tune", trials=14, options=LOCAL_NSGA2, evaluator=ProxyEvaluator(tiny))
    evaluator = ProxyEvaluator(tiny)
    run_search(tiny, out=tmp_path, strategy="tune", trials=14, resume=True,
               options=LOCAL_NSGA2, evaluator=evaluator, progress=False)
    saved = load_trials(tmp_path)
    assert [t.to_dict() for t in saved[:8]] == first and [t.number for t in saved] == list(range(14))
    assert len(evaluator.calls) == 6
    finished = ProxyEvaluator(tiny)
    run_search(tiny, out=tmp_path, strategy="tune", trials=14, resume=True,
               options=LOCAL_NSGA2, evaluator=finished, progress=False)
    assert finished.calls == [] and len(load_trials(tmp_path)) == 14


def test_resume_refuses_a_different_space(tiny, tmp_path):
    run_search(tiny, out=tmp_path, strategy="tune", trials=2,
               options=LOCAL_NSGA2, evaluator=ProxyEvaluator(tiny), progress=False)
    other = SearchSpace.from_file(REPO / "spaces/mbv2_fmnist.yaml")
    with pytest.raises(SpaceError, match="differs from .*space.yaml"):
        run_search(other, out=tmp_path, strategy="tune", trials=4, resume=True,
                   options=LOCAL_NSGA2, evaluator=ProxyEvaluator(other))


@pytest.mark.parametrize("kwargs, message", [
    ({}, "--supernet is required"),
    ({"strategy": "annealing"}, "unknown strategy 'annealing'"),
    ({"strategy": "tune", "options": {"sampler": "cmaes"}}, "unknown sampler 'cmaes'"),
    ({"options": {"colour": "red"}}, "unexpected keyword argument 'colour'"),
    ({"trials": 0}, "at least 1"),
])
def test_user_mistakes_raise_automq_errors(tiny, tmp_path, kwargs, message):
    with pytest.raises(AutomqError, match=message):
        run_search(tiny, out=tmp_path, **kwargs)
    assert not (tmp_path / "trials.jsonl").exists()


class InterruptingEvaluator(ProxyEvaluator):
    """Stops the process, as Ctrl-C does, when asked to score its ``stop_at``-th candidate."""

    def __init__(self, space, stop_at):
        super().__init__(space)
        self.stop_at = stop_at

    def __call__(self, candidate):
        if len(self.calls) + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().__call__(candidate)


STREAMED = [("random", {}), ("uniform", {"archs": ("largest", "smallest")}), ("tune", LOCAL_NSGA2)]


@pytest.mark.parametrize("strategy, options", STREAMED)
def test_every_trial_is_in_the_log_before_the_next_one_starts(tiny_space, tmp_path, strategy, options):
    space = tiny_space()
    with pytest.raises(KeyboardInterrupt):
        run_search(space, out=tmp_path, strategy=strategy, trials=6, options=options,
                   evaluator=InterruptingEvaluator(space, stop_at=4), progress=False)
    assert [t.number for t in load_trials(tmp_path)] == [0, 1, 2]  # the interrupted search kept what it made


@pytest.mark.parametrize("strategy, options", STREAMED)
def test_a_resumed_search_makes_the_trials_of_an_uninterrupted_one(tiny_space, tmp_path, strategy, options):
    space = tiny_space()
    run_search(space, out=tmp_path / "whole", strategy=strategy, trials=7, options=options,
               evaluator=ProxyEvaluator(space), progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(space, out=tmp_path / "cut", strategy=strategy, trials=7, options=options,
                   evaluator=InterruptingEvaluator(space, stop_at=4), progress=False)
    evaluator = ProxyEvaluator(space)
    run_search(space, out=tmp_path / "cut", strategy=strategy, trials=7, options=options, evaluator=evaluator,
               resume=True, progress=False)
    whole, resumed = load_trials(tmp_path / "whole"), load_trials(tmp_path / "cut")
    assert [t.number for t in resumed] == list(range(len(whole)))
    assert len(evaluator.calls) == len(whole) - 3  # the logged trials are not scored again
    if strategy != "tune":  # tune's sampler continues from the logged trials with fresh random numbers
        assert [t.candidate.id for t in resumed] == [t.candidate.id for t in whole]


def test_random_refuses_to_resume_a_search_made_with_another_seed(tiny, tmp_path):
    run_search(tiny, out=tmp_path, strategy="random", trials=3, seed=1, evaluator=ProxyEvaluator(tiny),
               progress=False)
    with pytest.raises(AutomqError, match="trial 0 of the search is not the candidate random search draws there "
                                          "with seed 2"):
        run_search(tiny, out=tmp_path, strategy="random", trials=5, seed=2, resume=True,
                   evaluator=ProxyEvaluator(tiny), progress=False)


def test_progress_shows_the_total_the_strategy_plans(tiny_space, tmp_path, capsys):
    space = tiny_space()  # weight menu int4, int8 and activation menu int8, fp8_e4m3: 4 pairs, on 2 architectures
    run_search(space, out=tmp_path, strategy="uniform", trials=100, options={"archs": ("largest", "smallest")},
               evaluator=ProxyEvaluator(space))
    assert capsys.readouterr().err.splitlines()[-1].startswith("uniform: 8/8 trials (0 infeasible, 0 failed)")
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["trials_planned"] == 8 and run["trials_requested"] == 100


def test_eta_is_the_pace_of_this_run_times_the_trials_left(tiny, tmp_path):
    evaluator = ProxyEvaluator(tiny)
    run_search(tiny, out=tmp_path, strategy="random", trials=2, evaluator=evaluator, progress=False)
    log = ProgressLog(tmp_path, tiny, strategy="random", total=10, stream=io.StringIO(), resume=True)
    for number in range(2, 6):
        log.append(evaluate_candidate(number, tiny.sample(number), evaluator, strategy="random"))
    log.started -= 40.0  # 4 trials in 40 s: 10 s each, and 4 of the 10 are still missing
    assert log.status().endswith(" | 0:00:40 | ETA 0:00:40")
