"""Quality of KGDiff on real unseen nodes: the full model, the paper's ablations and the baselines.

The analogue of the paper's Tables 2 and 3 on two real data sets, with the protocol of
``scripts/prepare_data.py`` (weekdays only, latitude split, urban KG + TuckER embeddings):

* ``nyc``: Citi Bike in/out flow of Manhattan taxi zones (``../shared/data/nyc_bike_manhattan69``), 2019
  weekdays, zones with a mean flow below 1 trip per 30-min slot dropped, test = the 25 % of zones with the
  highest latitude, KG from the UUKG-style triple file.
* ``pems``: PeMS-Bay speed of 16 sensors (``../shared/data/pems_bay_16``), Jan-May 2017 weekdays, test = the
  4 (25 %) highest-latitude sensors, KG from distance bands, road distances, station metadata and OSM edges.

Every model (KGDiff, each ablation of the paper's Table 3, and "KGDiff (relation mean)", which is not in the
paper: ``--neighbor_weighting relation``, run only when named in ``--variants``) is trained by
``scripts/train.py`` in its own process with the same fixed budget (model preset, optimiser steps x batch
size), then evaluated in a fresh process by :func:`kgdiff_diffusers.evaluation.evaluate_pipeline` on the same
test nodes, real days and sampler; ``--jobs`` models run side by side, each process with ``--threads`` OpenMP
threads. The baselines (random training days, global mean profile, k = 1/3/5 nearest-training-node donors)
come from the full model's evaluation of each seed (they depend on the seed only through their random draws
and the compared days). Each figure is the mean and sample standard deviation over the seeds.

Examples:
    python bench/quality.py --quick
    python bench/quality.py --datasets nyc,pems --seeds 0,1,2 --output bench/results/quality.json
    python bench/quality.py --quick --prepared_dir /work/prepared   # reuse prepared folders

Datasets are prepared once into ``--prepared_dir`` (reused when their ``prepared.json`` exists), models are
trained into ``--runs_dir`` (a finished run with the same training command and evaluation settings is
reused unless ``--rerun``). Prints one Markdown table per data set and writes the results with date, machine,
budget and every command to ``--output`` (JSON) and its ``.md`` sibling.
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
from common import machine_info, markdown_table
from tqdm.auto import tqdm

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import PreparedDataset
from kgdiff_diffusers.evaluation import MMD_BANDWIDTH_NOTE, MODEL_NAME, evaluate_pipeline

logger = logging.getLogger("bench.quality")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
RESULT_FILE = "bench_quality.json"


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
}

# The paper's Table 3: row name -> scripts/train.py switches.
VARIANTS = {
    MODEL_NAME: (),
    "w/o Geometry-MoE": ("--no_geometry_moe",),
    "w/o H": ("--no_hyperbolic",),
    "w/o E": ("--no_euclidean",),
    "w/o S": ("--no_spherical",),
    "w/o Meta Pattern": ("--no_meta_pattern",),
    "w/o Guidance": ("--no_guidance",),
    # Not in the paper (so not run unless named in --variants): eq. 15's mean with each relation weighing
    # the same instead of each edge.
    "KGDiff (relation mean)": ("--neighbor_weighting", "relation"),
}
DEFAULT_VARIANTS = [name for name in VARIANTS if name != "KGDiff (relation mean)"]
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
TABLE_METRICS = {"mae": "MAE", "rmse": "RMSE", "mmd": "MMD", "jsd": "JSD"}
ALL_METRICS = ("mae", "rmse", "mmd", "mmd_fixed_bandwidth", "jsd")


@dataclass(frozen=True)
class Budget:
    """The fixed compute budget of every model, and the evaluation settings shared by all methods."""

    preset: str
    max_train_steps: int
    train_batch_size: int
    lr_warmup_steps: int
    sampler: str
    num_inference_steps: int
    max_days_per_node: int
    tucker_max_seconds: float


BUDGETS = {
    "quick": Budget("cpu-small", 40, 32, 4, "ddim", 20, 8, 30.0),
    "full": Budget("cpu-small", 200, 32, 20, "ddim", 20, 20, 120.0),
}
QUICK_DEFAULTS = {"datasets": "nyc,pems", "seeds": "0"}
FULL_DEFAULTS = {"datasets": "nyc,pems", "seeds": "0,1,2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed and a tiny training budget (a few minutes)")
    parser.add_argument("--datasets", help="comma-separated subset of: " + ",".join(DATASETS) + " (default: both)")
    parser.add_argument("--seeds", help="comma-separated training/evaluation seeds (default: 0,1,2; quick: 0)")
    parser.add_argument("--variants", help="comma-separated model rows (default: the paper's, all but the last): "
                        + ",".join(VARIANTS))
    parser.add_argument("--output", type=Path, default=Path("bench/results/quality.json"), help="results JSON")
    parser.add_argument("--prepared_dir", type=Path, default=Path("bench/results/data"),
                        help="prepared dataset folders (<dir>/nyc_bike, <dir>/pems_bay_16); made if absent")
    parser.add_argument("--runs_dir", type=Path, default=Path("bench/results/runs"), help="trained models")
    parser.add_argument("--data_root", type=Path, default=DEFAULT_DATA_ROOT, help="the shared real data folder")
    parser.add_argument("--jobs", type=int, default=2, help="models trained at the same time")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/torch threads per training process and per evaluation (1 on a busy machine)")
    parser.add_argument("--max_train_steps", type=int, help="override the budget's optimiser steps per model")
    parser.add_argument("--train_batch_size", type=int, help="override the budget's batch size")
    parser.add_argument("--max_days_per_node", type=int, help="override the real days compared per test node")
    parser.add_argument("--num_inference_steps", type=int, help="override the sampler steps")
    parser.add_argument("--rerun", action="store_true", help="retrain even where a finished run can be reused")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep the training checkpoints")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    args.datasets = _split(args.datasets or defaults["datasets"])
    args.variants = _split(args.variants) if args.variants else DEFAULT_VARIANTS
    try:
        args.seeds = [int(seed) for seed in _split(args.seeds or defaults["seeds"])]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    for name, chosen, known in (("datasets", args.datasets, DATASETS), ("variants", args.variants, VARIANTS)):
        unknown = [item for item in chosen if item not in known]
        if unknown or not chosen:
            parser.error(f"--{name}: unknown or empty {unknown or chosen}; choose from {', '.join(known)}")
    if MODEL_NAME not in args.variants:
        parser.error(f"--variants must include {MODEL_NAME} (its evaluation also scores the baselines)")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    base = BUDGETS["quick" if args.quick else "full"]
    overrides = {
        name: getattr(args, name)
        for name in ("max_train_steps", "train_batch_size", "max_days_per_node", "num_inference_steps")
        if getattr(args, name) is not None
    }
    if any(value < 1 for value in overrides.values()):
        parser.error(f"budget overrides must be >= 1, got {overrides}")
    if "max_train_steps" in overrides:
        overrides["lr_warmup_steps"] = max(1, overrides["max_train_steps"] // 10)
    args.budget = Budget(**{**asdict(base), **overrides})
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


def prepare_command(key: str, folder: Path, data_root: Path, tucker_max_seconds: float) -> list[str]:
    """The ``scripts/prepare_data.py`` command that writes data set ``key`` into ``folder``."""
    data = os.path.relpath(data_root.resolve(), REPO_ROOT)
    args = [arg.format(data=data) for arg in DATASETS[key].prepare_args]
    return [
        sys.executable, "scripts/prepare_data.py", *args, "--output", _relative(folder),
        "--tucker_max_seconds", f"{tucker_max_seconds:g}",
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
    command = prepare_command(key, folder, args.data_root, args.budget.tucker_max_seconds)
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


def train_command(data_dir: Path, output_dir: Path, variant: str, seed: int, budget: Budget) -> list[str]:
    """The ``scripts/train.py`` command of one model (no validation during training, no tracker)."""
    return [
        sys.executable, "scripts/train.py",
        "--dataset", _relative(data_dir), "--output_dir", _relative(output_dir), "--overwrite_output_dir",
        "--preset", budget.preset, "--seed", str(seed),
        "--max_train_steps", str(budget.max_train_steps), "--train_batch_size", str(budget.train_batch_size),
        "--lr_warmup_steps", str(budget.lr_warmup_steps),
        "--checkpointing_steps", str(budget.max_train_steps), "--checkpoints_total_limit", "1",
        "--validation_steps", str(budget.max_train_steps), "--report_to", "none",
        *VARIANTS[variant],
    ]


@dataclass(frozen=True)
class Unit:
    """One model to train and evaluate: data set key, row name, seed."""

    dataset: str
    variant: str
    seed: int


def evaluate_run(model_dir: Path, data_dir: Path, evaluation: dict, threads: int) -> dict:
    """Scores a trained pipeline on its data set's test nodes (``evaluate_pipeline``) and returns its metrics.

    Runs in a fresh process (``python bench/quality.py evaluate-run ...``) so that it uses the code the model
    was just trained with, and evaluations of parallel jobs do not share one interpreter.

    Args:
        model_dir: a ``KGDiffPipeline.save_pretrained`` folder.
        data_dir: the prepared data set it was trained on.
        evaluation: ``sampler``, ``num_inference_steps``, ``max_days_per_node``, ``seed``, ``include_baselines``.
        threads: ``torch.set_num_threads``.

    Returns:
        ``{"methods": {name: metrics}, "num_test_nodes", "num_real_days", "test_node_ids"}``.
    """
    torch.set_num_threads(threads)
    pipe = KGDiffPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        result = evaluate_pipeline(
            pipe, PreparedDataset.load(data_dir), num_inference_steps=evaluation["num_inference_steps"],
            sampler=evaluation["sampler"], seed=evaluation["seed"],
            include_baselines=evaluation["include_baselines"], max_days_per_node=evaluation["max_days_per_node"],
        )
    return {key: result.metrics[key] for key in ("methods", "num_test_nodes", "num_real_days", "test_node_ids")}


def _evaluate_main(argv: list[str]) -> None:
    """``evaluate-run MODEL_DIR DATA_DIR EVALUATION_JSON THREADS OUTPUT_JSON``: :func:`evaluate_run` to a file."""
    model_dir, data_dir, evaluation, threads, output = argv
    result = evaluate_run(Path(model_dir), Path(data_dir), json.loads(evaluation), int(threads))
    Path(output).write_text(json.dumps(result))


def _run_logged(command: list[str], log_path: Path, threads: int, what: str) -> float:
    """Runs ``command`` from the repository root with ``threads`` threads; returns its wall seconds."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, cwd=REPO_ROOT, env=_environment(threads), stdout=log, stderr=log)
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {completed.returncode}); see {log_path}")
    return time.perf_counter() - start


def run_unit(unit: Unit, data_dir: Path, args: argparse.Namespace) -> dict:
    """Trains one model and evaluates it on the test nodes, each in its own process.

    Returns:
        ``{"unit", "command", "evaluation", "methods", "train_seconds", "evaluate_seconds", "reused", ...}``;
        ``methods`` holds the row's metrics, plus the baselines' for the full model.
    """
    budget = args.budget
    variant_folder = re.sub(r"[^a-z0-9]+", "_", unit.variant.lower().replace("w/o ", "no_")).strip("_")
    output_dir = (args.runs_dir / unit.dataset / f"{variant_folder}_seed{unit.seed}").resolve()
    command = train_command(data_dir, output_dir, unit.variant, unit.seed, budget)
    evaluation = {
        "sampler": budget.sampler,
        "num_inference_steps": budget.num_inference_steps,
        "max_days_per_node": budget.max_days_per_node,
        "seed": unit.seed,
        "include_baselines": unit.variant == MODEL_NAME,
        "code_version": args.code_version,
    }
    shown = [Path(command[0]).name, *command[1:]]
    result_path = output_dir / RESULT_FILE
    if not args.rerun and result_path.is_file():
        previous = json.loads(result_path.read_text())
        if previous.get("command") == shown and previous.get("evaluation") == evaluation:
            return {**previous, "reused": True}

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
    methods = dict(scores["methods"])
    methods[unit.variant] = methods.pop(MODEL_NAME)
    record = {
        "unit": asdict(unit),
        "command": shown,
        "evaluation": evaluation,
        "methods": methods,
        "num_test_nodes": scores["num_test_nodes"],
        "num_real_days": scores["num_real_days"],
        "test_node_ids": scores["test_node_ids"],
        "train_seconds": round(train_seconds, 1),
        "evaluate_seconds": round(evaluate_seconds, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result_path.write_text(json.dumps(record, indent=2))
    return {**record, "reused": False}


def aggregate(records: list[dict]) -> dict:
    """``{dataset: {method: {metric: {"mean", "std", "values"}}}}`` over the seeds (sample std, ddof = 1).

    ``std`` is ``None`` for a single seed; undefined metric values (``None``) are left out.
    """
    collected: dict = {}
    for record in sorted(records, key=lambda r: r["unit"]["seed"]):
        per_dataset = collected.setdefault(record["unit"]["dataset"], {})
        for method, scores in record["methods"].items():
            for metric in ALL_METRICS:
                per_dataset.setdefault(method, {}).setdefault(metric, []).append(scores.get(metric))
    summary: dict = {}
    for dataset, methods in collected.items():
        for method, metrics in methods.items():
            for metric, values in metrics.items():
                finite = np.asarray([v for v in values if v is not None], dtype=np.float64)
                summary.setdefault(dataset, {}).setdefault(method, {})[metric] = {
                    "mean": float(finite.mean()) if finite.size else None,
                    "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
                    "values": values,
                }
    return summary


def _method_order(methods: dict) -> list[str]:
    models = [name for name in VARIANTS if name in methods]
    return models + [name for name in BASELINE_LABELS if name in methods]


def _cell(stats: dict, digits: int, best: bool) -> str:
    if stats["mean"] is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.{digits}f}"
    return f"**{text}**" if best else text


def quality_table(summary: dict, dataset: str) -> str:
    """Markdown table of one data set: rows = models then baselines, columns = MAE, RMSE, MMD, JSD.

    Cells are ``mean ± std`` over the seeds; the lowest mean of each column is bold.
    """
    methods = summary[dataset]
    order = _method_order(methods)
    best = {
        metric: min((methods[m][metric]["mean"] for m in order if methods[m][metric]["mean"] is not None),
                    default=None)
        for metric in TABLE_METRICS
    }
    rows = []
    for method in order:
        cells = [
            _cell(methods[method][metric], 3 if metric in ("mae", "rmse") else 4,
                  methods[method][metric]["mean"] == best[metric])
            for metric in TABLE_METRICS
        ]
        rows.append([BASELINE_LABELS.get(method, method), *cells])
    return markdown_table(["method", *TABLE_METRICS.values()], rows)


def render(summary: dict, args: argparse.Namespace, details: dict) -> str:
    """All tables with a header line per data set and the settings behind them."""
    budget = args.budget
    seeds = ",".join(str(seed) for seed in args.seeds)
    lines = [
        f"Budget per model: preset {budget.preset}, {budget.max_train_steps} steps x batch "
        f"{budget.train_batch_size}; sampler {budget.sampler.upper()} {budget.num_inference_steps} steps; at most "
        f"{budget.max_days_per_node} real days per test node; mean ± std over seeds {seeds}.",
        f"{MMD_BANDWIDTH_NOTE}. JSD: 50-bin value histograms, natural log.",
        "",
    ]
    for dataset in args.datasets:
        info = details[dataset]
        lines += [
            f"### {DATASETS[dataset].label}: {info['num_test_nodes']} test nodes, "
            f"{info['num_real_days']} real days compared per seed",
            "",
            quality_table(summary, dataset),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(args.threads)
    args.code_version = code_version()
    started = time.perf_counter()
    machine = machine_info()

    prepare_commands, data_dirs = {}, {}
    for key in args.datasets:
        data_dirs[key], command = ensure_prepared(key, args)
        if command is not None:
            prepare_commands[key] = [Path(command[0]).name, *command[1:]]
    prepare_seconds = time.perf_counter() - started

    units = [Unit(d, v, s) for d in args.datasets for s in args.seeds for v in args.variants]
    records = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_unit, u, data_dirs[u.dataset], args) for u in units]
        for future in tqdm(as_completed(futures), total=len(futures), desc="models"):
            record = future.result()
            unit = record["unit"]
            logger.info(
                "%s %s seed %d: MAE %.3f, MMD %.4f (train %.0f s, evaluate %.0f s%s)", unit["dataset"],
                unit["variant"], unit["seed"], record["methods"][unit["variant"]]["mae"],
                record["methods"][unit["variant"]]["mmd"], record["train_seconds"], record["evaluate_seconds"],
                ", reused" if record["reused"] else "",
            )
            records.append(record)

    final_version = code_version()
    if final_version != args.code_version:
        logger.warning("the code changed during the run (%s -> %s): rerun with --rerun for consistent results",
                       args.code_version, final_version)
    summary = aggregate(records)
    details = {}
    for key in args.datasets:
        first = next(r for r in records if r["unit"]["dataset"] == key)
        details[key] = {name: first[name] for name in ("num_test_nodes", "num_real_days", "test_node_ids")}
        details[key]["prepared_dir"] = str(data_dirs[key])
    tables = render(summary, args, details)
    print(tables)

    total_seconds = time.perf_counter() - started
    output = {
        "benchmark": "quality",
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "budget": asdict(args.budget),
        "seeds": args.seeds,
        "jobs": args.jobs,
        "threads": args.threads,
        "mmd_bandwidth": MMD_BANDWIDTH_NOTE,
        "code_version": {"start": args.code_version, "end": final_version},
        "command": " ".join(["python", "bench/quality.py", *(sys.argv[1:] if argv is None else argv)]),
        "prepare_commands": prepare_commands,
        "datasets": details,
        "summary": summary,
        "runs": sorted(records, key=lambda r: (r["unit"]["dataset"], r["unit"]["seed"], r["unit"]["variant"])),
        "seconds": {
            "total": round(total_seconds, 1),
            "prepare": round(prepare_seconds, 1),
            "train_sum": round(sum(r["train_seconds"] for r in records if not r["reused"]), 1),
            "evaluate_sum": round(sum(r["evaluate_seconds"] for r in records if not r["reused"]), 1),
            "reused_runs": sum(r["reused"] for r in records),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2))
    args.output.with_suffix(".md").write_text(tables)
    logger.info("wrote %s and %s in %.0f s", args.output, args.output.with_suffix(".md"), total_seconds)


if __name__ == "__main__":
    if sys.argv[1:2] == ["evaluate-run"]:
        _evaluate_main(sys.argv[2:])
    else:
        main()
