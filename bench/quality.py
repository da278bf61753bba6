"""Quality of KGDiff on real unseen nodes over spatial folds: model rows and baselines, every metric.

Protocol (issue 10, DESIGN.md "Quality on unseen nodes"):

* Two real data sets, prepared once by ``scripts/prepare_data.py`` (weekdays only, urban KG + TuckER):
  ``nyc`` (Citi Bike in/out flow of 57 Manhattan taxi zones, ``../shared/data/nyc_bike_manhattan69``, 2019
  weekdays, zones with a mean flow below 1 trip per 30-min slot dropped) and ``pems`` (PeMS-Bay speed of 16
  sensors, ``../shared/data/pems_bay_16``, Jan-May 2017 weekdays). A third, ``metr`` (METR-LA speed of 207
  sensors over one week, ``../shared/data/metr_la_week``: 5 weekdays per sensor, a KG from distance bands
  only), runs when named in ``--datasets``.
* Spatial folds: the nodes are cut into ``--num_folds`` (4) latitude bands of (near) equal size
  (:func:`kgdiff_diffusers.data.days.latitude_folds`); split ``foldK`` holds band K (0 = northernmost) out as
  its test set, so over the folds every node is a test node exactly once (NYC: all 57 zones, PeMS-16: all 16
  sensors). Split ``paper`` is the prepared folder's own split (test = the 25 % northernmost nodes), kept as
  one extra row set for comparison with the README.
* Validation nodes: in every split, the ``--validation_fraction`` (0.2) of the training side with the
  highest latitudes (:func:`~kgdiff_diffusers.data.days.split_validation_nodes`); never a test node, and left
  out of training. ``scripts/train.py`` validates on them (``validation.json``); the baselines draw from the
  remaining train nodes only, as the model does.
* Each split is a prepared folder of its own, built from the base folder by
  :meth:`~kgdiff_diffusers.data.prepared.PreparedDataset.with_split` (the KG and its TuckER embeddings do not
  depend on the split and are reused; normalisation statistics are recomputed from the split's train nodes).
* Every model row (:data:`VARIANTS`: row name -> extra ``scripts/train.py`` flags) is trained by
  ``scripts/train.py`` in its own process with the same fixed budget, then evaluated on the split's test nodes
  in a fresh process by :func:`~kgdiff_diffusers.evaluation.evaluate_pipeline`; the baselines (random training
  days, global mean profile, k = 1/3/5 nearest-training-node donors) are scored on the same nodes, days and
  seed by :func:`~kgdiff_diffusers.evaluation.evaluate_baselines`. Every method gets MAE, RMSE, MMD, MMD-fixed,
  JSD, CRPS, spread ratio and out-of-range share (:mod:`kgdiff_diffusers.metrics`).
* Sampling rows (:data:`SAMPLING_VARIANTS`) train nothing: they evaluate a trained row's pipelines with some
  config entries overridden (e.g. ``start_strength = 1``: the same weights sampled from pure noise), once
  every model is trained, so each shows what one part of the default's sampling is worth.
* Tables: per data set, the folds (mean ± sample std over folds x seeds) and the paper split (over seeds).

``--curve`` instead trains the first variant once per data set on the paper split with validation every
``--curve_every`` steps and reports validation-node quality against training steps (table + PNG), with the
baselines on the same validation nodes as reference lines.

Examples:
    python bench/quality.py --quick                      # 2 folds per data set, 40 steps per model
    python bench/quality.py                              # 4 folds + paper split, both data sets
    python bench/quality.py --datasets pems --splits fold0,fold1 --variants KGDiff,"w/o Guidance"
    python bench/quality.py --curve                      # validation quality vs training steps
    python bench/quality.py --quick --prepared_dir /work/prepared   # reuse prepared base folders

Base folders are prepared once into ``--prepared_dir`` (reused when their ``prepared.json`` exists), split
folders go to ``--splits_dir``, models to ``--runs_dir`` (a finished run with the same training command,
evaluation settings and code version is reused unless ``--rerun``). Prints Markdown tables and writes them
with date, machine, budget and every command to ``--output`` (JSON) and its ``.md`` sibling.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from common import machine_info, markdown_table, mean_over_draws
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.days import latitude_folds, split_validation_nodes
from kgdiff_diffusers.data.prepared import PreparedDataset
from kgdiff_diffusers.evaluation import (
    METRIC_LABELS,
    METRIC_NAMES,
    MMD_BANDWIDTH_NOTE,
    MODEL_NAME,
    best_value,
    evaluate_baselines,
    evaluate_pipeline,
    format_metric,
)

logger = logging.getLogger("bench.quality")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
RESULT_FILE = "bench_quality.json"
# Evaluation seeds of one training seed's draws are this far apart, so no two seeds' draws share a seed.
EVAL_DRAW_STRIDE = 1000
PAPER_SPLIT = "paper"


@dataclass(frozen=True)
class DatasetSpec:
    """A real data set: its display name, prepared folder name and ``scripts/prepare_data.py`` arguments.

    ``prepare_args`` use ``{data}`` for the data root (``../shared/data``).
    """

    label: str
    folder: str
    prepare_args: tuple[str, ...]


DATASETS = {
    "nyc": DatasetSpec(
        "NYC-Bike (Manhattan, 30 min, in/out flow)",
        "nyc_bike",
        (
            "--layout", "flow-npz",
            "--npz", "{data}/nyc_bike_manhattan69/bike_inout_30min.npz",
            "--zones", "{data}/nyc_bike_manhattan69/zones.csv",
            "--kg_triples", "{data}/nyc_bike_manhattan69/urban_kg_triples.tsv.gz",
            "--start", "2019-01-01", "--end", "2019-12-31", "--min_mean_flow", "1", "--test_fraction", "0.25",
        ),
    ),
    "pems": DatasetSpec(
        "PeMS-Bay-16 (5 min, speed mph)",
        "pems_bay_16",
        (
            "--layout", "dcrnn-h5",
            "--h5", "{data}/pems_bay_16/pems-bay-16.h5",
            "--locations", "{data}/pems_bay_16/graph_sensor_locations_bay.csv",
            "--distances_csv", "{data}/pems_bay_16/distances_bay_2017.csv",
            "--station_meta", "{data}/pems_bay_16/pems_bay_station_meta.csv",
            "--osm_edges", "{data}/pems_bay_16/sensor_osm_edge.csv",
            "--start", "2017-01-01", "--end", "2017-05-31", "--test_fraction", "0.25",
        ),
    ),
    "metr": DatasetSpec(
        "METR-LA week (5 min, speed mph)",
        "metr_la_week",
        (
            "--layout", "wide-csv",
            "--csv", "{data}/metr_la_week/los_speed.csv.gz",
            "--locations", "{data}/metr_la_week/graph_sensor_locations.csv",
            "--first_timestamp", "2012-03-01", "--interval_minutes", "5", "--test_fraction", "0.25",
        ),
    ),
}

# Model rows: row name -> extra scripts/train.py flags (add a row here to benchmark it).
VARIANTS = {
    MODEL_NAME: (),
    # The paper's configuration: f from the meta-pattern MLP alone, no donor prior, no residual scaling.
    "paper configuration": ("--no_donor_prior",),
    # Sampling from pure noise instead of from noised donor days (the default's choice on validation nodes).
    "KGDiff (from noise)": ("--num_bank_days", "0"),
    # The denoiser trained around the donor prior's estimate from other nodes (what sampling gives a node)
    # instead of around the node's own mean day and spread.
    "KGDiff (prior-centred residual)": ("--residual_centre", "prior"),
    # The donor prior's level alone, without the two-hop KG level estimate (the default before 2026-12-07).
    "KGDiff (no level estimator)": ("--no_level_estimator",),
    # A node's days keep the mean of the donor days they drew (the default before 2026-12-07).
    "KGDiff (unmatched donor mean)": ("--no_match_donor_mean",),
    "KGDiff (donor mean fully matched)": ("--mean_match_strength", "1"),
    # The donor prior with weights learnt leave-one-out instead of uniform ones.
    "KGDiff (learned donor weights)": ("--donor_weighting", "learned"),
    # The paper's Table 3 ablations (run when named in --variants).
    "w/o Geometry-MoE": ("--no_geometry_moe",),
    "w/o H": ("--no_hyperbolic",),
    "w/o E": ("--no_euclidean",),
    "w/o S": ("--no_spherical",),
    "w/o Meta Pattern": ("--no_meta_pattern",),
    "w/o Guidance": ("--no_guidance",),
    # Not in the paper: eq. 15's mean with each relation weighing the same instead of each edge.
    "KGDiff (relation mean)": ("--neighbor_weighting", "relation"),
    # Not in the paper: geometric experts that do not reduce to the Euclidean one (relation Mobius
    # translations, gyromidpoints; eq. 14 as printed has log_0(M_H) = log_0(M_S) = M_E), with their ablations.
    **{
        f"{row} (translated)": ("--geometry_form", "translated", *flags)
        for row, flags in (
            (MODEL_NAME, ()),
            ("w/o Geometry-MoE", ("--no_geometry_moe",)),
            ("w/o H", ("--no_hyperbolic",)),
            ("w/o E", ("--no_euclidean",)),
            ("w/o S", ("--no_spherical",)),
        )
    },
}
# Sampling rows: row name -> (the trained row whose pipelines they sample, pipeline config overrides). They
# train nothing: the same weights are evaluated with other sampling settings, so the row shows what that part
# of the default's sampling is worth.
SAMPLING_VARIANTS = {
    # The default's validated donor-day start replaced by sampling from pure noise.
    "KGDiff from noise (same weights)": (MODEL_NAME, {"start_strength": 1.0}),
    # The donor days themselves, not denoised (what the denoiser adds where validation chose to run it).
    "KGDiff without denoising (same weights)": (MODEL_NAME, {"start_strength": 0.0}),
    # Donor days from the place's candidates only (no days of random training nodes), all else as chosen.
    "KGDiff without random donors (same weights)": (MODEL_NAME, {"random_donor_share": 0.0}),
    # Every donor day at the level the prior estimates (no drawn leave-one-out level errors).
    "KGDiff without level noise (same weights)": (MODEL_NAME, {"level_noise": 0.0}),
}
# The rows of a run without --variants.
DEFAULT_VARIANTS = [MODEL_NAME, "paper configuration", *SAMPLING_VARIANTS]
BASELINE_LABELS = {
    "random_training_days": "random training days",
    "global_mean_profile": "global mean profile",
    "knn1_profile": "kNN k=1 profile",
    "knn1_days": "kNN k=1 days",
    "knn3_profile": "kNN k=3 profile",
    "knn3_days": "kNN k=3 days",
    "knn5_profile": "kNN k=5 profile",
    "knn5_days": "kNN k=5 days",
}
# Metrics of the paired differences against the baselines (lower is better for each).
PAIRED_METRICS = ("mae", "rmse", "mmd", "mmd_fixed_bandwidth", "jsd", "crps")
# Reference lines of the --curve plot.
CURVE_BASELINES = ("random_training_days", "knn3_profile", "knn5_days")
CURVE_METRICS = ("mae", "mmd_fixed_bandwidth", "crps", "spread_ratio")


@dataclass(frozen=True)
class Budget:
    """The fixed compute budget of every model, and the evaluation settings shared by all methods.

    ``tucker_max_steps`` caps TuckER when a base folder is prepared: a step budget, not seconds, so that the
    embeddings (and every NYC-Bike row) do not depend on the machine's load. 600 is one epoch of NYC-Bike's KG;
    the speed data sets' small KGs stop early long before it.
    """

    preset: str
    max_train_steps: int
    train_batch_size: int
    lr_warmup_steps: int
    sampler: str
    num_inference_steps: int
    max_days_per_node: int
    tucker_max_steps: int
    curve_steps: int
    curve_every: int


BUDGETS = {
    "quick": Budget("cpu-small", 40, 32, 4, "ddim", 20, 8, 150, 120, 40),
    "full": Budget("cpu-small", 400, 32, 40, "ddim", 20, 20, 600, 2000, 200),
}
QUICK_DEFAULTS = {"datasets": "nyc,pems", "seeds": "0", "splits": "fold0,fold1"}
FULL_DEFAULTS = {"datasets": "nyc,pems", "seeds": "0", "splits": "fold0,fold1,fold2,fold3,paper"}
OVERRIDES = ("max_train_steps", "train_batch_size", "max_days_per_node", "num_inference_steps", "curve_steps",
             "curve_every")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 folds and a tiny training budget (minutes)")
    parser.add_argument("--curve", action="store_true",
                        help="validation-node quality vs training steps of the first variant, per data set")
    parser.add_argument("--datasets", help="comma-separated subset of: " + ",".join(DATASETS) + " (default: nyc,pems)")
    parser.add_argument("--splits", help="comma-separated fold0..foldN-1 and/or paper (default: all; quick: "
                        "fold0,fold1)")
    parser.add_argument("--num_folds", type=int, default=4, help="latitude bands")
    parser.add_argument("--validation_fraction", type=float, default=0.2,
                        help="share of each split's training side held out as validation nodes")
    parser.add_argument("--seeds", help="comma-separated training/evaluation seeds (default: 0)")
    parser.add_argument("--eval_draws", type=int, default=1,
                        help="evaluation draws per model and seed (real days compared, generated days, baseline "
                             "draws), averaged: more draws, less sampling noise in each value (default: 1)")
    parser.add_argument("--variants", help=f"comma-separated model rows (default: {','.join(DEFAULT_VARIANTS)}): "
                        + ",".join([*VARIANTS, *SAMPLING_VARIANTS]))
    parser.add_argument("--output", type=Path, help="results JSON (default: bench/results/quality.json, "
                        "quality_curve.json with --curve)")
    parser.add_argument("--prepared_dir", type=Path, default=Path("bench/results/data"),
                        help="prepared base folders (<dir>/nyc_bike, <dir>/pems_bay_16); made if absent")
    parser.add_argument("--splits_dir", type=Path, default=Path("bench/results/splits"), help="split folders")
    parser.add_argument("--runs_dir", type=Path, default=Path("bench/results/runs"), help="trained models")
    parser.add_argument("--data_root", type=Path, default=DEFAULT_DATA_ROOT, help="the shared real data folder")
    parser.add_argument("--jobs", type=int, default=2, help="models trained at the same time")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/torch threads per training process and per evaluation (1 on a busy machine)")
    parser.add_argument("--max_train_steps", type=int, help="override the budget's optimiser steps per model")
    parser.add_argument("--train_batch_size", type=int, help="override the budget's batch size")
    parser.add_argument("--max_days_per_node", type=int, help="override the real days compared per test node")
    parser.add_argument("--num_inference_steps", type=int, help="override the sampler steps")
    parser.add_argument("--curve_steps", type=int, help="--curve: training steps (full 2000, quick 120)")
    parser.add_argument("--curve_every", type=int, help="--curve: validation every N steps (full 200, quick 40)")
    parser.add_argument("--rerun", action="store_true", help="retrain even where a finished run can be reused")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep the training checkpoints")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    args.datasets = _split(args.datasets or defaults["datasets"])
    args.variants = _split(args.variants) if args.variants else list(DEFAULT_VARIANTS)
    args.splits = _split(args.splits or defaults["splits"])
    try:
        args.seeds = [int(seed) for seed in _split(args.seeds or defaults["seeds"])]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not 2 <= args.num_folds <= 16:
        parser.error(f"--num_folds must be between 2 and 16, got {args.num_folds}")
    known_splits = [f"fold{k}" for k in range(args.num_folds)] + [PAPER_SPLIT]
    for name, chosen, known in (("datasets", args.datasets, DATASETS),
                                ("variants", args.variants, [*VARIANTS, *SAMPLING_VARIANTS]),
                                ("splits", args.splits, known_splits)):
        unknown = [item for item in chosen if item not in known]
        if unknown or not chosen:
            parser.error(f"--{name}: unknown or empty {unknown or chosen}; choose from {', '.join(known)}")
    if not 0.0 < args.validation_fraction < 1.0:
        parser.error(f"--validation_fraction must be in (0, 1), got {args.validation_fraction}")
    if args.jobs < 1 or args.threads < 1 or args.eval_draws < 1:
        parser.error("--jobs, --threads and --eval_draws must be >= 1")
    base = BUDGETS["quick" if args.quick else "full"]
    overrides = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    if any(value < 1 for value in overrides.values()):
        parser.error(f"budget overrides must be >= 1, got {overrides}")
    if "max_train_steps" in overrides:
        overrides["lr_warmup_steps"] = max(1, overrides["max_train_steps"] // 10)
    args.budget = Budget(**{**asdict(base), **overrides})
    if args.output is None:
        args.output = Path("bench/results/quality_curve.json" if args.curve else "bench/results/quality.json")
    return args


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _environment(threads: int) -> dict[str, str]:
    """The subprocess environment: ``threads`` OpenMP/MKL threads (1 avoids oversubscribing a busy box)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def code_version() -> str:
    """``git`` HEAD of the repository plus ``+dirty-<hash>`` of uncommitted changes to src/ and scripts/.

    Results are reused only under the same version, and a run warns when the version changed under it.
    """
    def git(*command: str) -> str:
        result = subprocess.run(["git", *command], cwd=REPO_ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    diff = git("diff", "HEAD", "--", "src", "scripts")
    dirty = f"+dirty-{hashlib.sha1(diff.encode()).hexdigest()[:8]}" if diff else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def prepare_command(key: str, folder: Path, data_root: Path, tucker_max_steps: int) -> list[str]:
    """The ``scripts/prepare_data.py`` command that writes data set ``key`` into ``folder``."""
    data = os.path.relpath(data_root.resolve(), REPO_ROOT)
    args = [arg.format(data=data) for arg in DATASETS[key].prepare_args]
    return [
        sys.executable, "scripts/prepare_data.py", *args, "--output", _relative(folder),
        "--tucker_max_steps", str(tucker_max_steps),
    ]


def ensure_prepared(key: str, args: argparse.Namespace) -> tuple[Path, list[str] | None]:
    """The prepared folder of data set ``key``, made by ``scripts/prepare_data.py`` if it has no prepared.json.

    Returns:
        ``(folder, command)``; ``command`` is ``None`` when an existing folder was reused.
    """
    folder = args.prepared_dir / DATASETS[key].folder
    if (folder / "prepared.json").is_file():
        logger.info("reusing prepared data set %s", folder)
        return folder, None
    if not args.data_root.is_dir():
        raise FileNotFoundError(
            f"--data_root {args.data_root} does not exist: the real data sets live in ../shared/data next to "
            "the repository; pass --data_root, or --prepared_dir with already prepared folders"
        )
    command = prepare_command(key, folder, args.data_root, args.budget.tucker_max_steps)
    if folder.exists():
        command.append("--overwrite")
    logger.info("preparing %s: %s", key, " ".join(command))
    folder.parent.mkdir(parents=True, exist_ok=True)
    log_path = folder.parent / f"{folder.name}.log"
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=REPO_ROOT, env=_environment(args.threads), stdout=log, stderr=log)
    if result.returncode != 0:
        raise RuntimeError(f"preparing {key} failed (exit {result.returncode}); see {log_path}")
    return folder, command


def split_dataset(base: PreparedDataset, split: str, num_folds: int, validation_fraction: float) -> PreparedDataset:
    """The dataset of one split: ``foldK`` (latitude band K is the test set) or ``paper`` (the base folder's).

    Validation nodes are the ``validation_fraction`` highest-latitude nodes of the training side; the result
    never has a validation node among its test nodes (checked here and by ``with_split``).
    """
    if split == PAPER_SPLIT:
        test = base.test_node_ids
        rule = "paper: the prepared folder's highest-latitude test nodes"
    else:
        fold = int(split[len("fold"):])
        test = latitude_folds(base.node_table, num_folds)[fold]
        rule = f"fold {fold} of {num_folds} latitude bands (0 = northernmost)"
    train_side = [node_id for node_id in base.node_ids if node_id not in set(test)]
    _, validation = split_validation_nodes(base.node_table, train_side, validation_fraction)
    dataset = base.with_split(test, validation, rule=f"{rule}; validation = the {validation_fraction:g} "
                              "highest-latitude share of the training side")
    assert not set(dataset.validation_node_ids) & set(dataset.test_node_ids)
    return dataset


def ensure_split(key: str, split: str, base_dir: Path, args: argparse.Namespace) -> Path:
    """The prepared folder of ``split`` of data set ``key`` (rebuilt unless its node split is already right)."""
    base = PreparedDataset.load(base_dir)
    dataset = split_dataset(base, split, args.num_folds, args.validation_fraction)
    folder = args.splits_dir / DATASETS[key].folder / split
    if (folder / "prepared.json").is_file():
        existing = PreparedDataset.load(folder)
        if (existing.node_table["split"].tolist() == dataset.node_table["split"].tolist()
                and existing.node_ids == dataset.node_ids and existing.dates == dataset.dates):
            return folder
    dataset.save(folder, overwrite=True)
    return folder


def train_command(data_dir: Path, output_dir: Path, variant: str, seed: int, budget: Budget,
                  curve: bool = False) -> list[str]:
    """The ``scripts/train.py`` command of one model (no tracker).

    A bench model validates once, at its last step; a ``curve`` run every ``budget.curve_every`` steps up to
    ``budget.curve_steps``, with the evaluation's sampler and days per node.
    """
    steps = budget.curve_steps if curve else budget.max_train_steps
    warmup = max(1, steps // 10) if curve else budget.lr_warmup_steps
    return [
        sys.executable, "scripts/train.py",
        "--dataset", _relative(data_dir), "--output_dir", _relative(output_dir), "--overwrite_output_dir",
        "--preset", budget.preset, "--seed", str(seed),
        "--max_train_steps", str(steps), "--train_batch_size", str(budget.train_batch_size),
        "--lr_warmup_steps", str(warmup),
        "--checkpointing_steps", str(steps), "--checkpoints_total_limit", "1",
        "--validation_steps", str(budget.curve_every if curve else steps),
        "--validation_sampler", budget.sampler, "--validation_inference_steps", str(budget.num_inference_steps),
        "--validation_max_days", str(budget.max_days_per_node), "--report_to", "none",
        *VARIANTS[variant],
    ]


@dataclass(frozen=True)
class Unit:
    """One model to train and evaluate: data set key, split, row name, seed."""

    dataset: str
    split: str
    variant: str
    seed: int


def evaluation_seeds(seed: int, draws: int) -> list[int]:
    """The evaluation seeds of ``draws`` draws for training seed ``seed``: ``seed`` first, then far apart."""
    return [seed + EVAL_DRAW_STRIDE * draw for draw in range(draws)]


def evaluate_run(model_dir: Path, data_dir: Path, evaluation: dict, threads: int,
                 config_overrides: dict | None = None) -> dict:
    """Scores a trained pipeline on its split's test nodes (``evaluate_pipeline``, no baselines).

    Runs in a fresh process (``python bench/quality.py evaluate-run ...``) so that it uses the code the model
    was just trained with, and evaluations of parallel jobs do not share one interpreter.

    Args:
        model_dir: a ``KGDiffPipeline.save_pretrained`` folder.
        data_dir: the split folder it was trained on.
        evaluation: ``sampler``, ``num_inference_steps``, ``max_days_per_node``, ``seed`` and, for several
            draws, ``eval_seeds`` (one evaluation per seed, averaged).
        threads: ``torch.set_num_threads``.
        config_overrides: pipeline config entries set before sampling (a sampling row).

    Returns:
        ``{"metrics" (mean over draws), "metrics_by_draw", "num_test_nodes", "num_real_days" (of the first
        draw), "test_node_ids"}``.
    """
    torch.set_num_threads(threads)
    pipe = KGDiffPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    if config_overrides:
        pipe.register_to_config(**config_overrides)
    dataset = PreparedDataset.load(data_dir)
    results = []
    with torch.inference_mode():
        for seed in evaluation.get("eval_seeds", [evaluation["seed"]]):
            results.append(evaluate_pipeline(
                pipe, dataset, num_inference_steps=evaluation["num_inference_steps"],
                sampler=evaluation["sampler"], seed=seed, include_baselines=False,
                max_days_per_node=evaluation["max_days_per_node"],
            ).metrics)
    by_draw = [result["methods"][MODEL_NAME] for result in results]
    metrics = by_draw[0] if len(by_draw) == 1 else mean_over_draws(by_draw, METRIC_NAMES)
    return {"metrics": metrics, "metrics_by_draw": by_draw,
            **{key: results[0][key] for key in ("num_test_nodes", "num_real_days", "test_node_ids")}}


def _evaluate_main(argv: list[str]) -> None:
    """``evaluate-run MODEL_DIR DATA_DIR EVALUATION_JSON THREADS OUTPUT_JSON [OVERRIDES_JSON]``: to a file."""
    model_dir, data_dir, evaluation, threads, output, *overrides = argv
    result = evaluate_run(Path(model_dir), Path(data_dir), json.loads(evaluation), int(threads),
                          json.loads(overrides[0]) if overrides else None)
    Path(output).write_text(json.dumps(result))


def _run_logged(command: list[str], log_path: Path, threads: int, what: str) -> float:
    """Runs ``command`` from the repository root with ``threads`` threads; returns its wall seconds."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, cwd=REPO_ROOT, env=_environment(threads), stdout=log, stderr=log)
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {completed.returncode}); see {log_path}")
    return time.perf_counter() - start


def _run_folder(args: argparse.Namespace, unit: Unit, curve: bool = False) -> Path:
    variant = re.sub(r"[^a-z0-9]+", "_", unit.variant.lower().replace("w/o ", "no_")).strip("_")
    name = f"{'curve_' if curve else ''}{variant}_seed{unit.seed}"
    return (args.runs_dir / unit.dataset / unit.split / name).resolve()


def _evaluation_settings(args: argparse.Namespace, seed: int) -> dict:
    budget = args.budget
    settings = {"sampler": budget.sampler, "num_inference_steps": budget.num_inference_steps,
                "max_days_per_node": budget.max_days_per_node, "seed": seed, "code_version": args.code_version}
    if args.eval_draws > 1:  # absent for one draw, so records written before draws existed stay reusable
        settings["eval_seeds"] = evaluation_seeds(seed, args.eval_draws)
    return settings


def run_unit(unit: Unit, data_dir: Path, args: argparse.Namespace) -> dict:
    """Trains one model and evaluates it on its split's test nodes, each in its own process.

    A finished run whose training command and code version match is reused; only its evaluation is redone
    when the evaluation settings changed (e.g. ``--eval_draws``), so the model is not trained again.

    Returns:
        ``{"unit", "command", "evaluation", "metrics", "validation", "train_seconds", "evaluate_seconds",
        "reused", "retrained", ...}``; ``validation`` is the last ``validation.json`` entry (the validation
        nodes' scores); ``reused``: nothing was run; ``retrained``: the model was trained in this call.
    """
    output_dir = _run_folder(args, unit)
    command = train_command(data_dir, output_dir, unit.variant, unit.seed, args.budget)
    evaluation = _evaluation_settings(args, unit.seed)
    shown = [Path(command[0]).name, *command[1:]]
    result_path = output_dir / RESULT_FILE
    previous = json.loads(result_path.read_text()) if not args.rerun and result_path.is_file() else {}
    if previous.get("command") == shown and previous.get("evaluation") == evaluation:
        return {**previous, "reused": True, "retrained": False}
    trained = (previous.get("command") == shown and (output_dir / "model_index.json").is_file()
               and previous.get("evaluation", {}).get("code_version") == args.code_version)
    if trained:
        train_seconds = previous["train_seconds"]
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        train_seconds = _run_logged(command, output_dir / "train.log", args.threads, f"training {unit}")
        if not args.keep_checkpoints:
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    scores_path = output_dir / "bench_scores.json"
    evaluate_command = [
        sys.executable, str(Path(__file__).resolve()), "evaluate-run", str(output_dir), str(data_dir.resolve()),
        json.dumps(evaluation), str(args.threads), str(scores_path),
    ]
    evaluate_seconds = _run_logged(evaluate_command, output_dir / "evaluate.log", args.threads, f"evaluating {unit}")
    scores = json.loads(scores_path.read_text())
    validation_path = output_dir / "validation.json"
    validation = json.loads(validation_path.read_text())["history"][-1] if validation_path.is_file() else None
    record = {
        "unit": asdict(unit),
        "command": shown,
        "evaluation": evaluation,
        "metrics": scores["metrics"],
        "metrics_by_draw": scores["metrics_by_draw"],
        "validation": validation,
        "num_test_nodes": scores["num_test_nodes"],
        "num_real_days": scores["num_real_days"],
        "test_node_ids": scores["test_node_ids"],
        "train_seconds": round(train_seconds, 1),
        "evaluate_seconds": round(evaluate_seconds, 1),
        # when the model was trained: sampling rows of it are redone when it changes
        "finished": previous["finished"] if trained else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result_path.write_text(json.dumps(record, indent=2))
    return {**record, "reused": False, "retrained": not trained}


def run_sampling_unit(unit: Unit, data_dir: Path, args: argparse.Namespace, trained: dict) -> dict:
    """Evaluates the pipeline of ``trained`` (the record of the row it samples) with the row's config overrides.

    Returns a record like :func:`run_unit`'s (``train_seconds`` 0); it is reused while the trained run and the
    evaluation settings are unchanged.
    """
    trained_variant, overrides = SAMPLING_VARIANTS[unit.variant]
    model_dir = _run_folder(args, Unit(unit.dataset, unit.split, trained_variant, unit.seed))
    output_dir = _run_folder(args, unit)
    settings = _evaluation_settings(args, unit.seed)
    evaluation = {**settings, "config_overrides": overrides, "trained_run_finished": trained["finished"]}
    result_path = output_dir / RESULT_FILE
    if not args.rerun and result_path.is_file():
        previous = json.loads(result_path.read_text())
        if previous.get("evaluation") == evaluation:
            return {**previous, "reused": True}
    output_dir.mkdir(parents=True, exist_ok=True)
    scores_path = output_dir / "bench_scores.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "evaluate-run", str(model_dir), str(data_dir.resolve()),
        json.dumps(settings), str(args.threads), str(scores_path), json.dumps(overrides),
    ]
    evaluate_seconds = _run_logged(command, output_dir / "evaluate.log", args.threads, f"evaluating {unit}")
    scores = json.loads(scores_path.read_text())
    record = {
        "unit": asdict(unit),
        "command": trained["command"],
        "evaluation": evaluation,
        "metrics": scores["metrics"],
        "metrics_by_draw": scores["metrics_by_draw"],
        "validation": None,
        **{key: scores[key] for key in ("num_test_nodes", "num_real_days", "test_node_ids")},
        "train_seconds": 0.0,
        "evaluate_seconds": round(evaluate_seconds, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result_path.write_text(json.dumps(record, indent=2))
    return {**record, "reused": False}


def baseline_rows(key: str, split: str, data_dir: Path, seeds: list[int], budget: Budget,
                  eval_draws: int = 1) -> list[dict]:
    """The baselines' scores on the split's test nodes, one row per seed (same days and draws as the models')."""
    dataset = PreparedDataset.load(data_dir)
    rows = []
    for seed in seeds:
        draws = [
            evaluate_baselines(dataset, "test", seed=draw_seed, max_days_per_node=budget.max_days_per_node)["methods"]
            for draw_seed in evaluation_seeds(seed, eval_draws)
        ]
        rows += [{"dataset": key, "split": split, "method": method, "seed": seed,
                  "metrics": draws[0][method] if eval_draws == 1
                  else mean_over_draws([d[method] for d in draws], METRIC_NAMES)}
                 for method in draws[0]]
    return rows


def group_of(split: str) -> str:
    """``"folds"`` for ``foldK`` splits, ``"paper"`` for the paper split."""
    return PAPER_SPLIT if split == PAPER_SPLIT else "folds"


def aggregate(rows: list[dict]) -> dict:
    """``{dataset: {group: {method: {metric: {"mean", "std", "values"}}}}}`` over splits x seeds.

    ``group`` is ``"folds"`` (every ``foldK`` split and seed is one value) or ``"paper"`` (one value per seed);
    ``std`` is the sample std (ddof 1), ``None`` for a single value; undefined values (``None``) are left out.
    """
    collected: dict = {}
    for row in sorted(rows, key=lambda r: (r["split"], r["seed"])):
        methods = collected.setdefault(row["dataset"], {}).setdefault(group_of(row["split"]), {})
        for metric in METRIC_NAMES:
            methods.setdefault(row["method"], {}).setdefault(metric, []).append(row["metrics"].get(metric))
    summary: dict = {}
    for dataset, groups in collected.items():
        for group, methods in groups.items():
            for method, metrics in methods.items():
                for metric, values in metrics.items():
                    finite = np.asarray([v for v in values if v is not None], dtype=np.float64)
                    summary.setdefault(dataset, {}).setdefault(group, {}).setdefault(method, {})[metric] = {
                        "mean": float(finite.mean()) if finite.size else None,
                        "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
                        "values": values,
                    }
    return summary


def _method_order(methods: dict) -> list[str]:
    models = [name for name in [*VARIANTS, *SAMPLING_VARIANTS] if name in methods]
    return models + [name for name in BASELINE_LABELS if name in methods]


def _cell(metric: str, stats: dict, best: bool) -> str:
    if stats["mean"] is None:
        return "n/a"
    text = format_metric(metric, stats["mean"])
    if stats["std"] is not None:
        text += " ± " + format_metric(metric, stats["std"])
    return f"**{text}**" if best else text


def quality_table(methods: dict) -> str:
    """Markdown table of one data set and group: rows = models then baselines, a column per metric.

    Cells are ``mean ± std``; the best mean of each column (the lowest; the spread ratio nearest 1) is bold.
    """
    order = _method_order(methods)
    best = {metric: best_value(metric, [methods[m][metric]["mean"] for m in order]) for metric in METRIC_NAMES}
    rows = [
        [BASELINE_LABELS.get(method, method),
         *(_cell(metric, methods[method][metric], methods[method][metric]["mean"] == best[metric])
           for metric in METRIC_NAMES)]
        for method in order
    ]
    return markdown_table(["method", *(METRIC_LABELS[m] for m in METRIC_NAMES)], rows)


def paired_differences(rows: list[dict], dataset: str, group: str, model: str = MODEL_NAME) -> dict:
    """``{baseline: {metric: {"mean", "se", "wins", "n"}}}``: ``model`` minus each baseline, paired by split and seed.

    ``mean`` and ``se`` (standard error, ``None`` for one pair) of the differences over the pairs where both
    are defined; ``wins``: pairs where the model is better (lower). Negative means: the model is better.
    """
    by_key: dict = {}
    for row in rows:
        if row["dataset"] == dataset and group_of(row["split"]) == group:
            by_key.setdefault(row["method"], {})[(row["split"], row["seed"])] = row["metrics"]
    ours = by_key.get(model, {})
    result: dict = {}
    for baseline in (name for name in BASELINE_LABELS if name in by_key):
        for metric in PAIRED_METRICS:
            pairs = [(ours[key].get(metric), theirs.get(metric)) for key, theirs in by_key[baseline].items()
                     if key in ours]
            diffs = np.asarray([a - b for a, b in pairs if a is not None and b is not None], dtype=np.float64)
            result.setdefault(baseline, {})[metric] = {
                "mean": float(diffs.mean()) if diffs.size else None,
                "se": float(diffs.std(ddof=1) / np.sqrt(diffs.size)) if diffs.size > 1 else None,
                "wins": int((diffs < 0).sum()),
                "n": int(diffs.size),
            }
    return result


def paired_table(differences: dict) -> str:
    """Markdown table of :func:`paired_differences`: ``mean ± se (wins/n)`` per baseline and metric."""
    def cell(stats: dict) -> str:
        if stats["mean"] is None:
            return "n/a"
        se = "" if stats["se"] is None else f" ± {stats['se']:.3g}"
        return f"{stats['mean']:+.3g}{se} ({stats['wins']}/{stats['n']})"

    rows = [[BASELINE_LABELS[name], *(cell(metrics[m]) for m in PAIRED_METRICS)]
            for name, metrics in differences.items()]
    return markdown_table([f"{MODEL_NAME} minus", *(METRIC_LABELS[m] for m in PAIRED_METRICS)], rows)


def render(summary: dict, args: argparse.Namespace, details: dict, rows: list[dict] | None = None) -> str:
    """All tables with a header line per data set and group and the settings behind them.

    With ``rows`` (those of :func:`aggregate`) and a KGDiff row, each group also gets the paired differences of
    KGDiff against every baseline (:func:`paired_table`).
    """
    budget = args.budget
    seeds = ",".join(str(seed) for seed in args.seeds)
    draws = f" (each the mean of {args.eval_draws} evaluation draws)" if args.eval_draws > 1 else ""
    lines = [
        f"Budget per model: preset {budget.preset}, {budget.max_train_steps} steps x batch "
        f"{budget.train_batch_size}; sampler {budget.sampler.upper()} {budget.num_inference_steps} steps; at most "
        f"{budget.max_days_per_node} real days per test node; seeds {seeds}{draws}; validation nodes: the "
        f"{args.validation_fraction:g} highest-latitude share of each split's training side (not trained on).",
        f"{MMD_BANDWIDTH_NOTE}. JSD: 50-bin value histograms, natural log. CRPS: data units. Spread ratio: std of "
        "generated / real days per step (1 is right). Out of range: generated values below 0 on non-negative data.",
        "",
    ]
    for dataset in args.datasets:
        for group in ("folds", PAPER_SPLIT):
            if group not in summary.get(dataset, {}):
                continue
            info = details[dataset][group]
            if group == "folds":
                title = (f"{len(info['splits'])} of {args.num_folds} latitude folds ({', '.join(info['splits'])}), "
                         f"{info['num_test_nodes']} test nodes in all; mean ± std over folds x seeds")
            else:
                title = f"paper split: {info['num_test_nodes']} test nodes; mean ± std over seeds"
            lines += [f"### {DATASETS[dataset].label}: {title}", "", quality_table(summary[dataset][group]), ""]
            if rows is not None and MODEL_NAME in summary[dataset][group]:
                lines += [f"{MODEL_NAME} minus each baseline, paired by split and seed: mean ± standard error "
                          "(pairs where KGDiff is better / pairs); below 0: KGDiff better", "",
                          paired_table(paired_differences(rows, dataset, group)), ""]
    return "\n".join(lines)


def run_curve(key: str, data_dir: Path, args: argparse.Namespace) -> dict:
    """Trains the first variant on the paper split, validating every ``curve_every`` steps.

    Returns:
        ``{"command", "history": [{"step", "metrics"}], "baselines": {name: metrics}, "validation_node_ids",
        "train_seconds"}``; the baselines are scored on the same validation nodes and days.
    """
    unit = Unit(key, PAPER_SPLIT, args.variants[0], args.seeds[0])
    output_dir = _run_folder(args, unit, curve=True)
    command = train_command(data_dir, output_dir, unit.variant, unit.seed, args.budget, curve=True)
    shown = [Path(command[0]).name, *command[1:]]
    output_dir.mkdir(parents=True, exist_ok=True)
    train_seconds = _run_logged(command, output_dir / "train.log", args.threads, f"curve training {unit}")
    if not args.keep_checkpoints:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    validation = json.loads((output_dir / "validation.json").read_text())
    baselines = evaluate_baselines(PreparedDataset.load(data_dir), "validation", seed=unit.seed,
                                   max_days_per_node=args.budget.max_days_per_node)
    return {"unit": asdict(unit), "command": shown, "history": validation["history"],
            "best_step": validation["best_step"], "best_metric": validation["metric"],
            "validation_node_ids": validation["validation_node_ids"], "baselines": baselines["methods"],
            "train_seconds": round(train_seconds, 1)}


def curve_table(curve: dict) -> str:
    """Markdown table: a row per validation step of the model, then the baselines on the same nodes."""
    rows = [[str(entry["step"]), *(format_metric(m, entry["metrics"].get(m)) for m in CURVE_METRICS)]
            for entry in curve["history"]]
    rows += [[BASELINE_LABELS[name], *(format_metric(m, curve["baselines"][name].get(m)) for m in CURVE_METRICS)]
             for name in CURVE_BASELINES]
    return markdown_table(["step / baseline", *(METRIC_LABELS[m] for m in CURVE_METRICS)], rows)


def plot_curves(curves: dict, path: Path) -> Path:
    """One row per data set, one column per metric: validation quality vs steps, baselines as dashed lines."""
    figure = Figure(figsize=(4.0 * len(CURVE_METRICS), 3.0 * len(curves)), layout="constrained")
    axes = figure.subplots(len(curves), len(CURVE_METRICS), squeeze=False)
    for row, (key, curve) in enumerate(curves.items()):
        steps = [entry["step"] for entry in curve["history"]]
        for column, metric in enumerate(CURVE_METRICS):
            axis = axes[row, column]
            values = [np.nan if entry["metrics"].get(metric) is None else entry["metrics"][metric]
                      for entry in curve["history"]]
            axis.plot(steps, values, marker="o", label=curve["unit"]["variant"])
            for name in CURVE_BASELINES:
                value = curve["baselines"][name].get(metric)
                if value is not None:
                    axis.axhline(value, linestyle="--", linewidth=1, label=BASELINE_LABELS[name],
                                 color=f"C{1 + CURVE_BASELINES.index(name)}")
            if metric == "spread_ratio":
                axis.axhline(1.0, color="black", linewidth=0.8)
            axis.set_title(f"{key}: {METRIC_LABELS[metric]} (validation nodes)", fontsize=9)
            axis.set_xlabel("training step")
            if row == 0 and column == 0:
                axis.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(args.threads)
    args.code_version = code_version()
    started = time.perf_counter()
    machine = machine_info()

    prepare_commands, base_dirs = {}, {}
    for key in args.datasets:
        base_dirs[key], command = ensure_prepared(key, args)
        if command is not None:
            prepare_commands[key] = [Path(command[0]).name, *command[1:]]
    splits = [PAPER_SPLIT] if args.curve else args.splits
    split_dirs = {(key, split): ensure_split(key, split, base_dirs[key], args)
                  for key in args.datasets for split in splits}
    prepare_seconds = time.perf_counter() - started
    common = {
        "machine": machine,
        "budget": asdict(args.budget),
        "seeds": args.seeds,
        "eval_draws": args.eval_draws,
        "jobs": args.jobs,
        "threads": args.threads,
        "validation_fraction": args.validation_fraction,
        "num_folds": args.num_folds,
        "code_version_at_start": args.code_version,
        "mmd_bandwidth": MMD_BANDWIDTH_NOTE,
        "command": " ".join(["python", "bench/quality.py", *(sys.argv[1:] if argv is None else argv)]),
        "prepare_commands": prepare_commands,
    }
    if args.curve:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {key: pool.submit(run_curve, key, split_dirs[(key, PAPER_SPLIT)], args) for key in args.datasets}
            curves = {key: future.result() for key, future in futures.items()}
        tables = "\n\n".join(
            f"### {DATASETS[key].label}: validation nodes {', '.join(curve['validation_node_ids'])}, "
            f"{curve['unit']['variant']}, best step by {curve['best_metric']}: {curve['best_step']}\n\n"
            + curve_table(curve) for key, curve in curves.items()
        )
        print(tables)
        picture = plot_curves(curves, args.output.with_suffix(".png"))
        output = {"benchmark": "quality-curve", **common, "curves": curves, "picture": str(picture),
                  "seconds": round(time.perf_counter() - started, 1)}
        _write(args.output, output, tables)
        return

    sampled = [v for v in args.variants if v in SAMPLING_VARIANTS]
    trained_variants = list(dict.fromkeys(
        [v for v in args.variants if v not in SAMPLING_VARIANTS] + [SAMPLING_VARIANTS[v][0] for v in sampled]
    ))
    units = [Unit(d, sp, v, s) for d in args.datasets for sp in args.splits for s in args.seeds
             for v in trained_variants]
    trained = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_unit, u, split_dirs[(u.dataset, u.split)], args) for u in units]
        for future in tqdm(as_completed(futures), total=len(futures), desc="models"):
            record = future.result()
            _log_record(record)
            trained[Unit(**record["unit"])] = record
        # Sampling rows, once the runs they sample exist.
        futures = [
            pool.submit(run_sampling_unit, Unit(d, sp, v, s), split_dirs[(d, sp)], args,
                        trained[Unit(d, sp, SAMPLING_VARIANTS[v][0], s)])
            for d in args.datasets for sp in args.splits for s in args.seeds for v in sampled
        ]
        for future in tqdm(as_completed(futures), total=len(futures), desc="sampling rows"):
            _log_record(future.result())
    records = [r for r in [*trained.values(), *(f.result() for f in futures)] if r["unit"]["variant"] in args.variants]
    rows = [{"dataset": r["unit"]["dataset"], "split": r["unit"]["split"], "method": r["unit"]["variant"],
             "seed": r["unit"]["seed"], "metrics": r["metrics"]} for r in records]
    for (key, split), data_dir in split_dirs.items():
        rows += baseline_rows(key, split, data_dir, args.seeds, args.budget, args.eval_draws)

    final_version = code_version()
    if final_version != args.code_version:
        logger.warning("the code changed during the run (%s -> %s): rerun with --rerun for consistent results",
                       args.code_version, final_version)
    summary = aggregate(rows)
    details: dict = {}
    for key in args.datasets:
        for group in {group_of(split) for split in args.splits}:
            chosen = [split for split in args.splits if group_of(split) == group]
            tested = {split: PreparedDataset.load(split_dirs[(key, split)]).test_node_ids for split in chosen}
            details.setdefault(key, {})[group] = {
                "splits": chosen, "num_test_nodes": sum(len(ids) for ids in tested.values()),
                "test_node_ids": tested,
                "validation_node_ids": {split: PreparedDataset.load(split_dirs[(key, split)]).validation_node_ids
                                        for split in chosen},
            }
    tables = render(summary, args, details, rows)
    print(tables)
    output = {
        "benchmark": "quality",
        "mode": "quick" if args.quick else "full",
        **common,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "code_version": {"start": args.code_version, "end": final_version},
        "datasets": details,
        "summary": summary,
        "rows": rows,
        "runs": sorted(records, key=lambda r: tuple(r["unit"].values())),
        "seconds": {
            "total": round(time.perf_counter() - started, 1),
            "prepare": round(prepare_seconds, 1),
            "train_sum": round(sum(r["train_seconds"] for r in records if r.get("retrained")), 1),
            "evaluate_sum": round(sum(r["evaluate_seconds"] for r in records if not r["reused"]), 1),
            "reused_runs": sum(r["reused"] for r in records),
        },
    }
    _write(args.output, output, tables)


def _log_record(record: dict) -> None:
    unit = record["unit"]
    logger.info("%s %s %s seed %d: MAE %.3f, CRPS %.3f (train %.0f s, evaluate %.0f s%s)", unit["dataset"],
                unit["split"], unit["variant"], unit["seed"], record["metrics"]["mae"], record["metrics"]["crps"],
                record["train_seconds"], record["evaluate_seconds"], ", reused" if record["reused"] else "")


def _write(path: Path, output: dict, tables: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2))
    path.with_suffix(".md").write_text(tables)
    logger.info("wrote %s and %s", path, path.with_suffix(".md"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["evaluate-run"]:
        _evaluate_main(sys.argv[2:])
    else:
        main()
