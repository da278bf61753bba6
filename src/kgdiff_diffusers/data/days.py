"""Day samples (one day of one node), day types, gap handling, latitude node splits and folds, normalisation stats."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .series import SpatioTemporalData

MINUTES_PER_DAY = 24 * 60
DEFAULT_MAX_GAP_MINUTES = 60
DEFAULT_MAX_MISSING_FRACTION = 0.1
# Day types a pipeline can be conditioned on, in index order: Monday to Friday, then Saturday and Sunday.
DAY_TYPES = ("weekday", "weekend")


def day_type_indices(dates: Sequence[str]) -> np.ndarray:
    """The day type of each date: its index in :data:`DAY_TYPES` (0 = Monday-Friday, 1 = Saturday/Sunday).

    Args:
        dates: ``(S,)`` ISO dates (``"2024-03-04"``), e.g. a prepared dataset's ``dates``.

    Returns:
        ``(S,)`` int64.
    """
    return (pd.DatetimeIndex(list(dates)).day_of_week >= 5).astype(np.int64)


def longest_run(missing: np.ndarray) -> np.ndarray:
    """Length of the longest run of True along the last axis.

    Args:
        missing: ``(..., T)`` bool.

    Returns:
        ``(...)`` int64 longest number of consecutive True values.
    """
    count = np.cumsum(missing, axis=-1)
    count_at_last_false = np.maximum.accumulate(np.where(missing, 0, count), axis=-1)
    return (count - count_at_last_false).max(axis=-1, initial=0)


def interpolate_gaps(series: np.ndarray) -> tuple[np.ndarray, int]:
    """Fills NaN by linear interpolation along the last axis, each row on its own.

    A gap between two readings is a straight line between them; a gap at the start or end of a row takes
    the nearest reading (there is no second point to draw a line to). Rows without any reading stay NaN.

    Args:
        series: ``(..., T)`` float array.

    Returns:
        ``(filled copy, number of values filled)``.
    """
    # A C-ordered copy: reshaping a non-contiguous input (e.g. np.moveaxis of (..., T, D) days) would
    # make ``rows`` a second copy and the fill would never reach ``filled``.
    filled = np.array(series, copy=True, order="C")
    rows = filled.reshape(-1, filled.shape[-1])
    steps = np.arange(rows.shape[1])
    count = 0
    for row in np.flatnonzero(np.isnan(rows).any(axis=1)):
        known = ~np.isnan(rows[row])
        if known.any():
            rows[row, ~known] = np.interp(steps[~known], steps[known], rows[row, known])
            count += int((~known).sum())
    return filled, count


def make_day_samples(
    data: SpatioTemporalData,
    include_weekends: bool = False,
    max_gap_steps: int | None = None,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Cuts the series into calendar days, fills short gaps and drops days with too much missing.

    A step of a (node, day) is missing when any feature is NaN (or 0 when ``data.zero_is_missing``). A
    (node, day) is dropped when it has no reading (``no_data``), when more than ``max_missing_fraction``
    of its steps are missing (``too_many_missing``), or when a run of missing steps is longer than
    ``max_gap_steps`` (``long_gap``), checked in that order. Otherwise its gaps are filled linearly
    within the day (:func:`interpolate_gaps`, per feature). Days absent from the time range count as
    missing steps; calendar dates on which no node keeps a day are removed from the day axis.

    Args:
        data: series on a regular grid whose interval divides a day and whose timestamps lie on it.
        include_weekends: keep Saturdays and Sundays (the paper uses weekdays only).
        max_gap_steps: longest run of missing steps that is interpolated; None means one hour of steps.
        max_missing_fraction: largest fraction of missing steps in a kept day, in ``[0, 1]``.

    Returns:
        ``(days, day_mask, dates, report)``: ``days`` ``(N, S, T, D)`` float32 in data units with 0 where
        ``day_mask`` ``(N, S)`` is False; ``dates`` ``(S,)`` ISO dates; ``report`` the counts (nodes,
        dates kept/removed, weekend days excluded, node-days kept and dropped per reason (in all and per
        node, ``(N,)`` lists), zeros masked
        here (loaders of zero-is-missing data have already masked theirs), values missing and interpolated).
    """
    interval = data.interval_minutes
    if MINUTES_PER_DAY % interval:
        raise ValueError(f"interval_minutes={interval} does not divide a day; resample the data first")
    steps_per_day = MINUTES_PER_DAY // interval
    if max_gap_steps is None:
        max_gap_steps = max(1, DEFAULT_MAX_GAP_MINUTES // interval)
    if max_gap_steps < 0:
        raise ValueError(f"max_gap_steps must be >= 0; got {max_gap_steps}")
    if not 0.0 <= max_missing_fraction <= 1.0:
        raise ValueError(f"max_missing_fraction must be in [0, 1]; got {max_missing_fraction}")
    first_day = data.timestamps[0].normalize()
    offsets = (data.timestamps - first_day) // pd.Timedelta(minutes=interval)
    if ((data.timestamps - first_day) % pd.Timedelta(minutes=interval) != pd.Timedelta(0)).any():
        raise ValueError(f"timestamps are not aligned to a {interval}-minute grid starting at midnight")
    num_dates = (data.timestamps[-1].normalize() - first_day).days + 1
    num_nodes, _, num_features = data.values.shape
    grid = np.full((num_nodes, num_dates * steps_per_day, num_features), np.nan, dtype=np.float32)
    grid[:, np.asarray(offsets)] = data.values
    zeros_masked = 0
    if data.zero_is_missing:
        zeros = grid == 0
        zeros_masked = int(zeros.sum())
        grid[zeros] = np.nan
    dates = pd.date_range(first_day, periods=num_dates, freq="D")
    weekday = dates.day_of_week < 5 if not include_weekends else np.ones(num_dates, dtype=bool)
    days = grid.reshape(num_nodes, num_dates, steps_per_day, num_features)[:, weekday]
    dates = dates[weekday]

    missing = np.isnan(days).any(axis=-1)
    missing_fraction = missing.mean(axis=-1)
    no_data = missing.all(axis=-1)
    too_many_missing = ~no_data & (missing_fraction > max_missing_fraction)
    long_gap = ~no_data & ~too_many_missing & (longest_run(missing) > max_gap_steps)
    day_mask = ~(no_data | too_many_missing | long_gap)
    values_missing = int(np.isnan(days).sum())
    values_missing_kept = int(np.isnan(days[day_mask]).sum())
    kept = np.moveaxis(days[day_mask], -1, -2)
    kept, values_interpolated = interpolate_gaps(kept)
    days[day_mask] = np.moveaxis(kept, -2, -1)
    if np.isnan(days[day_mask]).any():
        raise RuntimeError("a kept day still holds NaN after gap filling; this is a bug, please report it")
    days[~day_mask] = 0.0

    used_dates = day_mask.any(axis=0)
    report = {
        "nodes": int(num_nodes),
        "steps_per_day": int(steps_per_day),
        "dates_considered": int(len(dates)),
        "dates_kept": int(used_dates.sum()),
        "dates_removed_no_valid_node": [d.date().isoformat() for d in dates[~used_dates]],
        "weekend_days_excluded": int((~weekday).sum()),
        "node_days_kept": int(day_mask.sum()),
        "node_days_dropped": {
            "no_data": int(no_data.sum()),
            "too_many_missing": int(too_many_missing.sum()),
            "long_gap": int(long_gap.sum()),
        },
        "node_days_dropped_by_node": {
            "no_data": no_data.sum(axis=1).tolist(),
            "too_many_missing": too_many_missing.sum(axis=1).tolist(),
            "long_gap": long_gap.sum(axis=1).tolist(),
        },
        "zeros_masked": zeros_masked,
        "values_missing": values_missing,
        "values_missing_in_kept_days": values_missing_kept,
        "values_interpolated": int(values_interpolated),
        "max_gap_steps": int(max_gap_steps),
        "max_missing_fraction": float(max_missing_fraction),
        "include_weekends": bool(include_weekends),
    }
    date_strings = [d.date().isoformat() for d in dates[used_dates]]
    return np.ascontiguousarray(days[:, used_dates]), day_mask[:, used_dates], date_strings, report


def _by_latitude(node_table: pd.DataFrame) -> np.ndarray:
    """Row indices from the highest latitude down, ties broken by row order."""
    return np.lexsort((np.arange(len(node_table)), -node_table["lat"].to_numpy(dtype=np.float64)))


def split_nodes_by_latitude(
    node_table: pd.DataFrame, test_fraction: float = 0.25, test_node_ids: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Splits nodes into train and test by latitude: the test nodes are the northernmost ones.

    Args:
        node_table: with ``node_id`` and ``lat`` columns.
        test_fraction: share of nodes in the test split (rounded to a whole number of nodes); ties in
            latitude are broken by row order.
        test_node_ids: explicit test nodes; when given, ``test_fraction`` is ignored.

    Returns:
        ``(train_node_ids, test_node_ids)``, each in ``node_table`` order.
    """
    node_ids = node_table["node_id"].astype(str).tolist()
    if test_node_ids is not None:
        test_node_ids = [str(node_id) for node_id in test_node_ids]
        unknown = sorted(set(test_node_ids) - set(node_ids))
        if unknown:
            raise ValueError(f"test_node_ids {unknown[:5]} are not nodes of the data ({len(unknown)} in all)")
        test = set(test_node_ids)
    else:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
        num_test = int(round(test_fraction * len(node_ids)))
        latitudes = node_table["lat"].to_numpy(dtype=np.float64)
        if len(node_ids) > 1 and (latitudes == latitudes[0]).all():
            raise ValueError(
                f"all {len(node_ids)} nodes have latitude {latitudes[0]}: the latitude split cannot separate "
                "them; give real coordinates or pass test_node_ids (--test_node_ids)"
            )
        test = {node_ids[i] for i in _by_latitude(node_table)[:num_test]}
    if not test:
        raise ValueError(
            f"the test split is empty ({len(node_ids)} nodes, test_fraction={test_fraction}); "
            "raise test_fraction or pass test_node_ids"
        )
    train = [node_id for node_id in node_ids if node_id not in test]
    if len(train) < 2:
        raise ValueError(
            f"only {len(train)} train node(s) of {len(node_ids)} remain; at least two are needed "
            "(lower test_fraction or pass fewer test_node_ids)"
        )
    return train, [node_id for node_id in node_ids if node_id in test]


def split_validation_nodes(
    node_table: pd.DataFrame, train_node_ids: Sequence[str], validation_fraction: float = 0.2
) -> tuple[list[str], list[str]]:
    """Cuts validation nodes from the TRAINING side: the highest-latitude share of the train nodes.

    Like the test split, the validation nodes are a contiguous slice of the map, so validating on them asks
    the same question as testing (how good are days for a place the model never saw?) without touching a
    test node. The caller excludes them from training.

    Args:
        node_table: with ``node_id`` and ``lat`` columns.
        train_node_ids: the train nodes (test nodes already removed); validation nodes are drawn only from them.
        validation_fraction: share of the train nodes, in ``[0, 1)``; rounded, at least one node when > 0.

    Returns:
        ``(train_node_ids, validation_node_ids)``, each in ``node_table`` order; no validation nodes for 0.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1); got {validation_fraction}")
    train = {str(node_id) for node_id in train_node_ids}
    node_ids = node_table["node_id"].astype(str).tolist()
    unknown = sorted(train - set(node_ids))
    if unknown:
        raise ValueError(f"train_node_ids {unknown[:5]} are not nodes of the node table")
    num_validation = 0 if validation_fraction == 0 else max(1, int(round(validation_fraction * len(train))))
    if len(train) - num_validation < 2:
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves {len(train) - num_validation} of {len(train)} "
            "train node(s) to train on; at least two are needed (lower it, or 0 for no validation nodes)"
        )
    ordered = [node_ids[row] for row in _by_latitude(node_table) if node_ids[row] in train]
    validation = set(ordered[:num_validation])
    return ([n for n in node_ids if n in train and n not in validation], [n for n in node_ids if n in validation])


def latitude_folds(node_table: pd.DataFrame, num_folds: int = 4) -> list[list[str]]:
    """Spatial folds: the nodes cut into ``num_folds`` latitude bands of (near) equal size, north to south.

    Holding out each band once as the test set makes every node a test node exactly once.

    Args:
        node_table: with ``node_id`` and ``lat`` columns.
        num_folds: number of bands, ``2 <= num_folds <= N``; band sizes differ by at most one node (the
            northern bands get the extra nodes).

    Returns:
        ``num_folds`` lists of node ids (fold 0 = the northernmost band), each in ``node_table`` order.
    """
    node_ids = node_table["node_id"].astype(str).tolist()
    if not 2 <= num_folds <= len(node_ids):
        raise ValueError(f"num_folds must be between 2 and the number of nodes ({len(node_ids)}); got {num_folds}")
    band = np.empty(len(node_ids), dtype=np.int64)
    band[_by_latitude(node_table)] = np.concatenate(
        [np.full(len(chunk), fold) for fold, chunk in enumerate(np.array_split(np.arange(len(node_ids)), num_folds))]
    )
    return [[node_ids[row] for row in np.flatnonzero(band == fold)] for fold in range(num_folds)]


def feature_stats(
    days: np.ndarray, day_mask: np.ndarray, train_rows: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over the train nodes' valid days.

    Args:
        days: ``(N, S, T, D)`` in data units.
        day_mask: ``(N, S)`` bool, True = a real day.
        train_rows: indices into axis 0 (or an ``(N,)`` bool mask) of the train nodes.

    Returns:
        ``(mean, std)``, each ``(D,)`` float32 in data units (population std, computed in float64).
    """
    rows = np.asarray(train_rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
    values = days[rows][day_mask[rows]]
    if not len(values):
        raise ValueError("the train nodes have no valid day; cannot compute normalisation statistics")
    values = values.reshape(-1, days.shape[-1]).astype(np.float64)
    mean, std = values.mean(axis=0), values.std(axis=0)
    if (std == 0).any():
        raise ValueError(f"feature(s) {np.flatnonzero(std == 0).tolist()} are constant on the train nodes")
    return mean.astype(np.float32), std.astype(np.float32)
