"""Pretrain TuckER embeddings on an urban knowledge graph and save them as safetensors.

Examples:
    # a prepared dataset folder (has kg/): writes <folder>/kg_embeddings.safetensors
    python scripts/pretrain_kg.py --kg prepared/nyc_bike --overwrite
    # a UUKG-style triple file (head<TAB>relation<TAB>tail, optionally gzipped)
    python scripts/pretrain_kg.py --triples ../shared/data/nyc_bike_manhattan69/urban_kg_triples.tsv.gz \\
        --output nyc_kg_embeddings.safetensors --max_seconds 300

The metrics (filtered MRR, Hits@1/3/10 on held-out triples, the random-ranker MRR, timings) are
logged and written beside the output as ``<output stem>.metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from kgdiff_diffusers.kg.graph import TRIPLES_FILE, KnowledgeGraph
from kgdiff_diffusers.kg.tucker import (
    DEFAULT_TUCKER_EPOCHS,
    TUCKER_EPOCHS_HELP,
    TUCKER_MAX_SECONDS_HELP,
    TUCKER_MAX_STEPS_HELP,
    pretrain_tucker,
    read_triples_tsv,
    save_kg_embeddings,
    tucker_budget_problems,
)

logger = logging.getLogger("pretrain_kg")

PREPARED_KG_FOLDER = "kg"
PREPARED_EMBEDDINGS_FILE = "kg_embeddings.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--kg", type=Path, help="a KnowledgeGraph.save folder (triples.tsv + id maps) or a prepared dataset with kg/"
    )
    source.add_argument("--triples", type=Path, help="a head<TAB>relation<TAB>tail file (.tsv or .tsv.gz)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"embedding file; default {PREPARED_EMBEDDINGS_FILE} inside a prepared dataset given by --kg",
    )
    parser.add_argument("--embedding_dim", type=int, default=128, help="d of entities and relations")
    parser.add_argument(
        "--tucker_epochs", "--epochs", dest="epochs", type=int, default=DEFAULT_TUCKER_EPOCHS, help=TUCKER_EPOCHS_HELP
    )
    parser.add_argument(
        "--tucker_max_seconds", "--max_seconds", dest="max_seconds", type=float, help=TUCKER_MAX_SECONDS_HELP
    )
    parser.add_argument(
        "--tucker_max_steps", "--max_steps", dest="max_steps", type=int, help=TUCKER_MAX_STEPS_HELP
    )
    parser.add_argument("--batch_size", type=int, default=128, help="(head, relation) pairs per step")
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--label_smoothing", type=float, default=0.1)
    parser.add_argument("--held_out_fraction", type=float, default=0.05, help="triples held out for valid + test")
    parser.add_argument("--patience", type=int, default=5, help="epochs without better validation MRR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    problems = tucker_budget_problems(args.epochs, args.max_steps, args.max_seconds)
    if problems:
        parser.error("; ".join(f"--tucker_{problem}" for problem in problems))
    for flag, value in (("--embedding_dim", args.embedding_dim), ("--patience", args.patience)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    return args


def resolve_graph(args: argparse.Namespace) -> tuple[KnowledgeGraph, Path]:
    """Loads the graph named by ``--kg`` / ``--triples`` and decides the output path."""
    output = args.output
    if args.triples is not None:
        kg = read_triples_tsv(args.triples)
    elif (args.kg / PREPARED_KG_FOLDER / TRIPLES_FILE).is_file():
        kg = KnowledgeGraph.load(args.kg / PREPARED_KG_FOLDER)
        output = output or args.kg / PREPARED_EMBEDDINGS_FILE
    elif (args.kg / TRIPLES_FILE).is_file():
        kg = KnowledgeGraph.load(args.kg)
    else:
        raise FileNotFoundError(
            f"--kg {args.kg}: neither {TRIPLES_FILE} nor {PREPARED_KG_FOLDER}/{TRIPLES_FILE} exists; pass a "
            "KnowledgeGraph.save folder, a prepared dataset folder, or use --triples FILE"
        )
    if output is None:
        raise ValueError("--output is required unless --kg is a prepared dataset folder")
    return kg, Path(output)


def metrics_path(output: Path) -> Path:
    """``<output stem>.metrics.json`` beside the embedding file."""
    return output.with_name(output.stem + ".metrics.json")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    kg, output = resolve_graph(args)
    for path in (output, metrics_path(output)):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    logger.info(
        "knowledge graph: %d entities, %d relations, %d triples", kg.num_entities, kg.num_relations, len(kg.triples)
    )
    result = pretrain_tucker(
        kg,
        embedding_dim=args.embedding_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        label_smoothing=args.label_smoothing,
        held_out_fraction=args.held_out_fraction,
        seed=args.seed,
        device=args.device,
        max_seconds=args.max_seconds,
        max_steps=args.max_steps,
        patience=args.patience,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    save_kg_embeddings(output, result.entity_embeddings, result.relation_embeddings, metadata=result.metrics)
    metrics_path(output).write_text(json.dumps(result.metrics, indent=2) + "\n")
    logger.info("metrics: %s", json.dumps(result.metrics))
    logger.info("wrote %s and %s", output, metrics_path(output))
    return result.metrics


if __name__ == "__main__":
    main()
