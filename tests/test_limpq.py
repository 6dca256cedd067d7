"""LIMPQ: the indicators come from a real joint QAT run and grow as formats get coarser, they are the step sizes
the module docstring defines, the supernet given to the strategy is left untouched, and the strategy traces a front
of valid candidates within the space's budgets."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import automq.strategies._checkpoint
from automq.cost import CostModel
from automq.data import DataSplits
from automq.errors import BudgetError
from automq.oneshot.evaluate import OneShotEstimator
from automq.io import safe_torch_load
from automq.numerics.quant import Quantizer
from automq.space.space import SearchSpace
from automq.strategies import limpq
from automq.strategies._assign import FormatProblem
from automq.strategies._solvers import AssignmentProblem, solve_linear
from automq.strategies._checkpoint import PhaseCheckpoint
from automq.strategies.limpq import LIMPQ, Indicators, _step, learn_indicators, uniform_configurations
from automq.search.strategy import Budget, create_strategy
from automq.model.arch import layer_specs
from automq.model.supernet import Supernet
from automq.oneshot.train import load_space_data

from _interrupt import interrupted_after
from _spaces import DS_STAGE, IR_STAGE, SpaceFactory

SPACE_CHANGES = {
    "name": "limpq",
    "dataset": {"val_size": 64},
    "network": {"stages": [DS_STAGE, {**IR_STAGE, "kernel_size": [3], "expand_ratio": [2]}], "width_mult": [1.0]},
    "formats": {
        "weights": ["int2", "int4", "int8", "mxfp4_e2m1"],
        "activations": ["int4", "int8", "fp8_e4m3"],
        "overrides": [{"layers": "classifier", "weights": ["int8"], "activations": ["int8"]}],
    },
    "objectives": [{"metric": "accuracy"}, {"metric": "bitops"}],
    "search": {"eval_size": 64, "calib_size": 32},
}
STEPS = 6
EPS32, EPS64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def space(tiny_space: SpaceFactory) -> SearchSpace:
    return tiny_space(SPACE_CHANGES)


@pytest.fixture(scope="module")
def data(space: SearchSpace) -> DataSplits:
    return load_space_data(space, train_subset=128)


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    torch.manual_seed(0)
    return Supernet(space)


def estimator(space: SearchSpace, supernet: Supernet, data: DataSplits) -> OneShotEstimator:
    return OneShotEstimator(space, supernet, data, batch_size=32)


@pytest.fixture(scope="module")
def indicators(space: SearchSpace, supernet: Supernet, data: DataSplits) -> Indicators:
    return learn_indicators(supernet, space, space.largest(), data.train, steps=STEPS, batch_size=32, seed=0)


def test_indicators_grow_as_formats_get_coarser(indicators: Indicators) -> None:
    assert len(indicators.weights) == len(indicators.activations) == 11  # every layer of the largest architecture
    for layer, by_format in indicators.weights.items():
        if layer != "classifier":
            assert by_format["int2"] > by_format["int4"] > by_format["int8"] > 0, layer
            # a 4-bit element grid, whatever its kind, is far coarser than int8
            assert by_format["mxfp4_e2m1"] > 3 * by_format["int8"], layer
    for layer, by_format in indicators.activations.items():
        if layer != "classifier":
            assert by_format["int4"] > by_format["int8"] > 0, layer
            assert by_format["int4"] > by_format["fp8_e4m3"] > 0, layer


def test_the_joint_run_learns_the_scales_and_leaves_the_supernet_alone(
    space: SearchSpace, supernet: Supernet, data: DataSplits, indicators: Indicators
) -> None:
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    learned = learn_indicators(supernet, space, space.largest(), data.train, steps=STEPS, batch_size=32, seed=0)
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The same seed reproduces the indicators exactly; they are learned, so one more step changes them.
    assert learned == indicators
    longer = learn_indicators(supernet, space, space.largest(), data.train, steps=STEPS + 1, batch_size=32, seed=0)
    assert longer.weights["blocks.1.0.conv_pw"]["int4"] != learned.weights["blocks.1.0.conv_pw"]["int4"]


def test_an_interrupted_indicator_run_resumes_to_the_uninterrupted_indicators(
    space: SearchSpace, supernet: Supernet, data: DataSplits, indicators: Indicators, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(automq.strategies._checkpoint, "CHECKPOINT_EVERY_S", 0.0)  # save after every step
    config = {"steps": STEPS, "seed": 0}
    learn = functools.partial(learn_indicators, supernet, space, space.largest(), data.train, steps=STEPS,
                              batch_size=32, seed=0)
    with monkeypatch.context() as patch:
        patch.setattr(limpq, "endless_batches", interrupted_after(4, limpq.endless_batches))
        with pytest.raises(KeyboardInterrupt):
            learn(checkpoint=PhaseCheckpoint(tmp_path, "indicators", config))
    assert safe_torch_load(tmp_path / "indicators.pt")["state"]["step"] == 4
    assert learn(checkpoint=PhaseCheckpoint(tmp_path, "indicators", config)) == indicators
    # The finished run's checkpoint holds the indicators: a search resumed after it trains no more.
    with monkeypatch.context() as patch:
        patch.setattr(limpq, "endless_batches", interrupted_after(0, limpq.endless_batches))
        assert learn(checkpoint=PhaseCheckpoint(tmp_path, "indicators", config)) == indicators
        with pytest.raises(KeyboardInterrupt):  # another configuration's checkpoint is not used
            learn(checkpoint=PhaseCheckpoint(tmp_path, "indicators", {**config, "seed": 1}))


def test_step_is_the_learned_range_per_level_or_the_error_equivalent_step() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    quant = Quantizer(["int4", "fp8_e4m3", "mxfp4_e2m1"], channels=4, signed=True)  # no fp4_e2m1: MX takes "error"
    quant(x, "int4")
    with torch.no_grad():
        quant.scales["int4"].copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    # float32 scales (eps/2 each) summed and scaled in a few more roundings: 8 eps covers them
    tolerance = 8 * EPS32
    assert _step(quant, "int4", x) == pytest.approx(0.25, rel=tolerance)  # LSQ step, mean over channels
    quant(x, "fp8_e4m3")
    with torch.no_grad():
        quant.scales["fp8_e4m3"].fill_(0.01)
    assert _step(quant, "fp8_e4m3", x) == pytest.approx(0.01 * 448 / 127, rel=tolerance)  # range / 127 levels
    error = quant(x, "mxfp4_e2m1") - x
    # a uniform grid of step d has RMS error d / sqrt(12); both sides take the same float32 mean of squares
    for mx_step in ("element", "error"):
        assert _step(quant, "mxfp4_e2m1", x, mx_step) == pytest.approx(
            math.sqrt(12 * float(error.square().mean())), rel=tolerance)


def test_an_mx_step_is_its_element_formats_learned_step_scaled_by_their_rounding_errors() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    quant = Quantizer(["fp4_e2m1", "mxfp4_e2m1"], channels=4, signed=True)
    quant(x, "fp4_e2m1")
    with torch.no_grad():
        quant.scales["fp4_e2m1"].copy_(torch.tensor([0.2, 0.3, 0.4, 0.5]))
        mx_error = float((quant(x, "mxfp4_e2m1") - x).square().mean().sqrt())
        fp4_error = float((quant(x, "fp4_e2m1") - x).square().mean().sqrt())
    assert 0 < mx_error < fp4_error  # blocks of 32 fit their range better than these coarse per-row scales
    fp4_step = 0.35 * 6 / 7  # mean scale times E2M1's largest element over its 7 positive levels
    tolerance = 16 * EPS32  # the float32 scales and means of squares, then a few products
    assert _step(quant, "mxfp4_e2m1", x) == pytest.approx(fp4_step * mx_error / fp4_error, rel=tolerance)
    assert _step(quant, "mxfp4_e2m1", x, "error") == pytest.approx(math.sqrt(12) * mx_error, rel=tolerance)


def test_the_element_counterpart_of_each_mx_format_has_its_grid_and_a_learned_scale() -> None:
    assert {fmt: limpq.element_counterpart(fmt) for fmt in ("mxfp8_e4m3", "mxfp6_e3m2", "mxfp4_e2m1", "mxint8",
                                                          "fp4_e2m1", "int8", "fp16", "fp32")} == {
        "mxfp8_e4m3": "fp8_e4m3", "mxfp6_e3m2": "fp6_e3m2", "mxfp4_e2m1": "fp4_e2m1", "mxint8": "int8",
        "fp4_e2m1": None, "int8": None, "fp16": None, "fp32": None}


def test_objective_is_activation_plus_alpha_times_weight(space: SearchSpace, indicators: Indicators) -> None:
    formats = FormatProblem.build(space, space.largest())
    objective = indicators.objective(formats, alpha=2.0)
    problem = formats.problem
    for flat in (0, 5, problem.size - 1):
        layer = problem.layers[int(problem.layer_of[flat])]
        w, a = problem.options[int(problem.layer_of[flat])][flat - int(problem.starts[problem.layer_of[flat]])]
        expected = indicators.activations[layer][a] + 2.0 * indicators.weights[layer][w]
        assert objective[flat] == pytest.approx(expected, rel=2 * EPS64)  # 2 roundings


def test_limpq_traces_a_front_within_the_budget(space: SearchSpace, supernet: Supernet, data: DataSplits,
                                                tiny_space: SpaceFactory) -> None:
    limit = 0.6 * CostModel(space).metrics(space.largest())["bitops"]
    budgeted = tiny_space(SPACE_CHANGES, budgets={"bitops": limit})
    strategy = create_strategy("limpq", steps=STEPS, batch_size=32)
    assert isinstance(strategy, LIMPQ)
    trials = strategy.run(budgeted, estimator(budgeted, supernet, data), Budget(4), seed=0)
    assert 2 <= len(trials) <= 4 and all(t.status == "ok" for t in trials)
    bitops = [t.metrics["bitops"] for t in trials]
    assert bitops == sorted(bitops) and bitops[-1] <= limit
    for trial in trials:
        budgeted.validate_candidate(trial.candidate)
        assert trial.candidate.blocks == space.largest().blocks
        assert trial.metrics["bitops"] <= trial.info["budget"]["bitops"]
        assert trial.info["solver"] == "milp" and trial.info["solve_s"] < 1.0
    # the lowest level is the cheapest assignment there is
    assignment = FormatProblem.build(space, space.largest()).problem
    # per-layer BitOps summed in two orders: one float64 rounding per layer at most
    assert bitops[0] == pytest.approx(assignment.extreme_cost("bitops"), rel=len(assignment.layers) * EPS64)


def test_infeasible_budget_fails_before_training(space: SearchSpace, supernet: Supernet, data: DataSplits,
                                                 tiny_space: SpaceFactory) -> None:
    # feasible for the space (its smallest candidate is shallower) but not for the largest architecture
    smallest = FormatProblem.build(space, space.largest()).problem.extreme_cost("size")
    impossible = tiny_space(SPACE_CHANGES, budgets={"size": smallest - 1})
    with pytest.raises(BudgetError, match=f"smallest size reachable .* is {smallest:.6g}"):
        LIMPQ(steps=10_000).run(impossible, estimator(impossible, supernet, data), Budget(3))


def test_the_indicator_is_the_learned_step_itself(space: SearchSpace, supernet: Supernet, data: DataSplits) -> None:
    layer = "blocks.1.0.conv_pw"
    net = copy.deepcopy(supernet)
    quantizers = net.quant_layers()[layer]
    with torch.no_grad():  # steps set by hand, marked as learned so that nothing re-initialises them
        for quant, fmt, step in ((quantizers.w_quant, "int4", 0.03), (quantizers.a_quant, "int8", 0.05)):
            quant.scales[fmt].fill_(step)
            getattr(quant, f"initialised_{fmt}").fill_(True)
    learn = functools.partial(learn_indicators, net, space, space.largest(), data.train, steps=0, batch_size=32)
    raw = learn()  # no training step: the indicators are the steps as set
    assert abs(raw.weights[layer]["int4"] - 0.03) <= 2 * EPS32 * 0.03  # the float32 value read back
    assert abs(raw.activations[layer]["int8"] - 0.05) <= 2 * EPS32 * 0.05
    normalised = learn(indicator="normalised")
    net.set_active(space.largest())
    weight = quantizers.weight_of(quantizers.active).detach().double().numpy()
    rms = float(np.sqrt(np.mean(weight**2)))
    # the step over the RMS of the weight: float32 step and sums of the weight's squares
    assert abs(normalised.weights[layer]["int4"] - 0.03 / rms) <= weight.size * EPS32 * 0.03 / rms


def test_a_non_monotone_indicator_is_erased_and_chosen_only_when_nothing_else_fits() -> None:
    # layer a: int2's indicator (1.5) is below int4's (2.0), so int2 is erased there; layer b is monotone.
    indicators = Indicators(
        weights={"a": {"int2": 1.5, "int4": 2.0, "int8": 1.0}, "b": {"int2": 4.0, "int4": 2.0, "int8": 1.0}},
        activations={"a": {"int8": 0.5}, "b": {"int8": 0.5}},
    )
    assert indicators.erased() == {"weights": {"a": {"int2"}, "b": set()}, "activations": {"a": set(), "b": set()}}
    options = (("int2", "int8"), ("int4", "int8"), ("int8", "int8"))
    problem = AssignmentProblem(("a", "b"), (options, options), {"bitops": np.array([2.0, 4, 8, 2, 4, 8])})
    objective = indicators.objective(SimpleNamespace(problem=problem), alpha=1.0)
    # kept options cost I_a + I_w: a [-, 2.5, 1.5], b [4.5, 2.5, 1.5]; prohibitive = 1 + 2.5 + 4.5 = 8, so the
    # erased a:int2 costs 2.0 + 8
    expected = np.array([10.0, 2.5, 1.5, 4.5, 2.5, 1.5])
    assert np.all(np.abs(objective - expected) <= 4 * EPS64 * 10)
    # bitops <= 8: without erasing, (int2, int4) = 4.5 would win; with it, (int4, int4) = 5.0
    assert solve_linear(problem, objective, {"bitops": 8.0}).choice == (1, 1)
    assert solve_linear(problem, objective, {"bitops": 4.0}).choice == (0, 0)  # the only choice that fits


def test_the_uniform_schedule_trains_every_uniform_configuration_and_one_random_per_batch(
    space: SearchSpace, supernet: Supernet, data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    menus = {name: space.layer_menu(name) for name in (spec.name for spec in layer_specs(space, space.largest()))}
    # By bits: int2 (its activation: int4, the nearest), int4, mxfp4_e2m1 (4.25 bits; activation int4),
    # fp8_e4m3 (8 bits: weights take int8, the only 8-bit weight format), int8; the classifier's menu is int8 only.
    pairs = [("int2", "int4"), ("int4", "int4"), ("mxfp4_e2m1", "int4"), ("int8", "fp8_e4m3"), ("int8", "int8")]
    expected = [{name: ("int8", "int8") if name == "classifier" else pair for name in menus} for pair in pairs]
    assert uniform_configurations(menus) == expected
    activated = []
    original = limpq._activate
    monkeypatch.setattr(limpq, "_activate", lambda layers, specs, configuration: (
        activated.append(configuration), original(layers, specs, configuration)))
    learn_indicators(supernet, space, space.largest(), data.train, steps=2, batch_size=32, seed=0)
    per_step = len(expected) + 1
    assert len(activated) == 2 * per_step
    for step in range(2):
        assert activated[step * per_step : step * per_step + len(expected)] == expected
        random = activated[step * per_step + len(expected)]
        assert all(w in menus[name][0] and a in menus[name][1] for name, (w, a) in random.items())
    activated.clear()
    learn_indicators(supernet, space, space.largest(), data.train, steps=2, batch_size=32, seed=0, schedule="random")
    assert len(activated) == 2


def test_rejects_bad_hyper_parameters() -> None:
    with pytest.raises(ValueError, match="alpha"):
        LIMPQ(alpha=-1.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        LIMPQ(schedule="uniform")
    with pytest.raises(ValueError, match="indicator one of"):
        LIMPQ(indicator="rms")
    with pytest.raises(ValueError, match="mx_step one of"):
        LIMPQ(mx_step="learned")
    with pytest.raises(ValueError, match="metric"):
        LIMPQ(metric="accuracy")
    assert np.isfinite(LIMPQ().alpha)
