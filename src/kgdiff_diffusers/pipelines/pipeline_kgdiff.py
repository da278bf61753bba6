"""KGDiffPipeline: generate daily series for known or new urban nodes from their knowledge-graph context."""

from __future__ import annotations

import inspect
import json
import math
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from safetensors import SafetensorError, safe_open

from ..data.days import DAY_TYPES
from ..delay_embedding import DelayEmbedding
from ..fingerprint import config_digest
from ..models.condition_encoder import KGConditionEncoder
from ..models.donor_prior import KGDiffDonorPrior
from ..models.level_estimator import KGDiffLevelEstimator
from ..models.meta_pattern import KGDiffMetaPattern
from ..models.unet_kgdiff import KGDiffUNet2DModel
from ..schedulers.scheduling_kgdiff import KGDiffScheduler

logger = logging.get_logger(__name__)

NewNodes = Mapping[str, Sequence[tuple[str, str]]]
COMPONENT_NAMES = ("unet", "condition_encoder", "scheduler", "meta_pattern", "donor_prior", "level_estimator")
# Config entries added after config digests existed, with the value a pipeline saved before them loads with:
# left out of the digests at that value, so such pipelines still load.
_ADDED_CONFIG_DEFAULTS = {
    "day_types": None, "num_day_types": 1, "start_strength": None, "level_exponent": None, "num_bank_days": 0,
    "random_donor_share": None, "level_noise": None, "has_level_errors": False, "validation_node_ids": None,
    "level_estimate_weight": None, "match_donor_mean": False, "mean_match_strength": 1.0,
    "residual_at_blend_level": False,
}


def _without_added_defaults(config: Mapping) -> dict:
    return {k: v for k, v in config.items() if not (k in _ADDED_CONFIG_DEFAULTS and v == _ADDED_CONFIG_DEFAULTS[k])}


def _edited_configs_message(source: str, files: Sequence[str]) -> str:
    return (
        f"{source}: {', '.join(files)} changed after save_pretrained (they no longer match the digests in "
        "model_index.json); the components were trained together, and such edits (prediction_type, "
        "num_train_timesteps, the order of node_ids, ...) make them disagree. Restore the saved files, "
        "or change the pipeline in Python and save_pretrained it again"
    )


# diffusers' message for a weights file whose tensor shapes do not fit the component built from its config.
_SHAPE_MISMATCH = re.compile(
    r"because (\S+) expected shape torch\.Size\((\[[^\]]*\])\), but got torch\.Size\((\[[^\]]*\])\)"
)


def _mismatched_weights_message(path, key: str, expected: str, found: str) -> str:
    """Names the component whose weights file holds ``key`` at the ``found`` shape (diffusers names none)."""
    folders = []
    for name in COMPONENT_NAMES:
        weights = Path(path) / name / "diffusion_pytorch_model.safetensors"
        try:
            with safe_open(weights, framework="pt") as file:
                if key in file.keys() and list(file.get_slice(key).get_shape()) == json.loads(found):
                    folders.append(f"{name}/{weights.name}")
        except (OSError, SafetensorError):  # no local file (a Hub id), or one that another check reports
            continue
    where = ", ".join(folders) or "a component's weights file"
    return (
        f"{path}: {where} does not fit its config ({key} has shape {found} in the file, {expected} in the model "
        "its config.json builds): the weights file belongs to another model. Copy or download the whole pipeline "
        "folder again; do not pass ignore_mismatched_sizes, which would keep random weights"
    )


@dataclass
class KGDiffPipelineOutput(BaseOutput):
    """Output of :class:`KGDiffPipeline`.

    Args:
        series: generated days in the data's units: ``np.ndarray``/``torch.Tensor`` of shape
            ``(nodes, samples, T, D)``, or with ``output_type="pd"`` a long ``pandas.DataFrame`` with
            columns ``node_id, sample, step`` and one column per feature.
        node_ids: ``(nodes,)`` the node of each row (requested ids, then new nodes).
        meta_pattern: ``(nodes, T, D)`` each node's meta pattern ``f`` in data units (zeros when the
            pipeline has no meta-pattern model).
    """

    series: np.ndarray | torch.Tensor | pd.DataFrame
    node_ids: list[str]
    meta_pattern: np.ndarray | torch.Tensor


class KGDiffPipeline(DiffusionPipeline):
    r"""Generates realistic days (road speeds, area in/out flows) for nodes from their KG neighbourhood.

    The condition encoder turns each node's knowledge-graph neighbours into ``phi``; the meta-pattern
    model maps it to the node's daily trend ``f``; sampling starts at ``f + noise`` in the delay-embedding
    image space and the denoiser removes the noise step by step. Images are mapped back to series and
    to the data's units with the stored per-feature mean and standard deviation.

    The scheduler may be :class:`KGDiffScheduler` (the paper's shifted DDPM) or any epsilon-predicting
    diffusers scheduler (``DDIMScheduler``, ``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``,
    ...), which then runs on the residual ``X - f`` where the shifted process is plain DDPM.

    Args:
        unet: the denoiser.
        condition_encoder: Geometry-MoE encoder holding the KG index of ``node_ids``.
        scheduler: the sampler.
        meta_pattern: ``f(phi)``; ``None`` for the "w/o meta pattern" ablation (``f = 0``).
        donor_prior: the default model's estimate of ``f`` and per-node scale ``s`` from KG- and
            geographically nearest training nodes; the denoiser then samples the scaled residual ``Y`` and a
            day is ``f + s Y``. ``None`` (the paper's configuration, and pipelines saved before it existed):
            ``f = meta_pattern``.
        level_estimator: the KG's two-hop estimate of a node's level, mixed into the donor prior's level with
            ``level_estimate_weight``; ``None`` for pipelines saved before it existed and data with negative values.
        node_ids: ``(num_nodes,)`` data node ids; row ``i`` of the encoder's index is ``node_ids[i]``.
        feature_names: ``(D,)`` e.g. ``["speed"]`` or ``["inflow", "outflow"]``.
        feature_mean, feature_std: ``(D,)`` normalisation statistics (data units).
        seq_len, delay_window, delay_stride: ``T``, ``V``, ``U`` of the delay embedding (eq. 18).
        interval_minutes: minutes between steps (for timestamps in reports).
        entity_names, relation_names: KG names of the encoder's entity / relation ids, so new nodes can
            be given by names.
        output_min: ``(D,)`` lower bound of each feature in data units (``None`` entries: unbounded). Built
            from the training data: ``0`` where no training value is negative (counts, speeds), so generated
            days are clipped there; ``None`` for data with negative values.
        prior_blend: ``(D,)`` weight ``b`` of the donor prior in ``f = b f_donors + (1 - b) meta_pattern(phi)``
            when both exist (chosen on validation nodes by training; ``None`` means 1: donors only).
        day_types: the day types of the training days, from :data:`~kgdiff_diffusers.data.days.DAY_TYPES`
            (``["weekday"]`` for the paper's weekday-only data, ``["weekday", "weekend"]`` for data prepared
            with ``--include_weekends``); with two, the condition encoder and the donor prior are conditioned on
            the day type and :meth:`__call__` generates the ``day_type`` asked for. ``None``: pipelines saved
            before day types existed, whose days are those of whatever days they were trained on.
        start_strength: with a donor prior that stores days, sampling starts from a real day of a candidate
            donor, rescaled to the node's level (:meth:`KGDiffDonorPrior.donor_days`), noised to this share of
            the denoising chain (SDEdit): 0 returns the rescaled day, 1 or ``None`` starts from pure noise.
            Chosen on validation nodes by training.
        level_exponent: ``a`` of the rescaling ``x (l / L)^a`` of a donor day (0: its own level, 1: the
            node's); ``None`` means 1.
        random_donor_share: the share of donor days drawn from any training node instead of the node's
            candidates (chosen on validation nodes by training); ``None`` means 0.
        level_noise: ``lam``: each donor day's level is spread by a leave-one-out level error of the donor
            prior, scaled by ``lam`` (:meth:`KGDiffDonorPrior.donor_days`; chosen on validation nodes by
            training); ``None`` means 0.
        level_estimate_weight: ``(D,)`` weight ``w`` of the level estimator in the donor prior's level
            ``exp(w log L_est + (1 - w) log L_donors)`` (chosen on validation nodes by training); ``None`` means 0.
        match_donor_mean: when sampling starts from donor days and a call asks for ``num_samples >= 2`` days
            per node, each node's days are shifted together by the gap between the expected donor day
            (:meth:`KGDiffDonorPrior.expected_donor_day`) and the mean of the copies they started from (before
            level noise), so a set's mean does not carry which donors and days it happened to draw; the days
            still differ from each other exactly as before. ``False`` for pipelines saved before it existed.
        mean_match_strength: the share ``rho`` in ``[0, 1]`` of that gap the shift closes (1: the set's mean is the
            expected donor day; 0: no shift). A set's mean keeps ``(1 - rho)^2`` of the variance it had from the
            draw, and its days move ``rho`` of the way: 0.75 (new pipelines) kept the mean day of the full shift
            and gave the better distributions on the fold bench (bench/README.md, session 18). ``1.0`` for
            pipelines saved before it existed.
        residual_at_blend_level: where ``prior_blend`` mixes ``meta_pattern(phi)`` into the donor prior's mean day
            (multiplicative level mode), a day's deviation from ``f`` (the copy's deviation from the donor prior's
            mean day, the mean match's shift and the residual scale ``s``) is multiplied by
            ``(l_f / l_donors)^beta``, from the donor prior's level ``l_donors`` to ``f``'s ``l_f``, where ``beta`` in
            ``[0, 1]`` is how the training donors' day-to-day spread grows with their level
            (:meth:`KGDiffDonorPrior.spread_level_elasticity`: about 0.7-0.9 for counts, 0 for speeds); exactly
            1 at ``b = 1`` or ``beta = 0``. ``False`` for pipelines saved before it existed: deviations at the
            donors' level, however far ``f`` moved from it.
        validation_node_ids: the training-side nodes held out of training for validation (the end-of-training
            choices above were made on them), so an evaluation draws its baselines from the same train nodes as
            the model; ``None`` for pipelines saved before they were recorded or trained without validation.
        data_fingerprint: :func:`~kgdiff_diffusers.fingerprint.data_fingerprint` of the training data.
        config_sha256: ``{"model_index" | component: digest}`` of every config, written by
            :meth:`save_pretrained` and checked by :meth:`from_pretrained`.
    """

    model_cpu_offload_seq = "condition_encoder->meta_pattern->donor_prior->level_estimator->unet"
    _optional_components = ["meta_pattern", "donor_prior", "level_estimator"]

    def __init__(
        self,
        unet: KGDiffUNet2DModel,
        condition_encoder: KGConditionEncoder,
        scheduler: KGDiffScheduler,
        meta_pattern: KGDiffMetaPattern | None = None,
        donor_prior: KGDiffDonorPrior | None = None,
        level_estimator: KGDiffLevelEstimator | None = None,
        node_ids: list[str] | None = None,
        feature_names: list[str] | None = None,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        seq_len: int = 48,
        delay_window: int = 16,
        delay_stride: int = 3,
        interval_minutes: int = 30,
        entity_names: list[str] | None = None,
        relation_names: list[str] | None = None,
        data_fingerprint: dict | None = None,
        config_sha256: dict | None = None,
        # Optional, not `float | None`: diffusers' load-time type check does not unpack a PEP 604 union inside
        # list[...] and would warn on every load.
        output_min: list[Optional[float]] | None = None,  # noqa: UP045
        prior_blend: list[float] | None = None,
        day_types: list[str] | None = None,
        start_strength: float | None = None,
        level_exponent: float | None = None,
        random_donor_share: float | None = None,
        level_noise: float | None = None,
        validation_node_ids: list[str] | None = None,
        level_estimate_weight: list[float] | None = None,
        match_donor_mean: bool = False,
        mean_match_strength: float = 1.0,
        residual_at_blend_level: bool = False,
    ):
        super().__init__()
        num_nodes = condition_encoder.config.num_nodes
        node_ids = [str(n) for n in node_ids] if node_ids is not None else [str(i) for i in range(num_nodes)]
        if len(node_ids) != num_nodes:
            raise ValueError(f"{len(node_ids)} node_ids given but the condition encoder indexes {num_nodes} nodes")
        if len(set(node_ids)) != len(node_ids):
            raise ValueError("node_ids must be unique")
        if validation_node_ids is not None:
            validation_node_ids = [str(n) for n in validation_node_ids]
            unknown = sorted(set(validation_node_ids) - set(node_ids))
            if unknown:
                raise ValueError(f"validation_node_ids {unknown[:5]} are not in node_ids")
        num_features = unet.config.num_features
        feature_names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(num_features)]
        feature_mean = [float(m) for m in (feature_mean if feature_mean is not None else [0.0] * num_features)]
        feature_std = [float(s) for s in (feature_std if feature_std is not None else [1.0] * num_features)]
        if not len(feature_names) == len(feature_mean) == len(feature_std) == num_features:
            raise ValueError(f"feature_names, feature_mean and feature_std must each have {num_features} entries")
        if not all(math.isfinite(v) for v in feature_mean + feature_std) or min(feature_std) <= 0:
            raise ValueError(
                f"feature_mean must be finite and feature_std finite and positive, got {feature_mean} / {feature_std}"
            )
        self.delay_embedding = DelayEmbedding(seq_len, delay_window, delay_stride)
        if unet.config.sample_size != self.delay_embedding.image_size:
            raise ValueError(
                f"unet.sample_size={unet.config.sample_size} but the delay embedding makes "
                f"{self.delay_embedding.image_size}x{self.delay_embedding.image_size} images"
            )
        if meta_pattern is not None and (meta_pattern.config.seq_len, meta_pattern.config.num_features) != (
            seq_len,
            num_features,
        ):
            raise ValueError("meta_pattern's seq_len / num_features do not match the pipeline's")
        if donor_prior is not None:
            prior = donor_prior.config
            if (prior.num_nodes, prior.seq_len, prior.num_features) != (num_nodes, seq_len, num_features):
                raise ValueError(
                    f"donor_prior indexes {prior.num_nodes} nodes of {prior.seq_len} x {prior.num_features}; the "
                    f"pipeline has {num_nodes} nodes of {seq_len} x {num_features}"
                )
            if not np.allclose(prior.feature_mean, feature_mean) or not np.allclose(prior.feature_std, feature_std):
                raise ValueError("donor_prior's feature_mean / feature_std differ from the pipeline's")
        if prior_blend is not None and (len(prior_blend) != num_features or not all(0 <= b <= 1 for b in prior_blend)):
            raise ValueError(f"prior_blend must be {num_features} weights in [0, 1], got {prior_blend}")
        if start_strength is not None and not 0 <= start_strength <= 1:
            raise ValueError(f"start_strength must be in [0, 1] or None, got {start_strength}")
        if start_strength is not None and start_strength < 1 and (
            donor_prior is None or donor_prior.config.get("num_bank_days", 0) == 0
        ):
            raise ValueError("start_strength < 1 needs a donor prior that stores days (num_bank_days > 0)")
        if level_exponent is not None and not math.isfinite(level_exponent):
            raise ValueError(f"level_exponent must be a finite number or None, got {level_exponent}")
        if random_donor_share is not None and not 0 <= random_donor_share <= 1:
            raise ValueError(f"random_donor_share must be in [0, 1] or None, got {random_donor_share}")
        if random_donor_share and (donor_prior is None or donor_prior.config.get("num_bank_days", 0) == 0):
            raise ValueError("random_donor_share > 0 needs a donor prior that stores days (num_bank_days > 0)")
        if level_noise is not None and not (math.isfinite(level_noise) and level_noise >= 0):
            raise ValueError(f"level_noise must be a finite number >= 0 or None, got {level_noise}")
        if level_noise and (donor_prior is None or not donor_prior.config.get("has_level_errors", False)):
            raise ValueError("level_noise > 0 needs a donor prior that stores level errors (has_level_errors)")
        if not isinstance(match_donor_mean, (bool, np.bool_)):
            raise ValueError(f"match_donor_mean must be True or False, got {match_donor_mean!r}")
        if not (
            isinstance(mean_match_strength, (int, float, np.integer, np.floating))
            and not isinstance(mean_match_strength, (bool, np.bool_))
            and 0 <= mean_match_strength <= 1
        ):
            raise ValueError(f"mean_match_strength must be a number in [0, 1], got {mean_match_strength!r}")
        if not isinstance(residual_at_blend_level, (bool, np.bool_)):
            raise ValueError(f"residual_at_blend_level must be True or False, got {residual_at_blend_level!r}")
        if level_estimator is not None:
            estimator = level_estimator.config
            if (estimator.num_nodes, estimator.num_features) != (num_nodes, num_features):
                raise ValueError(
                    f"level_estimator indexes {estimator.num_nodes} nodes of {estimator.num_features} feature(s); the "
                    f"pipeline has {num_nodes} nodes of {num_features}"
                )
        if level_estimate_weight is not None:
            if len(level_estimate_weight) != num_features or not all(0 <= w <= 1 for w in level_estimate_weight):
                raise ValueError(
                    f"level_estimate_weight must be {num_features} weights in [0, 1], got {level_estimate_weight}"
                )
            if any(level_estimate_weight) and (
                level_estimator is None or donor_prior is None or donor_prior.config.level_mode != "multiplicative"
            ):
                raise ValueError("level_estimate_weight > 0 needs a level_estimator and a multiplicative donor prior")
        if output_min is not None and (
            len(output_min) != num_features or not all(m is None or math.isfinite(m) for m in output_min)
        ):
            raise ValueError(f"output_min must be {num_features} finite numbers or None entries, got {output_min}")
        if day_types is not None:
            day_types = [str(t) for t in day_types]
            if not day_types or not set(day_types) <= set(DAY_TYPES) or len(set(day_types)) != len(day_types):
                raise ValueError(f"day_types must be distinct names from {list(DAY_TYPES)}, got {day_types}")
        num_day_types = len(day_types) if day_types else 1
        for name, component in (
            ("condition_encoder", condition_encoder), ("donor_prior", donor_prior), ("level_estimator", level_estimator)
        ):
            if component is not None and component.config.num_day_types != num_day_types:
                raise ValueError(
                    f"{name} is conditioned on {component.config.num_day_types} day type(s) but the pipeline's "
                    f"day_types are {day_types}"
                )
        self.register_modules(
            unet=unet,
            condition_encoder=condition_encoder,
            scheduler=scheduler,
            meta_pattern=meta_pattern,
            donor_prior=donor_prior,
            level_estimator=level_estimator,
        )
        self.register_to_config(
            node_ids=node_ids,
            feature_names=feature_names,
            feature_mean=feature_mean,
            feature_std=feature_std,
            seq_len=seq_len,
            delay_window=delay_window,
            delay_stride=delay_stride,
            interval_minutes=interval_minutes,
            entity_names=entity_names,
            relation_names=relation_names,
            data_fingerprint=data_fingerprint,
            config_sha256=config_sha256,
            output_min=None if output_min is None else [None if m is None else float(m) for m in output_min],
            prior_blend=None if prior_blend is None else [float(b) for b in prior_blend],
            day_types=day_types,
            start_strength=None if start_strength is None else float(start_strength),
            level_exponent=None if level_exponent is None else float(level_exponent),
            random_donor_share=None if random_donor_share is None else float(random_donor_share),
            level_noise=None if level_noise is None else float(level_noise),
            validation_node_ids=validation_node_ids,
            level_estimate_weight=None if level_estimate_weight is None else [float(w) for w in level_estimate_weight],
            match_donor_mean=bool(match_donor_mean),
            mean_match_strength=float(mean_match_strength),
            residual_at_blend_level=bool(residual_at_blend_level),
        )
        self._row_of_node = {node_id: row for row, node_id in enumerate(node_ids)}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> KGDiffPipeline:
        """``DiffusionPipeline.from_pretrained`` of safetensors weights only, so loading runs no pickle.

        A folder with pickled ``.bin`` weights only is refused unless ``use_safetensors=False`` is passed
        (diffusers then reads them with ``torch.load(weights_only=True)``). A pipeline whose weights are not
        all finite is refused too (:meth:`check_finite_weights`).
        """
        kwargs.setdefault("use_safetensors", True)
        for key in ("torch_dtype", "dtype"):
            if kwargs.get(key) not in (None, torch.float32):
                raise ValueError(
                    f"{key}={kwargs[key]}: KGDiffPipeline runs in float32 (its geometry experts and donor statistics "
                    "are float32); load it without a dtype"
                )
        cls._check_component_folders(pretrained_model_name_or_path, passed=set(kwargs))
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as err:
            if not kwargs["use_safetensors"] or ".safetensors" not in str(err):
                raise
            if "no file named" not in str(err).lower():  # the file is there but unreadable
                raise OSError(
                    f"{pretrained_model_name_or_path}: {str(err).removeprefix('Error ').rstrip()} The safetensors "
                    "file is corrupt or truncated (e.g. an interrupted download or copy); download or save it again"
                ) from None
            raise FileNotFoundError(
                f"{pretrained_model_name_or_path}: {str(err).removeprefix('Error ')} KGDiffPipeline loads "
                "safetensors weights only (no pickle); re-save the pipeline with save_pretrained() where you trust "
                "it, or pass use_safetensors=False to read pickled weights"
            ) from None
        except Exception as err:
            # An edited config can break a component's constructor before the digests below are checked.
            edited = cls._edited_config_files(pretrained_model_name_or_path, passed=set(kwargs))
            if edited:
                raise ValueError(_edited_configs_message(str(pretrained_model_name_or_path), edited)) from err
            mismatch = _SHAPE_MISMATCH.search(str(err))
            if mismatch:
                message = _mismatched_weights_message(pretrained_model_name_or_path, *mismatch.groups())
                raise ValueError(message) from None
            raise
        # Components passed in (diffusers' `from_pretrained(path, scheduler=...)`) replace saved ones on purpose.
        replaced = {name for name in kwargs if name in pipe.components}
        pipe.check_config_digests(source=str(pretrained_model_name_or_path), replaced=replaced)
        pipe.check_finite_weights(source=str(pretrained_model_name_or_path))
        return pipe

    @staticmethod
    def _check_component_folders(path, passed: Collection[str] = ()) -> None:
        """``FileNotFoundError`` naming a component folder that a local pipeline's ``model_index.json`` lists but
        that is missing (diffusers names the pipeline folder instead); components in ``passed`` are not read."""
        index = Path(path) / "model_index.json"
        if not index.is_file():
            return
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return  # diffusers reports the broken file
        missing = [
            name for name, value in entries.items()
            if name in COMPONENT_NAMES and name not in passed and isinstance(value, list) and value[0] is not None
            and not (Path(path) / name).is_dir()
        ]
        if missing:
            raise FileNotFoundError(
                f"{path}: the component folder(s) {missing} listed in model_index.json are missing; copy or download "
                "the whole pipeline folder"
            )

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """``DiffusionPipeline.save_pretrained``, recording a digest of every config in ``model_index.json``."""
        self.register_to_config(config_sha256=self._config_digests())
        super().save_pretrained(save_directory, **kwargs)

    def _config_digests(self) -> dict[str, str]:
        """``{"model_index": digest of the pipeline's own entries, <component>: digest of its config}``."""
        own = {k: v for k, v in self.config.items() if k not in self.components and k != "config_sha256"}
        digests = {"model_index": config_digest(_without_added_defaults(own))}
        for name, component in self.components.items():
            if component is not None:
                digests[name] = config_digest(_without_added_defaults(component.config))
        return digests

    def check_config_digests(self, source: str = "pipeline", replaced: Collection[str] = ()) -> None:
        """``ValueError`` naming the config files edited since :meth:`save_pretrained` wrote them.

        Components are trained together: an edit such as ``prediction_type`` or ``num_train_timesteps`` of
        the scheduler, or a reordered ``node_ids``, makes them disagree and silently changes the output.
        ``replaced``: names of components passed to ``from_pretrained`` in place of the saved ones (not checked).
        """
        recorded = self.config.get("config_sha256")
        if recorded is None:
            logger.warning(f"{source} was saved without config digests (an older version): edits are not detected")
            return
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise ValueError(f"{source}: model_index.json's config_sha256 is not a {{name: digest}} map; restore it")
        actual = self._config_digests()
        edited = sorted(
            name
            for name in set(recorded) | set(actual)
            if name not in replaced and recorded.get(name) != actual.get(name)
        )
        if edited:
            config_file = {name: getattr(c, "config_name", "config.json") for name, c in self.components.items()}
            files = [
                "model_index.json" if name == "model_index" else f"{name}/{config_file.get(name, 'config.json')}"
                for name in edited
            ]
            raise ValueError(_edited_configs_message(source, files))

    @staticmethod
    def _edited_config_files(path, passed: Collection[str] = ()) -> list[str]:
        """The config files of a local pipeline folder whose contents no longer match the digests its
        ``model_index.json`` recorded (read from disk, for configs too broken to build a component from)."""
        folder = Path(path)
        try:
            index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
            recorded = index.get("config_sha256")
            if not recorded:  # saved before digests existed: nothing to compare
                return []
            own = {k: v for k, v in index.items() if k not in COMPONENT_NAMES and k != "config_sha256"}
            edited = [] if recorded.get("model_index") == config_digest(_without_added_defaults(own)) else [
                "model_index.json"
            ]
            for name in sorted(set(recorded) & set(COMPONENT_NAMES) - set(passed)):
                files = [f for f in ("scheduler_config.json", "config.json") if (folder / name / f).is_file()]
                config = json.loads((folder / name / files[0]).read_text(encoding="utf-8")) if files else {}
                if recorded[name] != config_digest(_without_added_defaults(config)):
                    edited.append(f"{name}/{files[0] if files else 'config.json'}")
        except (OSError, ValueError, AttributeError):  # no local folder, or files diffusers reports itself
            return []
        return edited

    def check_finite_weights(self, source: str = "pipeline") -> None:
        """``ValueError`` naming every component (and its first tensors) that holds NaN or infinite values."""
        problems = []
        for name, component in self.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            tensors = [*component.named_parameters(), *component.named_buffers()]
            bad = [key for key, tensor in tensors if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
            if bad:
                problems.append(f"{name} ({len(bad)} of {len(tensors)} tensors, e.g. {', '.join(bad[:3])})")
        if problems:
            raise ValueError(
                f"{source}: non-finite (NaN/inf) weights in {'; '.join(problems)}: it was saved from a diverged "
                "training run and would generate NaN; retrain it"
            )

    def node_rows(self, node_ids: Sequence[str | int]) -> list[int]:
        """Encoder rows of ``node_ids``; ``ValueError`` naming the ids the pipeline does not know."""
        if isinstance(node_ids, (str, bytes)) or not isinstance(node_ids, Sequence | np.ndarray):
            raise TypeError(f"node_ids must be a list of node ids, got {type(node_ids).__name__}")
        bad_types = [n for n in node_ids if not isinstance(n, (str, int, np.integer))]
        if bad_types:
            raise TypeError(f"node ids must be str or int, got {type(bad_types[0]).__name__}: {bad_types[0]!r}")
        unknown = [str(n) for n in node_ids if str(n) not in self._row_of_node]
        if unknown:
            raise ValueError(
                f"unknown node ids {unknown[:10]}{' ...' if len(unknown) > 10 else ''}: this pipeline knows "
                f"{len(self._row_of_node)} nodes (pipe.config.node_ids); give places without data as new_nodes"
            )
        return [self._row_of_node[str(n)] for n in node_ids]

    def new_node_edges(self, new_nodes: NewNodes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edge list ``(node_row, relation_id, neighbour_id)`` for new entities given by KG names.

        Args:
            new_nodes: ``{new_node_id: [(relation_name, neighbour_entity_name), ...]}``; relations may be
                inverse ones (``"<name>_inv"``) for incoming triples such as a POI located in a new area.
        """
        entity_names, relation_names = self.config.entity_names, self.config.relation_names
        if entity_names is None or relation_names is None:
            raise ValueError("this pipeline was saved without entity_names/relation_names; new nodes need them")
        entity_ids = {name: i for i, name in enumerate(entity_names)}
        relation_ids = {name: i for i, name in enumerate(relation_names)}
        rows, relations, neighbors = [], [], []
        for row, (node_id, pairs) in enumerate(new_nodes.items()):
            if len(pairs) == 0:
                raise ValueError(f"new node {node_id!r} has no (relation, entity) neighbours")
            for pair in pairs:
                if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                    raise ValueError(f"new node {node_id!r}: give a list of (relation, entity) pairs, not {pair!r}")
                relation, entity = pair
                if relation not in relation_ids:
                    raise ValueError(f"new node {node_id!r}: relation {relation!r} is not in the KG")
                if entity not in entity_ids:
                    raise ValueError(f"new node {node_id!r}: entity {entity!r} is not in the KG")
                rows.append(row)
                relations.append(relation_ids[relation])
                neighbors.append(entity_ids[entity])
        return tuple(torch.tensor(x, dtype=torch.long) for x in (rows, relations, neighbors))

    def day_type_index(self, day_type: str | None) -> int | None:
        """Position of ``day_type`` in ``config.day_types`` (``day_type=None``: 0, the first type).

        Returns ``None`` for a pipeline saved without day types, which takes no ``day_type``. Raises
        ``ValueError`` for a name outside :data:`~kgdiff_diffusers.data.days.DAY_TYPES` or one the pipeline was
        not trained on.
        """
        day_types = self.config.get("day_types")
        if day_type is not None and day_type not in DAY_TYPES:
            raise ValueError(f"day_type must be one of {list(DAY_TYPES)} or None, got {day_type!r}")
        if day_types is None:
            if day_type is not None:
                raise ValueError(
                    f"day_type={day_type!r}: this pipeline was saved without day types (before they existed) and "
                    "generates the kind of day it was trained on; call it without day_type"
                )
            return None
        if day_type is None:
            return 0
        if day_type not in day_types:
            retrain = "; to generate weekend days, prepare the data with --include_weekends and train again"
            hint = retrain if day_type == "weekend" else ""
            raise ValueError(
                f"day_type={day_type!r}: this pipeline was trained on {' and '.join(day_types)} days only "
                f"(pipe.config.day_types){hint}"
            )
        return day_types.index(day_type)

    def _day_type_rows(self, day_type: str | None, num_rows: int) -> torch.Tensor | None:
        """``(num_rows,)`` the index of ``day_type`` repeated, or ``None`` for a pipeline without day types."""
        index = self.day_type_index(day_type)
        return None if index is None else torch.full((num_rows,), index, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def condition(
        self, node_ids: Sequence[str | int] = (), new_nodes: NewNodes | None = None, day_type: str | None = None
    ) -> torch.Tensor:
        """``(nodes, condition_dim)`` condition ``phi`` of known ``node_ids`` followed by ``new_nodes``.

        ``day_type``: see :meth:`__call__`; with day types, ``phi`` holds the day type's learnt vector.
        """
        parts = []
        if len(node_ids):
            rows = torch.tensor(self.node_rows(node_ids), dtype=torch.long, device=self.device)
            # Chunks bound the per-edge message memory (each chunk gathers only its own nodes' edges).
            parts += [
                self.condition_encoder(chunk, self._day_type_rows(day_type, len(chunk))) for chunk in rows.split(1024)
            ]
        if new_nodes:
            edges = self.new_node_edges(new_nodes)
            phi = self.condition_encoder.encode_neighbors(*edges, num_nodes=len(new_nodes))
            parts.append(self.condition_encoder.add_day_type(phi, self._day_type_rows(day_type, len(new_nodes))))
        return torch.cat(parts)

    @torch.no_grad()
    def prior(
        self,
        node_ids: Sequence[str | int] = (),
        new_nodes: NewNodes | None = None,
        new_node_locations: Mapping[str, tuple[float, float]] | None = None,
        day_type: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The donor prior's ``(nodes, D, T)`` mean day ``f`` and ``(nodes, D)`` scale ``s``, normalised units.

        Known nodes use their stored candidates; ``new_nodes`` get candidates from their KG neighbours and,
        where given, their ``(lat, lon)`` in ``new_node_locations`` (without one, KG-similar donors only).
        With day types, the donors' mean days and spreads are those of ``day_type`` (see :meth:`__call__`).
        """
        mean_day, scale, _ = self._prior_and_candidates(node_ids, new_nodes, new_node_locations, day_type)
        return mean_day, scale

    def _prior_and_candidates(
        self,
        node_ids: Sequence[str | int],
        new_nodes: NewNodes | None,
        new_node_locations: Mapping[str, tuple[float, float]] | None,
        day_type: str | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`prior` plus the ``(nodes, 2K)`` candidate donors (bank rows) of each node."""
        prior = self.donor_prior
        if prior is None:
            raise ValueError("this pipeline has no donor prior (the paper's configuration): its f is meta_pattern(phi)")
        parts = []
        estimator = self.level_estimator if any(self.config.get("level_estimate_weight") or [0.0]) else None
        type_index = self.day_type_index(day_type) or 0
        if len(node_ids):
            rows = torch.tensor(self.node_rows(node_ids), dtype=torch.long, device=self.device)
            for chunk in rows.split(1024):
                mean_day, scale = prior(chunk, day_types=self._day_type_rows(day_type, len(chunk)))
                if estimator is not None:
                    log_level = estimator.node_log_level[type_index, chunk]
                    mean_day, scale = self._with_estimated_level(mean_day, scale, log_level)
                parts.append((mean_day, scale, prior.candidate_index[chunk]))
        locations = self._checked_locations(new_nodes, new_node_locations)
        if new_nodes:
            coords = torch.tensor(
                [locations.get(str(node_id), (float("nan"), float("nan"))) for node_id in new_nodes],
                dtype=torch.float32,
                device=self.device,
            )
            edge_node, edge_relation, edge_neighbor = (e.to(self.device) for e in self.new_node_edges(new_nodes))
            index, features = prior.candidates_for(coords, edge_node, edge_neighbor, len(new_nodes))
            log_degree = prior.log_degree_of(edge_node, edge_relation, len(new_nodes))
            day_types = self._day_type_rows(day_type, len(new_nodes))
            mean_day, scale = prior(candidates=(index, features, log_degree), day_types=day_types)
            if estimator is not None:
                log_level = estimator.log_level_for(edge_node, edge_neighbor, len(new_nodes))[type_index]
                mean_day, scale = self._with_estimated_level(mean_day, scale, log_level)
            parts.append((mean_day, scale, index))
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))

    def _with_estimated_level(
        self, mean_day: torch.Tensor, scale: torch.Tensor, log_level: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The donor prior's ``(B, D, T)`` mean day and ``(B, D)`` scale (normalised) moved to the level
        ``exp(w log L_est + (1 - w) log L_donors)`` given the ``(B, D)`` estimated log levels ``log L_est``."""
        weight = torch.tensor(self.config.level_estimate_weight, device=self.device)
        mean, std = self.donor_prior.feature_mean_, self.donor_prior.feature_std_  # (D, 1), the pipeline's (checked)
        data = mean_day * std + mean
        donor_log_level = data.mean(-1).clamp_min(1e-6).log()
        ratio = torch.exp(weight * (log_level - donor_log_level))  # (B, D)
        return (data * ratio.unsqueeze(-1) - mean) / std, scale * ratio

    @staticmethod
    def _checked_locations(
        new_nodes: NewNodes | None, new_node_locations: Mapping[str, tuple[float, float]] | None
    ) -> dict[str, tuple[float, float]]:
        """``new_node_locations`` as ``{new_node_id: (lat, lon)}``; ``ValueError`` naming the first bad entry."""
        if new_node_locations is None:
            return {}
        if not isinstance(new_node_locations, Mapping):
            raise TypeError(f"new_node_locations must map new node ids to (lat, lon), got {type(new_node_locations)}")
        names = {str(n) for n in (new_nodes or {})}
        unknown = sorted(str(n) for n in new_node_locations if str(n) not in names)
        if unknown:
            raise ValueError(f"new_node_locations names {unknown[:5]}, which are not in new_nodes")
        locations = {}
        for node_id, location in new_node_locations.items():
            pair = np.asarray(location, dtype=object)
            numbers = pair.shape == (2,) and all(
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in pair
            )
            if not numbers or not all(math.isfinite(v) for v in pair) or abs(pair[0]) > 90 or abs(pair[1]) > 180:
                raise ValueError(
                    f"new_node_locations[{node_id!r}] must be (lat, lon), two finite numbers in degrees: {location!r}"
                )
            locations[str(node_id)] = (float(pair[0]), float(pair[1]))
        return locations

    def _clip_to_range(self, series: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., D)`` data units, each feature clipped below at ``output_min`` where one is set (into ``out``)."""
        if self.config.output_min is None:
            return series
        lower = torch.tensor(
            [-float("inf") if m is None else m for m in self.config.output_min], device=series.device
        )
        return torch.maximum(series, lower.to(series.dtype), out=out)

    def _to_data_units(self, normalised: torch.Tensor) -> torch.Tensor:
        """``(..., D, T)`` normalised -> ``(..., T, D)`` data units."""
        mean = torch.tensor(self.config.feature_mean, device=normalised.device).unsqueeze(-1)
        std = torch.tensor(self.config.feature_std, device=normalised.device).unsqueeze(-1)
        return (normalised * std + mean).transpose(-1, -2)

    def _check_arguments(
        self, node_ids: list, new_nodes: dict, num_samples, num_inference_steps, generator, output_type, batch_size
    ) -> None:
        """``ValueError`` naming the first argument of :meth:`__call__` that is unusable."""
        if not node_ids and not new_nodes:
            raise ValueError("give node_ids and/or new_nodes")
        for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        max_steps = self.scheduler.config.num_train_timesteps
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, (int, np.integer))
            or not 1 <= num_inference_steps <= max_steps
        ):
            raise ValueError(
                f"num_inference_steps must be an int in [1, {max_steps}] (the scheduler's training steps), "
                f"got {num_inference_steps!r}"
            )
        generators = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
            bad = next(g for g in generators if not isinstance(g, torch.Generator))
            raise ValueError(
                f"generator must be a torch.Generator, a list of them (one per day) or None, got "
                f"{type(bad).__name__}; for a seed use torch.Generator().manual_seed(seed)"
            )
        if output_type not in ("np", "pt", "pd"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'pd', got {output_type!r}")
        repeated = sorted(node_id for node_id, count in Counter(map(str, node_ids)).items() if count > 1)
        if repeated:
            raise ValueError(f"node_ids {repeated[:5]} are given more than once; ask for more days with num_samples")
        overlap = {str(n) for n in node_ids} & set(new_nodes)
        if overlap:
            raise ValueError(f"{sorted(overlap)[:5]} appear both in node_ids and new_nodes")
        taken = sorted(set(map(str, new_nodes)) & set(self._row_of_node))
        if taken:
            raise ValueError(
                f"new_nodes {taken[:5]} have the ids of nodes the pipeline knows (pipe.config.node_ids); "
                "give new places other names"
            )
        batch = (len(node_ids) + len(new_nodes)) * num_samples
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} days (nodes x num_samples)")

    def _start_noise_scale(self) -> float:
        """Std of the pure-noise start at the first timestep of the scheduler's current chain: ``sqrt(1 - abar)``
        where the chain starts more than one stride below the last training step, else 1.

        diffusers' ``"leading"`` spacing (DDIM) starts at ``(n - 1) (T // n)`` (t = 132 of 200 for 67 steps); a
        start there is the residual's mean 0 (``f`` for the shifted process) plus noise of that step's std.
        Chains that start within a stride of the top keep the unit-std start of diffusers, unchanged.
        """
        num_train = self.scheduler.config.num_train_timesteps
        timesteps = self.scheduler.timesteps
        first = int(timesteps[0])
        if first >= num_train - 1 - math.ceil(num_train / len(timesteps)):
            return 1.0
        return float((1 - self.scheduler.alphas_cumprod[first]).sqrt())

    @staticmethod
    def _chunk_generators(generator, batch: int, batch_size: int):
        """Per chunk of ``batch_size`` days: ``None``, or the list of the chunk's generators.

        One ``torch.Generator`` seeds one stream per day (from a single draw of it), so the days do not
        depend on ``batch_size``.
        """
        if generator is None:
            return [None] * math.ceil(batch / batch_size)
        if isinstance(generator, torch.Generator):
            base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            seeds = np.random.SeedSequence(base).generate_state(batch, dtype=np.uint64).tolist()
            return (
                [torch.Generator(device=generator.device).manual_seed(seed) for seed in seeds[i : i + batch_size]]
                for i in range(0, batch, batch_size)
            )
        return [generator[start : start + batch_size] for start in range(0, batch, batch_size)]

    def _sample_chunk(
        self,
        condition: torch.Tensor,
        meta_image: torch.Tensor,
        num_inference_steps: int,
        generator,
        drift: torch.Tensor,
        start: torch.Tensor | None = None,
        num_steps_run: int | None = None,
    ) -> torch.Tensor:
        """The denoising loop for one chunk: ``(B, D, V, V)`` images from ``condition`` ``(B, C)``.

        ``meta_image`` is the denoiser's ``f`` input; the process drifts towards ``drift`` (``f`` for the
        paper's shifted DDPM, 0 for the residual model, whose images are ``Y = (X - f) / s``). With ``start``
        (``(B, D, V, V)`` residual images, ``drift`` 0) only the last ``num_steps_run`` of the
        ``num_inference_steps`` steps run, from ``start`` noised to the first of them.
        """
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)  # also resets multistep state
        shifted = isinstance(self.scheduler, KGDiffScheduler)
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        shape = meta_image.shape
        timesteps = self.scheduler.timesteps
        if start is not None:
            if num_steps_run == 0:
                return start
            first = len(timesteps) - num_steps_run
            timesteps = timesteps[first:]
            if hasattr(self.scheduler, "set_begin_index"):  # multistep solvers index their own history
                self.scheduler.set_begin_index(first)
            noise = randn_tensor(shape, generator=generator, device=self.device)
            sample = self.scheduler.add_noise(start, noise, timesteps[:1].repeat(shape[0]))
        elif shifted:
            sample = self.scheduler.initial_sample(shape, drift, generator=generator, device=self.device)
            scale = self._start_noise_scale()
            sample = sample if scale == 1.0 else drift + scale * (sample - drift)
        else:  # plain diffusers sampler on the residual Y = X - f (plain DDPM in Y)
            noise = randn_tensor(shape, generator=generator, device=self.device)
            sample = noise * self.scheduler.init_noise_sigma * self._start_noise_scale()
        for t in timesteps:
            if shifted:
                noise = self._predict_noise(sample, t, condition, meta_image)
                sample = self.scheduler.step(noise, t, sample, meta_pattern=drift, generator=generator).prev_sample
            else:
                model_input = self.scheduler.scale_model_input(sample, t) + drift
                prediction = self._predict_noise(model_input, t, condition, meta_image)
                if self.scheduler.config.prediction_type == "sample":  # X_0 -> Y_0 = X_0 - f
                    prediction = prediction - drift
                sample = self.scheduler.step(prediction, t, sample, **step_kwargs).prev_sample
        return sample if shifted else sample + drift

    def _predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor, meta_image: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, condition, meta_image).sample

    @torch.no_grad()
    def __call__(
        self,
        node_ids: Sequence[str | int] | None = None,
        num_samples: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        new_nodes: NewNodes | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        batch_size: int = 256,
        new_node_locations: Mapping[str, tuple[float, float]] | None = None,
        day_type: str | None = None,
    ) -> KGDiffPipelineOutput | tuple:
        r"""Generates ``num_samples`` days for each node.

        Args:
            node_ids: ids of nodes the pipeline was trained with (``pipe.config.node_ids``).
            num_samples: days per node (``>= 1``); any number: days are generated ``batch_size`` at a time. Days
                started from donor days draw their donors stratified over a node's ``num_samples`` days
                (:meth:`KGDiffDonorPrior.donor_days`), so a seeded call's days depend on ``num_samples``; with
                ``match_donor_mean`` and ``num_samples >= 2`` a node's days are shifted together, their mean
                ``mean_match_strength`` of the way to the expected donor day (see the config entries).
            num_inference_steps: denoising steps, ``1 <= num_inference_steps <= num_train_timesteps``.
            generator: one ``torch.Generator`` (one draw of it seeds a stream per day, so results do not
                depend on ``batch_size``), or one per generated day (``nodes * num_samples``, node-major).
            new_nodes: places without data, ``{node_id: [(relation_name, entity_name), ...]}``; their
                condition comes from these KG neighbours alone.
            output_type: ``"np"``, ``"pt"`` or ``"pd"``.
            return_dict: return a :class:`KGDiffPipelineOutput` instead of a tuple.
            batch_size: days denoised together (per denoiser call); bounds the memory of the sampling loop.
            new_node_locations: ``{new_node_id: (lat, lon)}``, used by the donor prior to find the
                geographically nearest training nodes (optional).
            day_type: ``"weekday"`` or ``"weekend"``, one of ``pipe.config.day_types`` (the day types of the
                training days); ``None`` = the first of them (``"weekday"`` unless trained on weekends only).
                A pipeline trained on weekdays only refuses ``"weekend"``; one saved before day types existed
                takes only ``None``.

        Returns:
            :class:`KGDiffPipelineOutput` with ``series`` ``(nodes, num_samples, T, D)`` in data units.
        """
        if isinstance(node_ids, (str, bytes)):
            raise TypeError(f"node_ids must be a list of node ids, got the string {node_ids!r}; use [{node_ids!r}]")
        node_ids = [] if node_ids is None else list(node_ids)
        if new_nodes is not None and not isinstance(new_nodes, Mapping):
            raise TypeError(
                f"new_nodes must map new node ids to [(relation, entity), ...], got {type(new_nodes).__name__}"
            )
        new_nodes = {str(node_id): pairs for node_id, pairs in (new_nodes or {}).items()}
        self._check_arguments(
            node_ids, new_nodes, num_samples, num_inference_steps, generator, output_type, batch_size
        )
        self._checked_locations(new_nodes, new_node_locations)
        self.day_type_index(day_type)  # an unknown day type fails here, before any work
        all_ids = [str(n) for n in node_ids] + list(new_nodes)
        batch = len(all_ids) * num_samples

        phi = self.condition(node_ids, new_nodes, day_type)
        emb = self.delay_embedding
        num_features = self.unet.config.num_features
        residual_scale = level_ratio = None
        if self.donor_prior is not None:
            meta_series, residual_scale, candidates = self._prior_and_candidates(
                node_ids, new_nodes, new_node_locations, day_type
            )
            donor_series = meta_series
            residual_scale = residual_scale[..., None, None]
            if self.meta_pattern is not None and self.config.prior_blend is not None:
                blend = torch.tensor(self.config.prior_blend, device=self.device)[:, None]
                meta_series = blend * meta_series + (1 - blend) * self.meta_pattern(phi)
                if self.config.get("residual_at_blend_level", False):
                    level_ratio = self._blend_level_ratio(meta_series, donor_series)
            # A deviation of s Y from f in normalised units is one of level_ratio * s Y.
            output_scale = residual_scale if level_ratio is None else residual_scale * level_ratio[..., None, None]
        elif self.meta_pattern is not None:
            meta_series = self.meta_pattern(phi)
        else:
            meta_series = torch.zeros(len(all_ids), num_features, emb.seq_len, device=self.device)
        meta_images = emb.to_image(meta_series)
        strength = self.config.get("start_strength")
        starts_from_days = residual_scale is not None and strength is not None and strength < 1
        num_steps_run = round(strength * num_inference_steps) if starts_from_days else num_inference_steps
        # The residual model samples Y = (X - f) / s as plain DDPM: its process drifts towards 0, not f.
        drifts = meta_images if residual_scale is None else torch.zeros_like(meta_images)
        exponent = self.config.get("level_exponent")
        exponent = 1.0 if exponent is None else exponent
        share = self.config.get("random_donor_share") or 0.0
        # Each node's copies summed (data units, (T, D)), to shift its days towards the expected copy.
        copy_sums = None
        if starts_from_days and self.config.get("match_donor_mean", False) and num_samples >= 2:
            copy_sums = torch.zeros(len(all_ids), emb.seq_len, num_features, device=self.device)
        # Days stream through in chunks of batch_size, so memory stays bounded for any num_samples.
        series = torch.empty(
            batch, emb.seq_len, num_features, device=self.device if output_type == "pt" else "cpu"
        )
        chunks = self._chunk_generators(generator, batch, batch_size)
        with self.progress_bar(total=math.ceil(batch / batch_size) * num_steps_run) as progress:
            for start, chunk_generator in zip(range(0, batch, batch_size), chunks):
                days_of_chunk = torch.arange(start, min(start + batch_size, batch), device=self.device)
                nodes = days_of_chunk // num_samples
                start_images = None
                if starts_from_days:
                    days, copies = self.donor_prior.donor_days(
                        candidates[nodes], donor_series[nodes], exponent, chunk_generator,
                        self._day_type_rows(day_type, len(nodes)), share, self.config.get("level_noise") or 0.0,
                        days_of_chunk % num_samples, num_samples, return_copies=True,
                    )
                    if copy_sums is not None:
                        copy_sums.index_add_(0, nodes, self._to_data_units(copies))
                    start_images = emb.to_image(days - donor_series[nodes]) / residual_scale[nodes]
                images = self._sample_chunk(
                    phi[nodes], meta_images[nodes], num_inference_steps, chunk_generator, drifts[nodes],
                    start_images, num_steps_run,
                )
                if residual_scale is not None:
                    images = meta_images[nodes] + output_scale[nodes] * images
                days = self._to_data_units(emb.to_series(images))
                series[start : start + len(nodes)] = (days if copy_sums is not None else self._clip_to_range(days)).to(
                    series.device
                )
                progress.update(num_steps_run)
        series = series.reshape(len(all_ids), num_samples, emb.seq_len, num_features)
        if copy_sums is not None:
            expected = self.donor_prior.expected_donor_day(
                candidates, donor_series, exponent, self._day_type_rows(day_type, len(all_ids)), share
            )
            gap = self._to_data_units(expected) - copy_sums / num_samples
            if level_ratio is not None:
                gap = gap * level_ratio.unsqueeze(1)
            series += (self.config.get("mean_match_strength", 1.0) * gap).unsqueeze(1).to(series.device)
            self._clip_to_range(series, out=series)
        meta = self._clip_to_range(self._to_data_units(meta_series))
        if output_type == "np":
            series, meta = series.cpu().numpy(), meta.cpu().numpy()
        elif output_type == "pd":
            series, meta = self._to_frame(series.cpu().numpy(), all_ids), meta.cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return series, all_ids, meta
        return KGDiffPipelineOutput(series=series, node_ids=all_ids, meta_pattern=meta)

    def _blend_level_ratio(self, blended: torch.Tensor, donor_mean_day: torch.Tensor) -> torch.Tensor | None:
        """``(nodes, D)`` factor ``(l_f / l_donors)^beta`` by which days vary more around the blended mean day than
        around the donor prior's (both ``(nodes, D, T)``, normalised; ``l`` their levels), with ``beta`` the
        training donors' elasticity of spread to level (:meth:`KGDiffDonorPrior.spread_level_elasticity`).
        ``None`` in additive level mode."""
        if self.donor_prior.config.level_mode != "multiplicative":
            return None
        mean, std = self.donor_prior.feature_mean_, self.donor_prior.feature_std_
        level, donor_level = (blended * std + mean).mean(-1).clamp_min(0), (donor_mean_day * std + mean).mean(-1)
        ratio = torch.where(donor_level > 1e-6, level / donor_level.clamp_min(1e-6), torch.ones_like(level))
        return ratio.pow(self.donor_prior.spread_level_elasticity())

    def _to_frame(self, series: np.ndarray, node_ids: list[str]) -> pd.DataFrame:
        """``(nodes, samples, T, D)`` -> long frame ``node_id, sample, step, <features>``."""
        nodes, samples, steps, _ = series.shape
        index = pd.MultiIndex.from_product(
            [node_ids, range(samples), range(steps)], names=["node_id", "sample", "step"]
        )
        values = series.reshape(-1, series.shape[-1])
        return pd.DataFrame(values, index=index, columns=self.config.feature_names).reset_index()
