"""Baselines for unseen nodes: known answers on tiny hand-built training sets."""

import math

import numpy as np
import pytest

from kgdiff_diffusers.baselines import (
    all_baselines,
    global_mean_profile,
    knn_donor_days,
    knn_donor_profile,
    nearest_training_nodes,
    random_training_days,
)
from kgdiff_diffusers.kg.spatial import EARTH_RADIUS_M
from kgdiff_diffusers.metrics import evaluate_nodes

# Four training nodes on the equator at longitudes 0, 1, 2, 10; each day is constant at a value that
# names it: node n, day s -> 10 * n + s. Node 1 has only days 0 and 1 valid; node 3 has no valid day.
TRAIN_COORDS = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 10.0]])
TEST_COORDS = np.array([[0.0, 0.9], [0.0, 9.0]])


def _training_days(steps: int = 3, features: int = 2):
    values = 10.0 * np.arange(4)[:, None] + np.arange(4)[None, :]  # (N_train, S)
    days = np.broadcast_to(values[..., None, None], (4, 4, steps, features)).copy()
    day_mask = np.ones((4, 4), dtype=bool)
    day_mask[1, 2:] = False
    day_mask[3] = False
    days[~day_mask] = np.nan  # masked days must never be read
    return days, day_mask


def _day_labels(generated: np.ndarray) -> np.ndarray:
    """The constant value of each generated day (checks that days were copied whole)."""
    assert (generated == generated[..., :1, :1]).all()
    return generated[..., 0, 0]


def test_nearest_training_nodes_order_and_distance():
    indices, distances = nearest_training_nodes(TRAIN_COORDS, TEST_COORDS, k=3)
    assert indices.tolist() == [[1, 0, 2], [3, 2, 1]]
    degree = EARTH_RADIUS_M * math.pi / 180
    np.testing.assert_allclose(distances[0], [0.1 * degree, 0.9 * degree, 1.1 * degree], rtol=1e-9)
    with pytest.raises(ValueError, match="k: must be between 1"):
        nearest_training_nodes(TRAIN_COORDS, TEST_COORDS, k=5)


def test_global_mean_profile_is_mean_of_valid_days():
    days, day_mask = _training_days()
    generated = global_mean_profile(days, day_mask, num_test_nodes=2, num_samples=5)
    assert generated.shape == (2, 5, 3, 2) and generated.dtype == np.float32
    valid_values = [0, 1, 2, 3, 10, 11, 20, 21, 22, 23]
    np.testing.assert_allclose(generated, np.mean(valid_values), rtol=1e-6)


def test_random_training_days_draws_only_valid_days():
    days, day_mask = _training_days()
    valid_values = {0, 1, 2, 3, 10, 11, 20, 21, 22, 23}
    generated = random_training_days(days, day_mask, num_test_nodes=3, num_samples=10, seed=7)
    labels = _day_labels(generated)
    for node_labels in labels:  # 10 valid days, 10 samples: a permutation (without replacement)
        assert set(node_labels.tolist()) == valid_values
    assert not (labels[0] == labels[1]).all()  # each test node has its own draw
    np.testing.assert_array_equal(generated, random_training_days(days, day_mask, 3, 10, seed=7))
    many = _day_labels(random_training_days(days, day_mask, 1, 25, seed=0))
    assert set(many.ravel().tolist()) <= valid_values  # with replacement once the pool is too small


def test_knn_donor_profile_weights_donors_equally():
    days, day_mask = _training_days()
    generated = knn_donor_profile(days, day_mask, TRAIN_COORDS, TEST_COORDS, k=2, num_samples=4)
    assert generated.shape == (2, 4, 3, 2)
    # Test node 0: donors 1 (mean day 10.5) and 0 (1.5). Test node 1: node 3 has no data -> donors 2, 1.
    np.testing.assert_allclose(generated[0], (10.5 + 1.5) / 2)
    np.testing.assert_allclose(generated[1], (21.5 + 10.5) / 2)
    one = knn_donor_profile(days, day_mask, TRAIN_COORDS, TEST_COORDS, k=1, num_samples=1)
    assert one[:, 0, 0, 0].tolist() == [10.5, 21.5]


def test_knn_donor_days_come_from_the_donors():
    days, day_mask = _training_days()
    generated = knn_donor_days(days, day_mask, TRAIN_COORDS, TEST_COORDS, k=2, num_samples=6, seed=3)
    labels = _day_labels(generated)
    assert sorted(labels[0].tolist()) == [0, 1, 2, 3, 10, 11]  # pooled donor days 0 and 1, all drawn
    assert sorted(labels[1].tolist()) == [10, 11, 20, 21, 22, 23]
    with pytest.raises(ValueError, match="k: must be between 1 and the number of training nodes \\(3\\)"):
        knn_donor_days(days, day_mask, TRAIN_COORDS, TEST_COORDS, k=4, num_samples=2)


def test_all_baselines_and_input_checks():
    days, day_mask = _training_days()
    baselines = all_baselines(days, day_mask, TRAIN_COORDS, TEST_COORDS, num_samples=3, ks=(1, 3))
    expected = ["global_mean_profile", "random_training_days"]
    expected += [f"knn{k}_{kind}" for k in (1, 3) for kind in ("profile", "days")]
    assert sorted(baselines) == sorted(expected)
    assert all(generated.shape == (2, 3, 3, 2) for generated in baselines.values())
    with pytest.raises(ValueError, match="day_mask: expected shape"):
        global_mean_profile(days, day_mask[:, :2], 1, 1)
    with pytest.raises(ValueError, match="train_coords: 3 rows for 4 training nodes"):
        knn_donor_profile(days, day_mask, TRAIN_COORDS[:3], TEST_COORDS, k=1, num_samples=1)
    with pytest.raises(ValueError, match="test_coords"):
        knn_donor_profile(days, day_mask, TRAIN_COORDS, TEST_COORDS[:, :1], k=1, num_samples=1)
    bad = days.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="days: NaN"):
        random_training_days(bad, day_mask, 1, 1)


def test_baselines_rank_as_expected_on_a_spatial_field():
    """Profiles grow with longitude: the nearest donor beats the global mean on MAE, and real donor days
    (with their day-to-day noise) beat the donor's constant mean day on MMD."""
    rng = np.random.default_rng(0)
    shape = np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))[None, None, :, None]

    def days_at(longitudes):
        amplitude = (10.0 + np.asarray(longitudes))[:, None, None, None]
        return amplitude * (1.5 + shape) + rng.normal(scale=3.0, size=(len(longitudes), 30, 24, 1))

    train_lon, test_lon = np.arange(10.0), np.array([4.1, 8.9])
    train_days, test_days = days_at(train_lon), days_at(test_lon)
    train_mask, test_mask = np.ones((10, 30), dtype=bool), np.ones((2, 30), dtype=bool)
    train_coords = np.stack([np.zeros(10), train_lon], axis=1)
    test_coords = np.stack([np.zeros(2), test_lon], axis=1)
    baselines = all_baselines(train_days, train_mask, train_coords, test_coords, num_samples=30, ks=(1,))
    scores = {name: evaluate_nodes(generated, test_days, test_mask) for name, generated in baselines.items()}
    assert scores["knn1_profile"]["mae"] < 0.5 * scores["global_mean_profile"]["mae"]
    assert scores["knn1_days"]["mmd_fixed_bandwidth"] < scores["knn1_profile"]["mmd_fixed_bandwidth"]
    assert scores["knn1_days"]["mmd"] < scores["random_training_days"]["mmd"]
