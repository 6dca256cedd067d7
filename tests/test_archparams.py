"""Tests for strategies/_archparams.py: the decision table, the categorical distributions and the exact expected
cost (against the cost model on one-hot tables, and against brute-force enumeration on soft ones)."""

import itertools
import math

import numpy as np
import pytest
import torch

from automq.cost import CostModel
from automq.errors import BudgetError
from automq.space.space import SearchSpace
from automq.strategies._archparams import ArchParams, DecisionTable, EtaLogits, ExpectedCost

from _spaces import EVERY_DECISION, IR_STAGE, SpaceFactory

# EVERY_DECISION cut to its ir stage: few enough rows (10 binary decisions) to enumerate every assignment.
SMALL = {
    "network": {"stages": [{**IR_STAGE, "expand_ratio": [2, 4]}]},
    "formats": {
        "weights": ["int4", "int8"],
        "activations": ["int8", "fp8_e4m3"],
        "overrides": [{"layers": r"conv_stem|conv_head|classifier|blocks\.0\.\d\.conv_(dw|pwl)",
                       "weights": ["int8"], "activations": ["int8"]}],
    },
}
ADDITIVE = ("bitops", "size", "macs", "params", "energy")
EPS32, EPS64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def space(tiny_space: SpaceFactory) -> SearchSpace:
    return tiny_space(EVERY_DECISION)


@pytest.fixture(scope="module")
def table(space: SearchSpace) -> DecisionTable:
    return DecisionTable(space)


def test_table_rows_follow_the_space_decisions(space: SearchSpace, table: DecisionTable) -> None:
    assert table.names == [d.name for d in space.decisions()]
    assert table.shape == (len(space.decisions()), 3)
    valid = table.valid()
    assert valid.sum().item() == sum(len(d.choices) for d in space.decisions())
    assert table.rows_where(("w_fmt",)).sum().item() == sum(n.endswith(".w_fmt") for n in table.names)


def test_candidates_round_trip_through_choice_indices(space: SearchSpace, table: DecisionTable) -> None:
    for seed in range(10):
        candidate = space.sample(seed)
        assert table.candidate(table.choice_of(candidate)) == candidate
        assert torch.equal(table.one_hot(candidate).argmax(dim=1), torch.tensor(table.choice_of(candidate)))
        active = {table.names[r] for r in table.active_rows(candidate)}
        assert active == set(space.choices_of(candidate))


@pytest.mark.parametrize("metric", ADDITIVE)
def test_expected_cost_of_a_one_hot_table_is_exactly_the_cost_model(space, table, metric) -> None:
    expected, model = ExpectedCost(table, metric), CostModel(space)
    candidates = [space.sample(seed) for seed in range(12)] + [space.smallest(), space.largest()]
    for candidate in candidates:
        assert float(expected(table.one_hot(candidate))) == model.metrics(candidate)[metric]


def test_expected_cost_equals_brute_force_enumeration(tiny_space: SpaceFactory) -> None:
    space = tiny_space(EVERY_DECISION, SMALL)
    table = DecisionTable(space)
    assert len(table.names) == 10
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(table.shape, generator=generator, dtype=torch.float64), dim=1)
    model = CostModel(space)
    brute = {metric: 0.0 for metric in ADDITIVE}
    for choice in itertools.product(*(range(len(d.choices)) for d in table.decisions)):
        weight = math.prod(float(probs[row, c]) for row, c in enumerate(choice))
        costs = model.metrics(table.candidate(choice))
        for metric in ADDITIVE:
            brute[metric] += weight * costs[metric]
    # float64 sums of 2^10 products of 10 factors: (2^10 + 10) roundings of eps/2 at most, with a factor 2 margin
    brute_tolerance = (2**10 + 10) * EPS64
    for metric in ADDITIVE:
        assert float(ExpectedCost(table, metric)(probs)) == pytest.approx(brute[metric], rel=brute_tolerance)


def test_expected_cost_gradient_matches_finite_differences(table: DecisionTable) -> None:
    expected = ExpectedCost(table, "bitops")
    probs = torch.rand(table.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scale = float(expected(probs))
    assert torch.autograd.gradcheck(lambda p: expected(p) / scale, (probs.requires_grad_(),))


def test_expected_cost_rejects_metrics_that_are_not_sums(table: DecisionTable) -> None:
    with pytest.raises(BudgetError, match="peak_act"):
        ExpectedCost(table, "peak_act")


def test_probabilities_entropy_certainty_and_log_prob_by_hand(table: DecisionTable) -> None:
    arch = ArchParams(table)
    row = table.index["width_mult"]  # two choices
    with torch.no_grad():
        arch.source.logits[row, :2] = torch.tensor([0.0, math.log(3.0)])
    p = [0.25, 0.75]
    # float32 results of a few roundings (each <= eps/2 relative) on values of order 1: 8 eps covers them
    tolerance = 8 * EPS32
    assert arch.probs()[row, :2].tolist() == pytest.approx(p, rel=tolerance)
    assert arch.probs()[row, 2].item() == 0.0  # padding
    entropy = -sum(q * math.log(q) for q in p)
    assert arch.entropy()[row].item() == pytest.approx(entropy, rel=tolerance)
    assert arch.entropy(normalised=True)[row].item() == pytest.approx(entropy / math.log(2), rel=tolerance)
    assert arch.certainty()[row].item() == pytest.approx((0.75 - 0.5) / 0.5, rel=tolerance)
    uniform = table.index["blocks.1.0.conv_pw.w_fmt"]  # three choices, uniform logits
    assert arch.certainty()[uniform].item() == pytest.approx(0.0, abs=tolerance)
    assert arch.entropy(normalised=True)[uniform].item() == pytest.approx(1.0, rel=tolerance)
    choice = arch.argmax()
    assert choice[row] == 1 and all(c == 0 for r, c in enumerate(choice) if r != row)  # ties pick the first
    # every other row is uniform over its choices: log p = log 0.75 - sum of log(choices) of the others
    log_prob = math.log(0.75) - sum(math.log(len(d.choices)) for r, d in enumerate(table.decisions) if r != row)
    # a float32 sum of one log-softmax per row: about one rounding per row on values of order 1
    assert arch.log_prob(choice).item() == pytest.approx(log_prob, rel=tolerance * len(choice))


def test_gumbel_samples_are_one_hot_and_follow_the_softmax(table: DecisionTable) -> None:
    arch = ArchParams(table)
    row = table.index["blocks.1.0.conv_pw.w_fmt"]
    with torch.no_grad():
        arch.source.logits[row, :3] = torch.tensor([0.0, 1.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(3000):
        sample = arch.sample(generator)
        assert torch.equal(sample.detach().sum(dim=1), torch.ones(table.shape[0]))
        assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
        counts += sample.detach()[row, :3]
    # 3000 draws: a frequency's standard error is at most sqrt(0.25 / 3000) = 0.009, so 0.03 is over 3 of them
    softmax = [1 / (1 + math.e + math.e**2) * math.e**k for k in range(3)]
    assert (counts / 3000).tolist() == pytest.approx(softmax, abs=0.03)


def softmax_jacobian_parameters(jacobian: np.ndarray) -> tuple[np.ndarray, float]:
    """The point ``s`` and temperature ``T`` of a 3-way softmax Jacobian ``(diag(s) - s s^T) / T``, from its
    off-diagonal entries ``-s_k s_l / T``: ``s_k^2 / T = -J_kl J_km / J_lm`` for the three distinct indices, and
    ``sum(s) = 1`` fixes ``T``."""
    scaled = np.array([math.sqrt(-jacobian[k, l] * jacobian[k, m] / jacobian[l, m])
                       for k, l, m in ((0, 1, 2), (1, 0, 2), (2, 0, 1))])  # s_k / sqrt(T)
    return scaled / scaled.sum(), 1 / scaled.sum() ** 2


def test_gumbel_straight_through_gradient_is_the_relaxed_samples_softmax_jacobian(table: DecisionTable) -> None:
    """The gradient of a sample must be the Jacobian of a softmax at the requested temperature, taken at a
    perturbed point whose argmax is the sampled choice. Read from autograd alone (no re-drawn noise): the
    temperature and the relaxed sample are recovered from the Jacobian's entries."""
    arch = ArchParams(table)
    row = table.index["blocks.1.0.conv_pw.w_fmt"]
    with torch.no_grad():
        arch.source.logits[row, :3] = torch.tensor([0.0, 1.0, 2.0])
    temperature, chosen = 0.7, set()
    for seed in range(10):
        jacobian = np.zeros((3, 3))
        for k in range(3):  # row k: the gradient of the sample's k-th entry (the same noise every time)
            arch.zero_grad()
            sample = arch.sample(torch.Generator().manual_seed(seed), temperature=temperature)
            sample[row, k].backward()
            jacobian[k] = arch.source.logits.grad[row, :3].double().numpy()
        relaxed, recovered_temperature = softmax_jacobian_parameters(jacobian)
        # Each off-diagonal entry -s_k s_l / T is a float32 product and quotient (<= 1 eps relative); s_k^2 / T
        # multiplies three of them (3 eps), s_k halves it, T = 1 / (sum s_k / sqrt T)^2 doubles it again, and
        # T itself is float32(0.7) (0.5 eps): 4 eps, asserted with a factor 2 of margin. (Entries are compared,
        # not a weighted sum J^T v: with v = (1, 2, 3) its last entry s_3 (3 - s.v) / T cancels 3 - 2.72, which
        # multiplies the relative error by ~10, to 9.2e-7 here: pytest.approx's default 1e-6 failed elsewhere.)
        assert recovered_temperature == pytest.approx(temperature, rel=8 * EPS32)
        # rows sum to zero iff sum(s) = 1 (softmax's normalisation, ~3 eps) for the s of the off-diagonals
        assert np.abs(jacobian.sum(axis=1)).max() <= 8 * EPS32 / temperature
        chosen.add(int(sample.detach()[row, :3].argmax()))
        assert int(np.argmax(relaxed)) == int(sample.detach()[row, :3].argmax())
    assert len(chosen) > 1  # the relaxed point carries the noise: the sampled choice varies with the seed


def test_fixing_removes_choices_for_good(table: DecisionTable) -> None:
    arch = ArchParams(table)
    row = table.index["blocks.1.0.conv_pw.w_fmt"]
    arch.fix(row, 2)
    assert arch.fixed[row] and arch.fixed.sum() == 1
    assert arch.probs()[row].tolist() == [0.0, 0.0, 1.0]
    assert arch.certainty()[row].item() == 1.0 and arch.entropy()[row].item() == 0.0
    generator = torch.Generator().manual_seed(0)
    assert all(arch.sample(generator)[row].argmax().item() == 2 for _ in range(50))
    with pytest.raises(ValueError, match="already removed"):
        arch.fix(row, 0)
    # the learned preference still ranks the removed choices (for budget repair)
    assert torch.isfinite(arch.preference()[row]).all()


def test_eta_logits_start_uniform_and_learn_a_different_distribution_per_eta(table: DecisionTable) -> None:
    torch.manual_seed(0)
    arch = ArchParams(table, EtaLogits(table.shape, (0.01, 10.0), hidden=16))
    assert torch.equal(arch.probs(0.1), arch.probs(5.0))
    optimizer = torch.optim.Adam(arch.parameters(), lr=0.05)
    row = table.index["width_mult"]
    for _ in range(100):  # low eta prefers choice 1, high eta choice 0
        loss = arch.probs(0.01)[row, 0] + arch.probs(10.0)[row, 1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert arch.argmax(0.01)[row] == 1 and arch.argmax(10.0)[row] == 0
    with pytest.raises(ValueError, match="eta"):
        arch.probs()
