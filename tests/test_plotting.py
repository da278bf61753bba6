"""Report pictures are written as PNGs; the numpy t-SNE calibrates perplexity and keeps clusters apart."""

import numpy as np
import pytest
from matplotlib.image import imread

from kgdiff_diffusers.metrics import squared_distances
from kgdiff_diffusers.plotting import (
    _conditional_probabilities,
    plot_daily_profiles,
    plot_tsne,
    plot_value_kde,
    tsne_embedding,
)


def _days(seed: int = 0):
    rng = np.random.default_rng(seed)
    profile = 20 + 10 * np.sin(np.arange(12) / 12 * 2 * np.pi)[None, None, :, None]
    real = profile + rng.normal(size=(3, 8, 12, 2))
    real_mask = np.ones((3, 8), dtype=bool)
    real_mask[1, 3:] = False
    real[~real_mask] = np.nan  # never read
    generated = 1.2 * profile + rng.normal(size=(3, 6, 12, 2))
    return real, real_mask, generated


def _assert_png(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0  # not a blank canvas


def test_plot_daily_profiles_writes_png(tmp_path):
    real, real_mask, generated = _days()
    path = plot_daily_profiles(real, real_mask, generated, ["a", "b", "c"], tmp_path / "sub" / "profiles.png",
                               interval_minutes=120, feature_names=["inflow", "outflow"], max_nodes=2)
    _assert_png(path)
    with pytest.raises(ValueError, match="feature_names"):
        plot_daily_profiles(real, real_mask, generated, ["a", "b", "c"], tmp_path / "x.png", 120, ["inflow"])


def test_plot_value_kde_writes_png_including_a_constant_set(tmp_path):
    real, real_mask, generated = _days()
    _assert_png(plot_value_kde(real, generated, tmp_path / "kde.png", real_mask=real_mask))
    constant = np.full_like(generated, 20.0)  # e.g. a flat baseline: drawn as a line, not a KDE
    _assert_png(plot_value_kde(real, constant, tmp_path / "kde_constant.png", real_mask=real_mask))
    with pytest.raises(ValueError, match="real: need at least one valid day"):
        plot_value_kde(real, generated, tmp_path / "bad.png")  # NaN days without their mask


def test_plot_tsne_writes_png(tmp_path):
    real, real_mask, generated = _days()
    _assert_png(plot_tsne(real, generated, tmp_path / "tsne.png", real_mask=real_mask, num_iterations=200))


def test_perplexity_calibration():
    points = np.random.default_rng(1).normal(size=(40, 5))
    conditional = _conditional_probabilities(squared_distances(points, points), perplexity=8.0)
    np.testing.assert_allclose(conditional.sum(axis=1), 1.0)
    assert np.all(np.diag(conditional) == 0.0)
    entropy = -np.sum(np.where(conditional > 0, conditional * np.log(conditional + 1e-300), 0.0), axis=1)
    np.testing.assert_allclose(np.exp(entropy), 8.0, rtol=1e-3)


def test_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(2)
    centers = np.array([[0.0] * 6, [4.0] * 6, [-4.0, 4.0] * 3])
    labels = np.repeat(np.arange(3), 20)
    points = centers[labels] + rng.normal(size=(60, 6))
    embedding = tsne_embedding(points, perplexity=10.0, num_iterations=300)
    assert embedding.shape == (60, 2) and np.isfinite(embedding).all()
    distances = squared_distances(embedding, embedding)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).all()
    # Clusters end up farther apart than their own spread.
    means = np.stack([embedding[labels == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(embedding[labels == c] - means[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(means[a] - means[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread
    with pytest.raises(ValueError, match="perplexity"):
        tsne_embedding(points, perplexity=60.0)
