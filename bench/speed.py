"""Speed, memory and scale of KGDiff on this machine, each figure beside a baseline measured in the same run.

Sections (``--sections``, all by default):

* ``sampling``: generated node-days per second of the paper's shifted DDPM over all training steps (the
  baseline) and of the fast samplers DDIM 50, DDIM 20 and DPM-Solver++ 20, each with the MAE / MMD it
  reaches on the dataset's unseen test nodes (:func:`kgdiff_diffusers.evaluation.evaluate_pipeline`, every
  sampler on the same nodes and seeds). Target: a fast sampler at >= 4x the speed of DDPM within 5 % of
  its MAE.
* ``overhead``: ``KGDiffPipeline.__call__`` against a bare loop of the same UNet and scheduler with a
  precomputed condition and meta pattern (target <= 1.10x), and one batched call for many nodes against
  one call per node.
* ``training``: samples/s of a training step (``kgdiff_loss`` + backward + AdamW) and the share of the
  condition encoder, measured twice: the step with the encoder replaced by a precomputed ``phi`` table, and
  the encoder's forward + backward alone.
* ``scale``: condition-encoder forward time and peak memory for synthetic-city KGs of 1k, 10k and 100k
  nodes (random ``d = 128`` embeddings), for each ``geometry_form`` of the encoder, and one generated day for
  each of 1k and 10k nodes with DDIM 20 in denoiser batches of ``--batch_size``. Every point runs in a fresh
  process; its peak memory is the peak resident set size reached during the measurement, above the process's
  idle size.

The model: ``--model DIR`` (a trained pipeline) with ``--data DIR`` (the prepared dataset it was trained on);
without ``--model`` a model of the default size is trained here for ``--train_seconds`` on ``--data`` or on a
synthetic city (its quality columns then describe that short training, not a release model).

Examples:
    python bench/speed.py --quick
    python bench/speed.py --model runs/nyc_bike --data prepared/nyc_bike --output bench/results/speed.json

Prints Markdown tables and writes them with all numbers to ``--output`` (JSON) and its ``.md`` sibling.
Timings are medians over interleaved repeats after a warm-up; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    machine_info,
    markdown_table,
    peak_memory,
    reset_peak_memory,
    run_in_fresh_process,
    time_interleaved,
)
from torch import nn

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import PreparedDataset, prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.evaluation import evaluate_pipeline
from kgdiff_diffusers.kg.tucker import pretrain_tucker
from kgdiff_diffusers.models.condition_encoder import GEOMETRY_FORMS
from kgdiff_diffusers.schedulers.scheduling_kgdiff import make_sampler
from kgdiff_diffusers.training import KGDiffModelConfig, build_pipeline, kgdiff_loss

logger = logging.getLogger("bench.speed")

SECTIONS = ("sampling", "overhead", "training", "scale")
# (label, make_sampler name, inference steps); None = all training steps (the baseline).
SAMPLERS = (("DDPM", "ddpm", None), ("DDIM", "ddim", 50), ("DDIM", "ddim", 20), ("DPM-Solver++", "dpm++", 20))
FAST_SAMPLER_MIN_SPEEDUP = 4.0
FAST_SAMPLER_MAX_MAE_INCREASE = 0.05
PIPELINE_MAX_OVERHEAD = 1.10
MiB = 2**20

# Sizes of --quick and of the full run.
SETTINGS = {
    "quick": {
        "days_per_node": 4,
        "seeds": 1,
        "repeats": 3,
        "train_seconds": 60.0,
        "synthetic_nodes": 40,
        "synthetic_days": 30,
        "overhead_nodes": 8,
        "overhead_samples": 4,
        "encoder_nodes": (1_000, 10_000),
        "encoder_one_shot_max_nodes": 10_000,
        "scale_repeats": 3,
        "generation_nodes": (200, 1_000),
    },
    "full": {
        "days_per_node": 16,
        "seeds": 3,
        "repeats": 5,
        "train_seconds": 600.0,
        "synthetic_nodes": 80,
        "synthetic_days": 60,
        "overhead_nodes": 16,
        "overhead_samples": 8,
        "encoder_nodes": (1_000, 10_000, 100_000),
        "encoder_one_shot_max_nodes": 10_000,
        "scale_repeats": 3,
        "generation_nodes": (1_000, 10_000),
    },
}
TRAIN_BATCH_SIZE = 64
SCALE_INFERENCE_STEPS = 20
ENCODER_CHUNK_NODES = 1_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a few minutes)")
    parser.add_argument("--output", type=Path, default=Path("bench/results/speed.json"), help="results JSON")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every measurement")
    parser.add_argument("--model", type=Path, help="a trained KGDiffPipeline folder (needs --data)")
    parser.add_argument("--data", type=Path, help="a prepared dataset folder (scripts/prepare_data.py)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--batch_size", type=int, default=256, help="images per denoiser call (pipeline default)"
    )
    parser.add_argument(
        "--train_seconds", type=float, help="training budget without --model (quick 60, full 600)"
    )
    parser.add_argument(
        "--days_per_node", type=int, help="generated days per test node and seed (quick 4, full 16)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.model is not None and args.data is None:
        parser.error(
            "--model needs --data: the prepared dataset the pipeline was trained on (for its test nodes)"
        )
    for name in ("model", "data"):
        folder = getattr(args, name)
        if folder is not None and not folder.is_dir():
            parser.error(f"--{name} {folder}: no such folder")
    if args.threads < 1 or args.batch_size < 1:
        parser.error("--threads and --batch_size must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------------- model


def synthetic_dataset(
    num_nodes: int, num_days: int, seed: int, tucker_seconds: float = 20.0
) -> PreparedDataset:
    """A prepared synthetic city with briefly pretrained TuckER embeddings (d = 128)."""
    data, kg = make_synthetic_city(num_nodes=num_nodes, num_days=num_days, seed=seed)
    tucker = pretrain_tucker(kg, seed=seed, show_progress=False, max_seconds=tucker_seconds)
    return prepare_dataset(
        data,
        kg,
        f"synthetic-city-{num_nodes}",
        entity_embeddings=tucker.entity_embeddings,
        relation_embeddings=tucker.relation_embeddings,
    )


def training_batch(
    pipe: KGDiffPipeline, dataset: PreparedDataset, batch_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (training node, valid day) pairs: ``(B, D, T)`` normalised days and ``(B,)`` encoder rows."""
    train_rows = dataset.train_rows
    nodes, days = np.nonzero(dataset.day_mask[train_rows])
    pick = rng.integers(0, len(nodes), batch_size)
    data_rows, day_index = train_rows[nodes[pick]], days[pick]
    values = (dataset.days[data_rows, day_index] - dataset.feature_mean) / dataset.feature_std
    encoder_rows = pipe.node_rows([dataset.node_ids[row] for row in data_rows])
    return torch.from_numpy(values.astype(np.float32)).transpose(1, 2).contiguous(), torch.tensor(
        encoder_rows
    )


def trainable_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    return [p for module in modules if module is not None for p in module.parameters() if p.requires_grad]


def train_quickly(pipe: KGDiffPipeline, dataset: PreparedDataset, seconds: float, seed: int) -> dict:
    """Trains ``pipe`` in place with AdamW for a wall-clock budget; returns steps, samples and last loss."""
    modules = [m for m in (pipe.unet, pipe.condition_encoder, pipe.meta_pattern) if m is not None]
    for module in modules:
        module.train()
    optimizer = torch.optim.AdamW(trainable_parameters(*modules), lr=5e-4)
    scheduler = make_sampler("ddpm", pipe.scheduler.config)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    start, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < seconds:
        days, rows = training_batch(pipe, dataset, TRAIN_BATCH_SIZE, rng)
        optimizer.zero_grad(set_to_none=True)
        loss = kgdiff_loss(
            pipe.unet,
            pipe.condition_encoder,
            pipe.meta_pattern,
            scheduler,
            pipe.delay_embedding,
            days,
            rows,
            generator=generator,
        ).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        steps += 1
    for module in modules:
        module.eval()
    return {
        "steps": steps,
        "samples": steps * TRAIN_BATCH_SIZE,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss_mean_last_20": float(np.mean(losses[-20:])),
    }


def load_model(args: argparse.Namespace, settings: dict) -> tuple[KGDiffPipeline, PreparedDataset, dict]:
    """The pipeline and dataset of the sampling/overhead/training sections, and a description of them."""
    if args.data is not None:
        dataset = PreparedDataset.load(args.data)
    else:
        logger.info("building a %d-node synthetic city", settings["synthetic_nodes"])
        dataset = synthetic_dataset(settings["synthetic_nodes"], settings["synthetic_days"], args.seed)
    if args.model is not None:
        pipe = KGDiffPipeline.from_pretrained(args.model)
        source = {"model": str(args.model), "training": "trained elsewhere (see its training_config.json)"}
    else:
        torch.manual_seed(args.seed)
        pipe = build_pipeline(dataset, KGDiffModelConfig())
        logger.info("training a default-size model on %s for %.0f s", dataset.name, settings["train_seconds"])
        source = {
            "model": "trained by this bench",
            "training": train_quickly(pipe, dataset, settings["train_seconds"], args.seed),
        }
    pipe.set_progress_bar_config(disable=True)
    source.update(
        dataset=dataset.name,
        train_nodes=len(dataset.train_node_ids),
        test_nodes=len(dataset.test_node_ids),
        unet_parameters=sum(p.numel() for p in pipe.unet.parameters()),
        image_size=pipe.delay_embedding.image_size,
        num_features=dataset.num_features,
        num_train_timesteps=pipe.scheduler.config.num_train_timesteps,
    )
    return pipe, dataset, source


# ------------------------------------------------------------------------------------------------- sampling


def bench_sampling(
    pipe: KGDiffPipeline, dataset: PreparedDataset, days_per_node: int, seeds: int, batch_size: int, seed: int
) -> list[dict]:
    """Throughput and test-node quality of each sampler, on the same nodes and seeds (first row: baseline)."""
    num_train = pipe.scheduler.config.num_train_timesteps
    original = pipe.scheduler
    rows = []
    for label, sampler, steps in SAMPLERS:
        steps = num_train if steps is None else steps
        pipe.scheduler = make_sampler(sampler, original.config)
        pipe(node_ids=dataset.test_node_ids[:1], num_inference_steps=2)  # warm-up
        seconds, metrics = [], []
        for offset in range(seeds):
            logger.info("sampling: %s %d steps, seed %d", label, steps, seed + offset)
            start = time.perf_counter()
            result = evaluate_pipeline(
                pipe,
                dataset,
                steps,
                sampler,
                seed + offset,
                samples_per_node=days_per_node,
                include_baselines=False,
                batch_size=batch_size,
            )
            seconds.append(time.perf_counter() - start)
            metrics.append(result.metrics["methods"]["KGDiff"])
        node_days = result.metrics["num_test_nodes"] * days_per_node
        rows.append(
            {
                "sampler": label,
                "name": sampler,
                "steps": steps,
                "node_days_per_run": node_days,
                "seconds_median": float(np.median(seconds)),
                "node_days_per_s": node_days / float(np.median(seconds)),
                **{key: float(np.mean([m[key] for m in metrics])) for key in ("mae", "rmse", "mmd", "jsd")},
                "mae_seeds": [m["mae"] for m in metrics],
            }
        )
    pipe.scheduler = original
    base = rows[0]
    for row in rows:
        row["speedup"] = row["node_days_per_s"] / base["node_days_per_s"]
        row["mae_change"] = row["mae"] / base["mae"] - 1.0
        row["meets_target"] = (
            row is not base
            and row["speedup"] >= FAST_SAMPLER_MIN_SPEEDUP
            and row["mae_change"] <= FAST_SAMPLER_MAX_MAE_INCREASE
        )
    return rows


# ------------------------------------------------------------------------------------------------- overhead


def bare_sampling_loop(
    pipe: KGDiffPipeline, scheduler, condition: torch.Tensor, meta_image: torch.Tensor, steps: int, seed: int
) -> torch.Tensor:
    """The pipeline's denoising loop alone: ``(B, D, V, V)`` images, sampled on the residual ``X - f``."""
    scheduler.set_timesteps(steps)
    sample = torch.randn(meta_image.shape, generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        prediction = pipe.unet(sample + meta_image, t, condition, meta_pattern=meta_image).sample
        if scheduler.config.prediction_type == "sample":  # X_0 -> Y_0 = X_0 - f, as the pipeline does
            prediction = prediction - meta_image
        sample = scheduler.step(prediction, t, sample).prev_sample
    return sample + meta_image


@torch.no_grad()
def bench_overhead(
    pipe: KGDiffPipeline,
    node_ids: list[str],
    samples: int,
    steps: int,
    repeats: int,
    batch_size: int,
    seed: int,
) -> dict:
    """Pipeline call vs bare loop (DDIM), and one batched call vs one call per node."""
    original = pipe.scheduler
    pipe.scheduler = make_sampler("ddim", original.config)
    bare_scheduler = make_sampler("ddim", original.config)
    phi = pipe.condition(node_ids)
    meta_image = (
        pipe.delay_embedding.to_image(pipe.meta_pattern(phi)) if pipe.meta_pattern is not None else None
    )
    if meta_image is None:
        meta_image = torch.zeros(
            len(node_ids), pipe.unet.config.num_features, *(2 * [pipe.delay_embedding.image_size])
        )
    condition, meta_image = phi.repeat_interleave(samples, 0), meta_image.repeat_interleave(samples, 0)

    def call(ids: list[str]) -> None:
        pipe(
            node_ids=ids,
            num_samples=samples,
            num_inference_steps=steps,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
        )

    timings = time_interleaved(
        {
            "bare_loop": lambda: bare_sampling_loop(pipe, bare_scheduler, condition, meta_image, steps, seed),
            "pipeline": lambda: call(node_ids),
            "per_node_loop": lambda: [call([node_id]) for node_id in node_ids],
        },
        repeats,
    )
    pipe.scheduler = original
    node_days = len(node_ids) * samples
    return {
        "sampler": f"DDIM {steps}",
        "nodes": len(node_ids),
        "samples_per_node": samples,
        "node_days": node_days,
        "timings": {name: timing.as_dict() for name, timing in timings.items()},
        "pipeline_vs_bare": timings["pipeline"].median_s / timings["bare_loop"].median_s,
        "per_node_vs_batched": timings["per_node_loop"].median_s / timings["pipeline"].median_s,
    }


# ------------------------------------------------------------------------------------------------- training


class PrecomputedCondition(nn.Module):
    """Stands in for the condition encoder: ``phi`` from a fixed ``(num_nodes, condition_dim)`` table."""

    def __init__(self, phi: torch.Tensor):
        super().__init__()
        self.register_buffer("phi", phi)

    def forward(self, node_rows: torch.Tensor) -> torch.Tensor:
        return self.phi[node_rows]


def bench_training(pipe: KGDiffPipeline, dataset: PreparedDataset, repeats: int, seed: int) -> dict:
    """Training-step throughput, with and without the condition encoder, and the encoder alone."""
    unet, encoder, meta = (
        copy.deepcopy(m) if m is not None else None
        for m in (pipe.unet, pipe.condition_encoder, pipe.meta_pattern)
    )
    for module in (unet, encoder, meta):
        if module is not None:
            module.train()
    scheduler = make_sampler("ddpm", pipe.scheduler.config)
    days, rows = training_batch(pipe, dataset, TRAIN_BATCH_SIZE, np.random.default_rng(seed))
    with torch.no_grad():
        precomputed = PrecomputedCondition(encoder())
    optimizer = torch.optim.AdamW(trainable_parameters(unet, encoder, meta), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)

    def step(condition_encoder: nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)
        kgdiff_loss(
            unet, condition_encoder, meta, scheduler, pipe.delay_embedding, days, rows, generator=generator
        ).loss.backward()
        optimizer.step()

    upstream = torch.randn(len(rows), encoder.config.condition_dim, generator=generator)

    def encoder_forward_backward() -> None:
        encoder.zero_grad(set_to_none=True)
        encoder(rows).backward(upstream)

    timings = time_interleaved(
        {
            "full_step": lambda: step(encoder),
            "step_with_precomputed_phi": lambda: step(precomputed),
            "encoder_forward_backward": encoder_forward_backward,
        },
        repeats,
    )
    full = timings["full_step"].median_s
    return {
        "batch_size": TRAIN_BATCH_SIZE,
        "encoder_edges": int(encoder.config.num_edges),
        "timings": {name: timing.as_dict() for name, timing in timings.items()},
        "samples_per_s": {name: TRAIN_BATCH_SIZE / timing.median_s for name, timing in timings.items()},
        "encoder_share_by_removal": 1.0 - timings["step_with_precomputed_phi"].median_s / full,
        "encoder_share_alone": timings["encoder_forward_backward"].median_s / full,
    }


# ---------------------------------------------------------------------------------------------------- scale


def random_embeddings(
    num_entities: int, num_relations: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(num_entities, dim)`` and ``(2 * num_relations, dim)`` float32 stand-ins for TuckER embeddings."""
    rng = np.random.default_rng(seed)
    entity = rng.normal(0.0, 0.1, (num_entities, dim)).astype(np.float32)
    relation = rng.normal(0.0, 0.1, (2 * num_relations, dim)).astype(np.float32)
    return entity, relation


def synthetic_pipeline(num_nodes: int, seed: int, geometry_form: str = "as_published") -> KGDiffPipeline:
    """A default-size untrained pipeline over a 2-day synthetic city of ``num_nodes`` sensors."""
    data, kg = make_synthetic_city(num_nodes=num_nodes, num_days=2, seed=seed)
    entity, relation = random_embeddings(
        kg.num_entities, kg.num_relations, KGDiffModelConfig.condition_dim, seed
    )
    dataset = prepare_dataset(
        data, kg, f"synthetic-city-{num_nodes}", entity_embeddings=entity, relation_embeddings=relation
    )
    torch.manual_seed(seed)
    pipe = build_pipeline(dataset, KGDiffModelConfig(geometry_form=geometry_form))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encoder_scale_point(
    num_nodes: int, threads: int, repeats: int, seed: int, one_shot: bool, geometry_form: str
) -> dict:
    """Condition-encoder forward time and peak memory over all nodes of a synthetic city.

    Measured in chunks of :data:`ENCODER_CHUNK_NODES` node rows (bounded memory) and, with ``one_shot``, as
    one forward over every node (``encoder()``, what ``pipe.condition`` does for all requested nodes at once).
    Runs in a fresh process (see :func:`run_in_fresh_process`).
    """
    torch.set_num_threads(threads)
    encoder = synthetic_pipeline(num_nodes, seed, geometry_form).condition_encoder
    chunks = torch.arange(num_nodes).split(ENCODER_CHUNK_NODES)
    modes = {"chunked": lambda: [encoder(rows) for rows in chunks]}
    if one_shot:
        modes["one_shot"] = encoder
    with torch.no_grad():
        encoder(chunks[0][:1])  # warm-up outside the memory window: geoopt compiles its TorchScript functions
    edges = int(encoder.config.num_edges)
    point = {
        "nodes": num_nodes,
        "geometry_form": geometry_form,
        "entities": int(encoder.config.num_entities),
        "edges": edges,
    }
    for mode, forward in modes.items():
        gc.collect()
        idle = reset_peak_memory()
        with torch.no_grad():
            timing = time_interleaved({mode: forward}, repeats)[mode]
        peak = peak_memory()
        point[mode] = {
            "timing": timing.as_dict(),
            "us_per_node": timing.median_s / num_nodes * 1e6,
            "us_per_edge": timing.median_s / edges * 1e6,
            "idle_rss_mib": idle / MiB,
            "peak_rss_mib": peak / MiB,
            "peak_above_idle_mib": (peak - idle) / MiB,
        }
    return point


def generation_scale_point(num_nodes: int, steps: int, batch_size: int, threads: int, seed: int) -> dict:
    """One generated day for each node of a synthetic city with DDIM, its time and peak memory.

    Runs in a fresh process (see :func:`run_in_fresh_process`).
    """
    torch.set_num_threads(threads)
    pipe = synthetic_pipeline(num_nodes, seed)
    pipe.scheduler = make_sampler("ddim", pipe.scheduler.config)
    node_ids = list(pipe.config.node_ids)
    pipe(node_ids=node_ids[:1], num_inference_steps=2)  # warm-up
    gc.collect()
    idle = reset_peak_memory()
    start = time.perf_counter()
    output = pipe(
        node_ids=node_ids,
        num_inference_steps=steps,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = time.perf_counter() - start
    peak = peak_memory()
    return {
        "nodes": num_nodes,
        "steps": steps,
        "batch_size": batch_size,
        "output_shape": list(output.series.shape),
        "seconds": seconds,
        "node_days_per_s": num_nodes / seconds,
        "ms_per_node": seconds / num_nodes * 1e3,
        "idle_rss_mib": idle / MiB,
        "peak_rss_mib": peak / MiB,
        "peak_above_idle_mib": (peak - idle) / MiB,
    }


def bench_scale(settings: dict, threads: int, batch_size: int, seed: int) -> dict:
    encoder_points = []
    for num_nodes in settings["encoder_nodes"]:
        one_shot = num_nodes <= settings["encoder_one_shot_max_nodes"]
        for geometry_form in GEOMETRY_FORMS:
            logger.info("scale: condition encoder (%s) over %d nodes", geometry_form, num_nodes)
            encoder_points.append(
                run_in_fresh_process(
                    encoder_scale_point, num_nodes, threads, settings["scale_repeats"], seed, one_shot, geometry_form
                )
            )
    generation_points = []
    for num_nodes in settings["generation_nodes"]:
        logger.info("scale: one day for each of %d nodes, DDIM %d", num_nodes, SCALE_INFERENCE_STEPS)
        generation_points.append(
            run_in_fresh_process(
                generation_scale_point, num_nodes, SCALE_INFERENCE_STEPS, batch_size, threads, seed
            )
        )
    return {"encoder": encoder_points, "generation": generation_points}


# ------------------------------------------------------------------------------------------------- report


def _x(value: float) -> str:
    return f"{value:.2f}x"


def scale_tables(scale: dict) -> list[str]:
    """Markdown headings and tables of the ``scale`` section."""
    encoder = scale["encoder"]
    published = {
        p["nodes"]: p["chunked"]["timing"]["median_s"] for p in encoder if p["geometry_form"] == "as_published"
    }
    first = encoder[0]["chunked"]["timing"]["median_s"]
    measured = [p for p in encoder if "one_shot" in p]
    bytes_per_edge = (
        max(p["one_shot"]["peak_above_idle_mib"] * MiB / p["edges"] for p in measured) if measured else None
    )

    def one_shot_cells(point: dict) -> list[str]:
        if "one_shot" in point:
            one = point["one_shot"]
            return [
                f"{one['timing']['median_s']:.3f}",
                f"{one['us_per_node']:.1f}",
                f"{one['peak_above_idle_mib']:.0f}",
            ]
        estimate = (
            f"~{bytes_per_edge * point['edges'] / MiB:,.0f} (extrapolated)" if bytes_per_edge else "n/a"
        )
        return ["not run", "", estimate]

    parts = [
        "### Scale: condition-encoder forward over all nodes (synthetic city, d = 128, fresh process "
        f"per size; median of {encoder[0]['chunked']['timing']['repeats']}; memory: peak RSS above the "
        "idle process)\n",
        markdown_table(
            [
                "nodes",
                "geometry_form",
                "entities",
                "edges",
                f"{ENCODER_CHUNK_NODES:,}-node chunks s",
                "us/node",
                f"time vs {encoder[0]['nodes']:,} as_published",
                "time vs as_published",
                "peak MiB",
                "one forward s",
                "us/node",
                "peak MiB",
            ],
            [
                [
                    f"{p['nodes']:,}",
                    p["geometry_form"],
                    f"{p['entities']:,}",
                    f"{p['edges']:,}",
                    f"{p['chunked']['timing']['median_s']:.3f}",
                    f"{p['chunked']['us_per_node']:.1f}",
                    _x(p["chunked"]["timing"]["median_s"] / first),
                    _x(p["chunked"]["timing"]["median_s"] / published[p["nodes"]]),
                    f"{p['chunked']['peak_above_idle_mib']:.0f}",
                    *one_shot_cells(p),
                ]
                for p in encoder
            ],
        ),
    ]
    generation = scale["generation"]
    parts += [
        f"### Scale: one day for each node, DDIM {SCALE_INFERENCE_STEPS}, denoiser batch "
        f"{generation[0]['batch_size']} (default-size untrained model; fresh process per size; one run)\n",
        markdown_table(
            [
                "nodes",
                "seconds",
                "node-days/s",
                "ms/node",
                f"time vs {generation[0]['nodes']:,}",
                "peak MiB above idle",
                "process peak MiB",
            ],
            [
                [
                    f"{p['nodes']:,}",
                    f"{p['seconds']:.1f}",
                    f"{p['node_days_per_s']:.1f}",
                    f"{p['ms_per_node']:.2f}",
                    _x(p["seconds"] / generation[0]["seconds"]),
                    f"{p['peak_above_idle_mib']:.0f}",
                    f"{p['peak_rss_mib']:.0f}",
                ]
                for p in generation
            ],
        ),
    ]
    return parts


def format_report(results: dict) -> str:
    """All tables of ``results`` as Markdown, with a header naming the machine and the targets' status."""
    machine = results["machine"]
    parts = [
        f"Machine: {machine['cpu_model']}, {machine['nproc']} logical cores, {machine['memory_gib']} GiB; "
        f"torch {machine['torch']} with {machine['torch_threads']} threads; {machine['date']}; "
        f"load average at start {machine['load_average_1_5_15']}, at end {results['load_average_end']}; "
        f"{'--quick' if results['quick'] else 'full run'} in {results['total_seconds'] / 60:.1f} min.\n"
    ]
    model = results.get("model")
    if model:
        training = model["training"]
        trained = (
            f"trained here for {training['seconds']} s ({training['steps']} steps of {TRAIN_BATCH_SIZE})"
            if isinstance(training, dict)
            else training
        )
        parts.append(
            f"Model: {model['model']} ({trained}); {model['unet_parameters'] / 1e6:.1f}M-parameter UNet on "
            f"{model['image_size']}x{model['image_size']}x{model['num_features']} images; dataset "
            f"{model['dataset']} ({model['train_nodes']} train / {model['test_nodes']} test nodes).\n"
        )
    if "sampling" in results:
        rows = results["sampling"]
        base = f"{rows[0]['sampler']}-{rows[0]['steps']}"
        parts.append(
            f"### Sampling ({rows[0]['node_days_per_run']} node-days per run = test nodes x days per node; "
            f"median over seeds; MAE/MMD/RMSE/JSD on the test nodes, mean over seeds; baseline {base})\n"
        )
        parts.append(
            markdown_table(
                [
                    "sampler",
                    "steps",
                    "node-days/s",
                    f"speed vs {base}",
                    "MAE",
                    f"MAE vs {base}",
                    "MMD",
                    "RMSE",
                    "JSD",
                    "target",
                ],
                [
                    [
                        r["sampler"],
                        r["steps"],
                        f"{r['node_days_per_s']:.2f}",
                        _x(r["speedup"]),
                        f"{r['mae']:.3f}",
                        f"{r['mae_change']:+.1%}",
                        f"{r['mmd']:.4f}",
                        f"{r['rmse']:.3f}",
                        f"{r['jsd']:.4f}",
                        "baseline" if i == 0 else ("met" if r["meets_target"] else "missed"),
                    ]
                    for i, r in enumerate(rows)
                ],
            )
        )
    if "overhead" in results:
        o = results["overhead"]
        t = o["timings"]
        nd = o["node_days"]
        parts.append(
            f"### Pipeline overhead ({o['sampler']}, {o['nodes']} nodes x {o['samples_per_node']} days "
            f"= {nd} node-days per run; median of {t['pipeline']['repeats']})\n"
        )
        parts.append(
            markdown_table(
                ["variant", "median s", "node-days/s", "ratio"],
                [
                    [
                        "bare UNet + scheduler loop, precomputed phi and f (baseline)",
                        f"{t['bare_loop']['median_s']:.3f}",
                        f"{nd / t['bare_loop']['median_s']:.1f}",
                        "1.00x",
                    ],
                    [
                        "KGDiffPipeline.__call__, all nodes in one call",
                        f"{t['pipeline']['median_s']:.3f}",
                        f"{nd / t['pipeline']['median_s']:.1f}",
                        f"{_x(o['pipeline_vs_bare'])} (target <= {PIPELINE_MAX_OVERHEAD:.2f}x: "
                        f"{'met' if o['pipeline_vs_bare'] <= PIPELINE_MAX_OVERHEAD else 'missed'})",
                    ],
                    [
                        "KGDiffPipeline.__call__ once per node",
                        f"{t['per_node_loop']['median_s']:.3f}",
                        f"{nd / t['per_node_loop']['median_s']:.1f}",
                        f"{_x(o['per_node_vs_batched'])} the batched call's time",
                    ],
                ],
            )
        )
    if "training" in results:
        tr = results["training"]
        t = tr["timings"]
        parts.append(
            f"### Training step (batch {tr['batch_size']}, kgdiff_loss + backward + AdamW; encoder index "
            f"{tr['encoder_edges']} edges; median of {t['full_step']['repeats']})\n"
        )
        parts.append(
            markdown_table(
                ["variant", "median s", "samples/s", "share of the full step"],
                [
                    [
                        "full step (baseline)",
                        f"{t['full_step']['median_s']:.3f}",
                        f"{tr['samples_per_s']['full_step']:.1f}",
                        "100%",
                    ],
                    [
                        "step with precomputed phi (no encoder)",
                        f"{t['step_with_precomputed_phi']['median_s']:.3f}",
                        f"{tr['samples_per_s']['step_with_precomputed_phi']:.1f}",
                        f"encoder = {tr['encoder_share_by_removal']:.1%} (by removal)",
                    ],
                    [
                        "encoder forward + backward alone",
                        f"{t['encoder_forward_backward']['median_s']:.4f}",
                        "",
                        f"{tr['encoder_share_alone']:.1%}",
                    ],
                ],
            )
        )
    if "scale" in results:
        parts += scale_tables(results["scale"])
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    settings = dict(SETTINGS["quick" if args.quick else "full"])
    for name in ("train_seconds", "days_per_node"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    start = time.perf_counter()
    results: dict = {
        "machine": machine_info(),
        "quick": args.quick,
        "settings": settings,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if {"sampling", "overhead", "training"} & set(args.sections):
        pipe, dataset, results["model"] = load_model(args, settings)
    if "sampling" in args.sections:
        results["sampling"] = bench_sampling(
            pipe, dataset, settings["days_per_node"], settings["seeds"], args.batch_size, args.seed
        )
    if "overhead" in args.sections:
        logger.info("overhead: pipeline vs bare loop vs per-node calls")
        node_ids = dataset.test_node_ids[: settings["overhead_nodes"]]
        results["overhead"] = bench_overhead(
            pipe,
            node_ids,
            settings["overhead_samples"],
            SCALE_INFERENCE_STEPS,
            settings["repeats"],
            args.batch_size,
            args.seed,
        )
    if "training" in args.sections:
        logger.info("training: step with and without the condition encoder")
        results["training"] = bench_training(pipe, dataset, settings["repeats"], args.seed)
    if "scale" in args.sections:
        results["scale"] = bench_scale(settings, args.threads, args.batch_size, args.seed)
    results["total_seconds"] = time.perf_counter() - start
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = format_report(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(report)
    sys.stdout.write(report)
    return results


if __name__ == "__main__":
    main()
