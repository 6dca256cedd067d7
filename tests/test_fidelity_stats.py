"""The statistics behind README's fidelity claims (experiments/fidelity_stats.py, the noise ceiling and the
detrended Spearman of experiments/oneshot_fidelity.py, automq.report.comparison.fidelity_stats), checked against
hand-computed values, closed forms and scipy.stats.bootstrap."""

from __future__ import annotations

import math
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from automq.report.comparison import fidelity_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from fidelity_stats import (  # noqa: E402
    ci95,
    correlations,
    local_tau,
    measured_noise_ceiling,
    neighbour_resolution,
    pair_agreement,
    paired_difference,
    pooled_figures,
    ratio_to_ceiling,
    rank_figures,
    search_figures,
    similar_cost_pairs,
)
from oneshot_fidelity import beyond_bitops, noise_floor, simulated_taus  # noqa: E402

EPS64 = np.finfo(np.float64).eps
# a handful of float64 roundings on values of order 1 (a correlation is a quotient of short sums)
TOLERANCE = 64 * EPS64


# ------------------------------------------------------------------------------------- rank correlations
def test_correlations_by_hand() -> None:
    # pairs (i, j) of [1, 2, 3, 4] vs [1, 3, 2, 4]: only (2, 3) is discordant, so tau = (5 - 1) / 6;
    # rank differences 0, 1, -1, 0 give rho = 1 - 6 * 2 / (4 * 15); the values are their own ranks: r = rho
    figures = correlations([1, 2, 3, 4], [1, 3, 2, 4])
    assert figures["kendall_tau"] == pytest.approx(4 / 6, abs=TOLERANCE)
    assert figures["spearman"] == pytest.approx(0.8, abs=TOLERANCE)
    assert figures["pearson"] == pytest.approx(0.8, abs=TOLERANCE)


def test_correlations_with_ties_are_tau_b_and_average_ranks() -> None:
    # x = [1, 2, 2, 3] vs y = [1, 2, 3, 4]: 5 concordant pairs, 1 tied in x only. Tau-b divides by
    # sqrt((6 - 1) * (6 - 0)), not by 6 (tau-a would be 5 / 6). Average ranks of x: 1, 2.5, 2.5, 4; their
    # deviations -1.5, 0, 0, 1.5 against -1.5, -0.5, 0.5, 1.5 give rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9); the
    # raw x has deviations -1, 0, 0, 1: r = 3 / sqrt(2 * 5)
    figures = correlations([1, 2, 2, 3], [1, 2, 3, 4])
    assert figures["kendall_tau"] == pytest.approx(5 / math.sqrt(30), abs=TOLERANCE)
    assert figures["spearman"] == pytest.approx(math.sqrt(0.9), abs=TOLERANCE)
    assert figures["pearson"] == pytest.approx(3 / math.sqrt(10), abs=TOLERANCE)


def test_correlations_of_fewer_than_three_pairs_are_nan() -> None:
    assert all(math.isnan(v) for v in correlations([1, 2], [2, 1]).values())


def test_ci95_is_the_linearly_interpolated_percentile_ignoring_nan() -> None:
    # 41 values 0..40: the 2.5th percentile sits at position 0.025 * 40 = 1, the 97.5th at 39
    assert ci95([*range(41), math.nan]) == pytest.approx([1.0, 39.0], abs=40 * TOLERANCE)
    # 5 values: position 0.025 * 4 = 0.1 lies a tenth of the way from 10 to 20
    assert ci95([50, 10, 40, 20, 30]) == pytest.approx([11.0, 49.0], abs=50 * TOLERANCE)


# --------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_intervals_of_a_perfect_ranking_are_exact() -> None:
    # Every resample of a strictly increasing y = x with two or more distinct candidates ranks them perfectly
    # (tied duplicates are tied in both), so tau = rho = 1 on all of them; the reversed baseline has tau = -1,
    # a gain of exactly 2. Resamples of a single candidate have no correlation and must be left out.
    x = np.arange(8.0)
    figures = rank_figures(x, x, baseline=-x, seed=3)
    for key in ("kendall_tau_ci95", "spearman_ci95"):
        assert figures[key] == pytest.approx([1.0, 1.0], abs=TOLERANCE)
    assert figures["tau_gain_over_baseline"] == pytest.approx(2.0, abs=TOLERANCE)
    assert figures["tau_gain_ci95"] == pytest.approx([2.0, 2.0], abs=TOLERANCE)


def test_rank_figures_of_too_few_candidates_have_no_intervals() -> None:
    figures = rank_figures([1, 2], [1, 2], baseline=[2, 1])
    assert set(figures) == {"kendall_tau", "spearman", "pearson"}


def test_bootstrap_interval_of_tau_matches_scipy_bootstrap() -> None:
    """A percentile bootstrap over candidates (pairs resampled together) at 95%, checked against
    scipy.stats.bootstrap's percentile interval over an independent set of resamples."""
    rng = np.random.default_rng(7)
    truth = rng.normal(size=25)
    estimate = truth + rng.normal(scale=0.8, size=25)
    low, high = rank_figures(estimate, truth, seed=0)["kendall_tau_ci95"]
    reference = stats.bootstrap((estimate, truth), lambda a, b: stats.kendalltau(a, b).statistic, paired=True,
                                vectorized=False, method="percentile", n_resamples=4000,
                                rng=np.random.default_rng(1)).bootstrap_distribution
    # The 2.5th percentile of 2000 resamples lies, but for a chance below 1e-6, between the quantiles
    # 0.025 -+ 5 standard errors of a binomial proportion; the reference's own 4000 resamples add theirs.
    spread = 5 * math.sqrt(0.025 * 0.975 * (1 / 2000 + 1 / 4000))
    for value, q in ((low, 0.025), (high, 0.975)):
        band = np.percentile(reference, [100 * (q - spread), 100 * (q + spread)])
        assert band[0] <= value <= band[1], (value, q, band)


# ------------------------------------------------------------------------------------------ noise ceiling
def expected_taus(truth: np.ndarray, sigma: float) -> tuple[float, float]:
    """Closed forms of the mean Kendall tau of ``truth`` against ``truth + noise``, and of two such noisy runs,
    with Gaussian noise ``sigma``: a pair ``gap`` apart keeps its order with probability
    ``p = Phi(gap / (sigma sqrt 2))``, so it adds ``2p - 1 = erf(gap / (2 sigma))`` to the first and
    ``p^2 + (1 - p)^2 - 2p(1 - p) = erf(...)^2`` to the second (no ties: the noise is continuous)."""
    agreement = np.array([math.erf(abs(a - b) / (2 * sigma)) for a, b in combinations(truth, 2)])
    return float(agreement.mean()), float((agreement**2).mean())


def test_noise_ceiling_matches_its_closed_form() -> None:
    # 100 evenly spaced measured accuracies; sigma^2 is 36% of their variance, so the truth is their spread
    # shrunk by sqrt(1 - 0.36) = 0.8 about the mean
    n, step = 100, 0.001
    measured = 0.8 + step * np.arange(n)
    sigma = math.sqrt(0.36 * step**2 * n * (n + 1) / 12)  # variance (ddof 1) of an arithmetic sequence
    truth = measured.mean() + 0.8 * (measured - measured.mean())
    ceiling, seed_to_seed = expected_taus(truth, sigma)
    simulated = simulated_taus(measured, sigma)
    # Changing one of the n noise values moves tau by at most 2 (n - 1) / (n (n - 1) / 2) = 4 / n, so by
    # Efron-Stein one simulated tau has variance <= m / 2 * (4 / n)^2 over its m noise values (m = n, and 2n for
    # two runs); the mean of 2000 simulations is then within 4 of its standard errors.
    for value, exact, noise_values in ((simulated["ceiling_tau"], ceiling, n),
                                       (simulated["seed_to_seed_tau"], seed_to_seed, 2 * n)):
        standard_error = math.sqrt(noise_values / 2 * (4 / n) ** 2 / 2000)
        assert value == pytest.approx(exact, abs=4 * standard_error)


def test_noise_ceiling_without_noise_is_perfect_and_needs_three_candidates() -> None:
    noiseless = simulated_taus(np.array([0.7, 0.9, 0.8, 0.6]), 0.0)
    assert noiseless == pytest.approx({"ceiling_tau": 1.0, "seed_to_seed_tau": 1.0}, abs=TOLERANCE)
    assert all(math.isnan(v) for v in simulated_taus(np.array([0.7, 0.9]), 0.01).values())


def test_noise_floor_by_hand() -> None:
    rows = [{"id": "a", "label": "random", "standalone_accuracy": 0.81, "seed_accuracies": [0.80, 0.82]},
            {"id": "b", "label": "random", "standalone_accuracy": 0.72, "seed_accuracies": [0.70, 0.74]},
            {"id": "c", "label": "random", "standalone_accuracy": 0.90, "seed_accuracies": [0.91, 0.89]},
            {"id": "d", "label": "uniform", "standalone_accuracy": 0.65}]
    floor = noise_floor(rows, val_images=1000)
    # seed variances (ddof 1): 0.0002, 0.0008, 0.0002; sigma is the root of their mean. The accuracies' float64
    # representation errors (eps/2 of ~0.9) are amplified by their 0.02 differences: 0.9 / 0.02 eps each.
    assert floor["seed_std"] == pytest.approx(math.sqrt(0.0004), rel=4 * 0.9 / 0.02 * EPS64)
    # mean accuracy (0.81 + 0.72 + 0.90 + 0.65) / 4 = 0.77: binomial standard error on 1000 images
    assert floor["val_standard_error"] == pytest.approx(math.sqrt(0.77 * 0.23 / 1000), rel=TOLERANCE)
    # first seeds 0.80, 0.70, 0.91 against second seeds 0.82, 0.74, 0.89: the same order, tau = 1
    assert floor["seed1_vs_seed2_tau"] == pytest.approx(1.0, abs=TOLERANCE)
    assert [c["id"] for c in floor["candidates"]] == ["a", "b", "c"]
    assert noise_floor(rows[3:], val_images=1000) == {}


# ---------------------------------------------------------------- what a search needs: local tau, neighbours
# five candidates: 0, 1, 2 of similar cost (110 / 100 and 120 / 110 are within 15%, 120 / 100 is not), 3 and 4 too
# (226 / 200 = 1.13); the estimate ties 3 and 4
COST = [100.0, 110.0, 120.0, 200.0, 226.0]
ESTIMATE = [0.5, 0.6, 0.65, 0.7, 0.7]
TRUTH = [0.4, 0.5, 0.85, 0.9, 0.8]


def test_similar_cost_pairs_by_hand() -> None:
    assert similar_cost_pairs(COST) == [(0, 1), (1, 2), (3, 4)]
    assert similar_cost_pairs(COST, window=0.25) == [(0, 1), (0, 2), (1, 2), (3, 4)]


def test_local_tau_and_neighbour_agreement_by_hand() -> None:
    # similar-cost pairs: (0, 1) both rise, (1, 2) both rise, (3, 4) tied in the estimate: 2 concordant, 0
    # discordant of 3 pairs, tau-a = 2 / 3; agreement (1 + 1 + 1/2) / 3
    assert pair_agreement(ESTIMATE, TRUTH, similar_cost_pairs(COST)) == pytest.approx(2.5 / 3, abs=TOLERANCE)
    assert local_tau(ESTIMATE, TRUTH, COST) == pytest.approx(2 / 3, abs=TOLERANCE)
    # neighbour pairs (0, 1) agree, (2, 4) disagree (0.65 < 0.7 but 0.85 > 0.8), (3, 4) tie: (1 + 0 + 1/2) / 3
    assert pair_agreement(ESTIMATE, TRUTH, [(0, 1), (2, 4), (3, 4)]) == pytest.approx(0.5, abs=TOLERANCE)
    assert math.isnan(pair_agreement(ESTIMATE, TRUTH, []))


def test_search_figures_bootstrap_leaves_out_pairs_of_a_candidate_with_its_copy() -> None:
    # a perfect estimate of 8 candidates, all of similar cost: every resample orders every pair of distinct
    # candidates right, so both intervals are exactly [1, 1]; a copy paired with itself would be a tie (1/2)
    x = np.arange(8.0)
    figures = search_figures(x, x, 100.0 + x, [(0, 1), (2, 3), (4, 5)], seed=5)
    assert figures["kendall_tau_local"] == 1.0 and figures["local_pairs"] == 28
    assert figures["kendall_tau_local_ci95"] == [1.0, 1.0] and figures["neighbour_agreement_ci95"] == [1.0, 1.0]
    assert figures["neighbour_agreement"] == 1.0 and figures["kendall_tau_ci95"] == [1.0, 1.0]


def test_measured_noise_ceiling_by_hand() -> None:
    # seeds 0 and 1 order the candidates alike (B < C < A < D); seed 2 orders B < A < D < C, which swaps A-C and
    # C-D: tau 4 - 2 over 6 pairs = 1/3 against either. Mean over the seed pairs (1 + 1/3 + 1/3) / 3 = 5/9.
    # Similar cost: (A, B) and (C, D); seed 2 reverses (C, D): local tau 1, 0, 0 (mean 1/3); as neighbour pairs
    # they agree 1, 1/2, 1/2 (mean 2/3)
    repeats = [[0.80, 0.82, 0.81], [0.70, 0.69, 0.72], [0.75, 0.78, 0.83], [0.90, 0.88, 0.82]]
    ceiling = measured_noise_ceiling(repeats, [100.0, 105.0, 300.0, 310.0], [(0, 1), (2, 3)])
    assert ceiling["kendall_tau"] == pytest.approx(5 / 9, abs=TOLERANCE)
    assert ceiling["kendall_tau_local"] == pytest.approx(1 / 3, abs=TOLERANCE)
    assert ceiling["neighbour_agreement"] == pytest.approx(2 / 3, abs=TOLERANCE)
    assert (ceiling["candidates"], ceiling["seeds"], ceiling["neighbour_pairs"]) == (4, 3, 2)
    assert measured_noise_ceiling(repeats[:2], [100.0, 105.0], []) == {}  # fewer than 3 re-run candidates



def test_neighbour_resolution_by_hand() -> None:
    # pair differences: run 0 (+0.10, 0.00), run 1 (+0.12, -0.02); run 1 minus run 0 (+0.02, -0.02), SD 0.02 sqrt 2,
    # so one run's noise 0.02; the mean differences (+0.11, -0.01) have a mean square 0.0061, of which 0.02^2 / 2 is
    # noise: true RMS sqrt(0.0059); standard error of a mean of two 0.02 / sqrt 2, so only +0.11 is beyond 2 of them
    first, again = [0.50, 0.60, 0.50, 0.50], [0.50, 0.62, 0.50, 0.48]
    got = neighbour_resolution(first, again, [(0, 1), (2, 3)])
    assert got["difference_noise_sd"] == pytest.approx(0.02, abs=TOLERANCE)
    assert got["true_difference_rms"] == pytest.approx(math.sqrt(0.0059), abs=TOLERANCE)
    assert got["mean_difference_se"] == pytest.approx(0.02 / math.sqrt(2), abs=TOLERANCE)
    assert (got["pairs"], got["resolved"], got["seeds_for_typical_pair"]) == (2, [0], 1)  # (0.04 / 0.0768)^2 = 0.27
    # noise explains all of the spread: no true difference, and no number of seeds is enough for it
    flat = neighbour_resolution([0.5, 0.51, 0.5, 0.5], [0.5, 0.49, 0.5, 0.5], [(0, 1), (2, 3)])
    assert (flat["true_difference_rms"], flat["seeds_for_typical_pair"], flat["resolved"]) == (0.0, None, [])
    assert neighbour_resolution(first, again, [(0, 1)]) == {}  # one pair has no spread to measure


def test_neighbour_resolution_recovers_a_simulated_ground_truth() -> None:
    # true differences N(0, 0.002^2), each run's difference off by N(0, 0.003^2): the figures come back within 6
    # standard errors of their sampling (delta method, Gaussian moments)
    rng, n, true_sd, noise = np.random.default_rng(7), 20000, 0.002, 0.003
    base = rng.uniform(0.7, 0.9, n)
    partner = base + rng.normal(0.0, true_sd, n)
    first = np.concatenate([base, partner + rng.normal(0.0, noise, n)])
    again = np.concatenate([base, partner + rng.normal(0.0, noise, n)])
    got = neighbour_resolution(first, again, [(k, n + k) for k in range(n)])
    assert got["difference_noise_sd"] == pytest.approx(noise, abs=6 * noise / math.sqrt(2 * (n - 1)))
    mean_square = true_sd**2 + noise**2 / 2  # of the two-run mean difference
    rms_square_sd = math.sqrt(2 * mean_square**2 / n + noise**4 / (2 * (n - 1)))
    assert got["true_difference_rms"] == pytest.approx(true_sd, abs=6 * rms_square_sd / (2 * true_sd))
    assert got["seeds_for_typical_pair"] in (9, 10)  # (2 * 0.003 / 0.002)^2 = 9, rounded up from the estimates

# ------------------------------------------------------------------------------------- detrended Spearman
def test_spearman_beyond_bitops_ranks_the_residuals_of_the_log_bitops_trend() -> None:
    # log10 BitOps 1..5; residual patterns orthogonal to the constant and to the centred log BitOps
    # (-2, -1, 0, 1, 2): the quadratic (2, -1, -2, -1, 2) and cubic (-1, 2, 0, -2, 1) contrasts. A fit removes
    # the trend exactly, leaving these patterns, whose ranks are (4, 3, 1, 2, 5) and (5, 2, 1, 3, 4): rank
    # differences -1, 1, 0, -1, 1 give rho = 1 - 6 * 4 / (5 * 24) = 0.8. Undetrended, both scores rise with
    # BitOps and rank alike (rho 1).
    log_bitops = np.arange(1.0, 6.0)
    quadratic, cubic = np.array([2.0, -1, -2, -1, 2]), np.array([-1.0, 2, 0, -2, 1])
    oneshot = 0.5 + 0.1 * log_bitops + 0.01 * (quadratic + 0.1 * cubic)
    standalone = 0.6 + 0.05 * log_bitops + 0.01 * (quadratic - 0.3 * cubic)
    result = beyond_bitops(10**log_bitops, oneshot, standalone)
    assert result["rho"] == pytest.approx(0.8, abs=TOLERANCE)
    # scipy's p-value for n = 5 is the two-sided t test of rho with n - 2 degrees of freedom
    t = 0.8 * math.sqrt(3 / (1 - 0.8**2))
    assert result["p"] == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-9)
    assert stats.spearmanr(oneshot, standalone).statistic == pytest.approx(1.0, abs=TOLERANCE)


def test_spearman_beyond_bitops_needs_four_candidates() -> None:
    result = beyond_bitops([10, 100, 1000], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    assert math.isnan(result["rho"]) and math.isnan(result["p"])


# -------------------------------------------------------------------------------- report's fidelity_stats
def test_report_fidelity_stats_ranks_loss_lower_is_better_with_tau_b() -> None:
    # accuracy scores tie like x = [1, 2, 2, 3] against [1, 2, 3, 4] (tau-b 5 / sqrt(30), rho sqrt(0.9));
    # the losses 0.4 > 0.3 > 0.2 > 0.1 rank the candidates in the order of their accuracy: tau = rho = 1
    records = [{"oneshot_accuracy": o, "oneshot_loss": loss, "standalone_accuracy": s}
               for o, loss, s in ((0.1, 0.4, 0.5), (0.2, 0.3, 0.6), (0.2, 0.2, 0.7), (0.3, 0.1, 0.8))]
    result = fidelity_stats(records)
    assert result["n"] == 4
    assert result["kendall_tau"] == pytest.approx(5 / math.sqrt(30), abs=TOLERANCE)
    assert result["spearman_rho"] == pytest.approx(math.sqrt(0.9), abs=TOLERANCE)
    assert result["loss_kendall_tau"] == pytest.approx(1.0, abs=TOLERANCE)
    assert result["loss_spearman_rho"] == pytest.approx(1.0, abs=TOLERANCE)
    records[0]["oneshot_loss"] = math.nan  # the loss is ranked only when every record has a finite one
    assert "loss_kendall_tau" not in fidelity_stats(records)
    assert fidelity_stats(records[:1])["kendall_tau"] is None


def test_paired_difference_by_hand() -> None:
    truth, cost = [1.0, 2.0, 3.0, 4.0], [1.0, 1.1, 5.0, 5.5]  # two cheap and two dear candidates
    neighbours = [(0, 1), (2, 3)]
    swapped = [1.0, 3.0, 2.0, 4.0]  # one of the six pairs (1, 2) out of order, not a similar-cost or neighbour pair
    figures = paired_difference(truth, swapped, truth, cost, neighbours, resamples=200)
    assert figures["kendall_tau"] == pytest.approx(1.0 - 4.0 / 6.0, abs=1e-12)  # tau-b without ties: (5 - 1) / 6
    assert figures["kendall_tau_local"] == 0.0 and figures["neighbour_agreement"] == 0.0
    # the same estimator against itself: every resample's difference is exactly 0
    same = paired_difference(swapped, swapped, truth, cost, neighbours, resamples=200)
    assert all(same[f"{key}_ci95"] == [0.0, 0.0] for key in ("kendall_tau", "kendall_tau_local",
                                                              "neighbour_agreement"))
    # the truth against its reverse: +2 on both taus and +1 agreement on every resample (a resample whose
    # candidates all tie has no tau; the interval ignores it)
    reverse = paired_difference(truth, [-v for v in truth], truth, cost, neighbours, resamples=200)
    assert (reverse["kendall_tau"], reverse["kendall_tau_local"], reverse["neighbour_agreement"]) == (2.0, 2.0, 1.0)
    assert reverse["kendall_tau_ci95"] == pytest.approx([2.0, 2.0], abs=1e-12)
    assert reverse["neighbour_agreement_ci95"] == [1.0, 1.0]


def test_noise_floor_simulates_with_the_median_seed_variance_robust_to_a_diverged_run() -> None:
    """Three seeds per candidate: sample variances 1e-4 (twice) and, with one diverged run, far larger. The robust
    noise is sqrt(median variance * 2 / chi2(2).median) = sqrt(1e-4 / ln 2) (chi-square with 2 degrees of freedom
    has median 2 ln 2), the pooled one the diverged run's."""
    rows = [{"id": str(i), "label": "random", "standalone_accuracy": seeds[0], "seed_accuracies": seeds}
            for i, seeds in enumerate([[0.80, 0.81, 0.82], [0.70, 0.71, 0.72], [0.60, 0.61, 0.30]])]
    rows += [{"id": f"x{i}", "label": "random", "standalone_accuracy": 0.5 + 0.1 * i} for i in range(3)]
    floor = noise_floor(rows, val_images=1000, sims=50)
    diverged = np.var([0.60, 0.61, 0.30], ddof=1)
    # decimal accuracies are float64-rounded (half an ulp of ~0.8 is 5.6e-17): on deviations of 0.01 that is a relative
    # error up to ~1e-14 per deviation, ~4e-14 in a variance; 1e-12 leaves room for any summation order
    rel = 1e-12
    assert floor["seed_std"] == pytest.approx(math.sqrt((2e-4 + diverged) / 3), rel=rel)
    assert floor["seed_std_robust"] == pytest.approx(math.sqrt(1e-4 / math.log(2)), rel=rel)
    assert math.isfinite(floor["ceiling_tau"])  # the pooled figure (0.17) exceeds the spread: no ceiling from it


def test_ratio_to_ceiling_by_hand() -> None:
    truth, cost = [1.0, 2.0, 3.0, 4.0], [1.0, 1.1, 5.0, 5.5]
    neighbours = [(0, 1), (2, 3)]
    rerun = [1.0, 3.0, 2.0, 4.0]  # the re-run orders one pair of six wrongly: tau 4/6, both local figures 1
    figures = ratio_to_ceiling(truth, rerun, truth, cost, neighbours, resamples=200)
    assert figures["kendall_tau"] == pytest.approx(1.0 / (4.0 / 6.0), abs=1e-12)
    assert figures["kendall_tau_local"] == 1.0 and figures["neighbour_agreement"] == 1.0
    # an estimate that is the re-run itself is at the ceiling on every resample that has one
    same = ratio_to_ceiling(rerun, rerun, truth, cost, neighbours, resamples=200)
    assert all(same[f"{key}_ci95"] == [1.0, 1.0] for key in ("kendall_tau", "kendall_tau_local",
                                                              "neighbour_agreement"))
    # a ceiling that is not above 0 has no ratio
    assert math.isnan(ratio_to_ceiling(truth, [-v for v in truth], truth, cost, neighbours, resamples=0)["kendall_tau"])


def test_pooled_figures_weight_each_study_by_its_comparisons_by_hand() -> None:
    """Two studies of equal costs (every pair is a similar-cost pair): one ranked perfectly (3 candidates, 3 pairs,
    1 neighbour pair ordered right), one reversed (4 candidates, 6 pairs, 2 neighbour pairs ordered wrong). Pooled,
    every comparison counts once: tau (3 - 6) / 9, the same among similar-cost pairs, neighbours 1 of 3; against a
    baseline that ranks both perfectly, the difference subtracts 1 from each tau and 1 from the agreement; a study
    without neighbour pairs adds none to that figure; the intervals resample each study on its own."""
    perfect = ([1.0, 2.0, 3.0], None, [1.0, 2.0, 3.0], [5.0] * 3, [(0, 1)])
    reversed_ = ([1.0, 2.0, 3.0, 4.0], None, [4.0, 3.0, 2.0, 1.0], [5.0] * 4, [(0, 1), (2, 3)])
    pooled = pooled_figures([perfect, reversed_], resamples=200)
    assert pooled["kendall_tau"] == pytest.approx(-1 / 3, abs=1e-15)
    assert pooled["kendall_tau_local"] == pytest.approx(-1 / 3, abs=1e-15)
    assert pooled["neighbour_agreement"] == pytest.approx(1 / 3, abs=1e-15)
    low, high = pooled["kendall_tau_ci95"]
    assert -1.0 <= low <= high <= 1.0
    truth_order = [([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])]
    against = pooled_figures([(x, y, y, cost, pairs) for (x, y), (_, _, _, cost, pairs) in
                              zip(truth_order, (perfect, reversed_))], resamples=200)
    assert against["kendall_tau"] == pytest.approx(-1 / 3 - 1, abs=1e-15)
    assert against["neighbour_agreement"] == pytest.approx(1 / 3 - 1, abs=1e-15)
    without_pairs = pooled_figures([perfect, (*reversed_[:4], [])], resamples=200)
    assert without_pairs["neighbour_agreement"] == 1.0 and without_pairs["studies"] == 2
