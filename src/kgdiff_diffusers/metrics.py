"""Evaluation metrics for generated days of unseen nodes (DESIGN.md §8), in the data's own units.

A *day* of a node is a ``(T, D)`` array: ``T`` time steps of ``D`` features. For every test node the
generated days are compared with the node's real days, and each metric is then averaged over the
test nodes (the mean of the per-node values). The exact definitions, for one node with generated
days ``g_1..g_m`` and real days ``r_1..r_n``, each flattened to a vector of ``F = T * D`` values:

* **MAE / RMSE** between the mean days ``gbar = (1/m) sum_j g_j`` and ``rbar = (1/n) sum_i r_i``:
  ``MAE = (1/F) sum_f |gbar_f - rbar_f|`` and ``RMSE = sqrt((1/F) sum_f (gbar_f - rbar_f)^2)``.
* **MMD**, as KSTDiff (Zhou et al. 2023, ``evaluate.py``) computes it: with the pooled set
  ``z = (g_1..g_m, r_1..r_n)`` of ``P = m + n`` vectors and squared distances
  ``d(x, y) = ||x - y||^2`` (sum over the ``F`` values), the base bandwidth is the mean squared distance
  over ordered pairs of distinct points, ``bw0 = sum_{a != b} d(z_a, z_b) / (P^2 - P)``, the kernel is a
  sum of five Gaussians ``K(x, y) = sum_{i=0..4} exp(-d(x, y) / bw_i)`` with ``bw_i = bw0 * 2^(i - 2)``
  (``bw0/4 .. 4 bw0``), and the biased (V-statistic) estimator is
  ``MMD = mean_{j,j'} K(g_j, g_j') + mean_{i,i'} K(r_i, r_i') - 2 mean_{j,i} K(g_j, r_i)``
  (all pairs, diagonals included; ``0 <= MMD <= 10``). Because ``bw0`` then depends on the generated
  days, :func:`evaluate_nodes` also reports ``mmd_fixed_bandwidth``: the same estimator with ``bw0``
  taken from the node's real days only, ``bw0 = sum_{i != i'} d(r_i, r_i') / (n^2 - n)`` (undefined, NaN,
  for a node with a single real day). If ``bw0 == 0`` the kernel is its limit ``5 * [d(x, y) == 0]``.
* **JSD** between value histograms: for each feature, the values of all generated days and of all real
  days of the node are counted in ``bins`` (default :data:`DEFAULT_JSD_BINS` = 50) equal-width bins over a
  fixed range ``[lo, hi]`` shared by both sets, plus one underflow (``< lo``) and one overflow (``> hi``)
  bin, so values outside the range still count against the model. With the normalised histograms ``p``
  (generated) and ``q`` (real) and ``M = (p + q) / 2``:
  ``JSD = 0.5 KL(p || M) + 0.5 KL(q || M)``, ``KL(a || b) = sum_k a_k ln(a_k / b_k)`` (natural log,
  ``0 ln 0 = 0``), so ``0 <= JSD <= ln 2``. This is the *divergence*; ``scipy.spatial.distance.jensenshannon``
  returns its square root. The per-node JSD is the mean over features. By default the range of feature
  ``d`` is the min/max of the real values of feature ``d`` over all test nodes' valid days (one range for
  every node, so the bins are comparable between nodes); a degenerate range ``lo == hi`` is widened to
  ``[lo - 0.5, hi + 0.5]`` (as ``numpy.histogram`` does).
* **CRPS** of the generated days as an ensemble forecast of each real day, per step and feature: for a value
  ``y = r_i[f]`` and the ensemble ``x_j = g_j[f]``, ``CRPS = (1/m) sum_j |x_j - y| - (1/(2 m^2)) sum_{j,j'}
  |x_j - x_j'|`` (the CRPS of the ensemble's empirical distribution, all ``m^2`` pairs), averaged over the ``n``
  real days and the ``F`` values; data units, 0 only when every member equals every real value. Computed with
  ``scoringrules.crps_ensemble`` (its ``"qd"`` estimator, which equals this energy form in O(m log m)).
* **Spread ratio**: for each step and feature ``f``, ``s_g[f] / s_r[f]`` with the sample standard deviations
  (ddof = 1) of ``g_1[f]..g_m[f]`` and ``r_1[f]..r_n[f]``, averaged over the values ``f`` whose real days are
  not all equal (``max_i r_i[f] > min_i r_i[f]``; a constant real step, e.g. zero trips every night, has no
  spread to match and is left out). 1.0 is right, below 1 under-dispersed, 0 for a repeated profile. Undefined
  (NaN) for a node with fewer than 2 generated or real days or no non-constant step.
* **Out-of-range share**: the fraction of the ``m * F`` generated values below the feature's physical lower
  bound. :func:`physical_lower_bound` sets it from the *training* nodes' real values: 0 for a feature whose
  training values are all >= 0 (counts, flows, speeds: a negative value is impossible), no bound (``-inf``)
  otherwise. There is no upper bound (no physical maximum is known from the data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scoringrules
import torch

DEFAULT_JSD_BINS = 50
# Per-node metrics of evaluate_nodes, averaged over the nodes where they are defined.
NODE_METRICS = ("mae", "rmse", "mmd", "mmd_fixed_bandwidth", "jsd", "crps", "spread_ratio", "out_of_range")
MMD_NUM_KERNELS = 5
MMD_KERNEL_MUL = 2.0


def _flatten_days(days: np.ndarray, name: str) -> np.ndarray:
    """``(S, T, D)`` or ``(S, F)`` days -> ``(S, F)`` float64, rejecting empty sets and NaN/inf."""
    days = np.asarray(days, dtype=np.float64)
    if days.ndim < 2 or days.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty set of days, shape (S, T, D); got shape {days.shape}")
    if not np.isfinite(days).all():
        raise ValueError(f"{name}: contains NaN or inf; pass only valid days (mask out missing ones)")
    return days.reshape(days.shape[0], -1)


def mean_day_errors(generated_days: np.ndarray, real_days: np.ndarray) -> tuple[float, float]:
    """MAE and RMSE between the mean generated day and the mean real day of one node.

    Args:
        generated_days: ``(m, T, D)`` generated days, data units.
        real_days: ``(n, T, D)`` real days, data units.

    Returns:
        ``(mae, rmse)`` over the ``T * D`` values of the two mean days, data units.
    """
    generated = _flatten_days(generated_days, "generated_days")
    real = _flatten_days(real_days, "real_days")
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"generated_days {generated.shape} and real_days {real.shape}: day sizes differ")
    error = generated.mean(axis=0) - real.mean(axis=0)
    return float(np.abs(error).mean()), float(np.sqrt((error**2).mean()))


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact pairwise squared Euclidean distances ``||x_a - y_b||^2`` (no Gram-matrix cancellation).

    Args:
        x: ``(a, F)`` vectors. y: ``(b, F)`` vectors.

    Returns:
        ``(a, b)`` float64; identical rows give exactly 0.
    """
    distances = torch.cdist(
        torch.from_numpy(np.asarray(x, dtype=np.float64)),
        torch.from_numpy(np.asarray(y, dtype=np.float64)),
        compute_mode="donot_use_mm_for_euclid_dist",
    )
    return (distances**2).numpy()


def mean_pairwise_squared_distance(days: np.ndarray) -> float:
    """MMD base bandwidth ``bw0``: the mean of ``||z_a - z_b||^2`` over ordered pairs ``a != b``.

    Args:
        days: ``(P, T, D)`` or ``(P, F)`` days, ``P >= 2``, data units.

    Returns:
        ``sum_{a != b} ||z_a - z_b||^2 / (P^2 - P)``, in squared data units.
    """
    flat = _flatten_days(days, "days")
    if flat.shape[0] < 2:
        raise ValueError(f"days: need at least 2 days for a pairwise distance; got {flat.shape[0]}")
    count = flat.shape[0]
    return float(squared_distances(flat, flat).sum() / (count * count - count))


def _multi_kernel(distances: np.ndarray, bandwidth: float) -> np.ndarray:
    """``sum_{i=0..4} exp(-d / (bw0 * 2^(i-2)))``; its limit ``5 * [d == 0]`` when ``bw0 == 0``."""
    if bandwidth == 0.0:
        return MMD_NUM_KERNELS * (distances == 0.0).astype(np.float64)
    base = bandwidth / MMD_KERNEL_MUL ** (MMD_NUM_KERNELS // 2)
    return sum(np.exp(-distances / (base * MMD_KERNEL_MUL**i)) for i in range(MMD_NUM_KERNELS))


def mmd(generated_days: np.ndarray, real_days: np.ndarray, bandwidth: float | None = None) -> float:
    """Biased multi-kernel MMD between one node's generated and real days (KSTDiff's definition).

    Args:
        generated_days: ``(m, T, D)`` generated days, data units.
        real_days: ``(n, T, D)`` real days, data units.
        bandwidth: the base bandwidth ``bw0`` in squared data units. ``None`` (KSTDiff) takes it from the
            pooled set, :func:`mean_pairwise_squared_distance` of generated and real days together; pass
            ``mean_pairwise_squared_distance(real_days)`` for the fixed (real-data-only) variant.

    Returns:
        ``mean K(g, g') + mean K(r, r') - 2 mean K(g, r)`` with the five-Gaussian kernel of the module
        docstring; 0 for identical sets, at most 10.
    """
    generated = _flatten_days(generated_days, "generated_days")
    real = _flatten_days(real_days, "real_days")
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"generated_days {generated.shape} and real_days {real.shape}: day sizes differ")
    pooled = np.concatenate([generated, real])
    distances = squared_distances(pooled, pooled)
    if bandwidth is None:
        count = pooled.shape[0]
        bandwidth = float(distances.sum() / (count * count - count))
    elif not (math.isfinite(bandwidth) and bandwidth >= 0.0):
        raise ValueError(f"bandwidth: must be a finite number >= 0 (squared data units); got {bandwidth}")
    kernel = _multi_kernel(distances, bandwidth)
    m = generated.shape[0]
    return float(kernel[:m, :m].mean() + kernel[m:, m:].mean() - 2.0 * kernel[:m, m:].mean())


def crps(generated_days: np.ndarray, real_days: np.ndarray) -> float:
    """Ensemble CRPS of one node's generated days against each of its real days (module docstring).

    Args:
        generated_days: ``(m, T, D)`` generated days (the ensemble), data units.
        real_days: ``(n, T, D)`` real days (the observations), data units.

    Returns:
        The mean over real days, steps and features of ``E|X - y| - E|X - X'| / 2``, data units.
    """
    generated = _flatten_days(generated_days, "generated_days")
    real = _flatten_days(real_days, "real_days")
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"generated_days {generated.shape} and real_days {real.shape}: day sizes differ")
    ensemble = np.broadcast_to(np.sort(generated.T, axis=-1), (real.shape[0], *generated.T.shape))  # (n, F, m)
    scores = scoringrules.crps_ensemble(
        real, ensemble, m_axis=-1, estimator="qd", sorted_ensemble=True, backend="numpy"
    )  # (n, F)
    return float(np.mean(scores))


def spread_ratio(generated_days: np.ndarray, real_days: np.ndarray) -> float:
    """Mean over steps and features of ``std(generated) / std(real)`` (ddof 1), constant real steps left out.

    Args:
        generated_days: ``(m, T, D)`` generated days, ``m >= 2``, data units.
        real_days: ``(n, T, D)`` real days, ``n >= 2``, data units.

    Returns:
        The ratio (1.0 = the real day-to-day spread); NaN when every real step is constant.
    """
    generated = _flatten_days(generated_days, "generated_days")
    real = _flatten_days(real_days, "real_days")
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"generated_days {generated.shape} and real_days {real.shape}: day sizes differ")
    if generated.shape[0] < 2 or real.shape[0] < 2:
        raise ValueError(f"spread_ratio needs >= 2 generated and >= 2 real days; got {generated.shape[0]} "
                         f"and {real.shape[0]}")
    varying = real.max(axis=0) > real.min(axis=0)
    if not varying.any():
        return math.nan
    ratios = generated[:, varying].std(axis=0, ddof=1) / real[:, varying].std(axis=0, ddof=1)
    return float(np.mean(ratios))


def physical_lower_bound(train_values: np.ndarray) -> np.ndarray:
    """``(D,)`` per-feature lower bound: 0.0 where all training values are >= 0, else ``-inf`` (no bound).

    Args:
        train_values: ``(..., D)`` real values of the training nodes (valid days only), data units.
    """
    values = np.asarray(train_values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("train_values: must be non-empty and free of NaN/inf")
    minimum = values.reshape(-1, values.shape[-1]).min(axis=0)
    return np.where(minimum >= 0.0, 0.0, -np.inf)


def out_of_range_share(generated_days: np.ndarray, lower_bound: np.ndarray | float) -> float:
    """Fraction of generated values below ``lower_bound``.

    Args:
        generated_days: ``(m, T, D)`` generated days, data units.
        lower_bound: a scalar or ``(D,)`` per-feature bound (``-inf`` = none), e.g. :func:`physical_lower_bound`.

    Returns:
        The share in ``[0, 1]`` of the ``m * T * D`` values strictly below their feature's bound.
    """
    generated = np.asarray(generated_days, dtype=np.float64)
    _flatten_days(generated, "generated_days")
    bound = np.asarray(lower_bound, dtype=np.float64)
    if bound.shape not in ((), generated.shape[-1:]):
        raise ValueError(f"lower_bound: expected a scalar or one bound per feature ({generated.shape[-1]}); "
                         f"got shape {bound.shape}")
    return float(np.mean(generated < bound))


def _histogram(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Normalised counts in ``[underflow, bins equal-width bins over [lo, hi], overflow]``."""
    counts = np.histogram(values, bins=bins, range=(lo, hi))[0]
    counts = np.concatenate([[np.sum(values < lo)], counts, [np.sum(values > hi)]]).astype(np.float64)
    return counts / counts.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """``sum_k p_k ln(p_k / q_k)`` over ``p_k > 0`` (natural log)."""
    support = p > 0
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def jsd(
    generated_values: np.ndarray,
    real_values: np.ndarray,
    value_range: tuple[float, float] | None = None,
    bins: int = DEFAULT_JSD_BINS,
) -> float:
    """Jensen-Shannon divergence (natural log) between value histograms with shared bin edges.

    Args:
        generated_values: generated values of one feature, any shape (flattened), data units.
        real_values: real values of the same feature, any shape (flattened), data units.
        value_range: ``(lo, hi)`` of the ``bins`` equal-width bins; ``None`` = min/max of ``real_values``.
            Values outside it fall in an underflow / overflow bin.
        bins: number of bins over the range (two out-of-range bins come on top).

    Returns:
        ``0.5 KL(p || M) + 0.5 KL(q || M)`` in nats, ``0 <= JSD <= ln 2``.
    """
    generated = np.asarray(generated_values, dtype=np.float64).ravel()
    real = np.asarray(real_values, dtype=np.float64).ravel()
    for name, values in (("generated_values", generated), ("real_values", real)):
        if values.size == 0 or not np.isfinite(values).all():
            raise ValueError(f"{name}: must be non-empty and free of NaN/inf")
    if bins < 1:
        raise ValueError(f"bins: must be >= 1; got {bins}")
    lo, hi = (real.min(), real.max()) if value_range is None else value_range
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"value_range: need finite lo <= hi; got ({lo}, {hi})")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    p = _histogram(generated, lo, hi, bins)
    q = _histogram(real, lo, hi, bins)
    middle = 0.5 * (p + q)
    return 0.5 * _kl(p, middle) + 0.5 * _kl(q, middle)


def _jsd_ranges(
    real: np.ndarray, real_mask: np.ndarray, jsd_range: tuple[float, float] | Sequence | None
) -> np.ndarray:
    """``(D, 2)`` per-feature histogram ranges: given ones, or the min/max of all valid real values."""
    num_features = real.shape[-1]
    if jsd_range is None:
        valid = real[real_mask]  # (days, T, D)
        return np.stack([valid.min(axis=(0, 1)), valid.max(axis=(0, 1))], axis=1).astype(np.float64)
    ranges = np.asarray(jsd_range, dtype=np.float64)
    if ranges.shape not in ((2,), (num_features, 2)):
        raise ValueError(f"jsd_range: expected (lo, hi) or one (lo, hi) per feature ({num_features}); "
                         f"got shape {ranges.shape}")
    return np.broadcast_to(ranges, (num_features, 2))


def _check_inputs(
    generated: np.ndarray, real: np.ndarray, real_mask: np.ndarray, generated_mask: np.ndarray
) -> None:
    if generated.ndim != 4 or real.ndim != 4:
        raise ValueError(f"generated {generated.shape} and real {real.shape}: expected (N, S, T, D) arrays")
    if generated.shape[0] != real.shape[0] or generated.shape[2:] != real.shape[2:]:
        raise ValueError(f"generated {generated.shape} and real {real.shape}: nodes N or day shape (T, D) "
                         "differ; generate for the same nodes in the same order")
    if real_mask.shape != real.shape[:2]:
        raise ValueError(f"real_mask: expected shape {real.shape[:2]} (N, S) of real; got {real_mask.shape}")
    if generated_mask.shape != generated.shape[:2]:
        raise ValueError(f"generated_mask: expected shape {generated.shape[:2]}; got {generated_mask.shape}")
    for name, mask in (("real_mask", real_mask), ("generated_mask", generated_mask)):
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise ValueError(f"{name}: nodes {empty.tolist()} have no valid day; drop them before evaluating")
    if not np.isfinite(real[real_mask]).all():
        raise ValueError("real: NaN/inf in a day that real_mask marks valid; interpolate or mask it")
    if not np.isfinite(generated[generated_mask]).all():
        raise ValueError("generated: NaN/inf in generated days; check the sampler (diverged?)")


def evaluate_nodes(
    generated: np.ndarray,
    real: np.ndarray,
    real_mask: np.ndarray,
    generated_mask: np.ndarray | None = None,
    jsd_bins: int = DEFAULT_JSD_BINS,
    jsd_range: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    lower_bound: np.ndarray | float | None = None,
) -> dict:
    """All metrics of the module docstring for each test node, and their means over the test nodes.

    Args:
        generated: ``(N, S_gen, T, D)`` generated days per test node, data units.
        real: ``(N, S, T, D)`` real days of the same nodes in the same order, data units.
        real_mask: ``(N, S)`` bool, True = a valid real day (nodes may have different numbers of them).
        generated_mask: ``(N, S_gen)`` bool, generated days to use; ``None`` = all of them.
        jsd_bins: equal-width histogram bins per feature for the JSD (plus under/overflow bins).
        jsd_range: ``(lo, hi)`` for every feature or ``D`` such pairs; ``None`` = per feature, the min/max of
            all valid real values of all nodes.
        lower_bound: scalar or ``(D,)`` bound of the out-of-range share; ``None`` = :func:`physical_lower_bound`
            of the given real days (pass the training nodes' bound to judge against the training data).

    Returns:
        A dict with, for each metric name in ``mae, rmse, mmd, mmd_fixed_bandwidth, jsd, crps, spread_ratio,
        out_of_range``, the mean over test nodes (``mmd``, ``mmd_fixed_bandwidth`` and ``spread_ratio``: over the
        nodes where they are defined, counted in ``num_nodes_mmd``, ``num_nodes_mmd_fixed_bandwidth`` and
        ``num_nodes_spread_ratio``; the pooled-bandwidth MMD needs more than one generated or real day);
        ``lower_bound``: the ``(D,)`` bound used (``None`` entries = no bound); ``rmse_pooled`` (KSTDiff's RMSE:
        sqrt of the mean squared mean-day error over all nodes, steps and features); ``num_nodes``;
        ``per_node``: a dict of ``(N,)`` arrays for the eight metrics plus ``num_real_days`` and
        ``num_generated_days``; ``jsd_bins``;
        ``jsd_range``: ``(D, 2)`` list; ``mmd_bandwidth``: a note naming the bandwidth rule of each MMD key.
    """
    generated = np.asarray(generated)
    real = np.asarray(real)
    real_mask = np.asarray(real_mask, dtype=bool)
    generated_mask = (np.ones(generated.shape[:2], dtype=bool) if generated_mask is None
                      else np.asarray(generated_mask, dtype=bool))
    _check_inputs(generated, real, real_mask, generated_mask)
    ranges = _jsd_ranges(real, real_mask, jsd_range)
    bound = physical_lower_bound(real[real_mask]) if lower_bound is None else lower_bound
    per_node = {name: np.full(real.shape[0], np.nan) for name in NODE_METRICS}
    for node in range(real.shape[0]):
        node_real = real[node][real_mask[node]]
        node_generated = generated[node][generated_mask[node]]
        per_node["mae"][node], per_node["rmse"][node] = mean_day_errors(node_generated, node_real)
        if node_generated.shape[0] + node_real.shape[0] > 2:  # one day each: their distance is the bandwidth,
            per_node["mmd"][node] = mmd(node_generated, node_real)  # so the MMD would be one constant for any days
        if node_real.shape[0] >= 2:
            fixed = mean_pairwise_squared_distance(node_real)
            per_node["mmd_fixed_bandwidth"][node] = mmd(node_generated, node_real, bandwidth=fixed)
        per_node["jsd"][node] = np.mean([
            jsd(node_generated[..., d], node_real[..., d], tuple(ranges[d]), jsd_bins)
            for d in range(real.shape[-1])
        ])
        per_node["crps"][node] = crps(node_generated, node_real)
        if node_real.shape[0] >= 2 and node_generated.shape[0] >= 2:
            per_node["spread_ratio"][node] = spread_ratio(node_generated, node_real)
        per_node["out_of_range"][node] = out_of_range_share(node_generated, bound)
    result: dict = {}
    for name in NODE_METRICS:
        defined = np.isfinite(per_node[name])
        result[name] = float(np.mean(per_node[name][defined])) if defined.any() else math.nan
    result["rmse_pooled"] = float(np.sqrt(np.mean(per_node["rmse"] ** 2)))
    result["num_nodes"] = int(real.shape[0])
    result["num_nodes_mmd"] = int(np.isfinite(per_node["mmd"]).sum())
    result["num_nodes_mmd_fixed_bandwidth"] = int(np.isfinite(per_node["mmd_fixed_bandwidth"]).sum())
    result["num_nodes_spread_ratio"] = int(np.isfinite(per_node["spread_ratio"]).sum())
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), real.shape[-1:])
    result["lower_bound"] = [float(b) if math.isfinite(b) else None for b in bound]
    result["jsd_bins"] = int(jsd_bins)
    result["jsd_range"] = ranges.tolist()
    result["mmd_bandwidth"] = {
        "mmd": "bw0 = mean squared pairwise distance of the pooled real + generated days (KSTDiff)",
        "mmd_fixed_bandwidth": "bw0 = mean squared pairwise distance of the node's real days only",
    }
    per_node["num_real_days"] = real_mask.sum(axis=1)
    per_node["num_generated_days"] = generated_mask.sum(axis=1)
    result["per_node"] = per_node
    return result
