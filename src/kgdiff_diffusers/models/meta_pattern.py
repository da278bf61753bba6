"""The meta spatio-temporal pattern f(phi): a node's stable daily trend from its KG condition (eq. 16)."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class KGDiffMetaPattern(ModelMixin, ConfigMixin):
    r"""Maps the condition ``phi`` to the meta pattern ``f(phi)``, one MLP head per feature.

    ``f`` is the mean the forward process drifts to (``X_tau ~ N(f, I)``, eq. 16). It is trained jointly
    with the denoiser, with an extra regression term that pulls ``f`` onto the node's own normalised days
    (see :func:`kgdiff_diffusers.training.kgdiff_loss`), so that it becomes the node's expected day.

    Args:
        condition_dim: size of ``phi``.
        seq_len: ``T``, steps per day.
        num_features: ``D``, one head per feature.
        hidden_dim: width of each head's hidden layer.
    """

    @register_to_config
    def __init__(self, condition_dim: int = 128, seq_len: int = 48, num_features: int = 1, hidden_dim: int = 256):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(condition_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, seq_len))
            for _ in range(num_features)
        )

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """``(B, condition_dim)`` condition -> ``(B, D, T)`` meta pattern in normalised units."""
        return torch.stack([head(condition) for head in self.heads], dim=1)
