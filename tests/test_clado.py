"""CLADO: the PSD projection is the nearest PSD matrix, the cached measurement equals plain full forward passes,
the matrix follows the paper's definition, with no budget the highest precision wins everywhere (the sanity check
the authors' code fails), and both variants trace fronts of valid candidates within budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import automq.strategies._checkpoint
from automq.cost import CostModel
from automq.data import DataSplits, fixed_batches
from automq.oneshot.evaluate import OneShotEstimator
from automq.space.space import SearchSpace
from automq.strategies import clado
from automq.strategies._assign import FormatProblem
from automq.strategies._checkpoint import PhaseCheckpoint
from automq.strategies._solvers import AssignmentProblem, solve_quadratic
from automq.strategies.clado import (
    CLADO,
    CLADODiagonal,
    Sensitivities,
    measure_sensitivities,
    nearest_psd,
    network_units,
    reference_choice,
)
from automq.search.strategy import Budget, create_strategy
from automq.model.supernet import Supernet, recalibrate_bn
from automq.oneshot.train import load_space_data

from _interrupt import Calls
from _spaces import DS_STAGE, IR_STAGE, SpaceFactory

SPACE_CHANGES = {
    "name": "clado",
    "dataset": {"val_size": 64},
    "network": {"stages": [DS_STAGE, {**IR_STAGE, "kernel_size": [3], "expand_ratio": [2]}], "width_mult": [1.0]},
    "formats": {  # three searched layers with three weight formats each; the rest fixed at int8
        "weights": ["int8"],
        "activations": ["int8", "int4"],
        "overrides": [{"layers": r"blocks\.1\.\d\.conv_pw|conv_head", "weights": ["int8", "int4", "int2"]}],
    },
    "objectives": [{"metric": "accuracy"}, {"metric": "size", "mode": "min"}],
    "search": {"eval_size": 64, "calib_size": 64},
}
CALIB = 64


def test_nearest_psd_clips_negative_eigenvalues() -> None:
    projected = nearest_psd(np.array([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3 (along [1, 1]) and -1
    np.testing.assert_allclose(projected, np.full((2, 2), 1.5))
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(12, 12))
    projected = nearest_psd(matrix)
    assert np.linalg.eigvalsh(projected).min() >= -1e-9
    np.testing.assert_allclose(projected, projected.T)
    distance = np.linalg.norm(matrix - projected)
    for _ in range(200):  # no PSD matrix is nearer (Frobenius): random ones, and small moves away from the answer
        a = rng.normal(size=(12, 12))
        assert np.linalg.norm(matrix - a @ a.T) >= distance
        b = 1e-3 * rng.normal(size=(12, 12))
        moved = nearest_psd(projected + b @ b.T) if rng.random() < 0.5 else projected + b @ b.T
        assert np.linalg.norm(matrix - moved) >= distance - 1e-12
    psd = matrix @ matrix.T
    np.testing.assert_allclose(nearest_psd(psd), psd, atol=1e-9)


def test_matrix_follows_the_paper() -> None:
    single = np.array([0.0, 0.3, 0.0, 0.5])
    interaction = np.zeros((4, 4))
    interaction[1, 3] = interaction[3, 1] = 1.0 - 0.3 - 0.5  # dL_ij = 1.0
    matrix = Sensitivities(single, interaction, 3, 0, 1, 1, 0.0).matrix()
    np.testing.assert_allclose(matrix, [[0, 0, 0, 0], [0, 0.6, 0, 0.2], [0, 0, 0, 0], [0, 0.2, 0, 1.0]])
    # x^T G x / 2 is dL_i + dL_j + interaction = the measured pair change
    x = np.array([0, 1, 0, 1])
    assert x @ matrix @ x / 2 == pytest.approx(1.0)


@pytest.fixture(scope="module")
def space(tiny_space: SpaceFactory) -> SearchSpace:
    return tiny_space(SPACE_CHANGES)


@pytest.fixture(scope="module")
def data(space: SearchSpace) -> DataSplits:
    return load_space_data(space, train_subset=CALIB)


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    torch.manual_seed(0)
    return Supernet(space)


def test_the_reference_is_fp32_where_the_menu_has_it(tiny_space: SpaceFactory) -> None:
    """The paper measures every sensitivity against the full-precision model: where a layer's menus hold fp32, the
    reference assignment is fp32; elsewhere it is the menu's top (int8 here), the best the supernet can run."""
    menus = {"weights": ["int8"], "activations": ["int8", "fp32"],
             "overrides": [{"layers": r"blocks\.1\.\d\.conv_pw|conv_head", "weights": ["int4", "fp32", "int8"]}]}
    space = tiny_space({**SPACE_CHANGES, "name": "clado_fp32", "formats": menus})
    formats = FormatProblem.build(space, space.largest(), options="joint")
    chosen = {name: options[i] for name, options, i in
              zip(formats.problem.layers, formats.problem.options, reference_choice(formats))}
    searched = {"blocks.1.0.conv_pw", "blocks.1.1.conv_pw", "conv_head"}
    assert searched <= set(chosen)
    assert all(pair == (("fp32", "fp32") if name in searched else ("int8", "fp32")) for name, pair in chosen.items())


def test_units_compose_to_the_forward(space: SearchSpace, supernet: Supernet, data: DataSplits) -> None:
    x = data.train.tensors[0][:8]
    for arch in (space.largest(), space.smallest()):
        supernet.set_active(arch)
        units, unit_of = network_units(supernet)
        assert len(units) == 2 + sum(arch.depths) and set(unit_of) == {n for n, *_ in arch.formats}
        with torch.no_grad():
            out = x
            for unit in units:
                out = unit(out)
            assert torch.equal(out, supernet(x))


@pytest.fixture(scope="module")
def joint(space: SearchSpace, supernet: Supernet, data: DataSplits) -> tuple[FormatProblem, Sensitivities]:
    """Joint (w_fmt, a_fmt) options: every layer has a choice (int8 or int4 activations)."""
    formats = FormatProblem.build(space, space.largest(), options="joint")
    return formats, measure_sensitivities(supernet, formats, fixed_batches(data.train, CALIB, 32))


def test_cached_measurement_equals_full_forward_passes(
    space: SearchSpace, supernet: Supernet, data: DataSplits, joint: tuple[FormatProblem, Sensitivities]
) -> None:
    formats, measured = joint
    batches = fixed_batches(data.train, CALIB, 32)
    problem, reference = formats.problem, reference_choice(formats)
    assert reference == [0] * len(problem.layers)

    net = type(supernet)(space)
    net.load_state_dict(supernet.state_dict())
    net.set_active(formats.candidate(reference))
    recalibrate_bn(net, batches)
    net.eval()

    def loss(choice: list[int]) -> float:  # an independent path: set the whole candidate, full forwards
        net.set_active(formats.candidate(choice))
        with torch.no_grad():
            return sum(float(F.cross_entropy(net(x), y, reduction="sum")) for x, y in batches) / CALIB

    base = loss(reference)
    rng = np.random.default_rng(0)
    for _ in range(4):
        i, j = sorted(rng.choice(len(problem.layers), 2, replace=False))
        s, t = (int(rng.integers(1, len(problem.options[k]))) for k in (i, j))
        a, b = problem.starts[i] + s, problem.starts[j] + t
        single_i = loss([s if k == i else 0 for k in range(len(reference))]) - base
        single_j = loss([t if k == j else 0 for k in range(len(reference))]) - base
        both = loss([s if k == i else t if k == j else 0 for k in range(len(reference))]) - base
        # Each loss is a mean of float32 cross-entropy sums over batches of 32, within 32 roundings of eps/2 of
        # the largest loss whatever the summation order; both sides combine two losses (single) or four
        per_loss = 32 * torch.finfo(torch.float32).eps / 2 * (base + max(0.0, single_i, single_j, both))
        assert measured.single[a] == pytest.approx(single_i, abs=2 * 2 * per_loss)
        assert measured.interaction[a, b] == pytest.approx(both - single_i - single_j, abs=2 * 4 * per_loss)
        assert measured.interaction[b, a] == measured.interaction[a, b]
    assert not measured.single[problem.starts].any() and not measured.interaction[problem.starts].any()
    n = problem.size - len(problem.layers)  # non-reference options
    same_layer = sum((len(o) - 1) * (len(o) - 2) // 2 for o in problem.options)
    assert measured.evaluations == n + n * (n - 1) // 2 - same_layer
    assert measured.unit_forwards < measured.evaluations * measured.units  # the caching saves work


@pytest.mark.parametrize("stop", [0.3, 0.5, 0.6, 0.9])  # share of the loss evaluations made before the stop
def test_an_interrupted_measurement_resumes_to_the_uninterrupted_sensitivities(
    supernet: Supernet, data: DataSplits, joint: tuple[FormatProblem, Sensitivities], stop: float, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    formats, whole = joint
    batches = fixed_batches(data.train, CALIB, 32)
    per_batch = 1 + whole.evaluations  # loss sums of a batch: its clean loss, then every single and pair
    total, variants = len(batches) * per_batch, problem_variants(formats)
    monkeypatch.setattr(automq.strategies._checkpoint, "CHECKPOINT_EVERY_S", 0.0)
    checkpoint = PhaseCheckpoint(tmp_path, "clado", {})
    stopped = Calls(clado._loss_sum, stop=round(stop * total))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(clado, "_loss_sum", stopped)
        measure_sensitivities(supernet, formats, batches, checkpoint=checkpoint)
    resumed_calls = Calls(clado._loss_sum)
    with monkeypatch.context() as patch:
        patch.setattr(clado, "_loss_sum", resumed_calls)
        resumed = measure_sensitivities(supernet, formats, batches, checkpoint=PhaseCheckpoint(tmp_path, "clado", {}))
    np.testing.assert_array_equal(resumed.single, whole.single)  # the same sums in the same order: exact
    np.testing.assert_array_equal(resumed.interaction, whole.interaction)
    assert {**resumed.summary(), "measure_s": 0} == {**whole.summary(), "measure_s": 0}
    # continued from the last finished pair row (or batch, when stopped in its singles), not started over
    assert resumed_calls.count <= total - stopped.count + 1 + variants


def problem_variants(formats: FormatProblem) -> int:
    """The non-reference options: the singles of one batch."""
    return formats.problem.size - len(formats.problem.layers)


def test_no_budget_keeps_the_highest_precision(joint: tuple[FormatProblem, Sensitivities]) -> None:
    formats, measured = joint
    solution = solve_quadratic(formats.problem, nearest_psd(measured.matrix()), {})
    assert list(solution.choice) == reference_choice(formats)
    # Unprojected, a negative eigenvalue can make quantizing "better" than full precision: the projection is
    # what makes this check pass. A hand-made G: two layers whose int4 options look jointly beneficial.
    problem = AssignmentProblem(("a", "b"), (("int8", "int4"), ("int8", "int4")), {"size": np.array([2, 1, 2, 1.0])})
    raw = np.zeros((4, 4))
    raw[1, 1], raw[3, 3], raw[1, 3], raw[3, 1] = 0.2, 0.2, -0.5, -0.5
    assert solve_quadratic(problem, raw, {}).choice == (1, 1)
    assert solve_quadratic(problem, nearest_psd(raw), {}).choice == (0, 0)


@pytest.mark.parametrize("name", ["clado", "clado_diag"])
def test_fronts_respect_the_budget(space: SearchSpace, supernet: Supernet, data: DataSplits, name: str,
                                   tiny_space: SpaceFactory) -> None:
    limit = 0.9 * CostModel(space).metrics(space.largest())["size"]
    budgeted = tiny_space(SPACE_CHANGES, budgets={"size": limit})
    estimator = OneShotEstimator(budgeted, supernet, data, batch_size=32)
    strategy = create_strategy(name, calib_images=CALIB, batch_size=32)
    assert isinstance(strategy, CLADODiagonal if name == "clado_diag" else CLADO)
    trials = strategy.run(budgeted, estimator, Budget(3), seed=0)
    assert trials and all(t.status == "ok" for t in trials)
    for trial in trials:
        budgeted.validate_candidate(trial.candidate)
        assert trial.metrics["size"] <= min(limit, trial.info["budget"]["size"])
        # 3 layers x 2 non-reference weight formats: 6 singles, and 3 layer pairs x 2 x 2 = 12 pairs
        assert trial.info["loss_evaluations"] == (18 if name == "clado" else 6)
        assert {w for _, w, _ in trial.candidate.formats} <= {"int8", "int4", "int2"}
        assert {a for _, _, a in trial.candidate.formats} == {"int8"}  # weights only: activations at the top
