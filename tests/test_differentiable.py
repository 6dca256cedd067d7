"""Tests for strategies/differentiable.py: both variants find the choice that is clearly best, every returned
candidate meets its budget, the greedy repair takes the best cost-per-preference move, and the search leaves the
shared supernet alone and repeats itself under a seed."""

import dataclasses

import pytest
import torch

from automq.cost import CostModel, cost_range
from automq.errors import BudgetError
from automq.strategies._archparams import ArchParams, DecisionTable
from automq.strategies import differentiable
from automq.strategies.differentiable import DNAS, BilevelSearch, Differentiable, eta_loss, repair
from automq.search.strategy import Budget

from _gradient_task import BROKEN_FORMAT, BROKEN_LAYER, GOOD_FORMAT, task_estimator, task_space
from _interrupt import interrupted_and_resumed, outcome
from _spaces import EVERY_DECISION, SpaceFactory

SEARCH = {"steps": 50, "batch_size": 32}


@pytest.fixture(scope="module")
def estimator():
    return task_estimator()


@pytest.fixture(scope="module")
def level(estimator) -> float:
    low, high = cost_range(estimator.space)["bitops"]
    return low + 0.3 * (high - low)


@pytest.fixture(scope="module")
def dnas_trials(estimator, level):
    """lambda = 0 ignores the budget (its argmax needs repair); lambda = 1 pays the hinge."""
    return DNAS(lambdas=(0.0, 1.0), levels=[level], penalty="hinge", **SEARCH).run(
        estimator.space, estimator, Budget(10), seed=0)


@pytest.fixture(scope="module")
def eta_trials(estimator):
    return Differentiable(sweep=8, **SEARCH).run(estimator.space, estimator, Budget(8), seed=0)


@pytest.mark.parametrize("trials", ["dnas_trials", "eta_trials"])
def test_finds_the_format_that_keeps_the_signal_at_equal_cost(estimator, trials, request) -> None:
    trials = request.getfixturevalue(trials)
    assert trials and all(t.status == "ok" for t in trials)
    for trial in trials:
        formats = trial.candidate.layer_formats()
        assert formats[BROKEN_LAYER][0] == GOOD_FORMAT
        broken = tuple((n, BROKEN_FORMAT if n == BROKEN_LAYER else w, a) for n, w, a in trial.candidate.formats)
        signal_lost = estimator(dataclasses.replace(trial.candidate, formats=broken))["accuracy"]
        assert trial.metrics["accuracy"] > signal_lost + 0.15


def test_eta_sweep_traces_a_front_from_large_to_small(eta_trials) -> None:
    by_eta = sorted(eta_trials, key=lambda t: t.info["eta"])
    assert by_eta[0].metrics["bitops"] > by_eta[-1].metrics["bitops"]
    assert len({t.candidate.id for t in eta_trials}) == len(eta_trials)  # deduplicated
    assert all(t.info["search_steps"] == SEARCH["steps"] for t in eta_trials)


def test_every_candidate_meets_its_budget_level(dnas_trials, level) -> None:
    assert len(dnas_trials) >= 1
    for trial in dnas_trials:
        assert trial.status == "ok"
        assert trial.metrics["bitops"] <= level
        assert trial.info["target"] == {"bitops": level}
        assert trial.info["achieved"]["bitops"] == trial.metrics["bitops"]
    assert dnas_trials[0].info["lambda"] == 0.0 and dnas_trials[0].info["repair"]


def test_repair_takes_the_move_with_the_least_preference_lost(tiny_space: SpaceFactory) -> None:
    space = tiny_space(EVERY_DECISION)
    table = DecisionTable(space)
    arch = ArchParams(table)
    largest = space.largest()
    with torch.no_grad():
        arch.source.logits.copy_(5.0 * table.one_hot(largest))  # every decision strongly prefers the largest
        row = table.index["blocks.1.0.conv_pwl.w_fmt"]
        cheap = table.decisions[row].choices.index("int4")
        arch.source.logits[row, cheap] = 4.9  # ... except this one, which barely minds int4
    bitops = CostModel(space).metrics(largest)["bitops"]
    candidate, moves = repair(arch, largest, {"bitops": bitops - 1})
    assert [(m["decision"], m["from"], m["to"]) for m in moves] == [("blocks.1.0.conv_pwl.w_fmt", "int8", "int4")]
    assert candidate.layer_formats()["blocks.1.0.conv_pwl"][0] == "int4"


def test_repair_changes_the_architecture_when_formats_cannot_reach_the_budget(tiny_space: SpaceFactory) -> None:
    space = tiny_space(EVERY_DECISION)
    arch, model = ArchParams(DecisionTable(space)), CostModel(space)
    smallest_formats = space.uniform("int4", "int8", clamp=True)  # largest architecture, fewest bits
    limit = model.metrics(smallest_formats)["bitops"] - 1
    candidate, moves = repair(arch, space.largest(), {"bitops": limit})
    assert model.metrics(candidate)["bitops"] <= limit
    assert any(not m["decision"].endswith("_fmt") for m in moves)


def test_search_leaves_the_shared_supernet_alone_and_repeats_under_a_seed(estimator) -> None:
    # parameters only: scoring a candidate recalibrates the BN buffers, which is the estimator's business
    before = {k: v.detach().clone() for k, v in estimator.supernet.named_parameters()}
    strategy = DNAS(lambdas=(0.5,), steps=10, batch_size=32)
    first = strategy.run(estimator.space, estimator, Budget(1), seed=3)
    second = strategy.run(estimator.space, estimator, Budget(1), seed=3)
    assert [t.candidate for t in first] == [t.candidate for t in second]
    assert first[0].info["final_arch_ce"] == second[0].info["final_arch_ce"]
    after = dict(estimator.supernet.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("make, batches, steps_left", [
    # two searches of 8 steps, two batches per step, stopped in the 4th step of the second: the first search
    # resumes from its finished state, the second from its 3rd step
    (lambda: DNAS(lambdas=(0.0, 1.0), steps=8, batch_size=32), 2 * 8 + 2 * 3 + 1, 8 - 3),
    # one run of 10 steps, stopped in the 5th, whose eta draws continue from the saved generator
    (lambda: Differentiable(sweep=6, steps=10, batch_size=32), 2 * 4 + 1, 10 - 4),
])
def test_an_interrupted_search_resumes_to_the_uninterrupted_trials(estimator, make, batches, steps_left, tmp_path,
                                                                 monkeypatch) -> None:
    whole, resumed, steps = interrupted_and_resumed(make, estimator, 6, differentiable, batches, tmp_path,
                                                    monkeypatch, step=(BilevelSearch, "step"))
    assert len(whole) >= 2 and [outcome(t) for t in resumed] == [outcome(t) for t in whole]
    assert steps == steps_left  # continued, not started over


def test_budgets_the_loss_cannot_express_are_user_errors(estimator) -> None:
    with pytest.raises(BudgetError, match="budgets.bitops"):
        DNAS(penalty="hinge", steps=1).run(estimator.space, estimator, Budget(1))
    peak = task_space(budgets={"peak_act": 1e9})
    with pytest.raises(BudgetError, match="peak_act"):
        Differentiable(steps=1).run(peak, estimator, Budget(1))


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="relaxation"):
        DNAS(relaxation="soft")
    with pytest.raises(ValueError, match="eta_range"):
        Differentiable(eta_range=(1.0, 0.5))
    with pytest.raises(ValueError, match="penalty"):
        DNAS(penalty="square")


def test_eta_loss_divides_the_entropy_bonus_too() -> None:
    # (2 + 3 * 0.5 - 0.1 * 0.8) / (1 + 3) = 3.42 / 4 = 0.855; float32 inputs: a few roundings of terms up to 3.5
    loss = eta_loss(torch.tensor(2.0), torch.tensor(0.5), torch.tensor(0.8), 3.0, 0.1)
    assert abs(float(loss) - 0.855) <= 4 * torch.finfo(torch.float32).eps * 3.5


@pytest.mark.parametrize("eta", [0.01, 1.0, 10.0])
def test_the_entropy_weight_relative_to_the_task_loss_is_the_same_at_every_eta(eta: float) -> None:
    ce, entropy = torch.tensor(1.3, requires_grad=True), torch.tensor(0.6, requires_grad=True)
    eta_loss(ce, torch.tensor(0.4), entropy, eta, 0.05).backward()
    # d loss / d entropy = -0.05 / (1 + eta) and d loss / d ce = 1 / (1 + eta): their ratio is -0.05
    assert abs(float(entropy.grad / ce.grad) + 0.05) <= 4 * torch.finfo(torch.float32).eps * 0.05
