"""Evaluation of a KGDiff pipeline on a dataset's unseen test nodes against baselines (DESIGN.md §8).

:func:`evaluate_pipeline` generates, for every test node, as many days as the node has real days (one
pipeline call, masked per node), draws the same number of days from every baseline of
:mod:`kgdiff_diffusers.baselines`, and scores all methods with :func:`kgdiff_diffusers.metrics.evaluate_nodes`
on the same nodes and days, in data units, with one JSD value range (the real test data's) for all.
:func:`write_report` writes ``metrics.json``, ``report.md`` and the pictures of
:mod:`kgdiff_diffusers.plotting`; :func:`save_samples` writes the arrays so anyone can recompute the metrics.

The planners' side lives here too: :func:`new_node_neighbors` turns the triples of a new place
(:func:`kgdiff_diffusers.kg.builders.new_node_triples`) into the ``(relation, entity)`` pairs that
:class:`~kgdiff_diffusers.KGDiffPipeline` conditions on, and :func:`plot_generated_days` draws generated days.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .baselines import all_baselines
from .checkpointing import RUN_CONFIG_FILE
from .data.days import DAY_TYPES, day_type_indices
from .kg.graph import INVERSE_SUFFIX
from .metrics import DEFAULT_JSD_BINS, NODE_METRICS, evaluate_nodes, physical_lower_bound
from .plotting import GENERATED_COLOR, plot_daily_profiles, plot_tsne, plot_value_kde
from .schedulers.scheduling_kgdiff import make_sampler

logger = logging.getLogger(__name__)

MODEL_NAME = "KGDiff"
METRIC_NAMES = NODE_METRICS
METRIC_LABELS = {
    "mae": "MAE",
    "rmse": "RMSE",
    "mmd": "MMD",
    "mmd_fixed_bandwidth": "MMD-fixed",
    "jsd": "JSD",
    "crps": "CRPS",
    "spread_ratio": "spread ratio",
    "out_of_range": "out of range",
}
# Metrics whose best value is the nearest to 1 by ratio (|ln r| smallest: 2x too wide = 2x too narrow), not
# the lowest.
RATIO_METRICS = ("spread_ratio",)
MMD_BANDWIDTH_NOTE = (
    "MMD: bw0 = mean squared pairwise distance of the node's pooled real + generated days (KSTDiff); "
    "MMD-fixed: bw0 = mean squared pairwise distance of the node's real days only"
)
METHOD_DESCRIPTIONS = {
    MODEL_NAME: "this pipeline, conditioned on the node's KG neighbourhood",
    "global_mean_profile": "mean of all training days, repeated",
    "random_training_days": "random training days (unconditional)",
    "knn{k}_profile": "mean day of the k={k} nearest training nodes, repeated",
    "knn{k}_days": "random days of the k={k} nearest training nodes",
}
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PICTURES = ("daily_profiles.png", "value_kde.png", "tsne.png")


@dataclass
class EvaluationResult:
    """Metrics and the arrays behind them, all in data units.

    Attributes:
        metrics: the ``metrics.json`` dict (``methods`` -> method name -> the metrics of
            :data:`METRIC_NAMES`, plus dataset, split, nodes, sampler and metric settings; ``day_types`` ->
            day type -> the same per day type, for a pipeline with several).
        node_ids: ``(N,)`` the evaluated test nodes.
        generated: ``(N, S_gen, T, D)`` KGDiff days (with several day types, those of each type one after the
            other along ``S_gen``); ``generated_mask`` ``(N, S_gen)`` bool, the days used.
        real: ``(N, S, T, D)`` the dataset's days of these nodes (the dataset's day axis, ``dates``);
            ``real_mask`` ``(N, S)`` bool marks the days compared (valid days, at most ``max_days_per_node``).
        dates: ``(S,)`` ISO dates of ``real``'s day axis.
    """

    metrics: dict
    node_ids: list[str]
    generated: np.ndarray
    generated_mask: np.ndarray
    real: np.ndarray
    real_mask: np.ndarray
    dates: list[str]


def check_pipeline_matches(pipe, dataset, split: str = "test") -> None:
    """Raises ``ValueError`` unless ``pipe`` can be evaluated on the nodes of ``dataset``'s ``split``.

    The pipeline must know every node id of the split and produce the dataset's features and day length.
    """
    known = set(pipe.config.node_ids)
    missing = [node_id for node_id in dataset.split_node_ids(split) if node_id not in known]
    if missing:
        raise ValueError(
            f"the pipeline does not know {len(missing)} {split} node(s) of dataset {dataset.name!r}, e.g. "
            f"{missing[:5]}: evaluate a pipeline trained on this prepared dataset (same node table)"
        )
    if list(pipe.config.feature_names) != list(dataset.feature_names):
        raise ValueError(
            f"feature names differ: pipeline {list(pipe.config.feature_names)}, dataset {dataset.name!r} "
            f"{list(dataset.feature_names)}: evaluate a pipeline trained on this dataset"
        )
    if int(pipe.config.seq_len) != dataset.steps_per_day:
        raise ValueError(
            f"the pipeline makes {pipe.config.seq_len}-step days but dataset {dataset.name!r} has "
            f"{dataset.steps_per_day}-step days"
        )


def use_sampler(pipe, sampler: str) -> None:
    """Sets ``pipe.scheduler`` to ``sampler`` (``"ddpm" | "ddim" | "dpm++" | "unipc"``), keeping its betas."""
    pipe.scheduler = make_sampler(sampler, pipe.scheduler.config)


# Seeds of the calls of generate_for_nodes for successive numbers of days are this far apart (evaluation draws
# are 1000 apart, so none of them shares a seed).
_GROUP_SEED_STRIDE = 1_000_003


def generate_for_nodes(
    pipe,
    node_ids: Sequence[str],
    num_samples: int | Sequence[int],
    num_inference_steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
    batch_size: int = 256,
    day_type: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generated days for known nodes, a possibly different number per node.

    Nodes that need the same number of days are generated together, in one pipeline call per number, so each
    node's days are one whole call's set (stratified over its donors and mean-matched as a set, see
    :meth:`~kgdiff_diffusers.KGDiffPipeline.__call__`), not the first few of a larger one. With one number for
    all nodes this is a single call seeded with ``seed``. ``pipe``'s scheduler is left as it was.

    Args:
        pipe: a :class:`~kgdiff_diffusers.KGDiffPipeline`.
        node_ids: ``(N,)`` ids the pipeline knows.
        num_samples: days per node, one int for all or ``(N,)`` ints, each ``>= 1``.
        num_inference_steps: denoising steps.
        sampler: ``"ddpm"`` (the paper's shifted DDPM), ``"ddim"``, ``"dpm++"`` or ``"unipc"``.
        seed: seed of the CPU ``torch.Generator`` that draws all noise.
        batch_size: images per denoiser call.
        day_type: the day type generated (see :meth:`~kgdiff_diffusers.KGDiffPipeline.__call__`).

    Returns:
        ``(generated, mask)``: ``(N, S_max, T, D)`` float32 in data units (NaN beyond a node's number of days)
        and ``(N, S_max)`` bool.
    """
    node_ids = [str(node_id) for node_id in node_ids]
    counts = np.asarray(num_samples, dtype=np.int64)
    if counts.ndim > 1 or counts.size not in (1, len(node_ids)):
        raise ValueError(f"num_samples: one int or one per node ({len(node_ids)}); got {num_samples}")
    counts = np.broadcast_to(counts, (len(node_ids),))
    if len(node_ids) == 0 or counts.min() < 1:
        raise ValueError(f"need >= 1 node and num_samples >= 1 per node; got {len(node_ids)} nodes, "
                         f"num_samples {num_samples}")
    generated = None
    scheduler = pipe.scheduler
    try:
        use_sampler(pipe, sampler)
        for group, count in enumerate(np.unique(counts)):
            rows = np.flatnonzero(counts == count)
            series = pipe(
                node_ids=[node_ids[row] for row in rows],
                num_samples=int(count),
                num_inference_steps=num_inference_steps,
                generator=torch.Generator().manual_seed(seed + _GROUP_SEED_STRIDE * group),
                batch_size=batch_size,
                day_type=day_type,
            ).series
            if generated is None:
                generated = np.full((len(node_ids), counts.max(), *series.shape[2:]), np.nan, dtype=np.float32)
            generated[rows, :count] = series
    finally:
        pipe.scheduler = scheduler
    mask = np.arange(counts.max())[None, :] < counts[:, None]
    return generated, mask


def _compared_days(day_mask: np.ndarray, max_days_per_node: int | None, seed: int) -> np.ndarray:
    """``(N, S)`` bool: the valid days, or a seeded random subset of at most ``max_days_per_node`` a node."""
    if max_days_per_node is None:
        return day_mask.copy()
    if max_days_per_node < 1:
        raise ValueError(f"max_days_per_node: must be >= 1 or None; got {max_days_per_node}")
    rng = np.random.default_rng(seed)
    compared = np.zeros_like(day_mask)
    for node, valid in enumerate(day_mask):
        days = np.flatnonzero(valid)
        compared[node, rng.choice(days, size=min(len(days), max_days_per_node), replace=False)] = True
    return compared


def _method_metrics(scores: dict) -> dict:
    """The metric means of :func:`evaluate_nodes`; NaN (undefined) becomes None for JSON."""
    return {name: (scores[name] if math.isfinite(scores[name]) else None) for name in METRIC_NAMES}


def evaluate_pipeline(
    pipe,
    dataset,
    num_inference_steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
    samples_per_node: int | None = None,
    include_baselines: bool = True,
    ks: Sequence[int] = (1, 3, 5),
    max_days_per_node: int | None = None,
    batch_size: int = 256,
    jsd_bins: int = DEFAULT_JSD_BINS,
    split: str = "test",
) -> EvaluationResult:
    """KGDiff and every baseline on the unseen nodes of ``dataset``'s ``split``, in the ``metrics.json`` format.

    Nodes without a valid day are left out (logged). For each remaining node the compared real days
    are its valid days (a seeded random subset of at most ``max_days_per_node`` of them, to keep
    validation during training cheap); every method generates as many days per node (or
    ``samples_per_node`` for every node). Baselines draw from the training nodes only (never the
    validation or test nodes). The JSD histogram range of each feature is the min/max of the compared real
    values of all evaluated nodes, and the out-of-range bound is
    :func:`~kgdiff_diffusers.metrics.physical_lower_bound` of the training nodes' valid days; both are shared
    by all methods.

    A pipeline trained on several day types (``pipe.config.day_types``, e.g. weekday and weekend) generates
    each node's days of each type, as many as it has real days of that type; every method is scored per day
    type against that type's real days (the baselines drawing from the training days of that type), in
    ``metrics["day_types"][name]`` (``num_test_nodes``, ``num_real_days``, ``methods``), and overall
    (``metrics["methods"]``: each node's days of all types against all its real days). Real days of a type
    the pipeline was not trained on are left out (logged).

    Args:
        pipe: a :class:`~kgdiff_diffusers.KGDiffPipeline` trained on ``dataset``'s node table.
        dataset: a :class:`~kgdiff_diffusers.data.prepared.PreparedDataset`.
        num_inference_steps, sampler, batch_size: see :func:`generate_for_nodes`.
        seed: seed of the generation noise, the baselines' draws and the day subset.
        samples_per_node: generated days per node; ``None`` = the node's number of compared real days.
        include_baselines: also score :func:`kgdiff_diffusers.baselines.all_baselines`.
        ks: donor counts of the kNN baselines.
        max_days_per_node: at most this many real days compared per node; ``None`` = all.
        jsd_bins: histogram bins of the JSD.
        split: the evaluated nodes, ``"test"`` or ``"validation"`` (the training side's held-out nodes).

    Returns:
        :class:`EvaluationResult`; ``metrics["test_node_ids"]`` / ``["num_test_nodes"]`` name the evaluated
        nodes of ``split`` (``metrics["split"]``).
    """
    check_pipeline_matches(pipe, dataset, split)

    def generate(node_ids: list[str], counts, day_type: str | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return generate_for_nodes(pipe, node_ids, counts, num_inference_steps, sampler, seed, batch_size, day_type)

    result = _evaluate(dataset, split, generate, seed, samples_per_node, include_baselines, ks,
                       max_days_per_node, jsd_bins, pipe.config.get("day_types"))
    result.metrics.update(sampler=sampler, num_inference_steps=int(num_inference_steps))
    return result


def evaluate_baselines(
    dataset,
    split: str = "test",
    seed: int = 0,
    samples_per_node: int | None = None,
    ks: Sequence[int] = (1, 3, 5),
    max_days_per_node: int | None = None,
    jsd_bins: int = DEFAULT_JSD_BINS,
) -> dict:
    """The baselines alone on the nodes of ``split``, scored as :func:`evaluate_pipeline` scores them.

    With the same ``seed`` and ``max_days_per_node`` the compared days, draws and scores equal those of
    :func:`evaluate_pipeline` (whose generated day counts are the same). Returns the ``metrics.json`` dict.
    """
    return _evaluate(dataset, split, None, seed, samples_per_node, True, ks, max_days_per_node, jsd_bins).metrics


def _feasible_donor_counts(ks: Sequence[int], train_day_mask: np.ndarray, groups: list) -> list[int]:
    """The kNN baselines' donor counts that every day type's training nodes can fill; the others are left out with
    a warning (a data set with 4 training nodes has no 5 nearest)."""
    with_data = min(int((train_day_mask & of_type[None]).any(axis=1).sum()) for _, of_type in groups)
    feasible = [k for k in ks if k <= with_data]
    if len(feasible) < len(ks):
        logger.warning("left out the kNN baselines with k = %s: only %d training node(s) have days",
                       [k for k in ks if k > with_data], with_data)
    return feasible


def _evaluate(dataset, split, generate, seed, samples_per_node, include_baselines, ks, max_days_per_node,
              jsd_bins, day_types=None) -> EvaluationResult:
    """Shared body of :func:`evaluate_pipeline` and :func:`evaluate_baselines` (``generate`` ``None``).

    ``generate(node_ids, counts, day_type, seed)`` draws the model's days. ``day_types`` (the pipeline's
    ``config.day_types``; ``None``: every valid day) restricts the compared real days to those types; with
    several, every day type is generated, drawn by the baselines from the training days of that type and
    scored against its own real days (``metrics["day_types"]``), and the overall scores compare each node's
    generated days of all types (as many of each as it has real days of it) with all its real days.
    """
    rows = dataset.split_rows(split)
    valid = dataset.day_mask[rows]
    date_types = day_type_indices(dataset.dates)
    if day_types is not None:
        known_type = np.isin(date_types, [DAY_TYPES.index(name) for name in day_types])[None]
        if (valid & ~known_type).any():
            logger.warning("left out %d real day(s) of day types the pipeline was not trained on (it knows %s)",
                           int((valid & ~known_type).sum()), day_types)
        valid = valid & known_type
    with_days = valid.any(axis=1)
    if not with_days.any():
        raise ValueError(f"dataset {dataset.name!r}: no {split} node has a valid day; nothing to evaluate")
    if not with_days.all():
        logger.warning("left out %d %s node(s) without a valid day: %s", int((~with_days).sum()), split,
                       [dataset.node_ids[row] for row in rows[~with_days]])
    rows, valid = rows[with_days], valid[with_days]
    node_ids = [dataset.node_ids[row] for row in rows]
    real = dataset.days[rows]
    real_mask = _compared_days(valid, max_days_per_node, seed)
    compared = real[real_mask]
    jsd_range = np.stack([compared.min(axis=(0, 1)), compared.max(axis=(0, 1))], axis=1).astype(np.float64)
    train_rows = dataset.train_rows
    lower_bound = physical_lower_bound(dataset.days[train_rows][dataset.day_mask[train_rows]])
    coords = dataset.node_table[["lat", "lon"]].to_numpy(dtype=np.float64)

    def score(methods: dict, nodes: np.ndarray | slice, mask: np.ndarray, generated_mask: np.ndarray) -> dict:
        return {
            name: _method_metrics(evaluate_nodes(
                days[nodes], real[nodes], mask[nodes], generated_mask[nodes], jsd_bins, jsd_range, lower_bound
            ))
            for name, days in methods.items()
        }

    if day_types is None or len(day_types) < 2:
        groups = [(None, np.ones(len(dataset.dates), dtype=bool))]
    else:
        groups = [(name, date_types == DAY_TYPES.index(name)) for name in day_types]
    if include_baselines:
        ks = _feasible_donor_counts(ks, dataset.day_mask[train_rows], groups)
    group_methods, group_masks, by_day_type = [], [], {}
    for offset, (day_type, of_type) in enumerate(groups):
        type_mask = real_mask & of_type[None]
        real_counts = type_mask.sum(axis=1)
        if not real_counts.any():
            continue
        counts = real_counts if samples_per_node is None else np.where(real_counts > 0, samples_per_node, 0)
        methods = {}
        if generate is not None:
            generated, _ = generate(node_ids, np.maximum(counts, 1), day_type, seed + offset)
            methods[MODEL_NAME] = generated
        generated_mask = np.arange(max(counts.max(), 1))[None, :] < counts[:, None]
        if include_baselines:
            methods.update(all_baselines(
                dataset.days[train_rows], dataset.day_mask[train_rows] & of_type[None], coords[train_rows],
                coords[rows], num_samples=generated_mask.shape[1], ks=ks, seed=seed + offset,
            ))
        group_methods.append(methods)
        group_masks.append(generated_mask)
        if day_type is not None:
            nodes = real_counts > 0
            by_day_type[day_type] = {
                "num_test_nodes": int(nodes.sum()),
                "num_real_days": int(type_mask.sum()),
                "methods": score(methods, nodes, type_mask, generated_mask),
            }
    methods = {name: np.concatenate([m[name] for m in group_methods], axis=1) for name in group_methods[0]}
    generated_mask = np.concatenate(group_masks, axis=1)
    metrics = {
        "dataset": dataset.name,
        "split": split,
        "num_test_nodes": len(node_ids),
        "test_node_ids": node_ids,
        "mmd_bandwidth": MMD_BANDWIDTH_NOTE,
        "jsd_bins": int(jsd_bins),
        "jsd_range": jsd_range.tolist(),
        "jsd_log_base": "e",
        "lower_bound": [float(b) if math.isfinite(b) else None for b in lower_bound],
        "spread_ratio_std": "sample std (ddof 1) per step and feature; constant real steps left out",
        "seed": int(seed),
        "num_real_days": int(real_mask.sum()),
        "max_days_per_node": max_days_per_node,
        "methods": score(methods, slice(None), real_mask, generated_mask),
    }
    if by_day_type:
        metrics["day_types"] = by_day_type
    generated = methods.get(MODEL_NAME)
    return EvaluationResult(metrics, node_ids, generated, generated_mask, real, real_mask, list(dataset.dates))


def _recorded_validation_nodes(model_dir: str | Path) -> tuple[list[str], Path] | None:
    """The validation node ids the pipeline in ``model_dir`` was trained without, and the file naming them.

    Read from ``training_config.json`` (``scripts/train.py``), else from the pipeline's own ``model_index.json``
    (``validation_node_ids``, recorded since 2026-12-06, so pipelines shared on the Hub carry them too); ``None``
    when neither names them.
    """
    for name in (RUN_CONFIG_FILE, "model_index.json"):
        path = Path(model_dir) / name
        if path.is_file():
            recorded = json.loads(path.read_text(encoding="utf-8")).get("validation_node_ids")
            if recorded is not None:
                return [str(n) for n in recorded], path
    return None


def training_split_note(dataset, model_dir: str | Path) -> str | None:
    """Why the baselines may draw from other train nodes than the pipeline in ``model_dir`` was trained on.

    ``None`` when :func:`with_training_split` can apply the training run's split: the dataset has its own
    validation split, or the pipeline's folder names the run's validation nodes (``training_config.json`` or
    ``model_index.json``). Otherwise (a pipeline saved before they were recorded, downloaded without its
    ``training_config.json``) they are unknown, so the baselines draw from every training-side node.
    """
    if dataset.validation_node_ids or _recorded_validation_nodes(model_dir) is not None:
        return None
    return (
        f"the validation nodes of the training run are unknown ({model_dir} names none: no {RUN_CONFIG_FILE} and "
        "a pipeline saved before 2026-12-06), so the baselines draw from every training-side node of the dataset, "
        "including any validation nodes the model was trained without"
    )


def with_training_split(dataset, model_dir: str | Path):
    """``dataset`` with the validation nodes that the pipeline in ``model_dir`` was trained without.

    ``scripts/train.py`` holds validation nodes out of training and records them in ``training_config.json`` and
    the pipeline's config; applying them here makes the baselines draw from the same train nodes as the model.
    The dataset is returned unchanged when it has its own validation split or the pipeline's folder names none; a
    warning (:func:`training_split_note`) is logged when the folder cannot name them.

    Raises:
        ValueError: the recorded validation nodes are not training-side nodes of ``dataset`` (the data is not
            the data the pipeline was trained on).
    """
    note = training_split_note(dataset, model_dir)
    if note is not None:
        logger.warning(note)
    recorded = _recorded_validation_nodes(model_dir)
    if dataset.validation_node_ids or recorded is None or not recorded[0]:
        return dataset
    validation, config = recorded
    unknown = sorted(set(validation) - set(dataset.node_ids))
    clashing = sorted(set(validation) & set(dataset.test_node_ids))
    if unknown or clashing:
        problem = (f"{unknown[:5]} are not nodes of dataset {dataset.name!r}" if unknown
                   else f"{clashing[:5]} are test nodes of dataset {dataset.name!r}")
        raise ValueError(
            f"the validation nodes the pipeline was trained without ({config}) {problem}: the data and the model "
            "differ (the pipeline was trained on another dataset or split); evaluate on the data it was trained on"
        )
    return dataset.with_split(dataset.test_node_ids, validation, rule=f"validation nodes of {config}")


def _describe(method: str) -> str:
    if method.startswith("knn"):
        k, _, kind = method[3:].partition("_")
        return METHOD_DESCRIPTIONS.get(f"knn{{k}}_{kind}", "").format(k=k)
    return METHOD_DESCRIPTIONS.get(method, "")


def format_metric(name: str, value: float | None) -> str:
    """3 decimals for MAE/RMSE/CRPS (data units) and the spread ratio, 4 for MMD/JSD, the out-of-range share
    in percent; ``n/a`` when undefined."""
    if value is None:
        return "n/a"
    if name == "out_of_range":
        return f"{100.0 * value:.2f}%"
    return f"{value:.3f}" if name in ("mae", "rmse", "crps", "spread_ratio") else f"{value:.4f}"


def best_value(name: str, values: Sequence[float | None]) -> float | None:
    """The best of ``values`` for metric ``name``: the lowest, or for the spread ratio the one with the smallest
    ``|ln r|`` (0, no spread at all, is the worst); ``None`` values are skipped."""
    values = [value for value in values if value is not None]
    if not values:
        return None
    if name not in RATIO_METRICS:
        return min(values)
    return min(values, key=lambda value: abs(math.log(value)) if value > 0 else math.inf)


def markdown_table(metrics: dict) -> str:
    """A Markdown table of every method in ``metrics["methods"]`` (rows) by the metrics of :data:`METRIC_NAMES`.

    The best value of each column (:func:`best_value`) is bold, and so is every value that rounds to the same
    text; an undefined value is shown as ``n/a``.

    Args:
        metrics: a ``metrics.json`` dict (see :func:`evaluate_pipeline`).

    Returns:
        The table, one line per row, ending with a newline.
    """
    methods = metrics["methods"]
    best = {
        name: format_metric(name, best_value(name, [scores.get(name) for scores in methods.values()]))
        for name in METRIC_NAMES
    }
    lines = [
        "| method | " + " | ".join(METRIC_LABELS[name] for name in METRIC_NAMES) + " | description |",
        "|---|" + "---:|" * len(METRIC_NAMES) + "---|",
    ]
    for method, scores in methods.items():
        cells = []
        for name in METRIC_NAMES:
            text = format_metric(name, scores.get(name))
            cells.append(f"**{text}**" if text == best[name] and text != "n/a" else text)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_describe(method)} |")
    return "\n".join(lines) + "\n"


def day_type_tables(metrics: dict) -> str:
    """A Markdown section per day type of ``metrics["day_types"]`` (:func:`markdown_table` of its methods);
    empty when the evaluation was not split by day type."""
    sections = []
    for day_type, scores in metrics.get("day_types", {}).items():
        sections.append(
            f"### {day_type}: {scores['num_real_days']} real days of {scores['num_test_nodes']} nodes\n\n"
            + markdown_table(scores)
        )
    return "\n".join(sections)


def write_report(
    result: EvaluationResult,
    output_dir: str | Path,
    interval_minutes: int,
    feature_names: Sequence[str],
    max_plot_nodes: int = 6,
) -> dict[str, Path]:
    """Writes ``metrics.json``, ``report.md`` and ``daily_profiles.png``, ``value_kde.png``, ``tsne.png``.

    Existing files of these names in ``output_dir`` are replaced (callers decide whether that is allowed). Each
    of ``result.metrics["notes"]`` (caveats, e.g. :func:`training_split_note`) is shown above the table.

    Args:
        result: from :func:`evaluate_pipeline`.
        output_dir: folder, created if absent.
        interval_minutes: minutes per step (x axis of the daily profiles).
        feature_names: ``(D,)`` axis labels.
        max_plot_nodes: test nodes drawn in ``daily_profiles.png``.

    Returns:
        ``{file name: path}`` of everything written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in (METRICS_FILE, REPORT_FILE, *PICTURES)}
    with open(paths[METRICS_FILE], "w", encoding="utf-8") as f:
        json.dump(result.metrics, f, indent=2)
    plot_daily_profiles(
        result.real, result.real_mask, result.generated, result.node_ids, paths["daily_profiles.png"],
        interval_minutes, feature_names, max_nodes=max_plot_nodes, generated_mask=result.generated_mask,
    )
    plot_value_kde(result.real, result.generated, paths["value_kde.png"], result.real_mask,
                   result.generated_mask, feature_names)
    plot_tsne(result.real, result.generated, paths["tsne.png"], result.real_mask, result.generated_mask)
    metrics = result.metrics
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        f"# KGDiff evaluation: {metrics['dataset']}",
        "",
        f"Generated {stamp}. Sampler `{metrics['sampler']}` with {metrics['num_inference_steps']} inference "
        f"steps, seed {metrics['seed']}. {metrics['num_test_nodes']} unseen {metrics.get('split', 'test')} nodes, "
        f"{metrics['num_real_days']} real days compared; every method generates as many days per node as the "
        "node has real days. All values in data units "
        f"({', '.join(feature_names)}); lower is better (spread ratio: nearest to 1), the best of each column "
        "is bold.",
        "",
        *[f"**Note:** {note}\n" for note in metrics.get("notes", [])],
        markdown_table(metrics),
        *(["Each day type against its own real days (the table above: all days):", "", day_type_tables(metrics)]
          if "day_types" in metrics else []),
        "- MAE / RMSE: between each node's mean generated day and mean real day, averaged over nodes.",
        f"- {metrics['mmd_bandwidth']}.",
        f"- JSD: natural log (at most ln 2), {metrics['jsd_bins']} bins over the real test values' range "
        f"{metrics['jsd_range']} (per feature) plus under/overflow bins, shared by all methods.",
        "- CRPS: the generated days as an ensemble forecast of each real day, per step and feature "
        "(E|X - y| - E|X - X'|/2), averaged; data units.",
        "- Spread ratio: std of generated days / std of real days (ddof 1) per step and feature, averaged over "
        "the steps whose real days are not all equal; 1 is right, 0 = no day-to-day variation.",
        f"- Out of range: share of generated values below the physical lower bound {metrics['lower_bound']} "
        "(0 for a feature whose training values are never negative; None = no bound).",
        "",
        "Test nodes: " + ", ".join(f"`{node_id}`" for node_id in metrics["test_node_ids"]),
        "",
        "![daily profiles](daily_profiles.png)",
        "",
        "![value KDE](value_kde.png)",
        "",
        "![t-SNE](tsne.png)",
        "",
    ]
    paths[REPORT_FILE].write_text("\n".join(report), encoding="utf-8")
    return paths


def save_samples(path: str | Path, result: EvaluationResult) -> Path:
    """Writes the compared days as a compressed npz, so the metrics can be recomputed independently.

    Keys: ``node_ids`` ``(N,)`` str, ``generated`` ``(N, S_gen, T, D)`` (NaN where ``generated_mask`` is False: a
    node with fewer days than ``S_gen``) and ``generated_mask`` ``(N, S_gen)``,
    ``real`` ``(N, S, T, D)`` and ``real_mask`` ``(N, S)`` (data units; the days the metrics compared),
    ``dates`` ``(S,)`` ISO dates of ``real``'s day axis.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(
            f,
            node_ids=np.asarray(result.node_ids, dtype=str),
            generated=result.generated,
            generated_mask=result.generated_mask,
            real=result.real,
            real_mask=result.real_mask,
            dates=np.asarray(result.dates, dtype=str),
        )
    return path


def new_node_neighbors(
    entity: str,
    triples: Sequence[tuple[str, str, str]],
    entity_names: Sequence[str],
    relation_names: Sequence[str],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The ``(relation, entity)`` neighbours of a new KG entity, as the pipeline's ``new_nodes`` takes them.

    As in :meth:`kgdiff_diffusers.kg.graph.KnowledgeGraph.neighbor_index`: a triple ``(entity, r, t)`` gives
    ``(r, t)``, a triple ``(h, r, entity)`` gives ``(r + "_inv", h)``; triples not touching ``entity`` are
    ignored. Pairs whose relation or entity the pipeline has no embedding for (e.g. a new POI or a new
    grid cell) cannot condition the encoder and are returned separately.

    Args:
        entity: the new node's entity name.
        triples: ``(head, relation, tail)`` names, e.g. from
            :func:`~kgdiff_diffusers.kg.builders.new_node_triples`.
        entity_names, relation_names: the pipeline's ``config.entity_names`` / ``config.relation_names``.

    Returns:
        ``(kept, dropped)`` lists of ``(relation, entity)`` pairs, without duplicates, in triple order.
    """
    known_entities, known_relations = set(entity_names), set(relation_names)
    kept, dropped = [], []
    for head, relation, tail in triples:
        if head == entity:
            pair = (relation, tail)
        elif tail == entity:
            pair = (relation + INVERSE_SUFFIX, head)
        else:
            continue
        target = kept if pair[0] in known_relations and pair[1] in known_entities else dropped
        if pair not in target:
            target.append(pair)
    return kept, dropped


def plot_generated_days(
    series: np.ndarray,
    node_ids: Sequence[str],
    path: str | Path,
    interval_minutes: int,
    feature_names: Sequence[str],
    max_nodes: int = 8,
) -> Path:
    """Mean generated day with a 10-90 % band, a row per node (at most ``max_nodes``), a column per feature.

    Args:
        series: ``(N, S, T, D)`` generated days, data units.
        node_ids: ``(N,)`` row titles.
        path: PNG file to write (parent folders are created).
        interval_minutes: minutes per step (x axis in hours of the day).
        feature_names: ``(D,)`` y-axis labels.
        max_nodes: the first ``max_nodes`` nodes are drawn.

    Returns:
        ``path``.
    """
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 4 or len(node_ids) != series.shape[0] or len(feature_names) != series.shape[-1]:
        raise ValueError(f"series {series.shape}: expected (N, S, T, D) with N = {len(node_ids)} node ids "
                         f"and D = {len(feature_names)} feature names")
    num_nodes, num_features = min(max_nodes, series.shape[0]), series.shape[-1]
    hours = np.arange(series.shape[2]) * interval_minutes / 60.0
    figure = Figure(figsize=(4.5 * num_features, 2.4 * num_nodes), layout="constrained")
    axes = figure.subplots(num_nodes, num_features, squeeze=False, sharex=True)
    for node in range(num_nodes):
        for feature in range(num_features):
            values = series[node, ..., feature]
            low, high = np.percentile(values, [10, 90], axis=0)
            axis = axes[node, feature]
            axis.fill_between(hours, low, high, color=GENERATED_COLOR, alpha=0.2, linewidth=0,
                              label="10-90 %")
            axis.plot(hours, values.mean(axis=0), color=GENERATED_COLOR, label=f"mean of {len(values)} days")
            axis.set_title(str(node_ids[node]), fontsize=9)
            axis.set_ylabel(feature_names[feature])
            axis.legend(fontsize=7, loc="upper left")
    for axis in axes[-1]:
        axis.set_xlabel("hour of day")
    figure.suptitle("Generated days: mean and 10-90 % band")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
