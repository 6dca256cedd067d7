import numpy as np
import pytest

from automq.search.pareto import Objective, front_hypervolume, hypervolume, loss_vectors, pareto_mask, reference_point

ACC_BITOPS = [Objective("accuracy", "max"), Objective("bitops", "min")]
# a few float64 products and sums of values of order 1: 16 eps
TOLERANCE = 16 * np.finfo(np.float64).eps


def brute_force_front(losses: np.ndarray) -> np.ndarray:
    def dominated(i: int) -> bool:
        return any(np.all(losses[j] <= losses[i]) and np.any(losses[j] < losses[i]) for j in range(len(losses)))

    return np.array([not dominated(i) for i in range(len(losses))])


@pytest.mark.parametrize("seed", range(5))
def test_pareto_mask_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    losses = rng.integers(0, 6, size=(40, 3)).astype(float)  # small integers force ties and duplicates
    assert np.array_equal(pareto_mask(losses), brute_force_front(losses))


def test_loss_vectors_normalise_each_objective():
    metrics = [{"accuracy": 0.9, "bitops": 50.0}, {"accuracy": 0.6, "bitops": 10.0}]
    losses = loss_vectors(metrics, ACC_BITOPS, scales={"bitops": 100.0})
    np.testing.assert_allclose(losses, [[0.1, 0.5], [0.4, 0.1]], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(reference_point(ACC_BITOPS), [1.0, 1.1], rtol=0, atol=TOLERANCE)


def test_hypervolume_of_two_points_by_hand():
    # Two boxes up to (1, 1.1): (1-0.1)*(1.1-0.5) + (1-0.4)*(1.1-0.1) - overlap (1-0.4)*(1.1-0.5)
    metrics = [{"accuracy": 0.9, "bitops": 50.0}, {"accuracy": 0.6, "bitops": 10.0}]
    expected = 0.9 * 0.6 + 0.6 * 1.0 - 0.6 * 0.6
    assert front_hypervolume(metrics, ACC_BITOPS, {"bitops": 100.0}) == pytest.approx(expected, abs=TOLERANCE)


def test_hypervolume_equals_monte_carlo_in_3d():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0, 1, size=(12, 3))
    ref = np.ones(3)
    samples = rng.uniform(0, 1, size=(200_000, 3))
    covered = np.zeros(len(samples), dtype=bool)
    for point in losses:
        covered |= np.all(samples >= point, axis=1)
    # a Monte Carlo proportion of 200 000 points has a standard error <= sqrt(0.25 / 200 000) = 0.0011: 4.5 of them
    assert hypervolume(losses, ref) == pytest.approx(covered.mean(), abs=0.005)


def test_points_beyond_reference_add_nothing():
    assert hypervolume(np.array([[2.0, 0.5]]), np.array([1.0, 1.0])) == 0.0
    assert hypervolume(np.zeros((0, 2)), np.ones(2)) == 0.0
    inside = hypervolume(np.array([[0.5, 0.5]]), np.ones(2))
    assert inside == pytest.approx(0.25, abs=TOLERANCE)
    assert hypervolume(np.array([[0.5, 0.5], [2.0, 0.0]]), np.ones(2)) == pytest.approx(0.25, abs=TOLERANCE)


def test_dominated_points_do_not_change_hypervolume():
    front = np.array([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]])
    extra = np.array([[0.6, 0.6], [0.95, 0.95]])
    # staircase by hand: 0.9 * 0.1 + 0.5 * (0.5 - 0.1) + 0.1 * (0.9 - 0.5)
    assert hypervolume(front, np.ones(2)) == pytest.approx(0.33, abs=TOLERANCE)
    assert hypervolume(np.vstack([front, extra]), np.ones(2)) == pytest.approx(0.33, abs=TOLERANCE)


def test_objective_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        Objective("accuracy", "maximize")
