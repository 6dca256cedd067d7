"""Tests for strategies/fliqs.py: the reward variants, the moving-average baseline and the entropy schedule against
hand-computed values; probability clamping and tied formats; and, on the tiny synthetic task, that the policy finds
the format that keeps the signal at equal cost, meets a cost target that rules out the expensive choices, stays
frozen during warm-up, and that the returned candidates lie in the space and are scored by the shared path."""

import functools
import math

import pytest
import torch

from automq.cost import CostModel, cost_range
from automq.errors import BudgetError, SpaceError
from automq.io import read_jsonl
from automq.strategies import fliqs
from automq.strategies._archparams import ArchParams, DecisionTable
from automq.strategies.fliqs import (
    FLIQS, POLICY_LOG, ClampedPolicy, FLIQSConfig, FliqsSearch, FormatTie, MovingAverageBaseline, entropy_weight,
    reward,
)
from automq.model.supernet import Supernet
from automq.search.strategy import Budget

from _gradient_task import BROKEN_LAYER, GOOD_FORMAT, TASK, task_estimator, task_space
from _spaces import DS_STAGE, IR_STAGE
from _interrupt import interrupted_and_resumed, outcome

# a few float64 operations on values of order 1, some of which cancel (1.2 - 1 keeps 52 - 3 bits): 16 eps
TOLERANCE = 16 * torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
RUN = {"steps": 100, "batch_size": 32, "quality_batch_size": 64, "policy_lr": 0.1, "log_every": 1}


# ------------------------------------------------------------------------------------------------ pure pieces
def test_reward_variants_match_hand_computed_values() -> None:
    # quality 0.8, cost 20 % over the target
    assert reward(0.8, 1.2, kind="absolute", beta=0.5) == pytest.approx(0.7, abs=TOLERANCE)
    assert reward(0.8, 1.2, kind="one_sided", beta=0.5) == pytest.approx(0.7, abs=TOLERANCE)
    assert reward(0.8, 1.2, kind="soft_exponential", beta=-0.07) == pytest.approx(0.7898549, abs=1e-7)
    # 20 % under the target: only the absolute reward pays for the unused budget
    assert reward(0.8, 0.8, kind="absolute", beta=0.5) == pytest.approx(0.7, abs=TOLERANCE)
    assert reward(0.8, 0.8, kind="one_sided", beta=0.5) == pytest.approx(0.8, abs=TOLERANCE)
    assert reward(0.8, 0.8, kind="soft_exponential", beta=-0.07) == pytest.approx(0.8125941, abs=1e-7)
    assert reward(0.8, 1.2, kind="absolute") == pytest.approx(0.6, abs=TOLERANCE)  # default beta 1
    with pytest.raises(ValueError, match="reward kind"):
        reward(0.8, 1.0, kind="relative")


def test_config_rejects_a_beta_of_the_wrong_sign() -> None:
    with pytest.raises(ValueError, match="negative for the soft_exponential"):
        FLIQSConfig(reward="soft_exponential", beta=0.5)
    with pytest.raises(ValueError, match="negative for the soft_exponential"):
        FLIQSConfig(reward="absolute", beta=-1.0)
    with pytest.raises(ValueError, match="reward must be one of"):
        FLIQSConfig(reward="relative")
    assert FLIQSConfig(reward="soft_exponential").cost_weight == -0.07


def test_moving_average_baseline_matches_hand_computed_values() -> None:
    baseline = MovingAverageBaseline(momentum=0.9)
    assert baseline.advantage(1.0) == 0.0 and baseline.value == 1.0  # the first reward starts the baseline
    assert baseline.advantage(0.0) == pytest.approx(-1.0, abs=TOLERANCE)
    assert baseline.value == pytest.approx(0.9, abs=TOLERANCE)
    assert baseline.advantage(0.5) == pytest.approx(-0.4, abs=TOLERANCE)
    assert baseline.value == pytest.approx(0.86, abs=TOLERANCE)


def test_entropy_schedule_is_a_cosine_from_first_to_last_after_warmup() -> None:
    def at(step: int) -> float:
        return entropy_weight(step, warmup=10, steps=111, first=0.02, last=-0.06)

    assert at(0) == 0.0 and at(9) == 0.0  # warm-up: no policy loss at all
    assert at(10) == pytest.approx(0.02, abs=TOLERANCE)
    assert at(35) == pytest.approx(0.0082843, abs=1e-7)  # -0.06 + 0.08 * (1 + cos(pi / 4)) / 2
    assert at(60) == pytest.approx(-0.02, abs=TOLERANCE)
    assert at(110) == pytest.approx(-0.06, abs=TOLERANCE)


def test_clamping_keeps_every_alive_probability_above_the_floor() -> None:
    space = task_space()
    arch = ArchParams(DecisionTable(space))
    with torch.no_grad():  # near one-hot rows, whose unclamped probabilities underflow to 0
        arch.source.logits.normal_(0.0, 30.0, generator=torch.Generator().manual_seed(0))
    arch.fix(0, 1)  # a removed choice must stay at probability 0
    policy = ClampedPolicy(arch, 0.01)
    probs = policy.probs().detach()
    alive = arch.alive
    assert float(probs[alive].min()) >= 0.01 - 1e-7 and float(arch.probs().detach()[alive].min()) < 1e-6
    assert torch.all(probs[~alive] == 0)
    # float32 sums of at most 3 probabilities, each within eps/2 of its renormalised value
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(probs.shape[0]), rtol=0, atol=4 * EPS32)
    assert policy.probs().argmax(dim=1).tolist() == arch.argmax()
    choice = policy.sample(torch.Generator().manual_seed(0))
    assert all(bool(alive[row, c]) for row, c in enumerate(choice))
    with pytest.raises(ValueError, match="min_prob"):
        ClampedPolicy(arch, 0.5)  # two choices at >= 0.5 each leave nothing to learn


def test_tied_formats_make_activations_follow_weights() -> None:
    space = task_space(formats={"weights": ["int4", "int8", "fp8_e4m3"], "activations": ["int8", "fp8_e4m3"]})
    arch = ArchParams(DecisionTable(space))
    tie = FormatTie.build(arch)
    policy = ClampedPolicy(arch, 0.01)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        candidate = arch.candidate(tie.apply(policy.sample(generator)))
        for layer, w_fmt, a_fmt in candidate.formats:
            if layer not in ("conv_stem", "classifier"):
                assert w_fmt == a_fmt and w_fmt != "int4"  # int4 is no activation format here
                seen.add(w_fmt)
    assert seen == {"int8", "fp8_e4m3"}
    disjoint = task_space(formats={"weights": ["int4", "int2"], "activations": ["int8"]})
    with pytest.raises(SpaceError, match="tie_formats needs a format in both menus of layer 'blocks.0.0.conv_dw'"):
        FormatTie.build(ArchParams(DecisionTable(disjoint)))


def test_default_targets_lie_inside_the_cost_range_or_at_the_budget() -> None:
    space = task_space()
    low, high = cost_range(space)["bitops"]
    targets = FLIQS().cost_targets(space, "bitops", 5)
    assert targets == pytest.approx([low + (high - low) * k / 4 for k in (1, 2, 3)], rel=TOLERANCE)
    assert FLIQS().cost_targets(space, "bitops", 1) == pytest.approx([(low + high) / 2], rel=TOLERANCE)
    budgeted = task_space(budgets={"bitops": 3e6})
    assert FLIQS().cost_targets(budgeted, "bitops", 5) == [3e6]
    with pytest.raises(BudgetError, match="latency table"):
        FLIQS().cost_targets(space, "latency", 5)


# ------------------------------------------------------------------------------------------------ searches
@pytest.fixture(scope="module")
def estimator():
    return task_estimator()


@pytest.fixture(scope="module")
def searched(estimator, tmp_path_factory):
    """One FLIQS run per target: the most expensive candidate's cost, then the cheapest one's."""
    low, high = cost_range(estimator.space)["bitops"]
    out = tmp_path_factory.mktemp("fliqs")
    trials = FLIQS(targets=[high, low], out_dir=out, **RUN).run(estimator.space, estimator, Budget(5), seed=0)
    return trials, list(read_jsonl(out / POLICY_LOG)), (low, high)


def test_policy_finds_the_format_that_keeps_the_signal(searched) -> None:
    trials, log, _ = searched
    good = TASK["formats"]["weights"].index(GOOD_FORMAT)
    for trial in trials:
        assert trial.candidate.layer_formats()[BROKEN_LAYER][0] == GOOD_FORMAT
        assert trial.info["in_place"]["accuracy"] > 0.3  # the broken format would leave chance (0.1)
        last = [r for r in log if r["target"] == trial.info["target"]["bitops"]][-1]
        assert last["probs"][f"{BROKEN_LAYER}.w_fmt"][good] > 0.9  # not a coin flip: the policy is sure


def test_a_low_cost_target_rules_out_the_expensive_choices(searched) -> None:
    trials, _, (low, high) = searched
    assert [t.info["target"]["bitops"] for t in trials] == [high, low]
    cheap = trials[1]
    assert cheap.candidate.width_mult == 0.5  # the full width alone costs far more than the target
    assert cheap.metrics["bitops"] <= 1.25 * low < trials[0].metrics["bitops"]
    assert cheap.info["achieved"]["bitops"] == cheap.metrics["bitops"]
    assert cheap.info["final_entropy"] < 0.5  # the negative entropy weight drives the policy to one choice
    assert trials[0].info["final_entropy"] < 0.5


def test_warmup_keeps_the_policy_frozen_and_the_log_replays_the_updates(searched) -> None:
    _, log, _ = searched
    first_run = [r for r in log if r["target"] == log[0]["target"]]
    warmup = FLIQSConfig(**RUN).warmup_steps
    assert [r["step"] for r in first_run] == list(range(RUN["steps"]))
    for record in first_run[:warmup]:
        assert "reward" not in record
        assert all(p == 1 / len(probs) for probs in record["probs"].values() for p in probs)
    # the first policy step has advantage 0 (it starts the baseline) and a uniform policy has zero entropy
    # gradient, so the second one is the first to move the policy
    assert first_run[warmup]["advantage"] == 0.0 and first_run[warmup]["probs"] == first_run[0]["probs"]
    assert first_run[warmup + 1]["probs"] != first_run[0]["probs"]
    # every logged reward, advantage and entropy weight follows from the logged quality and cost by hand
    value = None
    for record in first_run[warmup:]:
        assert record["reward"] == pytest.approx(record["quality"] - abs(record["cost_ratio"] - 1.0),
                                                 abs=TOLERANCE)
        value = record["reward"] if value is None else value
        assert record["advantage"] == pytest.approx(record["reward"] - value, abs=TOLERANCE)
        value = 0.95 * value + 0.05 * record["reward"]
        progress = (record["step"] - warmup) / (RUN["steps"] - 1 - warmup)  # a cosine from 0.05 to -0.3
        cosine = -0.3 + 0.35 * (1 + math.cos(math.pi * progress)) / 2
        assert record["entropy_weight"] == pytest.approx(cosine, abs=TOLERANCE)


def test_candidates_lie_in_the_space_and_are_scored_by_the_shared_estimator(estimator, searched) -> None:
    trials, _, _ = searched
    assert [t.number for t in trials] == [0, 1]
    for trial in trials:
        estimator.space.validate_candidate(trial.candidate)
        assert trial.status == "ok" and trial.strategy == "fliqs"
        assert trial.metrics == estimator.estimate(trial.candidate)
        assert trial.metrics["bitops"] == CostModel(estimator.space).metrics(trial.candidate)["bitops"]
        assert set(trial.info["in_place"]) == {"accuracy", "loss"}
        assert trial.info["steps"] == RUN["steps"] and not trial.info["stopped_early"]


def test_an_interrupted_search_resumes_to_the_uninterrupted_trials(estimator, tmp_path, monkeypatch) -> None:
    low, high = cost_range(estimator.space)["bitops"]
    make = functools.partial(FLIQS, targets=[high, low], **{**RUN, "steps": 12, "warmup": 0.5})
    # each run draws 12 weight batches and, after its 6 warm-up steps, a quality batch per step: the stop comes
    # when the second run asks for the weight batch of its step 9, after its last checkpoint (before step 8)
    whole, resumed, steps = interrupted_and_resumed(make, estimator, 2, fliqs, 18 + 6 + 2 * 3, tmp_path,
                                                    monkeypatch, step=(FliqsSearch, "_step"))
    assert len(whole) == 2 and [outcome(t) for t in resumed] == [outcome(t) for t in whole]
    assert steps == 12 - 8  # the first run resumed finished, the second from its step 8


def test_budget_caps_the_runs_and_a_seed_repeats_a_search(estimator) -> None:
    low, high = cost_range(estimator.space)["bitops"]
    short = {**RUN, "steps": 12, "warmup": 0.5}
    first = FLIQS(targets=[low, high], **short).run(estimator.space, estimator, Budget(1), seed=3)
    again = FLIQS(targets=[low, high], **short).run(estimator.space, estimator, Budget(1), seed=3)
    assert len(first) == 1  # one estimator call allowed: one target searched
    assert first[0].candidate == again[0].candidate and first[0].info["in_place"] == again[0].info["in_place"]
    assert first[0].info["baseline"] == again[0].info["baseline"]
    assert math.isfinite(first[0].info["train_loss"])


@pytest.mark.parametrize("init", ["scratch", "supernet"])
def test_a_scratch_run_starts_from_a_fresh_seeded_supernet_and_the_default_from_the_shared_one(estimator,
                                                                                               init) -> None:
    """The paper's setting trains the policy and the weights together from scratch: its weights at step 0 are
    those of a fresh supernet built under the same seed, not the shared estimator's trained ones."""
    torch.manual_seed(5)
    search = FliqsSearch(estimator.space, estimator, FLIQSConfig(**RUN, init=init), metric="bitops", target=1.0,
                         seed=5)
    torch.manual_seed(5)
    fresh = Supernet(estimator.space).state_dict()
    expected = fresh if init == "scratch" else estimator.supernet.state_dict()
    other = estimator.supernet.state_dict() if init == "scratch" else fresh
    state = search.supernet.state_dict()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    assert not all(torch.equal(state[key], other[key]) for key in other if key.endswith("weight"))


def test_a_space_without_decisions_trains_its_one_candidate_with_the_same_steps(estimator, tmp_path) -> None:
    """The same-recipe baseline of the paper's setting: nothing to decide, so no policy step, and the run's own
    weights (trained from scratch) score the one candidate far above chance (0.1)."""
    single = {"stages": [DS_STAGE, {**IR_STAGE, "depth": [2], "kernel_size": [5], "expand_ratio": [4]}],
              "width_mult": [1.0]}
    space = task_space(network=single, formats={"weights": [GOOD_FORMAT], "activations": ["int8"],
                                                "overrides": [{"layers": "conv_stem|classifier", "weights": ["int8"]}]})
    assert space.count() == 1
    trials = FLIQS(targets=[1.0], out_dir=tmp_path, init="scratch", **RUN).run(space, estimator, Budget(1), seed=0)
    (trial,) = trials
    assert trial.candidate == space.largest() and trial.info["steps"] == RUN["steps"]
    assert trial.info["in_place"]["accuracy"] > 0.3 and trial.info["final_entropy"] == 0.0
    log = list(read_jsonl(tmp_path / POLICY_LOG))
    assert len(log) == RUN["steps"] and not any("reward" in record for record in log)
