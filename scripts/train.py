"""Train KGDiff with Accelerate.

    accelerate launch scripts/train.py --dataset data/pems_bay --output_dir runs/pems_bay
    accelerate launch scripts/train.py --dataset synthetic-city --preset cpu-small --output_dir runs/demo
    accelerate launch scripts/train.py --config my_run.yaml --resume_from_checkpoint latest

The condition encoder, meta pattern and denoiser are trained jointly on the TRAIN nodes' days only
(test nodes are held out for evaluation: their data never reaches the model). When those days hold
weekends (data prepared with ``--include_weekends``) the model is conditioned on the day type, weekday or
weekend, and generates the one asked for (``pipe(..., day_type="weekend")``, ``generate.py --day_type``);
the day types are recorded in the pipeline config and ``training_config.json``. Periodic validation uses
VALIDATION nodes cut from the training side (``--validation_fraction`` of the train nodes with the
highest latitudes, or the prepared folder's own ``validation`` split), never test nodes; validation nodes
are excluded from training too, so their scores measure unseen places. The history goes to
``validation.json`` with the best step by ``--validation_metric``; the saved pipeline is the final
EMA weights, or with ``--final_weights best`` the EMA weights of the checkpoint at the best validation step
(never retrained on the validation nodes). The script follows diffusers' training examples: gradient accumulation, mixed
precision, EMA weights, AdamW with a learning-rate schedule, gradient clipping, checkpoints that resume
exactly (steps, optimiser, EMA, RNG, data order), tensorboard logging, and at the end a ``KGDiffPipeline``
with the EMA weights in ``--output_dir`` (optionally pushed to the Hub).

Multi-process: ``accelerate launch --num_processes 2 scripts/train.py ...`` runs unchanged on CPU
(gloo) and, with an ``accelerate config`` file, on several GPUs / nodes, DeepSpeed or FSDP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from kgdiff_diffusers.checkpointing import (
    CHECKPOINT_PREFIX,
    COMPLETE_FILE,
    RUN_CONFIG_FILE,
    checkpoint_step,
    differing_settings,
    incomplete_checkpoints,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from kgdiff_diffusers.data.days import split_validation_nodes
from kgdiff_diffusers.data.prepared import EMBEDDINGS_FILE, FOLDER_ENTRIES, PreparedDataset, prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.evaluation import (
    METRICS_FILE,
    PICTURES,
    REPORT_FILE,
    day_type_tables,
    evaluate_pipeline,
    markdown_table,
    write_report,
)
from kgdiff_diffusers.fingerprint import data_fingerprint, kg_digest, training_data_digest
from kgdiff_diffusers.hub import push_pipeline
from kgdiff_diffusers.kg.tucker import (
    DEFAULT_TUCKER_EPOCHS,
    TUCKER_EPOCHS_HELP,
    TUCKER_MAX_SECONDS_HELP,
    TUCKER_MAX_STEPS_HELP,
    load_kg_embeddings,
    pretrain_tucker,
    save_kg_embeddings,
    tucker_budget_problems,
)
from kgdiff_diffusers.models.condition_encoder import GEOMETRY_FORMS, NEIGHBOR_WEIGHTINGS
from kgdiff_diffusers.models.donor_prior import DONOR_WEIGHTINGS
from kgdiff_diffusers.training import (
    RESIDUAL_CENTRES,
    KGDiffModelConfig,
    build_pipeline,
    choose_donor_day_start,
    choose_level_estimate_weight,
    choose_prior_blend,
    kgdiff_loss,
    training_day_types,
    training_samples,
)

logger = get_logger(__name__, log_level="INFO")
TRAINED_COMPONENTS = ("unet", "condition_encoder", "meta_pattern", "donor_prior")

PRESETS = {
    # The paper's settings: tau = 200, d = 128; delay embedding from the day length (48 -> 16/3, 288 -> 32/9).
    "paper": {},
    # A small model that trains in minutes on a laptop CPU.
    "cpu-small": {
        "condition_dim": 64,
        "block_out_channels": "32,64,64",
        "norm_num_groups": 16,
        "meta_pattern_hidden_dim": 128,
    },
}
VALIDATION_FILE = "validation.json"
# What produced OUTPUT/kg_embeddings.safetensors (KG digest, TuckER flags): other flags pretrain them again.
EMBEDDINGS_REQUEST_FILE = "kg_embeddings_request.json"
SYNTHETIC_REQUEST_FILE = "synthetic_request.json"
# AdamW's first step is learning_rate / (1 - 0.9); far above this it overflows float32.
MAX_LEARNING_RATE = 1e12
VALIDATION_METRICS = ("crps", "mae", "rmse", "mmd_fixed_bandwidth", "mmd", "jsd")


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient or weight: the run stops before it saves anything from it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file of argument values (command-line flags win)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="named model settings")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="prepared dataset folder (scripts/prepare_data.py) or 'synthetic-city'")
    data.add_argument("--synthetic_nodes", type=int, default=120, help="synthetic-city: sensors")
    data.add_argument("--synthetic_days", type=int, default=30, help="synthetic-city: calendar days")
    data.add_argument("--embedding_dim", type=int, default=128, help="TuckER d when embeddings must be pretrained")
    data.add_argument("--tucker_epochs", type=int, default=DEFAULT_TUCKER_EPOCHS, help=TUCKER_EPOCHS_HELP)
    data.add_argument("--tucker_max_seconds", type=float, help=TUCKER_MAX_SECONDS_HELP)
    data.add_argument("--tucker_max_steps", type=int, help=TUCKER_MAX_STEPS_HELP)
    model = parser.add_argument_group("model (defaults: the preset)")
    model.add_argument("--condition_dim", type=int, help="size of phi (paper: 128)")
    model.add_argument("--block_out_channels", help="UNet channels per resolution, e.g. 64,128,128")
    model.add_argument("--layers_per_block", type=int)
    model.add_argument("--norm_num_groups", type=int)
    model.add_argument("--meta_pattern_hidden_dim", type=int)
    model.add_argument("--num_train_timesteps", type=int, help="diffusion steps tau (paper: 200)")
    model.add_argument("--delay_window", type=int, help="V, with --delay_stride (default: from the day length)")
    model.add_argument("--delay_stride", type=int, help="U, with --delay_window (48 steps: 16/3, 288: 32/9)")
    model.add_argument(
        "--freeze_embeddings", action="store_true", help="keep the TuckER embeddings fixed (default: fine-tune them)"
    )
    model.add_argument(
        "--neighbor_weighting", choices=NEIGHBOR_WEIGHTINGS,
        help="mean of eq. 15: 'uniform' (paper: every KG edge weighs the same) or 'relation' (each relation does)",
    )
    model.add_argument(
        "--geometry_form", choices=GEOMETRY_FORMS,
        help="experts of eq. 14: 'as_published' (H and S equal E below the clip radius) or 'translated' "
        "(relation translations and gyromidpoints: each geometry matters)",
    )
    model.add_argument("--meta_pattern_weight", type=float, default=1.0, help="weight of the f-regression term")
    model.add_argument("--num_donors", type=int, help="donor prior: candidates per source (geography, KG); default 8")
    model.add_argument(
        "--donor_weighting", choices=DONOR_WEIGHTINGS, help="donor prior: 'uniform' (default) or 'learned' weights"
    )
    model.add_argument(
        "--num_bank_days", type=int,
        help="donor prior: real days stored per donor, from which sampling starts (default 32; 0: from noise)",
    )
    model.add_argument(
        "--mean_match_strength", type=float,
        help="share in [0, 1] of the gap between a node's set of days and the expected donor day that the shift "
        "closes (default 0.75; 1: the set's mean is the expected day)",
    )
    model.add_argument(
        "--residual_centre", choices=RESIDUAL_CENTRES,
        help="donor prior: the denoiser's residual is taken around the node's 'own' mean day and spread (default) "
        "or around the donor 'prior' estimate from other nodes, which is what sampling uses",
    )
    ablation = parser.add_argument_group("ablations (paper Table 3)")
    for name, text in (
        ("no_geometry_moe", "w/o Geometry-MoE"),
        ("no_euclidean", "w/o E expert"),
        ("no_hyperbolic", "w/o H expert"),
        ("no_spherical", "w/o S expert"),
        ("no_meta_pattern", "w/o meta pattern"),
        ("no_guidance", "unconditional"),
        ("no_donor_prior", "the paper's configuration: f from the meta-pattern MLP, no donor prior / residual scaling"),
        ("no_level_estimator", "donor prior without the two-hop KG level estimate (the default before 2026-12-07)"),
        ("no_match_donor_mean", "days keep the mean of the donor days they drew (before 2026-12-07)"),
    ):
        ablation.add_argument(f"--{name}", action="store_true", help=text)
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=False, type=Path, help="where the pipeline and checkpoints go")
    train.add_argument("--overwrite_output_dir", action="store_true", help="replace a pipeline already there")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train_batch_size", type=int, default=64, help="per process")
    train.add_argument("--max_train_steps", type=int, default=2000, help="optimiser steps")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=5e-4)
    train.add_argument("--lr_scheduler", default="cosine", help="diffusers get_scheduler name")
    train.add_argument("--lr_warmup_steps", type=int, default=100)
    train.add_argument("--adam_weight_decay", type=float, default=1e-4)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    train.add_argument("--ema_decay", type=float, default=0.999, help="EMA max decay (0 disables EMA)")
    train.add_argument("--checkpointing_steps", type=int, default=500)
    train.add_argument("--checkpoints_total_limit", type=int, help="keep at most this many checkpoints")
    train.add_argument("--resume_from_checkpoint",
                       help="'latest', a checkpoint folder, or a checkpoint-N name in OUTPUT/checkpoints")
    train.add_argument("--dataloader_num_workers", type=int, default=0)
    val = parser.add_argument_group("validation and output")
    val.add_argument("--validation_steps", type=int, default=500, help="validate on validation nodes every N steps")
    val.add_argument("--validation_fraction", type=float, default=0.2,
                     help="share of the train nodes (highest latitudes) held out as validation nodes, excluded from "
                     "training (0: none, no validation); ignored when the dataset has a validation split")
    val.add_argument("--validation_metric", choices=VALIDATION_METRICS, default="crps",
                     help="the validation score that names the best step in validation.json (lower is better)")
    val.add_argument("--validation_sampler", default="ddim", help="ddpm | ddim | dpm++ | unipc")
    val.add_argument("--validation_inference_steps", type=int, default=20)
    val.add_argument("--validation_max_days", type=int, default=8, help="real days per validation node")
    val.add_argument("--validation_draws", type=int, default=3,
                     help="evaluation draws averaged per setting when the donor-day start is chosen at the end")
    val.add_argument("--final_weights", choices=("last", "best"), default="last",
                     help="the saved pipeline: the last step's EMA weights, or those of the checkpoint at the best "
                     "validation step (needs --checkpointing_steps dividing --validation_steps)")
    val.add_argument("--final_evaluation", action="store_true", help="full evaluation + report at the end")
    val.add_argument("--final_sampler", default="ddim")
    val.add_argument("--final_inference_steps", type=int, default=50)
    val.add_argument("--report_to", default="tensorboard", help="accelerate tracker ('none' to disable)")
    val.add_argument("--push_to_hub", action="store_true")
    val.add_argument("--hub_model_id", help="user/name for --push_to_hub")
    val.add_argument("--hub_private", action="store_true")

    args, _ = parser.parse_known_args(argv)
    defaults = dict(PRESETS[args.preset])
    if args.config is not None:
        loaded = config_values(parser, args.config)
        defaults.update(loaded)
        if "preset" in loaded:
            defaults = {**PRESETS[loaded["preset"]], **loaded}
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.dataset is None or args.output_dir is None:
        parser.error("--dataset and --output_dir are required (on the command line or in --config)")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        parser.error("--overwrite_output_dir starts over (removing the earlier run); --resume_from_checkpoint "
                     "continues it: give one of them")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id user/name")
    if args.push_to_hub and not args.final_evaluation:
        parser.error("--push_to_hub needs --final_evaluation: the model card's results come from its metrics.json")
    for name in (
        "train_batch_size",
        "max_train_steps",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
        "validation_inference_steps",
        "validation_draws",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.final_weights == "best" and args.validation_steps % args.checkpointing_steps:
        parser.error("--final_weights best needs a checkpoint at every validation step: --checkpointing_steps must "
                     f"divide --validation_steps ({args.checkpointing_steps} does not divide {args.validation_steps})")
    if args.num_bank_days is not None and args.num_bank_days < 0:
        parser.error(f"--num_bank_days must be >= 0, got {args.num_bank_days}")
    if args.mean_match_strength is not None and not 0 <= args.mean_match_strength <= 1:  # NaN fails too
        parser.error(f"--mean_match_strength must be in [0, 1], got {args.mean_match_strength}")
    if args.mean_match_strength is not None and args.no_match_donor_mean:
        parser.error("--mean_match_strength sets how far the mean match shifts: it does nothing with "
                     "--no_match_donor_mean")
    if args.residual_centre is not None and (args.no_donor_prior or args.no_meta_pattern):
        parser.error("--residual_centre sets the donor prior's residual: it does nothing with --no_donor_prior or "
                     "--no_meta_pattern (which train without the donor prior)")
    if not 0.0 <= args.validation_fraction < 1.0:
        parser.error(f"--validation_fraction must be in [0, 1), got {args.validation_fraction}")
    if (args.delay_window is None) != (args.delay_stride is None):
        parser.error("--delay_window and --delay_stride go together: give both, or neither for the automatic choice")
    for name in ("learning_rate", "adam_weight_decay", "max_grad_norm", "ema_decay", "meta_pattern_weight"):
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name} must be a finite number, got {getattr(args, name)}")
    check_numeric_flags(parser, args)
    check_output_dir_is_not_the_dataset(parser, args)
    check_synthetic_city_folder(parser, args)
    return args


def config_values(parser: argparse.ArgumentParser, path: Path) -> dict:
    """The argument values of a ``--config`` YAML file, each checked and converted as its flag would be.

    Argparse converts only string defaults, so without this a quoted ``"false"`` would switch a flag on and
    ``max_train_steps: 2.5`` would fail mid-run.
    """
    if not path.is_file():
        parser.error(f"--config {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        parser.error(f"--config {path}: not valid YAML{where}")
    if not isinstance(loaded, dict):
        parser.error(f"--config {path}: must map argument names to values (name: value lines), got a "
                     f"{type(loaded).__name__}")
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(loaded) - set(actions))
    if unknown:
        parser.error(f"--config {path}: unknown keys {unknown}")
    for key, value in loaded.items():
        action = actions[key]
        if action.nargs == 0:  # a switch such as --no_guidance
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} is a switch; give true or false (unquoted), got {value!r}")
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            parser.error(f"--config {path}: {key} got {str(value).lower()}: YAML reads unquoted yes/no/on/off/true/"
                         "false as a switch value; quote it ('no') if it is a word")
        if isinstance(value, (list, dict)):
            parser.error(f"--config {path}: {key} takes one value, got {value!r}")
        convert = action.type or str
        try:
            converted = convert(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            parser.error(f"--config {path}: {key} must be {getattr(convert, '__name__', 'valid')}, got {value!r}")
        if action.choices is not None and converted not in action.choices:
            parser.error(f"--config {path}: {key} must be one of {list(action.choices)}, got {value!r}")
        loaded[key] = converted
    return loaded


def check_numeric_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses flag values that would crash or silently break training only after it started."""
    if not 0 < args.learning_rate <= MAX_LEARNING_RATE:
        parser.error(f"--learning_rate must be in (0, {MAX_LEARNING_RATE:g}], got {args.learning_rate} (a larger one "
                     "overflows AdamW's float32 steps; useful values are about 1e-5 to 1e-2)")
    problems = tucker_budget_problems(args.tucker_epochs, args.tucker_max_steps, args.tucker_max_seconds)
    if problems:
        parser.error("; ".join(f"--tucker_{problem}" for problem in problems))
    for name in ("embedding_dim", "condition_dim", "layers_per_block", "meta_pattern_hidden_dim"):
        if getattr(args, name) is not None and getattr(args, name) < 1:  # 0 builds a model without that part
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if isinstance(args.block_out_channels, str):
        channels = args.block_out_channels.split(",")
        if not all(c.strip().isdigit() and int(c) >= 1 for c in channels):
            parser.error(f"--block_out_channels must be comma-separated positive ints such as 64,128,128, got "
                         f"{args.block_out_channels!r}")
    if not 0 <= args.seed < 2**32:  # Accelerate's set_seed seeds numpy's legacy generator too
        parser.error(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        parser.error(f"--checkpoints_total_limit must be >= 1 (how many checkpoints to keep), got "
                     f"{args.checkpoints_total_limit}")
    if args.num_donors is not None and args.num_donors < 1:
        parser.error(f"--num_donors must be >= 1, got {args.num_donors}")
    if args.meta_pattern_weight < 0:
        parser.error(f"--meta_pattern_weight must be >= 0 (a negative weight rewards a worse f), got "
                     f"{args.meta_pattern_weight}")
    if not args.max_grad_norm > 0:
        parser.error(f"--max_grad_norm must be > 0 (gradients are clipped to this norm: 0 stops training), got "
                     f"{args.max_grad_norm}")
    if args.adam_weight_decay < 0:
        parser.error(f"--adam_weight_decay must be >= 0, got {args.adam_weight_decay}")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema_decay must be in [0, 1) (0 disables EMA), got {args.ema_decay}")
    for name in ("validation_max_days", "final_inference_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    timesteps = args.num_train_timesteps
    if timesteps is not None and timesteps < 1:
        parser.error(f"--num_train_timesteps must be >= 1, got {timesteps}")
    timesteps = timesteps or KGDiffModelConfig.num_train_timesteps
    used = ["validation_inference_steps"] + (["final_inference_steps"] if args.final_evaluation else [])
    for name in used:
        if getattr(args, name) > timesteps:
            parser.error(f"--{name} {getattr(args, name)} is more than the {timesteps} diffusion steps the model is "
                         f"trained with (--num_train_timesteps, or its preset): give --{name} <= {timesteps}")


def check_output_dir_is_not_the_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses an --output_dir that is, holds or lies inside the --dataset folder: a run would write (and
    --overwrite_output_dir delete) files of the prepared dataset."""
    if args.dataset == "synthetic-city":
        return
    dataset, output = Path(args.dataset).resolve(), args.output_dir.resolve()
    if output == dataset or dataset in output.parents or output in dataset.parents:
        where = "is" if output == dataset else "is inside" if dataset in output.parents else "contains"
        parser.error(f"--output_dir {args.output_dir} {where} the --dataset folder {args.dataset}: the run would "
                     "write into (and --overwrite_output_dir delete from) the prepared dataset; choose an "
                     "--output_dir outside it")


def check_synthetic_city_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses, for --dataset synthetic-city, an OUTPUT/data that holds anything a cached city does not: building
    the city there deletes the folder (a city build interrupted before its request file is still rebuilt)."""
    data_dir = args.output_dir / "data"
    if args.dataset != "synthetic-city" or args.overwrite_output_dir or not data_dir.exists():
        return
    own = {*FOLDER_ENTRIES, SYNTHETIC_REQUEST_FILE}
    foreign = sorted(p.name for p in data_dir.iterdir() if p.name not in own) if data_dir.is_dir() else ["(a file)"]
    if foreign:
        parser.error(f"--output_dir {args.output_dir} holds a data folder that is not a synthetic city cached by "
                     f"train.py ({', '.join(foreign[:3])}); --dataset synthetic-city builds its city there and "
                     "would delete it: choose another --output_dir, or pass --overwrite_output_dir to delete it")


def model_config(args: argparse.Namespace) -> KGDiffModelConfig:
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(KGDiffModelConfig)
        if getattr(args, field.name, None) is not None
    }
    if isinstance(overrides.get("block_out_channels"), str):
        overrides["block_out_channels"] = tuple(int(c) for c in overrides["block_out_channels"].split(","))
    return KGDiffModelConfig(
        **overrides,
        train_embeddings=not args.freeze_embeddings,
        use_geometry_moe=not args.no_geometry_moe,
        use_euclidean=not args.no_euclidean,
        use_hyperbolic=not args.no_hyperbolic,
        use_spherical=not args.no_spherical,
        use_meta_pattern=not args.no_meta_pattern,
        use_guidance=not args.no_guidance,
        use_donor_prior=not (args.no_donor_prior or args.no_meta_pattern),
        use_level_estimator=not args.no_level_estimator,
        match_donor_mean=not args.no_match_donor_mean,
    )


def load_dataset(args: argparse.Namespace, accelerator: Accelerator) -> PreparedDataset:
    """The prepared dataset, building the synthetic city (in OUTPUT/data) or TuckER embeddings if needed."""
    data_dir = args.output_dir / "data"
    if args.dataset == "synthetic-city":
        request = {k: getattr(args, k) for k in ("synthetic_nodes", "synthetic_days", "seed", "embedding_dim",
                                                 "tucker_epochs")}
        # budgets join the key only when given, so that a city cached before they existed is still found
        request.update({k: getattr(args, k) for k in ("tucker_max_seconds", "tucker_max_steps")
                        if getattr(args, k) is not None})
        request_file = data_dir / SYNTHETIC_REQUEST_FILE
        cached = request_file.is_file() and json.loads(request_file.read_text()) == request
        if accelerator.is_main_process and not cached:
            if data_dir.exists():
                logger.info(f"{data_dir} was built for other synthetic-city flags: rebuilding it")
                shutil.rmtree(data_dir)
            data, kg = make_synthetic_city(num_nodes=args.synthetic_nodes, num_days=args.synthetic_days, seed=args.seed)
            result = pretrain_tucker(
                kg,
                embedding_dim=args.embedding_dim,
                epochs=args.tucker_epochs,
                seed=args.seed,
                max_seconds=args.tucker_max_seconds,
                max_steps=args.tucker_max_steps,
            )
            logger.info(f"TuckER on the synthetic city: {json.dumps(result.metrics)}")
            dataset = prepare_dataset(
                data,
                kg,
                "synthetic-city",
                entity_embeddings=result.entity_embeddings,
                relation_embeddings=result.relation_embeddings,
            )
            dataset.save(data_dir)
            request_file.write_text(json.dumps(request))
        accelerator.wait_for_everyone()
        return PreparedDataset.load(data_dir)
    if not Path(args.dataset, "prepared.json").is_file():
        raise FileNotFoundError(
            f"--dataset {args.dataset} is not a prepared dataset folder (no prepared.json); "
            "make one with scripts/prepare_data.py or use --dataset synthetic-city"
        )
    dataset = PreparedDataset.load(args.dataset)
    if dataset.entity_embeddings is None:
        embeddings_file = args.output_dir / EMBEDDINGS_FILE
        request_file = args.output_dir / EMBEDDINGS_REQUEST_FILE
        request = {"kg": kg_digest(dataset.kg), "embedding_dim": args.embedding_dim,
                   "tucker_epochs": args.tucker_epochs, "tucker_max_seconds": args.tucker_max_seconds}
        if args.tucker_max_steps is not None:  # as above: embeddings cached before the flag existed still match
            request["tucker_max_steps"] = args.tucker_max_steps
        cached = embeddings_file.is_file() and request_file.is_file() and read_json(request_file) == request
        if accelerator.is_main_process and not cached:
            if embeddings_file.is_file():
                logger.warning(f"{embeddings_file} was pretrained for another KG or other --embedding_dim / "
                               "--tucker_epochs / --tucker_max_seconds / --tucker_max_steps (or by an older version): "
                               "pretraining again")
                embeddings_file.unlink()
            request_file.unlink(missing_ok=True)
            logger.info(f"{args.dataset} has no KG embeddings: pretraining TuckER (d={args.embedding_dim})")
            result = pretrain_tucker(
                dataset.kg,
                embedding_dim=args.embedding_dim,
                epochs=args.tucker_epochs,
                max_seconds=args.tucker_max_seconds,
                max_steps=args.tucker_max_steps,
            )
            save_kg_embeddings(embeddings_file, result.entity_embeddings, result.relation_embeddings)
            request_file.write_text(json.dumps(request))  # last: a kill before it leaves no valid cache
        accelerator.wait_for_everyone()
        dataset.entity_embeddings, dataset.relation_embeddings = load_kg_embeddings(embeddings_file)
    return dataset


def read_json(path: Path) -> object:
    """A JSON file's content, or ``None`` when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def check_output_dir(args: argparse.Namespace, checkpoint: Path | None) -> None:
    """Refuses to replace an earlier run without ``--overwrite_output_dir``; with it, removes that run."""
    if checkpoint is not None:
        return
    finished = (args.output_dir / "model_index.json").is_file()
    if args.overwrite_output_dir:
        clear_earlier_run(args)
    elif finished:
        raise FileExistsError(
            f"{args.output_dir} already holds a trained pipeline; pass --overwrite_output_dir to replace it, "
            "--resume_from_checkpoint latest to continue, or choose another --output_dir"
        )
    elif list(args.output_dir.glob("checkpoints/checkpoint-*")):
        raise FileExistsError(
            f"{args.output_dir}/checkpoints has checkpoints of an earlier run; pass --resume_from_checkpoint "
            "latest to continue it or --overwrite_output_dir to start over"
        )


def clear_earlier_run(args: argparse.Namespace) -> None:
    """Removes what an earlier run wrote to ``--output_dir`` (pipeline, checkpoints, reports, cached data)."""
    output = args.output_dir
    index = output / "model_index.json"
    components = [k for k, v in json.loads(index.read_text()).items() if isinstance(v, list)] if index.is_file() else []
    names = [*components, index.name, "checkpoints", "logs", "data", EMBEDDINGS_FILE, EMBEDDINGS_REQUEST_FILE,
             RUN_CONFIG_FILE, VALIDATION_FILE, METRICS_FILE, REPORT_FILE, *PICTURES]
    dataset = Path(args.dataset).resolve()
    removed = []
    for name in names:
        path = output / name
        if not path.exists() or dataset == path.resolve() or path.resolve() in dataset.parents:
            continue  # never the --dataset folder itself
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed.append(name)
    if removed:
        logger.warning(f"--overwrite_output_dir: removed the earlier run's {', '.join(removed)} from {output}")


def resolve_checkpoint(args: argparse.Namespace, checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint to resume from (``latest``: the newest complete one), or ``None``."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint != "latest":
        return resolve_named_checkpoint(args.resume_from_checkpoint, checkpoint_dir)
    complete, incomplete = list_checkpoints(checkpoint_dir), incomplete_checkpoints(checkpoint_dir)
    newer = [p.name for p in incomplete if not complete or checkpoint_step(p) > checkpoint_step(complete[-1])]
    if newer:
        logger.warning(f"skipping incomplete {', '.join(newer)} in {checkpoint_dir} (a save was interrupted)")
    if complete:
        return complete[-1]
    if incomplete or (args.output_dir / "model_index.json").is_file():
        what = "a finished pipeline" if not incomplete else f"only incomplete checkpoints ({incomplete[-1].name})"
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: {args.output_dir} holds {what} and no complete checkpoint to resume "
            "from; pass --overwrite_output_dir (without --resume_from_checkpoint) to retrain from scratch"
        )
    logger.info(f"no checkpoint in {checkpoint_dir}: starting a new run")
    return None


def resolve_named_checkpoint(name: str, checkpoint_dir: Path) -> Path:
    """``--resume_from_checkpoint PATH``: a folder, or a bare ``checkpoint-N`` name in ``OUTPUT/checkpoints``.

    Refuses a checkpoint with later ones after it: the resumed run would overwrite them one by one, and until
    then ``latest`` would pick a checkpoint of the abandoned run.
    """
    path = Path(name)
    if not path.exists() and len(path.parts) == 1:
        path = checkpoint_dir / name
    if not path.is_dir():
        available = ", ".join(p.name for p in list_checkpoints(checkpoint_dir)) or "none"
        raise FileNotFoundError(
            f"--resume_from_checkpoint {name}: {path} does not exist (complete checkpoints in {checkpoint_dir}: "
            f"{available})"
        )
    if not path.name.startswith(CHECKPOINT_PREFIX) or not path.name[len(CHECKPOINT_PREFIX) :].isdigit():
        raise FileNotFoundError(f"--resume_from_checkpoint {name}: {path} is not a checkpoint-N folder")
    if path not in list_checkpoints(path.parent):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {name}: {path} is not a complete checkpoint ({COMPLETE_FILE} is written "
            "last: without it, the save was interrupted)"
        )
    later = [p.name for p in list_checkpoints(path.parent) if checkpoint_step(p) > checkpoint_step(path)]
    if later:
        raise FileExistsError(
            f"--resume_from_checkpoint {name}: {path.parent} holds later checkpoints ({', '.join(later)}) of the run "
            "being rolled back; the resumed run would overwrite them and, until then, 'latest' would pick them. "
            "Move or delete them first, or resume from the latest one"
        )
    return path


# Flags a resumed run may change: where and how often it checkpoints, validates and reports, and when it stops.
RESUMABLE_FLAGS = {
    "config", "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "max_train_steps",
    "checkpointing_steps", "checkpoints_total_limit", "dataloader_num_workers", "validation_steps",
    "validation_metric", "validation_sampler", "validation_inference_steps", "validation_max_days",
    "validation_draws", "final_evaluation", "final_sampler", "final_inference_steps", "report_to", "push_to_hub",
    "hub_model_id", "hub_private",
}
# Restored from the checkpoint (AdamW state, LR schedule, EMA): a new value would be ignored, so it is refused.
OPTIMISER_FLAGS = {
    "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_weight_decay", "max_grad_norm", "ema_decay",
}


def check_resumed_settings(args: argparse.Namespace, checkpoint: Path) -> None:
    """Refuses to resume with flags that differ from the checkpoint's run, naming each of them.

    A run saved before ``--num_bank_days`` existed resumes with ``--num_bank_days 0``, the donor prior it saved.
    """
    step = checkpoint_step(checkpoint)
    if step > args.max_train_steps:
        raise ValueError(
            f"--max_train_steps {args.max_train_steps} is below the step of --resume_from_checkpoint {checkpoint} "
            f"({step}): its weights are trained further already. Give --max_train_steps {step} or more, or resume "
            "an earlier checkpoint"
        )
    stored = json.loads((checkpoint / RUN_CONFIG_FILE).read_text())
    if "num_bank_days" not in stored and args.num_bank_days is None and not args.no_donor_prior:
        logger.warning(f"{checkpoint} predates the donor-day start: resuming it with --num_bank_days 0 (from noise)")
        args.num_bank_days = 0
    current = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    changed = differing_settings(stored, current, ignore=RESUMABLE_FLAGS)
    if changed:
        optimiser = "restored from the checkpoint: the new value would be ignored"
        other = "changes the model, its data or the training it continues"
        reasons = [f"--{c} ({optimiser if c.split(':')[0] in OPTIMISER_FLAGS else other})" for c in changed]
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} was trained with other settings ({RUN_CONFIG_FILE} there): "
            f"{'; '.join(reasons)}. Resume with its values, or start a new run in another --output_dir"
        )
    if stored.get("max_train_steps") != args.max_train_steps:
        logger.warning(f"--max_train_steps {stored.get('max_train_steps')} -> {args.max_train_steps}: "
                       f"the LR schedule now ends at step {args.max_train_steps}")


def check_resumed_data(run_config: dict, checkpoint: Path) -> None:
    """Refuses to resume on data or a model that differ from the checkpoint's (node split, model config)."""
    stored = json.loads((checkpoint / RUN_CONFIG_FILE).read_text())
    if isinstance(stored.get("model"), dict):  # runs saved before --residual_centre trained around their own mean
        stored["model"].setdefault("residual_centre", "own")
        # Runs saved before the level estimator: it is fitted after training and changes no step, so they take it.
        stored["model"].setdefault("use_level_estimator", True)
        stored["model"].setdefault("match_donor_mean", True)  # sampling only, like the level estimator
        stored["model"].setdefault("mean_match_strength", KGDiffModelConfig.mean_match_strength)
    run_config = json.loads(json.dumps(run_config))  # tuples as the stored lists
    keys = ("model", "dataset_name", "train_node_ids", "validation_node_ids", "test_node_ids", "day_types",
            "num_processes")
    changed = [key for key in keys if key in stored and stored[key] != run_config[key]]
    if changed:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: {', '.join(changed)} differ from the run it continues "
            f"({RUN_CONFIG_FILE} there); the data, the model or the processes changed since. Resume as it ran, or "
            "start a new run in another --output_dir"
        )
    if "data_digest" not in stored:
        logger.warning(f"{checkpoint} was saved before runs recorded a digest of their days: cannot check that the "
                       f"days, dates and normalisation of --dataset {run_config['dataset']} are those it trained on")
    elif stored["data_digest"] != run_config["data_digest"]:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: the data of --dataset {run_config['dataset']} changed since the "
            "run started (same node ids and KG, but other days, dates or normalisation statistics: data digest "
            f"{stored['data_digest']} in its {RUN_CONFIG_FILE}, {run_config['data_digest']} now). Resume with the "
            "data it started on, or start a new run in another --output_dir"
        )
    rounding = differing_settings(stored, run_config, ignore=set(run_config) - {"num_threads", "device"})
    if rounding:
        logger.warning(
            f"resuming with {'; '.join(rounding)}: kernels then sum in another order, so the weights match an "
            "uninterrupted run to float rounding only (about 1e-6), not bit for bit"
        )


def validate(pipe, dataset, args: argparse.Namespace, final: bool = False):
    return evaluate_pipeline(
        pipe,
        dataset,
        num_inference_steps=args.final_inference_steps if final else args.validation_inference_steps,
        sampler=args.final_sampler if final else args.validation_sampler,
        seed=args.seed,
        include_baselines=final,
        max_days_per_node=None if final else args.validation_max_days,
        split="test" if final else "validation",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = args.output_dir / "checkpoints"
    report_to = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(
            project_dir=str(args.output_dir), logging_dir=str(args.output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Ablations leave some parameters unused (e.g. curvatures without the geometric experts).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    checkpoint = resolve_checkpoint(args, checkpoint_dir)
    if checkpoint is not None:
        verify_checkpoint(checkpoint)
        check_resumed_settings(args, checkpoint)
    if accelerator.is_main_process:
        check_output_dir(args, checkpoint)
    accelerator.wait_for_everyone()
    set_seed(args.seed)

    dataset = hold_out_validation_nodes(load_dataset(args, accelerator), args.validation_fraction)
    if args.final_evaluation and not dataset.day_mask[dataset.test_rows].any():
        raise ValueError(f"dataset {dataset.name!r}: no test node has a valid day, so --final_evaluation would have "
                         "nothing to score after training; prepare the data with other --test_node_ids, or train "
                         "without --final_evaluation")
    config = model_config(args)
    pipe = build_pipeline(dataset, config)
    pipe.register_to_config(data_fingerprint=data_fingerprint(dataset.node_table, dataset.kg, dataset.name))
    pipe.set_progress_bar_config(disable=True)
    days, node_rows = training_samples(dataset)  # train nodes only; raises if the splits overlap
    day_types = training_day_types(dataset, pipe.config.day_types)
    logger.info(
        f"{dataset.name}: {len(days)} training days from {len(dataset.train_node_ids)} train nodes; "
        f"{len(dataset.validation_node_ids)} validation and {len(dataset.test_node_ids)} test nodes held out; "
        f"images {pipe.delay_embedding.image_size}^2; day types {pipe.config.day_types}"
    )
    run_config = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": dataclasses.asdict(config),
        "dataset_name": dataset.name,
        "train_node_ids": dataset.train_node_ids,
        "validation_node_ids": dataset.validation_node_ids,
        "test_node_ids": dataset.test_node_ids,
        "data_digest": training_data_digest(dataset.days, dataset.day_mask, dataset.dates, dataset.feature_names,
                                            dataset.feature_mean, dataset.feature_std),
        "day_types": pipe.config.day_types,
        "num_processes": accelerator.num_processes,
        "num_threads": torch.get_num_threads(),
        "device": accelerator.device.type,
    }
    if checkpoint is not None:
        check_resumed_data(run_config, checkpoint)
    if accelerator.is_main_process:
        (args.output_dir / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=2))

    component_names = [name for name in TRAINED_COMPONENTS if getattr(pipe, name) is not None]
    modules = [getattr(pipe, name) for name in component_names]
    trainable = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(days, node_rows, day_types),
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=len(days) >= args.train_batch_size,
        num_workers=args.dataloader_num_workers,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    prepared = accelerator.prepare(*modules, optimizer, loader, lr_scheduler)
    modules, (optimizer, loader, lr_scheduler) = list(prepared[: len(modules)]), prepared[len(modules) :]
    trained = dict(zip(component_names, modules))
    ema = None
    if args.ema_decay > 0:
        ema = EMAModel(trainable, decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    # The loss draws its noise and steps from this generator rather than the global RNG, whose stream also
    # feeds the data loader's worker seeds: a resumed run then draws exactly the noise it would have.
    noise_generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + accelerator.process_index)

    global_step, first_epoch, skip_batches = 0, 0, 0
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    if checkpoint is not None:
        global_step = load_checkpoint(accelerator, checkpoint, ema, noise_generator)
        first_epoch = global_step // steps_per_epoch
        skip_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
        logger.info(f"resumed from {checkpoint} at step {global_step}")
    history = validation_history(args, global_step)
    if accelerator.is_main_process and report_to:
        accelerator.init_trackers(
            "kgdiff", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )
    validated = {entry["step"] for entry in history}
    if checkpoint is not None and dataset.validation_node_ids and global_step % args.validation_steps == 0 and (
        global_step not in validated
    ):
        # a checkpoint saved before its validation ran (an older version, or another --validation_steps)
        logger.info(f"validation.json has no score for step {global_step}: validating the resumed weights")
        run_validation(accelerator, pipe, dataset, args, ema, trainable, global_step, history)

    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="training", disable=not accelerator.is_local_main_process
    )
    epoch = first_epoch
    try:
        while global_step < args.max_train_steps:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
            skip_batches = 0
            for batch_days, batch_rows, batch_day_types in batches:
                with accelerator.accumulate(*modules):
                    out = kgdiff_loss(
                        trained["unet"],
                        trained["condition_encoder"],
                        trained.get("meta_pattern"),
                        pipe.scheduler,
                        pipe.delay_embedding,
                        batch_days,
                        batch_rows,
                        meta_pattern_weight=args.meta_pattern_weight,
                        generator=noise_generator,
                        donor_prior=trained.get("donor_prior"),
                        day_types=batch_day_types,
                        residual_centre=config.residual_centre,
                    )
                    check_finite_loss(accelerator, out.loss, batch_days, batch_rows, dataset, global_step + 1)
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                        if not torch.isfinite(grad_norm):
                            raise TrainingDiverged(
                                f"non-finite gradient norm ({grad_norm.item()}) at step {global_step + 1}: "
                                + describe_batch(batch_days, batch_rows, dataset)
                            )
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                if ema is not None:
                    ema.step(trainable)
                global_step += 1
                progress.update(1)
                logs = {
                    "loss": out.loss.detach().item(),
                    "noise_loss": out.noise_loss.detach().item(),
                    "meta_pattern_loss": out.meta_pattern_loss.detach().item(),
                    "lr": lr_scheduler.get_last_lr()[0],
                }
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                accelerator.log(logs, step=global_step)
                # Validation first: a kill between the two then leaves no checkpoint whose score is lost (the
                # resumed run repeats this step), and the checkpoint's RNG states follow the validation's.
                if global_step % args.validation_steps == 0:
                    run_validation(accelerator, pipe, dataset, args, ema, trainable, global_step, history)
                if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                    check_finite_weights(modules, global_step)
                    save_checkpoint(
                        accelerator, checkpoint_dir, global_step, ema, noise_generator, run_config,
                        args.checkpoints_total_limit,
                    )
                if global_step >= args.max_train_steps:
                    break
            epoch += 1
    finally:
        progress.close()

    accelerator.wait_for_everyone()
    load_best_checkpoint(accelerator, args, checkpoint_dir, ema, noise_generator)
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(trainable)
        check_finite_weights(modules, global_step)
        for name, module in zip(component_names, modules):
            setattr(pipe, name, accelerator.unwrap_model(module))
        level_weight = choose_level_estimate_weight(pipe, dataset)
        if level_weight is not None:
            logger.info(
                f"two-hop KG level estimate weighed on the validation nodes: {level_weight} (0 = the donors' level)"
            )
        blend = choose_prior_blend(pipe, dataset)
        if blend is not None:
            logger.info(f"donor-prior blend chosen on the validation nodes: {blend} (1 = donors only, 0 = f(phi))")
        start = choose_donor_day_start(
            pipe, dataset, args.validation_inference_steps, args.validation_sampler, num_draws=args.validation_draws
        )
        if start is not None:
            logger.info(
                f"sampling starts from donor days ({start['random_donor_share']:g} of them from any training node) "
                f"rescaled with exponent {start['level_exponent']:g}, level noise {start['level_noise']:g}, noised to "
                f"strength {start['start_strength']:g} (1 = from noise); validation CRPS {start['validation_crps']}"
            )
        pipe.save_pretrained(args.output_dir)
        logger.info(f"saved the pipeline (EMA weights) to {args.output_dir}")
        if args.final_evaluation:
            result = validate(pipe, dataset, args, final=True)
            write_report(result, args.output_dir, dataset.interval_minutes, list(dataset.feature_names))
            logger.info(
                f"final evaluation on the test nodes ({args.output_dir / 'report.md'}):\n"
                + markdown_table(result.metrics)
                + day_type_tables(result.metrics)
            )
        if args.push_to_hub:
            push_pipeline(args.output_dir, args.hub_model_id, private=args.hub_private)
    accelerator.end_training()


def check_finite_loss(accelerator: Accelerator, loss, batch_days, batch_rows, dataset, step: int) -> None:
    """Stops every process at the first non-finite loss, before it reaches the weights."""
    finite = bool(torch.isfinite(loss.detach()))
    failed = accelerator.reduce(torch.tensor([0.0 if finite else 1.0], device=accelerator.device), "sum")
    if failed.item() == 0:
        return
    if finite:
        raise TrainingDiverged(f"step {step}: another process hit a non-finite loss (its message names the batch)")
    raise TrainingDiverged(
        f"non-finite loss ({loss.item()}) at step {step}; nothing of this step was applied or saved: "
        + describe_batch(batch_days, batch_rows, dataset)
    )


def describe_batch(batch_days: torch.Tensor, batch_rows: torch.Tensor, dataset) -> str:
    """The (node id, date) of each day in a batch."""
    rows = batch_rows.cpu().numpy()
    values = batch_days.detach().cpu().numpy()  # (B, D, T) normalised
    candidates = ((dataset.days[rows] - dataset.feature_mean) / dataset.feature_std).transpose(0, 1, 3, 2)
    labels = []
    for i, row in enumerate(rows):
        matches = [
            d
            for d in np.flatnonzero(dataset.day_mask[row])
            if np.allclose(candidates[i, d], values[i], rtol=1e-5, atol=1e-6)
        ]
        labels.append(f"{dataset.node_ids[row]}@{dataset.dates[matches[0]] if matches else '?'}")
    return (
        f"its {len(labels)} training days (node@date): {', '.join(labels)}. "
        "Lower --learning_rate or check these days; earlier checkpoints are intact"
    )


def check_finite_weights(modules, step: int) -> None:
    bad = [name for module in modules for name, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"non-finite weights after step {step} ({', '.join(bad[:3])}); nothing was saved")


def hold_out_validation_nodes(dataset: PreparedDataset, validation_fraction: float) -> PreparedDataset:
    """The dataset with validation nodes cut from its train nodes (none when it has its own or the fraction is 0).

    Normalisation statistics are recomputed from the remaining train nodes (:meth:`PreparedDataset.with_split`).

    Raises:
        ValueError: a bad fraction, too few train nodes left, or validation nodes that are test nodes.
    """
    if not dataset.validation_node_ids and validation_fraction > 0:
        _, validation = split_validation_nodes(dataset.node_table, dataset.train_node_ids, validation_fraction)
        rule = f"{dataset.report.get('split', {}).get('rule', 'given')}; validation = the {validation_fraction:g} " \
               "highest-latitude share of the train nodes"
        dataset = dataset.with_split(dataset.test_node_ids, validation, rule=rule)
    overlap = set(dataset.validation_node_ids) & set(dataset.test_node_ids)
    if overlap:
        raise ValueError(f"validation nodes {sorted(overlap)[:5]} are test nodes; validate on training-side nodes")
    return dataset


def validation_history(args: argparse.Namespace, start_step: int) -> list[dict]:
    """The ``validation.json`` entries of a resumed run up to ``start_step`` (empty for a new run)."""
    path = args.output_dir / VALIDATION_FILE
    if not args.resume_from_checkpoint or not path.is_file():
        return []
    return [entry for entry in json.loads(path.read_text())["history"] if entry["step"] <= start_step]


def best_validation(history: list[dict], metric: str) -> dict | None:
    """The history entry with the lowest ``metric`` (the earliest on ties); None when none has a score."""
    scored = [entry for entry in history if entry["metrics"].get(metric) is not None]
    return min(scored, key=lambda entry: entry["metrics"][metric], default=None)


def load_best_checkpoint(accelerator, args: argparse.Namespace, checkpoint_dir: Path, ema, noise_generator) -> None:
    """With ``--final_weights best``: restores the training state (EMA included) of the best validation step.

    Every process reads the best step from ``validation.json`` (written by the main process).
    """
    if args.final_weights != "best":
        return
    path = args.output_dir / VALIDATION_FILE
    best_step = json.loads(path.read_text())["best_step"] if path.is_file() else None
    checkpoint = None if best_step is None else checkpoint_dir / f"checkpoint-{best_step}"
    if checkpoint is None or checkpoint not in list_checkpoints(checkpoint_dir):
        missing = "no validation score" if checkpoint is None else f"{checkpoint} is gone (or incomplete)"
        logger.warning(f"--final_weights best: {missing}; saving the last weights (keep more checkpoints with "
                       "--checkpoints_total_limit)")
        return
    load_checkpoint(accelerator, checkpoint, ema, noise_generator)
    logger.info(f"--final_weights best: the weights of step {best_step} (best {args.validation_metric} on the "
                f"validation nodes), from {checkpoint}")


def run_validation(accelerator, pipe, dataset, args, ema, trainable, step: int, history: list[dict]) -> None:
    """Validation metrics on the validation nodes with the EMA weights (main process only).

    Appends ``{"step", "metrics"}`` to ``history`` and writes it to ``validation.json`` with the best step by
    ``--validation_metric``.
    """
    if accelerator.is_main_process and dataset.validation_node_ids:
        if ema is not None:
            ema.store(trainable)
            ema.copy_to(trainable)
        result = validate(pipe, dataset, args)
        if ema is not None:
            ema.restore(trainable)
        metrics = result.metrics["methods"]["KGDiff"]
        accelerator.log({f"validation/{k}": v for k, v in metrics.items() if v is not None}, step=step)
        logger.info(
            f"step {step} validation on {len(result.node_ids)} validation nodes: "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None)
        )
        history.append({"step": step, "metrics": metrics})
        best = best_validation(history, args.validation_metric)
        (args.output_dir / VALIDATION_FILE).write_text(json.dumps({
            "validation_node_ids": dataset.validation_node_ids,
            "metric": args.validation_metric,
            "best_step": best["step"] if best else None,
            "sampler": args.validation_sampler,
            "num_inference_steps": args.validation_inference_steps,
            "max_days_per_node": args.validation_max_days,
            "history": history,
        }, indent=2))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
