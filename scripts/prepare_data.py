"""Turn spatio-temporal data in any supported layout into a prepared dataset folder for training.

The folder holds weekday day-samples as a Hugging Face dataset (days/ and days.parquet), the node table
with its latitude train/test split (nodes.csv), the urban knowledge graph (kg/), TuckER embeddings
(kg_embeddings.safetensors, unless --no_kg_embeddings) and prepared.json (stats, dates, report).

Layouts and example commands (data paths as in ../shared/data):

  dcrnn-h5        DCRNN HDF5 frame (metr-la.h5, pems-bay.h5) + graph_sensor_locations*.csv
                  (header or none); sensor KG from distance bands, optionally road distances,
                  Caltrans station metadata and OSM road edges.
    python scripts/prepare_data.py --layout dcrnn-h5 --output prepared/pems_bay_16 \\
        --h5 ../shared/data/pems_bay_16/pems-bay-16.h5 \\
        --locations ../shared/data/pems_bay_16/graph_sensor_locations_bay.csv \\
        --distances_csv ../shared/data/pems_bay_16/distances_bay_2017.csv \\
        --station_meta ../shared/data/pems_bay_16/pems_bay_station_meta.csv \\
        --osm_edges ../shared/data/pems_bay_16/sensor_osm_edge.csv --start 2017-01-01 --end 2017-05-31

  wide-csv        CSV with a header row of sensor ids and one row per time step (no timestamps);
                  give the first row's timestamp and the interval.
    python scripts/prepare_data.py --layout wide-csv --output prepared/metr_la_week \\
        --csv ../shared/data/metr_la_week/los_speed.csv.gz \\
        --locations ../shared/data/metr_la_week/graph_sensor_locations.csv \\
        --first_timestamp 2012-03-01 --interval_minutes 5

  flow-npz        area flows: npz with flow (time, area, [in, out]), start, interval_minutes + a zone table
                  (graph_id, lon, lat, zone_id, ...); area KG from a UUKG triple file, an adjacency
                  matrix and/or zone polygons.
    python scripts/prepare_data.py --layout flow-npz --output prepared/nyc_bike \\
        --npz ../shared/data/nyc_bike_manhattan69/bike_inout_30min.npz \\
        --zones ../shared/data/nyc_bike_manhattan69/zones.csv \\
        --kg_triples ../shared/data/nyc_bike_manhattan69/urban_kg_triples.tsv.gz \\
        --start 2019-01-01 --end 2019-12-31 --min_mean_flow 1

  long-table      one row per (timestamp, node) with feature columns (.csv/.parquet) + a node table
                  (node_id, lat, lon, attributes); sensor KG, or an area KG when --kg_triples,
                  --adjacency or --polygons is given.
    python scripts/prepare_data.py --layout long-table --output prepared/my_city \\
        --table flows.parquet --node_table nodes.csv --feature_cols inflow outflow --entity_prefix Area \\
        --adjacency adjacency.npy

  synthetic-city  the embedded procedural city (no download); its KG comes with it.
    python scripts/prepare_data.py --layout synthetic-city --output prepared/synthetic --num_nodes 40

An existing non-empty --output folder is only replaced with --overwrite (the new folder is written beside it
and swapped in, so an interrupted run keeps the old one). Add --check to any command to print, per node,
coverage, days kept and dropped (and why), zeros, negatives, sentinels, out-of-range values and the value
range, builds the knowledge graph from the same inputs (no TuckER), writes nothing and exits 1 on what preparation
or training would stop at. A node that reads one constant value throughout (a stuck sensor) is a warning line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kgdiff_diffusers.data.checks import OUT_OF_RANGE_ACTIONS, OUTLIER_FACTOR, check_data
from kgdiff_diffusers.data.days import MINUTES_PER_DAY
from kgdiff_diffusers.data.loaders import (
    load_dcrnn_h5,
    load_flow_npz,
    load_long_table,
    load_wide_csv,
    read_distances_csv,
    reading,
    require_file,
)
from kgdiff_diffusers.data.prepared import FOLDER_ENTRIES, PreparedDataset, check_output_folder, prepare_dataset
from kgdiff_diffusers.data.series import SpatioTemporalData
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.kg.builders import build_area_kg, build_sensor_kg
from kgdiff_diffusers.kg.graph import KnowledgeGraph
from kgdiff_diffusers.kg.tucker import (
    DEFAULT_TUCKER_EPOCHS,
    TUCKER_EPOCHS_HELP,
    TUCKER_MAX_SECONDS_HELP,
    TUCKER_MAX_STEPS_HELP,
    pretrain_tucker,
    tucker_budget_problems,
)

logger = logging.getLogger("prepare_data")

LAYOUTS = ("dcrnn-h5", "wide-csv", "flow-npz", "long-table", "synthetic-city")
REQUIRED = {
    "dcrnn-h5": ("h5", "locations"),
    "wide-csv": ("csv", "locations", "first_timestamp", "interval_minutes"),
    "flow-npz": ("npz", "zones"),
    "long-table": ("table", "node_table"),
    "synthetic-city": (),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layout", required=True, choices=LAYOUTS, help="input layout (see above)")
    parser.add_argument("--output", type=Path, help="prepared dataset folder to write (not needed with --check)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only report per node what preparing would keep, drop and refuse and build the KG (no TuckER); "
        "exit 1 on problems, write nothing",
    )
    parser.add_argument(
        "--name", help="dataset name stored in prepared.json (default: the output folder's name)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty output folder"
    )

    days = parser.add_argument_group("days and split")
    days.add_argument("--start", help="first calendar day to keep, e.g. 2017-01-01 (inclusive)")
    days.add_argument("--end", help="last calendar day to keep, e.g. 2017-05-31 (inclusive)")
    days.add_argument("--include_weekends", action="store_true",
                      help="keep Saturdays and Sundays (train.py then learns weekday and weekend days apart)")
    days.add_argument("--max_gap_steps", type=int, help="longest interpolated gap in steps (default: 1 hour)")
    days.add_argument("--max_missing_fraction", type=float, default=0.1, help="drop days missing more steps")
    days.add_argument(
        "--test_fraction", type=float, default=0.25, help="northernmost share of nodes for test"
    )

    values = parser.add_argument_group("missing and implausible values")
    values.add_argument(
        "--missing_values", type=float, nargs="+", default=[], help="values that mean 'no reading', e.g. -1 -999"
    )
    values.add_argument(
        "--allow_negative", action="store_true", help="accept negative values (default: speeds/counts are >= 0)"
    )
    values.add_argument(
        "--valid_max", type=float, help=f"highest plausible value (default: {OUTLIER_FACTOR:g} x the 99th percentile)"
    )
    values.add_argument(
        "--out_of_range",
        choices=OUT_OF_RANGE_ACTIONS,
        default="error",
        help="implausible values: stop with an error (default) or treat them as missing",
    )
    days.add_argument("--test_node_ids", nargs="+", help="explicit test node ids (overrides --test_fraction)")
    days.add_argument(
        "--strict_locations",
        action="store_true",
        help="error (not warn) on coordinates of nodes without data",
    )

    sources = parser.add_argument_group("layout inputs")
    sources.add_argument("--h5", type=Path, help="dcrnn-h5: the HDF5 file")
    sources.add_argument("--h5_key", help="dcrnn-h5: HDF5 key when the file holds several frames")
    sources.add_argument("--locations", type=Path, help="dcrnn-h5 / wide-csv: sensor locations CSV")
    sources.add_argument("--csv", type=Path, help="wide-csv: the sensor-column CSV")
    sources.add_argument("--first_timestamp", help="wide-csv: timestamp of the first row, e.g. 2012-03-01")
    sources.add_argument(
        "--interval_minutes", type=int, help="wide-csv (required) / long-table: step in minutes"
    )
    sources.add_argument("--npz", type=Path, help="flow-npz: the flow archive")
    sources.add_argument("--zones", type=Path, help="flow-npz: zone table (graph_id, lon, lat, zone_id, ...)")
    sources.add_argument(
        "--min_mean_flow", type=float, help="flow-npz: drop areas with a lower mean per slot"
    )
    sources.add_argument("--table", type=Path, help="long-table: the (timestamp, node, features) table")
    sources.add_argument("--node_table", type=Path, help="long-table: node_id, lat, lon, attributes")
    sources.add_argument("--timestamp_col", default="timestamp", help="long-table: timestamp column")
    sources.add_argument("--node_col", default="node_id", help="long-table: node id column")
    sources.add_argument(
        "--feature_cols", nargs="+", help="long-table: feature columns (default: all others)"
    )
    sources.add_argument(
        "--entity_prefix", default="Sensor", help="long-table: KG entity kind, Sensor or Area"
    )
    sources.add_argument("--zero_is_missing", action="store_true", help="long-table: zeros mean no reading")
    sources.add_argument("--num_nodes", type=int, default=40, help="synthetic-city: sensors")
    sources.add_argument("--num_days", type=int, default=30, help="synthetic-city: calendar days")
    sources.add_argument("--steps_per_day", type=int, default=48, help="synthetic-city: steps per day")
    sources.add_argument("--seed", type=int, default=0, help="synthetic-city and TuckER seed")

    kg = parser.add_argument_group("knowledge graph")
    kg.add_argument("--distances_csv", type=Path, help="sensors: road distances (from, to, cost in metres)")
    kg.add_argument("--station_meta", type=Path, help="sensors: station metadata (freeway, direction, ...)")
    kg.add_argument("--osm_edges", type=Path, help="sensors: each sensor's OSM road edge (sid, u, v)")
    kg.add_argument("--kg_triples", type=Path, help="areas: UUKG-style triples (head, relation, tail)")
    kg.add_argument(
        "--adjacency",
        type=Path,
        help="areas: (N, N) 0/1 .npy, rows by graph_id (flow-npz) or in data node order",
    )
    kg.add_argument("--polygons", type=Path, help="areas: zone polygons GeoJSON")
    kg.add_argument("--no_kg_embeddings", action="store_true", help="skip TuckER pretraining")
    kg.add_argument("--embedding_dim", type=int, default=128, help="TuckER entity and relation dimension")
    kg.add_argument("--tucker_epochs", type=int, default=DEFAULT_TUCKER_EPOCHS, help=TUCKER_EPOCHS_HELP)
    kg.add_argument("--tucker_max_seconds", type=float, help=TUCKER_MAX_SECONDS_HELP)
    kg.add_argument("--tucker_max_steps", type=int, help=TUCKER_MAX_STEPS_HELP)

    args = parser.parse_args(argv)
    missing = [f"--{name}" for name in REQUIRED[args.layout] + (() if args.check else ("output",))]
    missing = [name for name in missing if getattr(args, name[2:]) is None]
    if missing:
        parser.error(f"--layout {args.layout} needs {' '.join(missing)}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}")
    problems = tucker_budget_problems(args.tucker_epochs, args.tucker_max_steps, args.tucker_max_seconds)
    if problems and not args.no_kg_embeddings:
        parser.error("; ".join(f"--tucker_{problem}" for problem in problems))
    if args.interval_minutes is not None and not (
        args.interval_minutes > 0 and MINUTES_PER_DAY % args.interval_minutes == 0
    ):
        parser.error(
            f"--interval_minutes {args.interval_minutes} must be a positive number of minutes that divides a day "
            "(e.g. 5, 10, 15, 30, 60); resample the data first"
        )
    return args


INPUT_FLAGS = ("h5", "locations", "csv", "npz", "zones", "table", "node_table", "distances_csv", "station_meta",
               "osm_edges", "kg_triples", "adjacency", "polygons")


def check_inputs_survive_the_output(args: argparse.Namespace) -> None:
    """Refuses an input file that writing ``--output`` would replace (e.g. ``--node_table OUT/nodes.csv``)."""
    output = args.output.resolve()
    for flag in INPUT_FLAGS:
        path = getattr(args, flag)
        if path is None:
            continue
        resolved = path.resolve()
        entry = next((e for e in FOLDER_ENTRIES if output / e == resolved or output / e in resolved.parents), None)
        if entry is not None:
            raise ValueError(
                f"--{flag} {path} is inside --output {args.output}, where preparing writes its own {entry}: the "
                "input would be replaced; move it out of the output folder or choose another --output"
            )


def load_data(args: argparse.Namespace) -> tuple[SpatioTemporalData, KnowledgeGraph | None]:
    """Reads the layout's files; the synthetic city also returns its KG."""
    strict = args.strict_locations
    if args.layout == "dcrnn-h5":
        data = load_dcrnn_h5(
            args.h5, args.locations, args.start, args.end, key=args.h5_key, strict_locations=strict
        )
    elif args.layout == "wide-csv":
        data = load_wide_csv(
            args.csv, args.locations, args.first_timestamp, args.interval_minutes, strict_locations=strict
        )
        if args.start or args.end:
            data = data.select_dates(args.start, args.end)
    elif args.layout == "flow-npz":
        data = load_flow_npz(
            args.npz,
            args.zones,
            args.start,
            args.end,
            min_mean_flow=args.min_mean_flow,
            strict_locations=strict,
        )
    elif args.layout == "long-table":
        data = load_long_table(
            args.table,
            args.node_table,
            timestamp_col=args.timestamp_col,
            node_col=args.node_col,
            feature_cols=args.feature_cols,
            interval_minutes=args.interval_minutes,
            start=args.start,
            end=args.end,
            entity_prefix=args.entity_prefix,
            zero_is_missing=args.zero_is_missing,
            strict_locations=strict,
        )
    else:
        data, kg = make_synthetic_city(
            num_nodes=args.num_nodes, num_days=args.num_days, steps_per_day=args.steps_per_day, seed=args.seed
        )
        if args.start or args.end:
            data = data.select_dates(args.start, args.end)
        return data, kg
    return data, None


def build_kg(args: argparse.Namespace, data: SpatioTemporalData) -> KnowledgeGraph:
    """The sensor KG, or the area KG for flow-npz and for long tables given area sources."""
    area_sources = (args.kg_triples, args.adjacency, args.polygons)
    if args.layout == "flow-npz" or any(source is not None for source in area_sources):
        if all(source is None for source in area_sources):
            raise ValueError(
                "--layout flow-npz needs --kg_triples, --adjacency or --polygons for the area KG"
            )
        adjacency = None
        if args.adjacency is not None:
            adjacency = read_adjacency(args, data)
        return build_area_kg(
            data.node_table,
            triples_path=None if args.kg_triples is None else require_file(args.kg_triples, "KG triple"),
            adjacency=adjacency,
            polygons_geojson=None
            if args.polygons is None
            else require_file(args.polygons, "polygon GeoJSON"),
        )
    return build_sensor_kg(
        data.node_table,
        distances=None if args.distances_csv is None else read_distances_csv(args.distances_csv),
        station_meta=None if args.station_meta is None else read_side_table(args.station_meta, "station metadata"),
        osm_edges=None if args.osm_edges is None else read_side_table(args.osm_edges, "OSM edge"),
    )


def read_side_table(path: Path, what: str) -> pd.DataFrame:
    """A KG side table (station metadata, OSM edges) as read by ``pandas.read_csv``, errors naming the file."""
    path = require_file(path, what)
    with reading(path, f"{what} CSV"):
        return pd.read_csv(path)


def read_adjacency(args: argparse.Namespace, data: SpatioTemporalData) -> np.ndarray:
    """``--adjacency`` in ``data``'s node order, after checking its shape."""
    path = require_file(args.adjacency, "adjacency")
    with reading(path, "adjacency .npy"):
        adjacency = np.load(path, allow_pickle=False)
    if not isinstance(adjacency, np.ndarray):
        raise ValueError(f"--adjacency {path}: expected a single (N, N) .npy array, not an .npz archive")
    if args.layout == "flow-npz":
        # Rows follow graph_id over every area of --npz, including those --min_mean_flow dropped.
        num_areas = data.num_nodes + len(data.load_report.get("nodes_dropped_low_flow", []))
        order = f"one row and column per area of --npz ({num_areas}), in graph_id order"
    else:
        num_areas = data.num_nodes
        order = f"one row and column per node ({num_areas}), in the data's node order"
    if adjacency.shape != (num_areas, num_areas):
        raise ValueError(
            f"--adjacency {path} has shape {adjacency.shape}; expected ({num_areas}, {num_areas}): {order}"
        )
    if args.layout == "flow-npz":  # keep the areas that were loaded
        rows = data.node_table["node_id"].astype(int).to_numpy()
        adjacency = adjacency[np.ix_(rows, rows)]
    return adjacency


def sampling_options(args: argparse.Namespace) -> dict:
    """The split, day and value arguments shared by ``prepare_dataset`` and ``check_data``."""
    return {
        "test_fraction": args.test_fraction,
        "test_node_ids": args.test_node_ids,
        "include_weekends": args.include_weekends,
        "max_gap_steps": args.max_gap_steps,
        "max_missing_fraction": args.max_missing_fraction,
        "missing_values": args.missing_values,
        "valid_min": None if args.allow_negative else 0.0,
        "valid_max": args.valid_max,
        "out_of_range": args.out_of_range,
    }


def run_check(args: argparse.Namespace) -> None:
    """Prints the per-node report of :func:`check_data` and builds the KG (no TuckER, nothing written).

    Raises:
        ValueError: listing the problems, the KG builder's among them.
    """
    data, kg = load_data(args)
    per_node, summary, problems = check_data(data, **sampling_options(args))
    if kg is None:
        try:
            kg = build_kg(args, data)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            problems.append(f"knowledge graph: {err}")
    if kg is not None:
        summary.append(f"knowledge graph: {kg.num_entities} entities, {kg.num_relations} relations, "
                       f"{len(kg.triples)} triples")
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(per_node.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print("\n".join(summary))
    if problems:
        raise ValueError(f"--check found {len(problems)} problem(s): " + " | ".join(problems))
    print("check passed: preparing and training can use this data")


def main(argv: list[str] | None = None) -> PreparedDataset | None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check:
        run_check(args)
        return None
    check_inputs_survive_the_output(args)
    check_output_folder(args.output, args.overwrite)
    data, kg = load_data(args)
    if kg is None:
        kg = build_kg(args, data)
    prepared = prepare_dataset(data, kg, args.name or args.output.name, **sampling_options(args))
    if not args.no_kg_embeddings:
        result = pretrain_tucker(
            kg,
            embedding_dim=args.embedding_dim,
            epochs=args.tucker_epochs,
            seed=args.seed,
            max_seconds=args.tucker_max_seconds,
            max_steps=args.tucker_max_steps,
        )
        prepared.report["kg"]["tucker"] = json.loads(json.dumps(result.metrics, default=float))
        prepared = dataclasses.replace(
            prepared,
            entity_embeddings=result.entity_embeddings,
            relation_embeddings=result.relation_embeddings,
        )
        logger.info("TuckER: %s", result.metrics)
    prepared.save(args.output, overwrite=args.overwrite)
    days = prepared.report["days"]
    logger.info(
        "wrote %s: %d nodes (%d train, %d test) x %d %s x %d steps x %d features; "
        "node-days kept %d, dropped %s; "
        "KG %d entities, %d relations, %d triples; embeddings: %s",
        args.output,
        len(prepared.node_ids),
        len(prepared.train_node_ids),
        len(prepared.test_node_ids),
        len(prepared.dates),
        "days" if args.include_weekends else "weekdays",
        prepared.steps_per_day,
        prepared.num_features,
        days["node_days_kept"],
        days["node_days_dropped"],
        kg.num_entities,
        kg.num_relations,
        len(kg.triples),
        "none" if prepared.entity_embeddings is None else "TuckER",
    )
    return prepared


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"prepare_data.py: error: {err}") from None
