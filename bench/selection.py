"""How much do the end-of-training sampling choices, and the rule that makes them, matter? Re-scores bench runs.

``scripts/train.py`` ends by choosing the level noise ``lam`` and the start strength on the validation nodes
(:func:`~kgdiff_diffusers.training.choose_donor_day_start`: ``lam`` by validation CRPS at strength 0, then the
strength by validation CRPS, each the mean of ``--validation_draws`` draws). This bench takes finished
``bench/quality.py`` runs (their weights, prior blend ``b``, level exponent ``a`` and random-donor share as
chosen), scores every ``(lam, strength)`` of :data:`~kgdiff_diffusers.training.LEVEL_NOISES` x
:data:`~kgdiff_diffusers.training.START_STRENGTHS` on the validation nodes (the same draws as training) AND the
test nodes, and reports the test metrics that other selection rules would have given:

* ``staged CRPS`` (the default's rule; with the runs' own ``--validation_draws`` it reproduces their test
  scores), ``joint CRPS`` (both at once), ``staged MMD-fixed``, ``staged CRPS + MMD-fixed`` (each relative to
  the copies without level noise), ``staged MAE``;
* fixed settings (every run at the same ``(lam, strength)``);
* ``test oracle``: per run and per metric the best grid point on the TEST nodes, the ceiling of any rule over
  this grid (not a method: it peeks at the test nodes).

Example:
    python bench/selection.py --runs_dir bench/results/runs --splits_dir bench/results/splits --seeds 0,1 \\
        --output bench/results/selection.json
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from common import machine_info, markdown_table, mean_over_draws
from quality import DATASETS as QUALITY_DATASETS
from tqdm.auto import tqdm

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import PreparedDataset
from kgdiff_diffusers.evaluation import MODEL_NAME, evaluate_pipeline
from kgdiff_diffusers.training import LEVEL_NOISES, START_STRENGTHS, VALIDATION_DRAW_STRIDE

METRICS = ("mae", "rmse", "mmd", "mmd_fixed_bandwidth", "crps")
# bench/quality.py's data set keys: runs folder name -> split folder name
DATASETS = {key: spec.folder for key, spec in QUALITY_DATASETS.items()}
RULES = {
    "staged CRPS (default)": ("crps", True),
    "joint CRPS": ("crps", False),
    "staged MMD-fixed": ("mmd_fixed_bandwidth", True),
    "staged CRPS + MMD-fixed": ("crps+mmd_fixed_bandwidth", True),
    "staged MAE": ("mae", True),
}


def score_grid(model_dir: Path, data_dir: Path, seed: int, num_inference_steps: int, max_days_per_node: int,
               threads: int, validation_draws: int = 3) -> list[dict]:
    """``[{"level_noise", "start_strength", "validation": metrics, "test": metrics}]`` over the grid.

    The validation nodes are scored as ``choose_donor_day_start`` scores them: the mean of
    ``validation_draws`` draws with seeds 0, 1000, ...; the test nodes with the run's seed, as
    ``bench/quality.py`` does with one evaluation draw. Like ``choose_donor_day_start``, the validation nodes get
    days that are not mean-matched; the test nodes get them as the run samples them (``match_donor_mean``).
    """
    torch.set_num_threads(threads)
    pipe = KGDiffPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    dataset = PreparedDataset.load(data_dir)
    matched = pipe.config.get("match_donor_mean", False)
    grid = []
    with torch.inference_mode():
        for noise in LEVEL_NOISES:
            for strength in START_STRENGTHS:
                pipe.register_to_config(level_noise=noise, start_strength=strength)
                point = {"level_noise": noise, "start_strength": strength}
                validation_seeds = [VALIDATION_DRAW_STRIDE * draw for draw in range(validation_draws)]
                for split, split_seeds in (("validation", validation_seeds), ("test", [seed])):
                    pipe.register_to_config(match_donor_mean=matched and split == "test")
                    draws = [evaluate_pipeline(pipe, dataset, num_inference_steps, "ddim", split_seed,
                                               include_baselines=False, max_days_per_node=max_days_per_node,
                                               split=split).metrics["methods"][MODEL_NAME]
                             for split_seed in split_seeds]
                    point[split] = mean_over_draws(draws, list(draws[0]))
                grid.append(point)
    return grid


def _criterion(point: dict, reference: dict, criterion: str) -> float:
    values = [(point["validation"][name], reference["validation"][name]) for name in criterion.split("+")]
    if any(value is None or base is None for value, base in values):
        raise ValueError(f"validation {criterion} is undefined at {point['level_noise']}/{point['start_strength']}")
    return sum(value / base for value, base in values)


def _mean(values: list) -> float:
    """Mean over runs of a test metric, leaving out runs where it is undefined (``None``)."""
    return float(np.nanmean([np.nan if value is None else value for value in values]))


def choose(grid: list[dict], criterion: str, staged: bool) -> dict:
    """The grid point a rule picks from VALIDATION scores only.

    Args:
        grid: :func:`score_grid`'s points.
        criterion: a validation metric, or several joined by ``+`` (summed, each relative to its value at
            ``level_noise = 0``, strength 0).
        staged: first ``level_noise`` at strength 0, then the strength at that noise (the training rule);
            otherwise the best point of the whole grid.
    """
    reference = next(p for p in grid if p["level_noise"] == 0 and p["start_strength"] == 0)

    def best(points: list[dict]) -> dict:
        return min(points, key=lambda p: _criterion(p, reference, criterion))

    if not staged:
        return best(grid)
    noise = best([p for p in grid if p["start_strength"] == 0])["level_noise"]
    return best([p for p in grid if p["level_noise"] == noise])


def summarise(grids: list[list[dict]]) -> dict[str, dict]:
    """Row name -> ``{"test": metric -> mean over runs, "choices": ["lam/strength" per run]}``."""
    rows = {}
    for name, (criterion, staged) in RULES.items():
        chosen = [choose(grid, criterion, staged) for grid in grids]
        rows[name] = {"test": {m: _mean([p["test"][m] for p in chosen]) for m in METRICS},
                      "choices": [f"{p['level_noise']:g}/{p['start_strength']:g}" for p in chosen]}
    for noise in sorted({p["level_noise"] for grid in grids for p in grid}):
        fixed = [next(p for p in grid if p["level_noise"] == noise and p["start_strength"] == 0) for grid in grids]
        rows[f"fixed: level noise {noise:g}, strength 0"] = {
            "test": {m: _mean([p["test"][m] for p in fixed]) for m in METRICS}, "choices": None}
    rows["test oracle (peeks; not a method)"] = {
        "test": {m: _mean([min((p["test"][m] for p in grid if p["test"][m] is not None), default=None)
                          for grid in grids]) for m in METRICS},
        "choices": None}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs_dir", type=Path, default=Path("bench/results/runs"))
    parser.add_argument("--splits_dir", type=Path, default=Path("bench/results/splits"))
    parser.add_argument("--datasets", default="nyc,pems")
    parser.add_argument("--splits", default="fold0,fold1,fold2,fold3")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the runs (bench/quality.py's)")
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--max_days_per_node", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--validation_draws", type=int, default=3,
                        help="validation draws averaged per grid point (scripts/train.py's --validation_draws; "
                             "runs trained before it existed chose with 1)")
    parser.add_argument("--output", type=Path, default=Path("bench/results/selection.json"))
    args = parser.parse_args(argv)
    if args.validation_draws < 1:
        raise SystemExit(f"--validation_draws must be >= 1, got {args.validation_draws}")
    unknown = sorted(set(args.datasets.split(",")) - set(DATASETS))
    if unknown:
        raise SystemExit(f"unknown --datasets {unknown}; known: {sorted(DATASETS)}")
    units = [(key, split, int(seed)) for key in args.datasets.split(",") for split in args.splits.split(",")
             for seed in args.seeds.split(",")]
    for key, split, seed in units:
        model_dir = args.runs_dir / key / split / f"kgdiff_seed{seed}"
        if not (model_dir / "model_index.json").is_file():
            raise SystemExit(f"no finished KGDiff run at {model_dir}: run bench/quality.py for it first")
        data_dir = args.splits_dir / DATASETS[key] / split
        if not data_dir.is_dir():
            raise SystemExit(f"no split folder at {data_dir}: pass the --splits_dir that bench/quality.py used")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(score_grid, args.runs_dir / key / split / f"kgdiff_seed{seed}",
                               args.splits_dir / DATASETS[key] / split, seed, args.num_inference_steps,
                               args.max_days_per_node, args.threads, args.validation_draws)
                   for key, split, seed in units]
        grids = [future.result() for future in tqdm(futures, desc="runs scored")]
    output, tables = {"machine": machine_info(), "units": units, "grids": grids, "rows": {}}, []
    for key in args.datasets.split(","):
        rows = summarise([grid for unit, grid in zip(units, grids) if unit[0] == key])
        output["rows"][key] = rows
        tables.append(f"#### {key}: {len(args.splits.split(','))} splits x seeds {args.seeds}, mean over runs\n\n"
                      + markdown_table(
                          ["rule", "MAE", "RMSE", "MMD", "MMD-fixed", "CRPS", "chosen lam/strength"],
                          [[name, *(f"{row['test'][m]:.3f}" for m in METRICS), " ".join(row["choices"] or [])]
                           for name, row in rows.items()]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=1))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
