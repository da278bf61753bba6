"""KGDiff's meta-pattern-shifted DDPM scheduler (paper eq. 16-17, with the posterior of CARD)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (
    ConfigMixin,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class KGDiffSchedulerOutput(BaseOutput):
    """Output of :meth:`KGDiffScheduler.step`.

    Args:
        prev_sample: ``(B, D, V, V)`` the sample ``X_{i-1}`` for the next step.
        pred_original_sample: ``(B, D, V, V)`` the current estimate of ``X_0``.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


@dataclass
class PosteriorCoefficients:
    """Coefficients of ``q(X_{i-1} | X_i, X_0, f) = N(g0 X_0 + g1 X_i + g2 f, variance I)``."""

    g0: torch.Tensor
    g1: torch.Tensor
    g2: torch.Tensor
    variance: torch.Tensor


class KGDiffScheduler(SchedulerMixin, ConfigMixin):
    r"""DDPM whose forward process is shifted towards a per-node meta pattern ``f`` (paper eq. 16-17).

    Forward marginal (eq. 16, with ``\bar\alpha_i`` where the paper prints ``\alpha_i``)::

        q(X_i | X_0, f) = N( sqrt(abar_i) X_0 + (1 - sqrt(abar_i)) f, (1 - abar_i) I )

    Posterior (eq. 17 in the corrected form of CARD, Han et al. 2022; the paper prints
    ``1 - abar_i`` where ``1 - abar_{i-1}`` belongs)::

        mean = g0 X_0 + g1 X_i + g2 f
        g0 = beta_i sqrt(abar_{i-1}) / (1 - abar_i)
        g1 = (1 - abar_{i-1}) sqrt(alpha_i) / (1 - abar_i)
        g2 = 1 + (sqrt(abar_i) - 1)(sqrt(alpha_i) + sqrt(abar_{i-1})) / (1 - abar_i)
        variance = (1 - abar_{i-1}) / (1 - abar_i) beta_i

    Sampling starts at ``X_tau = f + eps``. With ``Y = X - f`` the process is plain DDPM on ``Y``: with
    ``f = 0`` this scheduler reproduces :class:`diffusers.DDPMScheduler` step for step, and any diffusers
    sampler (DDIM, DPM-Solver++, UniPC) can run the shifted process by stepping on ``X - f``; its
    configuration is shared with them (``DDIMScheduler.from_config(kgdiff_scheduler.config)``).
    When fewer inference steps than training steps are set, ``alpha_i`` and ``beta_i`` are those of the
    strided chain: ``alpha_i = abar_i / abar_{i-1}``.

    Args:
        num_train_timesteps: number of diffusion steps ``tau`` used in training.
        beta_start, beta_end: ends of the ``"linear"`` / ``"scaled_linear"`` beta schedules.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (cosine, the default:
            it reaches ``abar_tau ~ 0`` for any ``tau``).
        variance_type: ``"fixed_small"`` (the posterior variance above) or ``"fixed_large"`` (``beta_i``).
        clip_sample: clip the estimate of ``X_0 - f`` to ``[-clip_sample_range, clip_sample_range]``.
        prediction_type: the denoiser predicts ``"epsilon"`` or ``"sample"`` (``X_0``).
        timestep_spacing: ``"leading"``, ``"trailing"`` or ``"linspace"``, as in diffusers.
        steps_offset: added to the inference timesteps with ``"leading"`` spacing.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 200,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "squaredcos_cap_v2",
        variance_type: str = "fixed_small",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        if beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
            self.betas = betas**2
        elif beta_schedule == "squaredcos_cap_v2":
            self.betas = betas_for_alpha_bar(num_train_timesteps)
        else:
            raise ValueError(f"beta_schedule={beta_schedule!r} is not one of linear, scaled_linear, squaredcos_cap_v2")
        if variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"variance_type={variance_type!r} is not one of fixed_small, fixed_large")
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type={prediction_type!r} is not one of epsilon, sample")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """Identity; present for interchangeability with other diffusers schedulers."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Sets the descending timesteps of a strided chain of ``num_inference_steps`` steps."""
        num_train = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= num_train:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be in [1, {num_train}]")
        self.num_inference_steps = num_inference_steps
        spacing = self.config.timestep_spacing
        if spacing == "leading":
            # diffusers' integer ratio T // n starts a chain far below T where n does not divide T (67 of 200 steps
            # would start at t = 132 while sampling starts from pure noise); the exact ratio gives the same
            # timesteps where n divides T and a top step within T / n of T otherwise.
            step_ratio = num_train / num_inference_steps
            timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].astype(np.int64)
            timesteps = timesteps + self.config.steps_offset
        elif spacing == "trailing":
            step_ratio = num_train / num_inference_steps
            timesteps = np.round(np.arange(num_train, 0, -step_ratio)).astype(np.int64) - 1
        elif spacing == "linspace":
            timesteps = np.linspace(0, num_train - 1, num_inference_steps).round()[::-1].astype(np.int64)
        else:
            raise ValueError(f"timestep_spacing={spacing!r} is not one of leading, trailing, linspace")
        self.timesteps = torch.from_numpy(timesteps.copy()).to(device)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep that follows ``timestep`` in the current chain; -1 after the last one."""
        if self.num_inference_steps is None:
            return int(timestep) - 1
        position = (self.timesteps == int(timestep)).nonzero(as_tuple=True)[0]
        if len(position) == 0:
            raise ValueError(f"timestep {int(timestep)} is not in the scheduler's timesteps; call set_timesteps")
        index = int(position[0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def posterior_coefficients(self, timestep: int) -> PosteriorCoefficients:
        """The eq. 17 coefficients ``g0, g1, g2`` and the posterior variance at ``timestep`` (0-d tensors).

        ``g2`` is evaluated from CARD's closed form in float64 (it is a small difference of terms near 1).
        """
        prev_t = self.previous_timestep(timestep)
        alpha_prod_t = self.alphas_cumprod[int(timestep)]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        # Same operation order as diffusers' DDPMScheduler, so that f = 0 reproduces it bit for bit.
        g0 = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        g1 = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        abar_t, abar_prev = alpha_prod_t.double(), alpha_prod_t_prev.double()
        alpha_t = abar_t / abar_prev
        g2 = (1 + (abar_t.sqrt() - 1) * (alpha_t.sqrt() + abar_prev.sqrt()) / (1 - abar_t)).float()
        if self.config.variance_type == "fixed_small":
            variance = torch.clamp(beta_prod_t_prev / beta_prod_t * current_beta_t, min=1e-20)
        else:
            variance = current_beta_t
        return PosteriorCoefficients(g0=g0, g1=g1, g2=g2, variance=variance)

    def add_noise(
        self,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        meta_pattern: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Samples the forward marginal of eq. 16.

        Args:
            original_samples: ``(B, D, V, V)`` clean images ``X_0``.
            noise: ``(B, D, V, V)`` standard normal noise.
            timesteps: ``(B,)`` integer steps ``i``.
            meta_pattern: ``(B, D, V, V)`` meta pattern ``f`` (delay-embedded); ``None`` means ``f = 0``.

        Returns:
            ``(B, D, V, V)`` ``X_i = sqrt(abar_i) X_0 + sqrt(1 - abar_i) noise + (1 - sqrt(abar_i)) f``.
        """
        alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        alpha_prod = alphas_cumprod[timesteps.to(original_samples.device)].flatten()
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        sqrt_alpha_prod = (alpha_prod**0.5).reshape(shape)
        sqrt_one_minus_alpha_prod = ((1 - alpha_prod) ** 0.5).reshape(shape)
        noisy_samples = sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise
        if meta_pattern is not None:
            noisy_samples = noisy_samples + (1 - sqrt_alpha_prod) * meta_pattern
        return noisy_samples

    def initial_sample(
        self,
        shape: tuple[int, ...],
        meta_pattern: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``X_tau = f + eps``, the start of sampling; ``shape`` is ``(B, D, V, V)``."""
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return noise if meta_pattern is None else meta_pattern + noise

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        meta_pattern: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> KGDiffSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step ``X_i -> X_{i-1}`` of the posterior of eq. 17.

        Args:
            model_output: ``(B, D, V, V)`` predicted noise (or ``X_0`` with ``prediction_type="sample"``).
            timestep: the current step ``i``.
            sample: ``(B, D, V, V)`` the current ``X_i``.
            meta_pattern: ``(B, D, V, V)`` ``f``; ``None`` means ``f = 0`` (plain DDPM).
            generator: for the step's noise; one generator or one per batch element.
            return_dict: return a :class:`KGDiffSchedulerOutput` instead of a tuple.
        """
        t = int(timestep)
        coefficients = self.posterior_coefficients(t)
        alpha_prod_t = self.alphas_cumprod[t]
        # Eq. 17 is evaluated in its residual form: with Y = X - f the mean g0 X_0 + g1 X_i + g2 f equals
        # g0 Y_0 + g1 Y_i + f (since g0 + g1 + g2 = 1), which avoids the cancellation in g2 and is exactly
        # diffusers' DDPM when f = 0.
        residual = sample if meta_pattern is None else sample - meta_pattern
        if self.config.prediction_type == "epsilon":
            pred_original_residual = (residual - (1 - alpha_prod_t) ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        else:
            pred_original_residual = model_output if meta_pattern is None else model_output - meta_pattern
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_residual = pred_original_residual.clamp(-limit, limit)

        prev_residual = coefficients.g0 * pred_original_residual + coefficients.g1 * residual
        if t > 0:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            prev_residual = prev_residual + coefficients.variance**0.5 * noise
        if meta_pattern is None:
            prev_sample, pred_original_sample = prev_residual, pred_original_residual
        else:
            prev_sample, pred_original_sample = prev_residual + meta_pattern, pred_original_residual + meta_pattern

        if not return_dict:
            return prev_sample, pred_original_sample
        return KGDiffSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


SAMPLERS = ("ddpm", "ddim", "dpm++", "unipc")


def make_sampler(name: str, config: Mapping) -> SchedulerMixin:
    """A scheduler for sampling a model trained with a :class:`KGDiffScheduler` of this ``config``.

    ``"ddpm"`` is :class:`KGDiffScheduler` itself; ``"ddim"``, ``"dpm++"`` (DPM-Solver++ 2M) and ``"unipc"``
    are diffusers' samplers with the same betas, which :class:`KGDiffPipeline` runs on the residual
    ``X - f``. Every config entry is passed explicitly: ``from_config`` alone would drop the values that
    were defaults of ``KGDiffScheduler`` (e.g. its 200 steps and cosine betas) in favour of the target
    class's own defaults. The multistep solvers take ``"trailing"`` spacing: with ``"leading"`` they space
    ``n + 1`` points and start at ``n (T // (n + 1))`` (t = 150 of 200 for 50 steps), not at the top of the chain.
    """
    explicit = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    if name == "ddpm":
        return KGDiffScheduler.from_config(explicit)
    if name == "ddim":
        return DDIMScheduler.from_config(explicit)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(
            explicit, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(explicit, timestep_spacing="trailing")
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
