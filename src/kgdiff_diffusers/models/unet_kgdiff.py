"""KGDiffUNet2DModel: the denoiser on delay-embedded images, conditioned on phi in every block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.utils import BaseOutput


@dataclass
class KGDiffUNet2DOutput(BaseOutput):
    """``sample``: ``(B, D, S, S)`` the predicted noise."""

    sample: torch.Tensor


class KGDiffUNet2DModel(ModelMixin, ConfigMixin):
    r"""A diffusers ``UNet2DModel`` whose step embedding is joined by a projection of the KG condition.

    With ``meta_pattern_input`` the meta pattern ``f`` (delay-embedded) is stacked onto the noisy sample as
    extra input channels, as CARD feeds its prior mean to the noise network: the denoiser then knows the
    centre the process drifts to instead of having to rebuild it from ``phi``.

    ``phi`` goes through a ``TimestepEmbedding`` MLP to the width of the step embedding and the two are
    added (``class_embed_type="identity"``); their sum is added inside every ``ResnetBlock2D`` of every
    down, mid and up block, so both the step and the condition reach each block.

    Args:
        sample_size: side ``S`` of the delay-embedding images.
        num_features: ``D``, input and output channels.
        condition_dim: size of ``phi``.
        block_out_channels: channels per resolution.
        layers_per_block: ResNet layers per block.
        down_block_types, up_block_types: diffusers block names.
        norm_num_groups: GroupNorm groups.
        meta_pattern_input: take ``f`` as ``D`` extra input channels.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        num_features: int = 1,
        condition_dim: int = 128,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 1,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups: int = 32,
        meta_pattern_input: bool = True,
    ):
        super().__init__()
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=2 * num_features if meta_pattern_input else num_features,
            out_channels=num_features,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            norm_num_groups=norm_num_groups,
            attention_head_dim=8,
            class_embed_type="identity",
        )
        self.condition_embedding = TimestepEmbedding(condition_dim, block_out_channels[0] * 4)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        condition: torch.Tensor,
        meta_pattern: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> KGDiffUNet2DOutput | tuple[torch.Tensor]:
        """Predicts the noise in ``sample``.

        Args:
            sample: ``(B, D, S, S)`` noisy delay-embedding images ``X_i``.
            timestep: ``(B,)`` or scalar diffusion step ``i``.
            condition: ``(B, condition_dim)`` KG condition ``phi``.
            meta_pattern: ``(B, D, S, S)`` delay-embedded ``f`` (used with ``meta_pattern_input``; ``None``
                means ``f = 0``).
        """
        if condition.ndim != 2 or condition.shape != (sample.shape[0], self.config.condition_dim):
            raise ValueError(
                f"condition must be (batch={sample.shape[0]}, {self.config.condition_dim}), "
                f"got {tuple(condition.shape)}"
            )
        condition_embedding = self.condition_embedding(condition.to(sample.dtype))
        if self.config.meta_pattern_input:
            sample = torch.cat([sample, torch.zeros_like(sample) if meta_pattern is None else meta_pattern], dim=1)
        noise = self.unet(sample, timestep, class_labels=condition_embedding).sample
        if not return_dict:
            return (noise,)
        return KGDiffUNet2DOutput(sample=noise)
