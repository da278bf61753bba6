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

from collections.abc import Sequence

import numpy as np

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
