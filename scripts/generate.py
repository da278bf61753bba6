"""Generate days for known nodes or for NEW places (the planners' case: "what would a sensor here record?").

A new place is given by coordinates; its knowledge-graph triples are built with the rules of the dataset's
KG (distance bands to the nearest sensors, grid cell / adjacent areas, borough, optional POIs) from the
prepared dataset folder, and the pipeline conditions on the resulting (relation, entity) neighbours.
Writes a long table ``node_id, sample, timestamp, <features>`` (.csv / .parquet) or arrays (.npz), and a
plot of each node's mean day with a 10-90 % band next to it (``<output stem>.png``).

Examples:
    python scripts/generate.py --model out/kgdiff --node_ids 400001,400017 --output days.csv
    # a planned sensor and a planned station with two POIs, on 4 March 2024
    python scripts/generate.py --model out/kgdiff --data prepared/pems_bay_16 \\
        --new_node planned_1:37.36,-121.90 --new_node station_b:37.40,-121.95 --poi school_b:school \\
        --num_samples 32 --date 2024-03-04 --output planned.parquet
    # weekend days, from a pipeline trained on data prepared with --include_weekends
    python scripts/generate.py --model out/kgdiff_7day --node_ids zone_12 --day_type weekend --date 2024-03-09 \\
        --output weekend.csv
    # split the nodes over processes (or GPUs)
    accelerate launch --num_processes 2 scripts/generate.py --model out/kgdiff --node_ids a,b,c,d \\
        --output days.npz

``--poi NAME:CATEGORY`` belongs to the ``--new_node`` before it. POIs and grid cells that are new to the KG
have no embedding in the pipeline, so only the new node's links to existing entities condition it (the
dropped links are logged).
"""

from __future__ import annotations

import argparse
import logging
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.days import DAY_TYPES
from kgdiff_diffusers.data.prepared import KG_DIR, NODES_FILE, NODES_FILE_COLUMNS
from kgdiff_diffusers.evaluation import new_node_neighbors, plot_generated_days, use_sampler
from kgdiff_diffusers.fingerprint import check_data_fingerprint, data_fingerprint
from kgdiff_diffusers.kg.builders import new_node_triples
from kgdiff_diffusers.kg.graph import KnowledgeGraph
from kgdiff_diffusers.schedulers.scheduling_kgdiff import SAMPLERS

logger = logging.getLogger("generate")

OUTPUT_SUFFIXES = (".csv", ".parquet", ".npz")
KIND_PREFIXES = {"sensor": "Sensor/", "area": "Area/"}


class NewNodeAction(argparse.Action):
    """``--new_node NAME:LAT,LON`` appends ``{"name", "lat", "lon", "pois": []}`` to ``args.new_nodes``."""

    def __call__(self, parser, namespace, value, option_string=None):
        name, _, coordinates = value.rpartition(":")
        try:
            lat, lon = (float(x) for x in coordinates.split(","))
        except ValueError:
            parser.error(f"{option_string} {value!r}: expected NAME:LAT,LON, e.g. planned_1:37.36,-121.90")
        if not name:
            parser.error(f"{option_string} {value!r}: the NAME before ':' is empty")
        place = {"name": name, "lat": lat, "lon": lon, "pois": []}
        namespace.new_nodes = [*(namespace.new_nodes or []), place]


class PoiAction(argparse.Action):
    """``--poi NAME:CATEGORY`` adds a POI to the ``--new_node`` given before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        name, _, category = value.rpartition(":")
        if not name or not category:
            parser.error(f"{option_string} {value!r}: expected NAME:CATEGORY, e.g. school_b:school")
        if not namespace.new_nodes:
            parser.error(f"{option_string} {value!r}: give it after the --new_node it belongs to")
        namespace.new_nodes[-1]["pois"].append((name, category))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a KGDiffPipeline.save_pretrained folder")
    parser.add_argument("--node_ids", default=None, help="comma-separated ids of nodes the pipeline knows")
    parser.add_argument("--new_node", dest="new_nodes", action=NewNodeAction, default=[],
                        metavar="NAME:LAT,LON", help="a new place (repeatable); needs --data")
    parser.add_argument("--poi", action=PoiAction, metavar="NAME:CATEGORY",
                        help="a POI at the preceding --new_node (repeatable)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the prepared dataset folder the pipeline was trained on (node table and KG)")
    parser.add_argument("--kind", choices=sorted(KIND_PREFIXES), default=None,
                        help="kind of the new places; default: that of the dataset's nodes")
    parser.add_argument("--num_samples", type=int, default=16, help="days generated per node")
    parser.add_argument("--day_type", choices=DAY_TYPES, default=None,
                        help="the kind of day, one of the pipeline's config.day_types (weekend needs a pipeline "
                        "trained on data prepared with --include_weekends); default: its first (weekday)")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps per day")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm", help="ddpm = the paper's shifted DDPM")
    parser.add_argument("--seed", type=int, default=0, help="day (node, sample) gets its own seeded noise")
    parser.add_argument("--date", type=date.fromisoformat, default=date.today(),
                        help="ISO date of the timestamps, e.g. 2024-03-04; default today")
    parser.add_argument("--output", type=Path, required=True, help="a .csv, .parquet or .npz file")
    parser.add_argument("--batch_size", type=int, default=256, help="images per denoiser call")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output and its plot")
    parser.add_argument("--ignore_data_fingerprint", action="store_true",
                        help="use --data even if it is not the data the pipeline was trained on (warns)")
    args = parser.parse_args(argv)
    args.node_ids = [n.strip() for n in args.node_ids.split(",") if n.strip()] if args.node_ids else []
    if not args.node_ids and not args.new_nodes:
        parser.error("give --node_ids and/or --new_node")
    if args.new_nodes and args.data is None:
        parser.error("--new_node needs --data (the prepared dataset folder: its node table and KG)")
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder (the prepared dataset the pipeline was trained on)")
    if args.data is not None and not args.new_nodes:
        logger.warning("--data is read only for --new_node places; known --node_ids need only the pipeline")
    if args.output.suffix not in OUTPUT_SUFFIXES:
        parser.error(f"--output {args.output}: the suffix must be one of {OUTPUT_SUFFIXES}")
    if args.num_samples < 1 or args.num_inference_steps < 1:
        parser.error("--num_samples and --num_inference_steps must be >= 1")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}")
    names = [place["name"] for place in args.new_nodes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(f"--new_node {repeated[0]} is given twice; give each new place once, under its own name")
    return args


def output_paths(output: Path) -> list[Path]:
    """Every file :func:`main` writes: ``output`` and the plot next to it."""
    return [output, output.with_suffix(".png")]


def check_outputs(args: argparse.Namespace) -> None:
    """Refuses, before any sampling, outputs that cannot be written or would replace files without ``--overwrite``."""
    for path in output_paths(args.output):
        if path.is_dir():
            raise IsADirectoryError(f"--output {args.output}: {path} is a folder; choose a file name")
        if path.exists() and not args.overwrite:
            what = "" if path == args.output else " (the plot written next to --output)"
            raise FileExistsError(f"--output {args.output}: {path}{what} exists; pass --overwrite or choose another "
                                  "--output")
    folder = args.output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"--output {args.output}: {folder} is a file, not a folder")


def load_places(data: Path) -> tuple[pd.DataFrame, KnowledgeGraph]:
    """The node table and KG of a prepared dataset folder (without its day samples)."""
    nodes_path = data / NODES_FILE
    if not nodes_path.is_file():
        raise FileNotFoundError(
            f"--data {data}: no {NODES_FILE}; pass a folder written by scripts/prepare_data.py"
        )
    node_table = pd.read_csv(nodes_path, dtype={"node_id": str, "entity": str})
    missing = [column for column in NODES_FILE_COLUMNS if column not in node_table.columns]
    if missing:
        raise ValueError(f"--data {data}: {NODES_FILE} lacks the column(s) {missing}; pass a folder written by "
                         "scripts/prepare_data.py")
    return node_table, KnowledgeGraph.load(data / KG_DIR)


def infer_kind(node_table: pd.DataFrame) -> str:
    """``"sensor"`` or ``"area"`` from the prefix shared by all node entities."""
    for kind, prefix in KIND_PREFIXES.items():
        if node_table["entity"].str.startswith(prefix).all():
            return kind
    examples = node_table["entity"].head(3).tolist()
    raise ValueError(f"cannot tell the node kind from entities such as {examples}; "
                     "pass --kind sensor or --kind area")


def new_node_conditions(args: argparse.Namespace, pipe: KGDiffPipeline) -> dict[str, list[tuple[str, str]]]:
    """``{name: [(relation, entity), ...]}`` of every ``--new_node``, from the dataset's KG rules."""
    node_table, kg = load_places(args.data)
    check_data_fingerprint(pipe.config.get("data_fingerprint"), data_fingerprint(node_table, kg, args.data.name),
                           str(args.data), args.ignore_data_fingerprint)
    kind = args.kind or infer_kind(node_table)
    conditions = {}
    for place in args.new_nodes:
        name = place["name"]
        if name in conditions:
            raise ValueError(f"--new_node {name} is given twice; give each new place once, under its own name")
        if name in pipe.config.node_ids:
            raise ValueError(f"--new_node {name}: the name is already a node id; choose another")
        entity = name if "/" in name else KIND_PREFIXES[kind] + name
        triples = new_node_triples(kg, node_table, entity, place["lat"], place["lon"], kind, place["pois"])
        kept, dropped = new_node_neighbors(
            entity, triples, pipe.config.entity_names or [], pipe.config.relation_names or []
        )
        if dropped:
            logger.info("--new_node %s: %d link(s) to entities new to the pipeline are not used: %s",
                        name, len(dropped), dropped[:10])
        pois = {poi if "/" in poi else f"POI/{poi}" for poi, _ in place["pois"]}
        if pois and not pois & {neighbor for _, neighbor in kept}:
            logger.warning("--new_node %s: its POIs do not reach its condition (the encoder reads the node's "
                           "direct KG neighbours that the pipeline has embeddings for)", name)
        if not kept:
            unknown = ", ".join(f"{relation} -> {neighbor}" for relation, neighbor in dropped[:3]) or "none"
            raise ValueError(
                f"--new_node {name}: none of its {len(triples)} KG links has a relation and entity the pipeline knows "
                f"(unknown: {unknown}). A place far from every node of --data links only to a new grid cell or by a "
                "distance band that training never saw: place it nearer the trained nodes, or check that --data is "
                "the dataset the pipeline was trained on"
            )
        logger.info("--new_node %s (%s at %.5f, %.5f): %d KG neighbours", name, entity, place["lat"],
                    place["lon"], len(kept))
        conditions[name] = kept
    return conditions


def day_generators(seed: int, node_indices: list[int], num_samples: int) -> list[torch.Generator]:
    """One CPU generator per (node, sample), seeded from ``(seed, global node index, sample)``.

    The noise of a day does not depend on how the nodes are split over processes.
    """
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index, sample]).generate_state(1)[0]))
        for index in node_indices
        for sample in range(num_samples)
    ]


def write_output(path: Path, node_ids: list[str], series: np.ndarray, timestamps: pd.DatetimeIndex,
                 feature_names: list[str]) -> None:
    """``series`` ``(N, S, T, D)`` as a long table (.csv / .parquet) or as arrays (.npz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez_compressed(path, node_ids=np.asarray(node_ids, dtype=str), series=series,
                            timestamps=np.asarray(timestamps.strftime("%Y-%m-%dT%H:%M:%S"), dtype=str),
                            feature_names=np.asarray(feature_names, dtype=str))
        return
    num_samples = series.shape[1]
    index = pd.MultiIndex.from_product([node_ids, range(num_samples), timestamps],
                                       names=["node_id", "sample", "timestamp"])
    frame = pd.DataFrame(series.reshape(-1, series.shape[-1]), index=index, columns=feature_names)
    frame = frame.reset_index()
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def main(argv: list[str] | None = None) -> tuple[list[str], np.ndarray] | None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_outputs(args)
    if not (args.model / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {args.model}: no model_index.json; pass a save_pretrained folder")
    pipe = KGDiffPipeline.from_pretrained(args.model)
    pipe.node_rows(args.node_ids)  # unknown ids fail here, naming them
    pipe.day_type_index(args.day_type)  # and a day type the pipeline was not trained on
    accelerator = Accelerator()
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    conditions = new_node_conditions(args, pipe) if args.new_nodes else {}
    pipe.to(accelerator.device)
    pipe.set_progress_bar_config(disable=not accelerator.is_local_main_process)
    use_sampler(pipe, args.sampler)
    items = list(enumerate([*args.node_ids, *conditions]))  # known ids first, as the pipeline returns them
    with accelerator.split_between_processes(items) as local_items:
        local = []
        if local_items:
            names = [name for _, name in local_items]
            output = pipe(
                node_ids=[name for name in names if name not in conditions],
                new_nodes={name: conditions[name] for name in names if name in conditions},
                new_node_locations={n["name"]: (n["lat"], n["lon"]) for n in args.new_nodes if n["name"] in names},
                num_samples=args.num_samples,
                num_inference_steps=args.num_inference_steps,
                generator=day_generators(args.seed, [index for index, _ in local_items], args.num_samples),
                batch_size=args.batch_size,
                day_type=args.day_type,
            )
            local = list(zip(output.node_ids, output.series))
    gathered = gather_object(local)
    if not accelerator.is_main_process:
        return None
    node_ids = [node_id for node_id, _ in gathered]
    series = np.stack([days for _, days in gathered]).astype(np.float32)
    interval = int(pipe.config.interval_minutes)
    timestamps = pd.date_range(pd.Timestamp(args.date), periods=series.shape[2], freq=f"{interval}min")
    feature_names = list(pipe.config.feature_names)
    write_output(args.output, node_ids, series, timestamps, feature_names)
    plot = plot_generated_days(series, node_ids, output_paths(args.output)[1], interval, feature_names)
    logger.info("wrote %s (%d nodes x %d %s days x %d steps) and %s", args.output, series.shape[0], series.shape[1],
                args.day_type or (pipe.config.get("day_types") or ["generated"])[0], series.shape[2], plot)
    return node_ids, series


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ValueError) as err:
        raise SystemExit(f"generate.py: error: {err}") from None
