"""Tests for strategies/ssps.py: SSPS finds the choice that is clearly best, meets every budget level, fixes every
decision exactly once and never revives a removed choice, and logs the order of its decisions."""

import collections
import dataclasses
import functools
import json

import pytest
import torch

from automq.cost import cost_range
from automq.strategies._archparams import ArchParams, DecisionTable
from automq.strategies import differentiable
from automq.strategies.differentiable import BilevelSearch
from automq.strategies.ssps import DECISIONS_FILE, SSPS, SequentialFixer
from automq.search.strategy import Budget

from _gradient_task import BROKEN_FORMAT, BROKEN_LAYER, GOOD_FORMAT, task_estimator, task_space
from _interrupt import interrupted_and_resumed, outcome

STEPS = 50


@pytest.fixture(scope="module")
def estimator():
    return task_estimator()


@pytest.fixture(scope="module")
def levels(estimator) -> list[float]:
    low, high = cost_range(estimator.space)["bitops"]
    return [low + 0.6 * (high - low), low + 0.25 * (high - low)]


@pytest.fixture(scope="module")
def run(estimator, levels, tmp_path_factory):
    out = tmp_path_factory.mktemp("ssps")
    strategy = SSPS(levels=levels, steps=STEPS, batch_size=32, out_dir=out)
    return strategy.run(estimator.space, estimator, Budget(4), seed=0), out


def test_finds_the_format_that_keeps_the_signal_at_equal_cost(estimator, run) -> None:
    trials, _ = run
    assert len(trials) == 2 and all(t.status == "ok" for t in trials)
    for trial in trials:
        assert trial.candidate.layer_formats()[BROKEN_LAYER][0] == GOOD_FORMAT
        broken = tuple((n, BROKEN_FORMAT if n == BROKEN_LAYER else w, a) for n, w, a in trial.candidate.formats)
        signal_lost = estimator(dataclasses.replace(trial.candidate, formats=broken))["accuracy"]
        assert trial.metrics["accuracy"] > signal_lost + 0.15


def test_every_candidate_meets_its_budget_level(run, levels) -> None:
    trials, _ = run
    for trial, level in zip(trials, levels):
        assert trial.info["level"] == level
        assert trial.metrics["bitops"] <= level
        assert trial.info["achieved"]["bitops"] == trial.metrics["bitops"]
    assert trials[1].metrics["bitops"] < trials[0].metrics["bitops"]


def test_every_decision_is_fixed_once_in_logged_order(estimator, run, levels) -> None:
    trials, out = run
    table = DecisionTable(estimator.space)
    for trial in trials:
        log = trial.info["decisions"]
        assert sorted(entry["decision"] for entry in log) == sorted(table.names)
        assert [entry["order"] for entry in log] == list(range(len(log)))
        steps = [entry["step"] for entry in log]
        assert steps == sorted(steps) and 0 < steps[0] and steps[-1] <= STEPS
        assert {entry["reason"] for entry in log} <= {"certain", "forced", "inactive"}
        assert any(entry["reason"] == "certain" for entry in log)
        if not trial.info["repair"]:  # the candidate is the one the fixings describe
            values = estimator.space.choices_of(trial.candidate)
            assert all(values[e["decision"]] == e["value"] for e in log if e["decision"] in values)
    written = json.loads((out / DECISIONS_FILE).read_text())
    assert written["metric"] == "bitops"
    assert [written["levels"][str(level)] for level in levels] == [t.info["decisions"] for t in trials]


def test_the_default_fixes_one_decision_per_fixing_point_and_forces_none(estimator, run) -> None:
    # 15 decisions, 50 steps, warm-up 10: one fixing point per decision every (50 - 10) // 15 = 2 steps, so all
    # 15 are taken by the sequential rule (at steps 10, 12, ..., 38) or left out by a fixed depth
    trials, _ = run
    for trial in trials:
        log = trial.info["decisions"]
        per_point = collections.Counter(e["step"] for e in log if e["reason"] == "certain")
        assert set(per_point.values()) == {1}
        assert all(step in range(10, STEPS, 2) for step in per_point)
        assert not [e for e in log if e["reason"] == "forced"]


def test_each_fixing_point_fixes_exactly_one_decision() -> None:
    # 8 fixing points (steps 5, 10, ..., 40) for 15 decisions: the sequential rule fixes one at each and forces
    # the rest at the end; the even share (the earlier variant) fixes ceil(15 / 8) = 2 at the first point.
    table = DecisionTable(task_space())
    for per_fixing, first_count in ((1, 1), (None, 2)):
        arch = ArchParams(table)
        with torch.no_grad():
            arch.source.logits.copy_(torch.randn(table.shape, generator=torch.Generator().manual_seed(1)))
        fixer = SequentialFixer(arch, steps=41, warmup=5, interval=5, threshold=0.0,
                                decisions_per_fixing=per_fixing)
        for step in range(1, 41):
            fixer(step)
        per_point = collections.Counter(e["step"] for e in fixer.log if e["reason"] == "certain")
        assert per_point[5] == first_count
        if per_fixing == 1:
            assert per_point == {step: 1 for step in range(5, 41, 5)}
            assert int((~arch.fixed).sum()) > 0  # more decisions than fixing points: the rest is forced at the end


def test_an_interrupted_search_resumes_its_training_and_fixings(estimator, levels, tmp_path, monkeypatch) -> None:
    # 20 steps of BilevelSearch, two batches each, fixing points after steps 4, 7, 10, ...; stopped in the 13th step
    make = functools.partial(SSPS, levels=levels[:1], fixings=5, steps=20, batch_size=32)
    whole, resumed, steps = interrupted_and_resumed(make, estimator, 1, differentiable, 2 * 12 + 1, tmp_path,
                                                    monkeypatch, step=(BilevelSearch, "step"))
    fixed_at = {entry["step"] for entry in whole[0].info["decisions"]}
    assert min(fixed_at) < 12 < max(fixed_at)  # fixings before the stop, and after it
    assert [outcome(t) for t in resumed] == [outcome(t) for t in whole] and steps == 20 - 12


def test_removed_choices_never_come_back() -> None:
    space = task_space()
    table = DecisionTable(space)
    arch = ArchParams(table)
    fixer = SequentialFixer(arch, steps=40, warmup=5, interval=5, threshold=0.3)
    generator = torch.Generator().manual_seed(0)
    previous = arch.alive.clone()
    for step in range(1, 41):
        with torch.no_grad():  # a training step that keeps changing its mind
            arch.source.logits.copy_(3 * torch.randn(table.shape, generator=generator))
        fixer(step)
        assert not (arch.alive & ~previous).any(), f"a removed choice came back at step {step}"
        previous = arch.alive.clone()
    fixer.fix_remaining(40)
    assert arch.fixed.all()
    assert sorted(entry["decision"] for entry in fixer.log) == sorted(table.names)
    for entry in fixer.log:
        if entry["reason"] == "certain":
            assert entry["certainty"] >= 0.3
        if entry["reason"] == "inactive":  # a block beyond its stage's fixed depth
            stage, block = (int(part) for part in entry["decision"].split(".")[1:3])
            depth = next(e["value"] for e in fixer.log if e["decision"] == f"stages.{stage}.depth")
            assert block >= depth


def test_rejects_a_multi_branch_relaxation() -> None:
    with pytest.raises(ValueError, match="single-path"):
        SSPS(relaxation="multi_branch")
    with pytest.raises(ValueError, match="threshold"):
        SSPS(threshold=1.5)
