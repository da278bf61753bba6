"""Evaluate a trained KGDiff pipeline on a prepared dataset's unseen test nodes, against the baselines.

For every test node the pipeline generates as many days as the node has real days; KGDiff and every
baseline (global mean profile, random training days, k-nearest-training-node donors) are scored with MAE,
RMSE, MMD (pooled and fixed bandwidth) and JSD in data units. Writes ``metrics.json``, ``report.md``,
``daily_profiles.png``, ``value_kde.png`` and ``tsne.png`` to ``--output_dir`` and prints the table. A pipeline
trained on weekday and weekend days is scored per day type against that type's real days, and overall.

Examples:
    python scripts/evaluate.py --model out/kgdiff --data prepared/pems_bay_16 --output_dir out/eval
    # faster sampling, and the samples for recomputing the metrics elsewhere
    python scripts/evaluate.py --model out/kgdiff --data prepared/pems_bay_16 --output_dir out/eval_ddim \\
        --sampler ddim --num_inference_steps 20 --save_samples out/eval_ddim/samples.npz
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import PreparedDataset
from kgdiff_diffusers.evaluation import (
    METRICS_FILE,
    PICTURES,
    REPORT_FILE,
    EvaluationResult,
    day_type_tables,
    evaluate_pipeline,
    markdown_table,
    save_samples,
    training_split_note,
    with_training_split,
    write_report,
)
from kgdiff_diffusers.fingerprint import check_data_fingerprint, data_fingerprint
from kgdiff_diffusers.schedulers.scheduling_kgdiff import SAMPLERS

logger = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a KGDiffPipeline.save_pretrained folder")
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset it was trained on")
    parser.add_argument("--output_dir", type=Path, required=True, help="folder for report, metrics, pictures")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps per sample")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm", help="ddpm = the paper's shifted DDPM")
    parser.add_argument("--seed", type=int, default=0, help="noise, baseline and day-subset seed")
    parser.add_argument("--save_samples", type=Path, default=None,
                        help="also write node_ids, generated, real, real_mask (data units) to this .npz")
    parser.add_argument("--max_days_per_node", type=int, default=None,
                        help="compare at most this many (random) real days per test node; default all")
    parser.add_argument("--batch_size", type=int, default=256, help="images per denoiser call")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --output_dir")
    parser.add_argument("--ignore_data_fingerprint", action="store_true",
                        help="evaluate on --data even if it is not the data the pipeline was trained on (warns)")
    args = parser.parse_args(argv)
    if args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be >= 1; got {args.num_inference_steps}")
    if not 0 <= args.seed < 2**63:  # seeds torch.Generator, which takes 64 bits, plus small per-day-type offsets
        parser.error(f"--seed must be in [0, 2**63); got {args.seed}")
    if args.save_samples is not None and args.save_samples.suffix != ".npz":
        parser.error(f"--save_samples must name a .npz file; got {args.save_samples}")
    return args


def check_outputs(args: argparse.Namespace) -> None:
    """Refuses to replace an earlier report (or samples file) unless ``--overwrite`` is given."""
    if args.overwrite:
        return
    for path in (args.output_dir / name for name in (METRICS_FILE, REPORT_FILE, *PICTURES)):
        if path.exists():
            raise FileExistsError(
                f"{path} exists (an earlier evaluation); pass --overwrite or choose another --output_dir"
            )
    if args.save_samples is not None and args.save_samples.exists():
        raise FileExistsError(f"--save_samples {args.save_samples} exists; pass --overwrite or choose another file")


def main(argv: list[str] | None = None) -> EvaluationResult:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_outputs(args)
    if not (args.model / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {args.model}: no model_index.json; pass a save_pretrained folder")
    dataset = PreparedDataset.load(args.data)
    pipe = KGDiffPipeline.from_pretrained(args.model)
    # Before the training run's split is applied: the split of other data can clash with it, and this check names
    # the cause. The fingerprint leaves training-side validation nodes out, so it is the same either way.
    check_data_fingerprint(
        pipe.config.get("data_fingerprint"), data_fingerprint(dataset.node_table, dataset.kg, dataset.name),
        str(args.data), args.ignore_data_fingerprint,
    )
    note = training_split_note(dataset, args.model)
    dataset = with_training_split(dataset, args.model)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    logger.info("evaluating %s on %s: %d test nodes, sampler %s, %d steps", args.model, dataset.name,
                len(dataset.test_node_ids), args.sampler, args.num_inference_steps)
    result = evaluate_pipeline(
        pipe,
        dataset,
        num_inference_steps=args.num_inference_steps,
        sampler=args.sampler,
        seed=args.seed,
        max_days_per_node=args.max_days_per_node,
        batch_size=args.batch_size,
    )
    if note is not None:
        result.metrics["notes"] = [note]
    paths = write_report(result, args.output_dir, dataset.interval_minutes, dataset.feature_names)
    if args.save_samples is not None:
        paths["samples"] = save_samples(args.save_samples, result)
    print(markdown_table(result.metrics), end="")
    if "day_types" in result.metrics:
        print("\n" + day_type_tables(result.metrics), end="")
    logger.info("wrote %s", ", ".join(str(path) for path in paths.values()))
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"evaluate.py: error: {err}") from None
