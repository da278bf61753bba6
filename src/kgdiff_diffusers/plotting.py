"""Pictures for evaluation reports: daily profiles, value densities and a t-SNE map of days (DESIGN.md §8).

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, Agg canvas), so nothing
depends on or changes the global pyplot backend. Arrays are in data units: ``real`` ``(N, S, T, D)`` with
``real_mask`` ``(N, S)`` (True = valid day; other days are never read), ``generated`` ``(N, S_gen, T, D)``
with an optional ``generated_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde

from .metrics import squared_distances

REAL_COLOR = "black"
GENERATED_COLOR = "tab:orange"


def _valid_days(days: np.ndarray, mask: np.ndarray | None, name: str) -> np.ndarray:
    """``(M, T, D)`` float64 valid days of ``days`` ``(N, S, T, D)`` (all days when ``mask`` is None)."""
    days = np.asarray(days, dtype=np.float64)
    if days.ndim != 4:
        raise ValueError(f"{name}: expected (N, S, T, D) days; got shape {days.shape}")
    valid = days.reshape(-1, *days.shape[2:]) if mask is None else days[np.asarray(mask, dtype=bool)]
    if valid.shape[0] == 0 or not np.isfinite(valid).all():
        raise ValueError(f"{name}: need at least one valid day and no NaN/inf in valid days (check the mask)")
    return valid


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_daily_profiles(
    real: np.ndarray,
    real_mask: np.ndarray,
    generated: np.ndarray,
    node_ids: Sequence[str],
    path: str | Path,
    interval_minutes: int,
    feature_names: Sequence[str],
    max_nodes: int = 6,
    generated_mask: np.ndarray | None = None,
) -> Path:
    """Real vs generated mean day with a 10-90 % band, one row per node and one column per feature.

    Args:
        real: ``(N, S, T, D)`` real days. real_mask: ``(N, S)`` bool.
        generated: ``(N, S_gen, T, D)`` generated days of the same nodes.
        node_ids: ``(N,)`` names for the row titles.
        path: PNG file to write (parent folders are created).
        interval_minutes: minutes per time step (x axis in hours of the day).
        feature_names: ``(D,)`` y-axis labels.
        max_nodes: at most this many nodes, spread evenly over the node axis.
        generated_mask: ``(N, S_gen)`` bool; ``None`` = all generated days.

    Returns:
        ``path``.
    """
    real, generated = np.asarray(real), np.asarray(generated)
    if len(node_ids) != real.shape[0] or generated.shape[0] != real.shape[0]:
        raise ValueError(f"node_ids ({len(node_ids)}), real {real.shape} and generated {generated.shape}: "
                         "need one entry per node")
    if len(feature_names) != real.shape[-1]:
        raise ValueError(f"feature_names: {len(feature_names)} names for {real.shape[-1]} features")
    nodes = np.unique(np.linspace(0, real.shape[0] - 1, min(max_nodes, real.shape[0])).round().astype(int))
    num_features = real.shape[-1]
    hours = np.arange(real.shape[2]) * interval_minutes / 60.0
    figure = Figure(figsize=(4.5 * num_features, 2.4 * len(nodes)), layout="constrained")
    axes = figure.subplots(len(nodes), num_features, squeeze=False, sharex=True)
    for row, node in enumerate(nodes):
        sets = (
            ("real", REAL_COLOR, _valid_days(real[node : node + 1], real_mask[node : node + 1], "real")),
            ("generated", GENERATED_COLOR, _valid_days(
                generated[node : node + 1],
                None if generated_mask is None else generated_mask[node : node + 1],
                "generated",
            )),
        )
        for feature in range(num_features):
            axis = axes[row, feature]
            for label, color, days in sets:
                low, high = np.percentile(days[..., feature], [10, 90], axis=0)
                axis.fill_between(hours, low, high, color=color, alpha=0.2, linewidth=0)
                axis.plot(hours, days[..., feature].mean(axis=0), color=color,
                          label=f"{label} ({len(days)} days)")
            axis.set_title(f"{node_ids[node]}", fontsize=9)
            axis.set_ylabel(feature_names[feature])
            axis.legend(fontsize=7, loc="upper left")
    for axis in axes[-1]:
        axis.set_xlabel("hour of day")
    figure.suptitle("Mean day and 10-90 % band: real vs generated")
    return _save(figure, path)


def plot_value_kde(
    real: np.ndarray,
    generated: np.ndarray,
    path: str | Path,
    real_mask: np.ndarray | None = None,
    generated_mask: np.ndarray | None = None,
    feature_names: Sequence[str] | None = None,
    max_values: int = 20000,
    seed: int = 0,
) -> Path:
    """Gaussian KDE (scipy, Scott's bandwidth) of all real vs all generated values, one panel per feature.

    Args:
        real: ``(N, S, T, D)`` real days. generated: ``(N, S_gen, T, D)`` generated days.
        path: PNG file to write.
        real_mask, generated_mask: ``(N, S)`` / ``(N, S_gen)`` bool; ``None`` = all days.
        feature_names: ``(D,)`` x-axis labels; ``None`` = ``feature 0..D-1``.
        max_values: each KDE is fitted on at most this many values (a seeded random subset).
        seed: numpy Generator seed of the subset.

    Returns:
        ``path``.
    """
    real_days = _valid_days(real, real_mask, "real")
    generated_days = _valid_days(generated, generated_mask, "generated")
    num_features = real_days.shape[-1]
    names = [f"feature {d}" for d in range(num_features)] if feature_names is None else list(feature_names)
    rng = np.random.default_rng(seed)
    figure = Figure(figsize=(4.5 * num_features, 3.2), layout="constrained")
    axes = figure.subplots(1, num_features, squeeze=False)[0]
    for feature, axis in enumerate(axes):
        sets = [(label, color, days[..., feature].ravel())
                for label, color, days in (("real", REAL_COLOR, real_days),
                                           ("generated", GENERATED_COLOR, generated_days))]
        grid = np.linspace(min(v.min() for _, _, v in sets), max(v.max() for _, _, v in sets), 256)
        for label, color, values in sets:
            if values.size > max_values:
                values = rng.choice(values, size=max_values, replace=False)
            if np.ptp(values) == 0:  # a point mass has no density: mark its value
                axis.axvline(values[0], color=color, label=f"{label} (constant)")
            else:
                axis.plot(grid, gaussian_kde(values)(grid), color=color, label=label)
        axis.set_xlabel(names[feature])
        axis.set_ylabel("density")
        axis.legend(fontsize=8)
    figure.suptitle("Distribution of values: real vs generated")
    return _save(figure, path)


def _conditional_probabilities(
    distances: np.ndarray, perplexity: float, tolerance: float = 1e-5
) -> np.ndarray:
    """t-SNE's ``p_{j|i}``: Gaussian rows whose perplexity ``exp(H_i)`` equals ``perplexity``.

    Bisection on each row's precision ``beta_i`` (all rows at once) until the Shannon entropy
    ``H_i = -sum_j p_{j|i} ln p_{j|i}`` of ``p_{j|i} ∝ exp(-beta_i d_ij)`` (j != i) is within
    ``tolerance`` of ``ln(perplexity)``.

    Args:
        distances: ``(n, n)`` squared distances. perplexity: effective number of neighbours, ``< n``.

    Returns:
        ``(n, n)`` row-stochastic matrix with zero diagonal.
    """
    count = distances.shape[0]
    off_diagonal = ~np.eye(count, dtype=bool)
    scaled = distances / distances[off_diagonal].mean()
    shifted = scaled - np.where(off_diagonal, scaled, np.inf).min(axis=1, keepdims=True)  # against underflow
    np.fill_diagonal(shifted, 0.0)  # excluded below; 0 keeps exp() and 0 * shifted finite there
    target = math.log(perplexity)
    beta, low, high = np.ones(count), np.zeros(count), np.full(count, np.inf)
    for _ in range(200):
        weights = np.exp(-shifted * beta[:, None]) * off_diagonal
        total = weights.sum(axis=1)
        entropy = np.log(total) + beta * (weights * shifted).sum(axis=1) / total
        if np.all(np.abs(entropy - target) < tolerance):
            break
        too_flat = entropy > target  # entropy falls as beta grows
        low = np.where(too_flat, beta, low)
        high = np.where(too_flat, high, beta)
        beta = np.where(np.isinf(high), beta * 2.0, (low + high) / 2.0)
    return weights / total[:, None]


def tsne_embedding(
    points: np.ndarray,
    perplexity: float = 30.0,
    num_iterations: int = 750,
    early_exaggeration: float = 12.0,
    seed: int = 0,
) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of a few hundred points into 2-D, in numpy.

    Joint affinities ``P = (p_{j|i} + p_{i|j}) / 2n`` from perplexity-calibrated Gaussians (see
    :func:`_conditional_probabilities`), Student-t similarities ``q_ij ∝ (1 + ||y_i - y_j||^2)^-1`` and
    gradient ``4 sum_j (p_ij - q_ij)(y_i - y_j)(1 + ||y_i - y_j||^2)^-1``, minimised by gradient descent with
    momentum (0.5, then 0.8), per-parameter gains (+0.2 / x0.8, floor 0.01) and ``P`` multiplied by
    ``early_exaggeration`` during the first quarter of the iterations; learning rate ``max(n / 48, 50)``.
    Cost ``O(n^2)`` memory and time per iteration: keep ``n`` under about 2000.

    Args:
        points: ``(n, F)`` vectors (e.g. flattened days).
        perplexity: effective number of neighbours, ``1 <= perplexity < n``.
        num_iterations: gradient steps. early_exaggeration: factor on ``P`` in the first phase.
        seed: numpy Generator seed of the initial layout (``N(0, 1e-4^2)``).

    Returns:
        ``(n, 2)`` embedding.
    """
    points = np.asarray(points, dtype=np.float64)
    count = points.shape[0]
    if points.ndim != 2 or not np.isfinite(points).all():
        raise ValueError(f"points: expected finite (n, F) vectors; got shape {points.shape}")
    if not 1.0 <= perplexity < count:
        raise ValueError(f"perplexity: must be in [1, n = {count}); got {perplexity}")
    distances = squared_distances(points, points)
    if not distances.any():
        raise ValueError("points: all points are identical; t-SNE has nothing to separate")
    conditional = _conditional_probabilities(distances, perplexity)
    joint = np.maximum((conditional + conditional.T) / (2.0 * count), 1e-12)
    np.fill_diagonal(joint, 0.0)
    learning_rate = max(count / 48.0, 50.0)
    rng = np.random.default_rng(seed)
    embedding = rng.normal(scale=1e-4, size=(count, 2))
    update, gains = np.zeros_like(embedding), np.ones_like(embedding)
    exaggerated_until = num_iterations // 4
    for iteration in range(num_iterations):
        exaggeration = early_exaggeration if iteration < exaggerated_until else 1.0
        kernel = 1.0 / (1.0 + sum(np.subtract.outer(column, column) ** 2 for column in embedding.T))
        np.fill_diagonal(kernel, 0.0)
        similarities = np.maximum(kernel / kernel.sum(), 1e-12)
        forces = (exaggeration * joint - similarities) * kernel
        gradient = 4.0 * (forces.sum(axis=1, keepdims=True) * embedding - forces @ embedding)
        gains = np.where(np.sign(gradient) != np.sign(update), gains + 0.2, gains * 0.8).clip(min=0.01)
        momentum = 0.5 if iteration < exaggerated_until else 0.8
        update = momentum * update - learning_rate * gains * gradient
        embedding = embedding + update
    return embedding - embedding.mean(axis=0)


def plot_tsne(
    real: np.ndarray,
    generated: np.ndarray,
    path: str | Path,
    real_mask: np.ndarray | None = None,
    generated_mask: np.ndarray | None = None,
    max_points: int = 600,
    perplexity: float = 30.0,
    num_iterations: int = 750,
    seed: int = 0,
) -> Path:
    """t-SNE map of real and generated days (each day a ``T * D`` vector in data units) in one embedding.

    Up to ``max_points // 2`` days of each set are drawn at random (seeded); the perplexity is lowered to
    ``(n - 1) / 3`` when there are too few points for it.

    Args:
        real: ``(N, S, T, D)`` real days. generated: ``(N, S_gen, T, D)`` generated days.
        path: PNG file to write.
        real_mask, generated_mask: ``(N, S)`` / ``(N, S_gen)`` bool; ``None`` = all days.
        max_points: total points embedded. perplexity, num_iterations: see :func:`tsne_embedding`.
        seed: numpy Generator seed of the subset and of the t-SNE layout.

    Returns:
        ``path``.
    """
    rng = np.random.default_rng(seed)
    subsets = []
    for name, days, mask in (("real", real, real_mask), ("generated", generated, generated_mask)):
        valid = _valid_days(days, mask, name)
        flat = valid.reshape(valid.shape[0], -1)
        keep = rng.choice(flat.shape[0], size=min(flat.shape[0], max_points // 2), replace=False)
        subsets.append(flat[keep])
    points = np.concatenate(subsets)
    embedding = tsne_embedding(points, min(perplexity, (points.shape[0] - 1) / 3.0), num_iterations,
                               seed=seed)
    figure = Figure(figsize=(5.0, 4.5), layout="constrained")
    axis = figure.subplots()
    num_real = subsets[0].shape[0]
    axis.scatter(*embedding[:num_real].T, s=8, color=REAL_COLOR, alpha=0.6, label=f"real ({num_real})")
    axis.scatter(*embedding[num_real:].T, s=8, color=GENERATED_COLOR, alpha=0.6,
                 label=f"generated ({len(subsets[1])})")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(fontsize=8)
    axis.set_title("t-SNE of days: real vs generated")
    return _save(figure, path)
