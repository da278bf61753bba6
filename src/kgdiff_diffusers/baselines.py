"""What a practitioner would generate for an unseen location, given only the training nodes (DESIGN.md §8).

Every baseline takes the training nodes' days ``days`` ``(N_train, S, T, D)`` with ``day_mask``
``(N_train, S)`` (True = a usable day; other days are never read) and returns generated days
``(N_test, num_samples, T, D)`` float32 in the same (data) units, ready for
:func:`kgdiff_diffusers.metrics.evaluate_nodes`:

* :func:`global_mean_profile`: the mean of all valid training days (each day weighs the same), repeated
  ``num_samples`` times for every test node. A constant set: its MAE/RMSE measure the profile, while its
  MMD/JSD are those of a point mass (no day-to-day variation), which the distributional metrics punish.
* :func:`random_training_days`: for each test node, valid training days drawn uniformly at random from
  all training nodes (the "unconditional" baseline: realistic days, no knowledge of the place).
* :func:`knn_donor_profile`: spatial kNN / kriging - the mean over the ``k`` nearest training nodes
  (haversine distance, each donor weighs the same) of each donor's mean valid day, repeated.
* :func:`knn_donor_days`: days drawn uniformly at random from the valid days of the ``k`` nearest
  training nodes pooled, so the donors' day-to-day variation is kept for MMD/JSD.

Random draws are without replacement when the pool holds at least ``num_samples`` days, with replacement
otherwise. Training nodes with no valid day are never used as donors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .kg.spatial import haversine_m


def _check_days(days: np.ndarray, day_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    days = np.asarray(days)
    day_mask = np.asarray(day_mask, dtype=bool)
    if days.ndim != 4:
        raise ValueError(f"days: expected the training nodes' days (N_train, S, T, D); got {days.shape}")
    if day_mask.shape != days.shape[:2]:
        raise ValueError(f"day_mask: expected shape {days.shape[:2]} (N_train, S); got {day_mask.shape}")
    if not day_mask.any():
        raise ValueError("day_mask: no valid training day; the baselines need at least one")
    if not np.isfinite(days[day_mask]).all():
        raise ValueError("days: NaN/inf in a day that day_mask marks valid; interpolate or mask it")
    return days, day_mask


def _check_coords(coords: np.ndarray, name: str) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or not np.isfinite(coords).all():
        raise ValueError(f"{name}: expected finite (N, 2) (lat, lon) degrees; got shape {coords.shape}")
    return coords


def _check_num_samples(num_test_nodes: int, num_samples: int) -> None:
    if num_test_nodes < 1 or num_samples < 1:
        raise ValueError(f"num_test_nodes and num_samples must be >= 1; got {num_test_nodes}, {num_samples}")


def _draw(pool: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``num_samples`` rows of ``pool`` ``(P, T, D)``, without replacement while ``P >= num_samples``."""
    index = rng.choice(pool.shape[0], size=num_samples, replace=pool.shape[0] < num_samples)
    return pool[index]


def nearest_training_nodes(
    train_coords: np.ndarray, test_coords: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` training nodes nearest to each test node by great-circle (haversine) distance, exactly.

    Args:
        train_coords: ``(N_train, 2)`` (lat, lon) in degrees.
        test_coords: ``(N_test, 2)`` (lat, lon) in degrees.
        k: number of neighbours, ``1 <= k <= N_train``.

    Returns:
        ``(indices, distances_m)``, both ``(N_test, k)``, distances in metres, nearest first (ties by lower
        training index).
    """
    train_coords = _check_coords(train_coords, "train_coords")
    test_coords = _check_coords(test_coords, "test_coords")
    if not 1 <= k <= train_coords.shape[0]:
        raise ValueError(f"k: must be between 1 and the number of training nodes ({train_coords.shape[0]}); "
                         f"got {k}")
    distances = haversine_m(test_coords[:, None, 0], test_coords[:, None, 1],
                             train_coords[None, :, 0], train_coords[None, :, 1])
    indices = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return indices, np.take_along_axis(distances, indices, axis=1)


def global_mean_profile(
    days: np.ndarray, day_mask: np.ndarray, num_test_nodes: int, num_samples: int
) -> np.ndarray:
    """The mean of all valid training days, repeated for every test node and sample.

    Args:
        days: ``(N_train, S, T, D)`` training nodes' days, data units.
        day_mask: ``(N_train, S)`` bool, True = valid day.
        num_test_nodes: ``N_test``. num_samples: days per test node.

    Returns:
        ``(N_test, num_samples, T, D)`` float32, data units.
    """
    days, day_mask = _check_days(days, day_mask)
    _check_num_samples(num_test_nodes, num_samples)
    profile = days[day_mask].astype(np.float64).mean(axis=0)
    return np.broadcast_to(profile, (num_test_nodes, num_samples, *profile.shape)).astype(np.float32)


def random_training_days(
    days: np.ndarray, day_mask: np.ndarray, num_test_nodes: int, num_samples: int, seed: int = 0
) -> np.ndarray:
    """Valid training days drawn at random for each test node (the unconditional baseline).

    Args:
        days: ``(N_train, S, T, D)`` training nodes' days, data units.
        day_mask: ``(N_train, S)`` bool, True = valid day.
        num_test_nodes: ``N_test``. num_samples: days per test node. seed: numpy Generator seed.

    Returns:
        ``(N_test, num_samples, T, D)`` float32, data units; each test node gets its own draw.
    """
    days, day_mask = _check_days(days, day_mask)
    _check_num_samples(num_test_nodes, num_samples)
    rng = np.random.default_rng(seed)
    pool = days[day_mask]
    return np.stack([_draw(pool, num_samples, rng) for _ in range(num_test_nodes)]).astype(np.float32)


def _donors(
    day_mask: np.ndarray, train_coords: np.ndarray, test_coords: np.ndarray, k: int
) -> np.ndarray:
    """``(N_test, k)`` indices into the training nodes of each test node's k nearest nodes with data."""
    train_coords = _check_coords(train_coords, "train_coords")
    if train_coords.shape[0] != day_mask.shape[0]:
        raise ValueError(f"train_coords: {train_coords.shape[0]} rows for {day_mask.shape[0]} training nodes")
    with_data = np.flatnonzero(day_mask.any(axis=1))
    indices, _ = nearest_training_nodes(train_coords[with_data], test_coords, k)
    return with_data[indices]


def knn_donor_profile(
    days: np.ndarray,
    day_mask: np.ndarray,
    train_coords: np.ndarray,
    test_coords: np.ndarray,
    k: int,
    num_samples: int,
) -> np.ndarray:
    """Mean over the k nearest training nodes of their mean valid day, repeated ``num_samples`` times.

    Args:
        days: ``(N_train, S, T, D)`` training nodes' days, data units.
        day_mask: ``(N_train, S)`` bool, True = valid day.
        train_coords: ``(N_train, 2)`` (lat, lon) degrees of the training nodes, rows as in ``days``.
        test_coords: ``(N_test, 2)`` (lat, lon) degrees of the test nodes.
        k: number of donors (e.g. 1, 3, 5). num_samples: days per test node.

    Returns:
        ``(N_test, num_samples, T, D)`` float32, data units.
    """
    days, day_mask = _check_days(days, day_mask)
    donors = _donors(day_mask, train_coords, test_coords, k)
    _check_num_samples(donors.shape[0], num_samples)
    counts = day_mask.sum(axis=1)[:, None, None]
    node_means = np.where(day_mask[..., None, None], days, 0.0).sum(axis=1) / np.maximum(counts, 1)
    profiles = node_means[donors].mean(axis=1)  # (N_test, T, D)
    return np.repeat(profiles[:, None], num_samples, axis=1).astype(np.float32)


def knn_donor_days(
    days: np.ndarray,
    day_mask: np.ndarray,
    train_coords: np.ndarray,
    test_coords: np.ndarray,
    k: int,
    num_samples: int,
    seed: int = 0,
) -> np.ndarray:
    """Days drawn at random from the pooled valid days of each test node's k nearest training nodes.

    Args: as :func:`knn_donor_profile`, plus ``seed`` (numpy Generator seed).

    Returns:
        ``(N_test, num_samples, T, D)`` float32, data units.
    """
    days, day_mask = _check_days(days, day_mask)
    donors = _donors(day_mask, train_coords, test_coords, k)
    _check_num_samples(donors.shape[0], num_samples)
    rng = np.random.default_rng(seed)
    drawn = [_draw(days[node_donors][day_mask[node_donors]], num_samples, rng) for node_donors in donors]
    return np.stack(drawn).astype(np.float32)


def all_baselines(
    days: np.ndarray,
    day_mask: np.ndarray,
    train_coords: np.ndarray,
    test_coords: np.ndarray,
    num_samples: int,
    ks: Sequence[int] = (1, 3, 5),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every baseline of this module for the same test nodes, keyed by a report name.

    Args: as :func:`knn_donor_days`; ``ks`` lists the donor counts (each must not exceed the number of
    training nodes with data).

    Returns:
        ``{"global_mean_profile", "random_training_days", "knn{k}_profile", "knn{k}_days" for k in ks}``
        -> ``(N_test, num_samples, T, D)`` float32 generated days, data units.
    """
    num_test_nodes = _check_coords(test_coords, "test_coords").shape[0]
    baselines = {
        "global_mean_profile": global_mean_profile(days, day_mask, num_test_nodes, num_samples),
        "random_training_days": random_training_days(days, day_mask, num_test_nodes, num_samples, seed),
    }
    for k in ks:
        baselines[f"knn{k}_profile"] = knn_donor_profile(
            days, day_mask, train_coords, test_coords, k, num_samples
        )
        baselines[f"knn{k}_days"] = knn_donor_days(
            days, day_mask, train_coords, test_coords, k, num_samples, seed
        )
    return baselines
