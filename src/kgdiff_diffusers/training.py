"""The KGDiff training objective, shared by scripts/train.py and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .delay_embedding import DelayEmbedding
from .models.condition_encoder import KGConditionEncoder
from .models.meta_pattern import KGDiffMetaPattern
from .models.unet_kgdiff import KGDiffUNet2DModel
from .schedulers.scheduling_kgdiff import KGDiffScheduler


@dataclass
class KGDiffLoss:
    """``loss = noise_loss + meta_pattern_weight * meta_pattern_loss`` (scalars)."""

    loss: torch.Tensor
    noise_loss: torch.Tensor
    meta_pattern_loss: torch.Tensor


def kgdiff_loss(
    unet: KGDiffUNet2DModel,
    condition_encoder: KGConditionEncoder,
    meta_pattern: KGDiffMetaPattern | None,
    scheduler: KGDiffScheduler,
    delay_embedding: DelayEmbedding,
    days: torch.Tensor,
    node_rows: torch.Tensor,
    meta_pattern_weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> KGDiffLoss:
    r"""One Monte-Carlo estimate of the KGDiff objective for a batch of (node, day) samples.

    With ``phi = encoder(node)``, ``f = meta_pattern(phi)`` and ``X_0``, ``f`` delay-embedded:

    - noise term: ``|| eps - eps_theta(X_i, i, phi) ||^2`` with ``X_i`` drawn from eq. 16 at a uniform
      step ``i``, averaged over the ``V x W`` pixels that hold data (the zero padding is left out);
    - meta-pattern term: ``|| f(phi) - x_{1:T} ||^2``, a regression of ``f`` onto the node's own days, so
      ``f`` converges to the node's expected day (its stable trend). Without it, ``f`` would only be
      shaped through the noise term, which is blind to a constant shift of ``f``. It is skipped when
      ``meta_pattern`` is ``None`` (the "w/o meta pattern" ablation: ``f = 0``).

    Args:
        days: ``(B, D, T)`` normalised days.
        node_rows: ``(B,)`` encoder rows of each day's node (training nodes only).
        meta_pattern_weight: weight of the meta-pattern term.
        generator: optional RNG for steps and noise.
    """
    batch = days.shape[0]
    phi = condition_encoder(node_rows)
    x0 = delay_embedding.to_image(days)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=x0.device
    )
    if meta_pattern is not None:
        meta_series = meta_pattern(phi)
        meta_image = delay_embedding.to_image(meta_series)
        meta_loss = F.mse_loss(meta_series, days)
    else:
        meta_image = None
        meta_loss = torch.zeros((), device=x0.device)
    noisy = scheduler.add_noise(x0, noise, timesteps, meta_pattern=meta_image)
    predicted = unet(noisy, timesteps, phi).sample
    window, columns = delay_embedding.window, delay_embedding.num_columns
    noise_loss = F.mse_loss(predicted[..., :window, :columns], noise[..., :window, :columns])
    return KGDiffLoss(
        loss=noise_loss + meta_pattern_weight * meta_loss, noise_loss=noise_loss, meta_pattern_loss=meta_loss
    )
