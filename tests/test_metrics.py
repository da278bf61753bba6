"""Metrics against hand-computed values and an independent loop implementation of DESIGN.md §8."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from kgdiff_diffusers.metrics import (
    crps,
    evaluate_nodes,
    jsd,
    mean_day_errors,
    mean_pairwise_squared_distance,
    mmd,
    out_of_range_share,
    physical_lower_bound,
    spread_ratio,
)


def naive_mmd(x: np.ndarray, y: np.ndarray, fixed_from_y: bool = False) -> float:
    """KSTDiff's MMD written as plain loops over pairs of flattened days."""
    x = [np.ravel(a).astype(np.float64) for a in x]
    y = [np.ravel(b).astype(np.float64) for b in y]
    source = y if fixed_from_y else x + y
    pairs = [(a, b) for i, a in enumerate(source) for j, b in enumerate(source) if i != j]
    bw0 = sum(float(np.sum((a - b) ** 2)) for a, b in pairs) / len(pairs)

    def kernel(a, b):
        d = float(np.sum((a - b) ** 2))
        return sum(math.exp(-d / (bw0 * 2.0 ** (i - 2))) for i in range(5))

    def mean_kernel(u, v):
        return sum(kernel(a, b) for a in u for b in v) / (len(u) * len(v))

    return mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)


def test_mean_day_errors_by_hand():
    generated = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1)  # mean day [2, 3]
    real = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 4.0]]).reshape(3, 2, 1)  # mean day [0, 2]
    mae, rmse = mean_day_errors(generated, real)
    assert mae == pytest.approx((2 + 1) / 2)
    assert rmse == pytest.approx(math.sqrt((4 + 1) / 2))


def test_bandwidth_two_points_and_mmd_closed_form():
    x = np.array([[0.0, 0.0]])
    y = np.array([[3.0, 4.0]])  # squared distance 25
    assert mean_pairwise_squared_distance(np.concatenate([x, y])) == pytest.approx(25.0)
    # bw_i = 25 * 2^(i-2) -> exponents 25 / bw_i = 4, 2, 1, 0.5, 0.25; K(x, x) = K(y, y) = 5.
    cross = sum(math.exp(-e) for e in (4.0, 2.0, 1.0, 0.5, 0.25))
    assert mmd(x, y) == pytest.approx(10.0 - 2.0 * cross)
    # Three points on a line at 0, 1, 3: pair distances 1, 9, 4 -> bw0 = 2 * 14 / 6.
    assert mean_pairwise_squared_distance(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(14 / 3)


def test_mmd_matches_loop_implementation_both_bandwidths():
    rng = np.random.default_rng(0)
    generated = rng.normal(size=(5, 4, 2))
    real = rng.normal(loc=0.7, size=(7, 4, 2))
    assert mmd(generated, real) == pytest.approx(naive_mmd(generated, real), rel=1e-10)
    fixed = mean_pairwise_squared_distance(real)
    assert mmd(generated, real, bandwidth=fixed) == pytest.approx(
        naive_mmd(generated, real, fixed_from_y=True), rel=1e-10
    )


def test_mmd_identical_symmetric_and_grows_with_shift():
    rng = np.random.default_rng(1)
    days = rng.normal(size=(6, 8, 1)) * 10 + 50
    assert mmd(days, days) == 0.0
    other = rng.normal(size=(4, 8, 1)) * 10 + 50
    assert mmd(days, other) == pytest.approx(mmd(other, days), rel=1e-12)
    fixed = mean_pairwise_squared_distance(days)
    near, far = mmd(days + 1.0, days, bandwidth=fixed), mmd(days + 10.0, days, bandwidth=fixed)
    assert 0.0 < near < far <= 10.0


def test_mmd_zero_bandwidth_is_the_indicator_limit():
    constant = np.ones((3, 4, 1))
    assert mmd(constant, constant, bandwidth=0.0) == 0.0
    # Distinct generated days and constant real days: K(g, g') = 5 [g == g'], K(r, r') = 5, K(g, r) = 0.
    generated = np.arange(2 * 4).reshape(2, 4, 1).astype(float)
    assert mmd(generated, constant, bandwidth=0.0) == pytest.approx(5 * 2 / 4 + 5)


def test_jsd_identical_disjoint_and_by_hand():
    rng = np.random.default_rng(2)
    values = rng.normal(size=500)
    assert jsd(values, values) == 0.0
    assert jsd(np.zeros(10), np.ones(10), value_range=(0.0, 1.0)) == pytest.approx(math.log(2))
    # range (0, 3), 3 bins: p = [0, .5, .5, 0, 0], q = [0, 0, .5, .5, 0] (with under/overflow bins).
    assert jsd([0.5, 1.5], [1.5, 2.5], value_range=(0.0, 3.0), bins=3) == pytest.approx(0.5 * math.log(2))
    # Values outside the range still count: all generated mass in the overflow bin.
    assert jsd(np.full(5, 9.0), np.linspace(0, 1, 5)) == pytest.approx(math.log(2))


def test_jsd_equals_squared_scipy_distance_on_the_same_histograms():
    rng = np.random.default_rng(3)
    generated, real = rng.normal(size=400), rng.normal(0.5, 1.2, size=300)
    lo, hi = real.min(), real.max()

    def counts(values):
        inside = values[(values >= lo) & (values <= hi)]
        middle = np.histogram(inside, bins=20, range=(lo, hi))[0]
        return np.concatenate([[np.sum(values < lo)], middle, [np.sum(values > hi)]])

    expected_p, expected_q = counts(generated), counts(real)
    expected = jensenshannon(expected_p, expected_q) ** 2  # natural log by default
    assert jsd(generated, real, bins=20) == pytest.approx(expected, rel=1e-10)
    assert 0.0 < expected < math.log(2)


def naive_crps(generated: np.ndarray, real: np.ndarray) -> float:
    """E|X - y| - E|X - X'| / 2 over all ensemble pairs, as loops over real days and values."""
    g = np.asarray(generated, dtype=np.float64).reshape(len(generated), -1)
    r = np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    scores = []
    for day in r:
        for f, y in enumerate(day):
            members = g[:, f]
            spread = sum(abs(a - b) for a in members for b in members) / len(members) ** 2
            scores.append(np.mean(np.abs(members - y)) - 0.5 * spread)
    return float(np.mean(scores))


def test_crps_by_hand_and_against_loops():
    ensemble = np.array([0.0, 2.0, 4.0]).reshape(3, 1, 1)
    # y = 1: E|X - 1| = 5/3, E|X - X'| = 16/9 -> 7/9; y = 5: 3 - 8/9 = 19/9; mean 13/9.
    assert crps(ensemble, np.array([1.0]).reshape(1, 1, 1)) == pytest.approx(7 / 9)
    assert crps(ensemble, np.array([1.0, 5.0]).reshape(2, 1, 1)) == pytest.approx(13 / 9)
    # A point mass is scored by its absolute error alone; an exact point forecast scores 0.
    assert crps(np.full((4, 1, 1), 2.0), np.array([5.0, 1.0]).reshape(2, 1, 1)) == pytest.approx(2.0)
    assert crps(np.full((3, 2, 1), 7.0), np.full((2, 2, 1), 7.0)) == 0.0
    rng = np.random.default_rng(5)
    generated, real = rng.normal(size=(6, 5, 2)), rng.normal(0.3, 1.5, size=(4, 5, 2))
    assert crps(generated, real) == pytest.approx(naive_crps(generated, real), rel=1e-12)
    with pytest.raises(ValueError, match="day sizes differ"):
        crps(generated, real[:, :4])


def test_spread_ratio_by_hand_skips_constant_real_steps():
    # step 0: std(0, 2) = sqrt 2 vs std(1, 2, 3) = 1; step 1: real constant (left out);
    # step 2: std(0, 4) = 2 sqrt 2 vs std(0, 2, 1) = 1 -> mean (sqrt 2 + 2 sqrt 2) / 2.
    generated = np.array([[0.0, 1.0, 0.0], [2.0, 1.0, 4.0]]).reshape(2, 3, 1)
    real = np.array([[1.0, 4.0, 0.0], [2.0, 4.0, 2.0], [3.0, 4.0, 1.0]]).reshape(3, 3, 1)
    assert spread_ratio(generated, real) == pytest.approx(1.5 * math.sqrt(2))
    assert spread_ratio(real, real) == pytest.approx(1.0)
    assert spread_ratio(np.repeat(real[:1], 4, axis=0), real) == 0.0  # a repeated profile has no spread
    assert math.isnan(spread_ratio(generated, np.full((3, 3, 1), 4.0)))
    with pytest.raises(ValueError, match=">= 2 generated and >= 2 real"):
        spread_ratio(generated[:1], real)


def test_physical_lower_bound_and_out_of_range_share():
    train = np.array([[0.0, -1.0], [3.0, 2.0]])  # feature 0 never negative, feature 1 can be
    bound = physical_lower_bound(train)
    assert bound[0] == 0.0 and bound[1] == -np.inf
    generated = np.array([[[-1.0, -5.0], [0.0, -3.0]], [[2.0, 1.0], [-0.5, 0.0]]])  # (2 days, 2 steps, 2)
    assert out_of_range_share(generated, bound) == pytest.approx(2 / 8)
    assert out_of_range_share(generated, 0.0) == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="one bound per feature"):
        out_of_range_share(generated, [0.0, 0.0, 0.0])


def _toy_nodes():
    rng = np.random.default_rng(4)
    real = rng.gamma(2.0, 10.0, size=(3, 6, 4, 2))
    real_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=bool)
    real[~real_mask] = np.nan  # missing days must be ignored
    generated = rng.gamma(2.0, 11.0, size=(3, 5, 4, 2))
    return generated, real, real_mask


def test_pooled_mmd_of_one_generated_and_one_real_day_is_undefined_not_a_constant():
    generated, real, real_mask = _toy_nodes()
    real_mask[1] = [True] + [False] * 5  # nodes 1 and 2: one real day each
    result = evaluate_nodes(generated[:, :1], real, real_mask)  # one generated day per node
    assert np.isnan(result["per_node"]["mmd"][1:]).all() and result["num_nodes_mmd"] == 1
    assert result["mmd"] == pytest.approx(naive_mmd(generated[0, :1], real[0][real_mask[0]]))
    assert np.isfinite(evaluate_nodes(generated[:, :2], real, real_mask)["per_node"]["mmd"]).all()


def test_evaluate_nodes_per_node_values_and_means():
    generated, real, real_mask = _toy_nodes()
    result = evaluate_nodes(generated, real, real_mask, jsd_bins=10)
    ranges = np.array(result["jsd_range"])
    valid = real[real_mask]
    np.testing.assert_allclose(ranges[:, 0], valid.min(axis=(0, 1)))
    np.testing.assert_allclose(ranges[:, 1], valid.max(axis=(0, 1)))
    for node in range(3):
        node_real = real[node][real_mask[node]]
        mae, rmse = mean_day_errors(generated[node], node_real)
        assert result["per_node"]["mae"][node] == pytest.approx(mae)
        assert result["per_node"]["rmse"][node] == pytest.approx(rmse)
        assert result["per_node"]["mmd"][node] == pytest.approx(naive_mmd(generated[node], node_real))
        expected_jsd = np.mean([jsd(generated[node][..., d], node_real[..., d], tuple(ranges[d]), bins=10)
                                for d in range(2)])
        assert result["per_node"]["jsd"][node] == pytest.approx(expected_jsd)
        assert result["per_node"]["crps"][node] == pytest.approx(naive_crps(generated[node], node_real))
        assert result["per_node"]["out_of_range"][node] == 0.0  # gamma values are never negative
    for node in range(2):
        expected_spread = spread_ratio(generated[node], real[node][real_mask[node]])
        assert result["per_node"]["spread_ratio"][node] == pytest.approx(expected_spread)
    assert np.isnan(result["per_node"]["spread_ratio"][2]) and result["num_nodes_spread_ratio"] == 2
    assert result["lower_bound"] == [0.0, 0.0]
    assert result["per_node"]["num_real_days"].tolist() == [6, 3, 1]
    # A single real day has no pairwise distance: the fixed-bandwidth MMD is undefined there.
    assert np.isnan(result["per_node"]["mmd_fixed_bandwidth"][2])
    assert result["num_nodes_mmd_fixed_bandwidth"] == 2
    assert result["mmd_fixed_bandwidth"] == pytest.approx(
        np.mean([naive_mmd(generated[n], real[n][real_mask[n]], fixed_from_y=True) for n in range(2)])
    )
    for name in ("mae", "rmse", "mmd", "jsd", "crps", "out_of_range"):
        assert result[name] == pytest.approx(np.mean(result["per_node"][name]))
    assert result["spread_ratio"] == pytest.approx(np.mean(result["per_node"]["spread_ratio"][:2]))
    shifted = evaluate_nodes(generated - 30.0, real, real_mask, lower_bound=[0.0, -np.inf])
    assert shifted["out_of_range"] == pytest.approx(np.mean((generated - 30.0)[..., 0] < 0) / 2)
    assert shifted["lower_bound"] == [0.0, None]
    assert result["rmse_pooled"] == pytest.approx(np.sqrt(np.mean(result["per_node"]["rmse"] ** 2)))


def test_evaluate_nodes_generated_mask_and_perfect_generator():
    generated, real, real_mask = _toy_nodes()
    # Generating exactly the real days of each node (padded, masked) scores zero everywhere.
    copy = np.where(real_mask[..., None, None], real, 0.0)
    result = evaluate_nodes(copy, real, real_mask, generated_mask=real_mask)
    for name in ("mae", "rmse", "mmd", "mmd_fixed_bandwidth", "jsd", "out_of_range"):
        assert result[name] == pytest.approx(0.0, abs=1e-12)
    assert result["spread_ratio"] == pytest.approx(1.0)
    # The real days as an ensemble still have spread: CRPS = E|X - X'| / 2 > 0, and a wider ensemble is worse.
    assert 0.0 < result["crps"] < evaluate_nodes(generated * 3.0, real, real_mask)["crps"]
    assert result["per_node"]["num_generated_days"].tolist() == [6, 3, 1]


def test_evaluate_nodes_rejects_bad_inputs():
    generated, real, real_mask = _toy_nodes()
    with pytest.raises(ValueError, match="real_mask"):
        evaluate_nodes(generated, real, real_mask[:, :3])
    with pytest.raises(ValueError, match="nodes N or day shape"):
        evaluate_nodes(generated[:2], real, real_mask)
    bad = generated.copy()
    bad[1, 2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="generated: NaN"):
        evaluate_nodes(bad, real, real_mask)
    no_days = real_mask.copy()
    no_days[2] = False
    with pytest.raises(ValueError, match=r"nodes \[2\] have no valid day"):
        evaluate_nodes(generated, real, no_days)
    with pytest.raises(ValueError, match="jsd_range"):
        evaluate_nodes(generated, real, real_mask, jsd_range=[(0, 1), (0, 1), (0, 1)])
