"""Value checks at the door: declared "no reading" sentinels and the plausible range of each feature.

Traffic speeds, flows and counts are never negative, and a single absurd cell (``-1e30``, ``9e9``) would
set the normalisation statistics and with them the scale of every generated series. So, before day
samples are cut (:func:`~kgdiff_diffusers.data.prepared.prepare_dataset`):

- values equal to a declared sentinel (``missing_values``, e.g. ``-1`` or ``-999``) become NaN: missing;
- values below ``valid_min`` (default 0) or above ``valid_max`` are out of range. ``valid_max`` of None
  means :data:`OUTLIER_FACTOR` times the feature's 99th percentile of non-zero magnitudes, which real
  heavy-tailed counts stay far below. Out-of-range values raise ``ValueError`` naming the source file,
  node, time and value, or (``out_of_range="missing"``) become NaN and are counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from ..delay_embedding import choose_delay_embedding
from .days import DEFAULT_MAX_MISSING_FRACTION, feature_stats, make_day_samples, split_nodes_by_latitude
from .series import SpatioTemporalData

OUTLIER_FACTOR = 100.0
OUT_OF_RANGE_ACTIONS = ("error", "missing")


def source_name(data: SpatioTemporalData) -> str:
    """The file the data came from (``load_report["source"]``), for messages."""
    return str(data.load_report.get("source", "the data"))


def mask_sentinels(data: SpatioTemporalData, missing_values: Sequence[float]) -> dict[str, int]:
    """Turns every value equal to one of ``missing_values`` into NaN, in place.

    Returns:
        ``{str(sentinel): number of values masked}``.
    """
    counts = {}
    for sentinel in missing_values:
        sentinel = float(sentinel)
        if not np.isfinite(sentinel):
            raise ValueError(f"missing_values must be finite numbers; got {sentinel}")
        hits = data.values == np.float32(sentinel)
        counts[f"{sentinel:g}"] = int(hits.sum())
        data.values[hits] = np.nan
    return counts


def plausible_range(
    values: np.ndarray, valid_min: float | None = 0.0, valid_max: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(low, high)`` bounds of plausible values.

    Args:
        values: ``(N, T_total, D)`` with NaN for missing values.
        valid_min: lowest plausible value; None = ``-high`` (signed data).
        valid_max: highest plausible value; None = ``OUTLIER_FACTOR`` x the 99th percentile of the
            feature's non-zero finite magnitudes (inf when the feature has none).

    Returns:
        ``(low, high)``, each ``(D,)`` float64.
    """
    for name, bound in (("valid_min", valid_min), ("valid_max", valid_max)):
        if bound is not None and np.isnan(bound):  # NaN compares False with every value: no range check at all
            raise ValueError(f"{name} must be a number or None, got {bound}")
    num_features = values.shape[-1]
    high = np.full(num_features, np.inf)
    for d in range(num_features):
        if valid_max is not None:
            high[d] = float(valid_max)
            continue
        magnitude = np.abs(values[..., d][np.isfinite(values[..., d])])
        magnitude = magnitude[magnitude > 0]
        if len(magnitude):
            high[d] = OUTLIER_FACTOR * float(np.quantile(magnitude, 0.99))
    low = -high if valid_min is None else np.full(num_features, float(valid_min))
    if (low > high).any():
        raise ValueError(f"valid_min={valid_min} is above valid_max={valid_max}")
    return low, high


def check_value_range(
    data: SpatioTemporalData,
    valid_min: float | None = 0.0,
    valid_max: float | None = None,
    out_of_range: str = "error",
) -> dict:
    """Finds values outside :func:`plausible_range`; raises, or masks them in place.

    Raises:
        ValueError: out-of-range values with ``out_of_range="error"``, one line naming the file, the
            feature, the first offending node/time/value and the ways out.

    Returns:
        ``{"valid_min", "valid_max" (per feature), "out_of_range_masked" (per feature)}``.
    """
    if out_of_range not in OUT_OF_RANGE_ACTIONS:
        raise ValueError(f"out_of_range must be one of {OUT_OF_RANGE_ACTIONS}; got {out_of_range!r}")
    low, high = plausible_range(data.values, valid_min, valid_max)
    with np.errstate(invalid="ignore"):
        bad = (data.values < low) | (data.values > high)
    masked = bad.sum(axis=(0, 1))
    if bad.any() and out_of_range == "error":
        d = int(np.flatnonzero(masked)[0])
        node, step = np.argwhere(bad[..., d])[0]
        value = float(data.values[node, step, d])
        raise ValueError(
            f"{source_name(data)}: {int(masked[d])} value(s) of {data.feature_names[d]!r} outside the plausible "
            f"range [{low[d]:g}, {high[d]:g}], e.g. {value:g} at node {data.node_ids[node]!r}, "
            f"{data.timestamps[step]}; if {value:g} means 'no reading' declare it (--missing_values {value:g}), "
            "or mask such values (--out_of_range missing), or set the range (--allow_negative, --valid_max)"
        )
    data.values[bad] = np.nan
    return {
        "valid_min": low.tolist(),
        "valid_max": high.tolist(),
        "out_of_range_masked": {name: int(n) for name, n in zip(data.feature_names, masked)},
    }


def check_data(
    data: SpatioTemporalData,
    include_weekends: bool = False,
    max_gap_steps: int | None = None,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
    missing_values: Sequence[float] = (),
    valid_min: float | None = 0.0,
    valid_max: float | None = None,
    out_of_range: str = "error",
    test_fraction: float = 0.25,
    test_node_ids: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """What preparing and training would make of ``data``, per node, without building anything.

    Arguments as in :func:`~kgdiff_diffusers.data.prepared.prepare_dataset`. ``data`` is not modified.

    Returns:
        ``(per_node, summary, problems)``: one row per node (``coverage`` = share of time steps with every
        feature, node-days kept and dropped per reason, ``zeros``, ``negatives``, ``sentinels`` and
        ``out_of_range`` counts, and ``min_<feature>`` / ``max_<feature>``); summary lines; and the
        problems that would stop preparation or training (empty when the data is usable).
    """
    data = replace(data, values=data.values.copy())
    values = data.values
    per_node = pd.DataFrame({"node_id": data.node_ids})
    per_node["coverage"] = np.round(1.0 - np.isnan(values).any(axis=-1).mean(axis=1), 4)
    per_node["zeros"] = (values == 0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore"):
        per_node["negatives"] = (values < 0).sum(axis=(1, 2))
    sentinels = np.isin(values, np.asarray(missing_values, dtype=np.float32))
    per_node["sentinels"] = sentinels.sum(axis=(1, 2))
    mask_sentinels(data, missing_values)
    low, high = plausible_range(data.values, valid_min, valid_max)
    with np.errstate(invalid="ignore"):
        per_node["out_of_range"] = ((data.values < low) | (data.values > high)).sum(axis=(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nodes without any reading: NaN
        for d, name in enumerate(data.feature_names):
            per_node[f"min_{name}"] = np.nanmin(data.values[..., d], axis=1)
            per_node[f"max_{name}"] = np.nanmax(data.values[..., d], axis=1)
    check_value_range(data, valid_min, valid_max, "missing")
    problems = []
    bad = per_node.loc[per_node["out_of_range"] > 0, "node_id"].tolist()
    if bad and out_of_range == "error":
        problems.append(
            f"{int(per_node['out_of_range'].sum())} value(s) outside the plausible range at {len(bad)} node(s) "
            f"(e.g. {bad[:3]}); declare sentinels (--missing_values), --out_of_range missing or --allow_negative"
        )
    days, day_mask, dates, report = make_day_samples(data, include_weekends, max_gap_steps, max_missing_fraction)
    per_node["days_kept"] = day_mask.sum(axis=1)
    for reason, counts in report["node_days_dropped_by_node"].items():
        per_node[f"dropped_{reason}"] = counts
    summary = [
        f"{data.num_nodes} nodes, {data.interval_minutes}-minute steps ({report['steps_per_day']} per day), "
        f"{len(dates)} {'days' if include_weekends else 'weekdays'} with data "
        f"({report['weekend_days_excluded']} weekend days excluded), {report['node_days_kept']} node-days kept, "
        f"dropped {report['node_days_dropped']}, {report['values_interpolated']} values to interpolate",
    ]
    try:
        train_ids, test_ids = split_nodes_by_latitude(data.node_table, test_fraction, test_node_ids)
        train = set(train_ids)
        per_node["split"] = ["train" if node_id in train else "test" for node_id in data.node_ids]
        feature_stats(days, day_mask, np.flatnonzero(per_node["split"] == "train"))
        summary.append(f"split: {len(train_ids)} train, {len(test_ids)} test nodes")
        unscored = per_node.loc[(per_node["split"] == "test") & (per_node["days_kept"] == 0), "node_id"].tolist()
        if unscored and len(unscored) == len(test_ids):
            problems.append(f"no test node keeps a day ({unscored[:5]}): evaluation after training would have "
                            "nothing to score; choose other --test_node_ids")
        elif unscored:
            summary.append(f"warning: {len(unscored)} test node(s) keep no day and cannot be scored: {unscored[:5]}")
    except ValueError as err:
        problems.append(str(err))
    try:
        window, stride = choose_delay_embedding(report["steps_per_day"])
        summary.append(f"delay embedding: window {window}, stride {stride} -> {window}x{window} images")
    except ValueError as err:
        problems.append(str(err))
    without_days = per_node.loc[per_node["days_kept"] == 0, "node_id"].tolist()
    if without_days:
        summary.append(f"{len(without_days)} node(s) keep no day and are left out of training: {without_days[:5]}")
    readings = np.isfinite(values).sum(axis=(1, 2))
    only_zeros = per_node.loc[(readings > 0) & (per_node["zeros"] == readings), "node_id"].tolist()
    if only_zeros:
        summary.append(f"{len(only_zeros)} node(s) read only 0 (no activity, or 0 = no reading?): {only_zeros[:5]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nodes without any reading: NaN
        constant = (np.nanmax(data.values, axis=1) == np.nanmin(data.values, axis=1)).all(axis=-1)
    stuck = per_node.loc[constant & (readings > 1) & (per_node["zeros"] < readings), "node_id"].tolist()
    if stuck:
        summary.append(
            f"warning: {len(stuck)} node(s) read one constant value throughout (a stuck sensor?): {stuck[:5]}"
        )
    first = ["node_id"] + (["split"] if "split" in per_node else []) + ["coverage", "days_kept"]
    return per_node[first + [c for c in per_node.columns if c not in first]], summary, problems
