"""How much does a node's KG neighbourhood say about its traffic? A nearest-donor probe on unseen nodes.

KGDiff can only generate the right days for an unseen node if its condition ``phi`` places it near training
nodes that behave alike. This probe measures that without training a diffusion model: every test node takes
the mean valid day of its nearest training node(s) in a given feature space (the *donors*), and the probe
reports the MAE (data units) between that profile and the test node's own mean valid day, averaged over the
test nodes. A feature that carries no information scores like "a random training node"; a useful one scores
like the spatial kNN donors of ``bench/quality.py``.

Feature spaces (cosine similarity for vectors, Euclidean for the standardised degree):
* ``TuckER neighbour mean r*t``: the mean over a node's KG neighbours of ``r * t`` with the prepared TuckER
  embeddings, i.e. the Euclidean expert's input before any training;
* ``neighbour-set overlap``: one-hot neighbour sets (which entities a node shares with another; no embedding);
* ``log degree per relation``: how many neighbours of each relation (e.g. POIs, roads) a node has;
* ``phi of <model>``: the condition of a trained pipeline (``--model``, repeatable);
* references: ``geography`` (haversine, the kNN baselines), ``random training node`` (the exact expectation
  over all training donors) and ``global mean profile``.

Example:
    python bench/condition_probe.py --data bench/results/data/nyc_bike --model bench/results/runs/nyc/kgdiff-seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import machine_info, markdown_table
from scipy import sparse

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.baselines import nearest_training_nodes
from kgdiff_diffusers.data.prepared import PreparedDataset
from kgdiff_diffusers.evaluation import check_pipeline_matches


def mean_profiles(dataset: PreparedDataset) -> np.ndarray:
    """``(N, T, D)``: each node's mean over its valid days, in data units (zeros for a node without one)."""
    valid = dataset.day_mask[..., None, None]
    counts = np.maximum(dataset.day_mask.sum(axis=1), 1)[:, None, None]
    return np.where(valid, dataset.days, 0.0).sum(axis=1, dtype=np.float64) / counts


def donor_mae(profiles: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray, donors: np.ndarray) -> float:
    """Mean over test nodes of MAE(mean of the donors' profiles, own profile); ``donors`` ``(N_test, k)``
    indexes ``train_rows``."""
    predicted = profiles[train_rows][donors].mean(axis=1)
    return float(np.abs(predicted - profiles[test_rows]).mean())


def nearest_by_cosine(
    features: np.ndarray | sparse.csr_matrix, train_rows: np.ndarray, test_rows: np.ndarray, k: int
) -> np.ndarray:
    if sparse.issparse(features):
        norms = np.sqrt(np.asarray(features.multiply(features).sum(axis=1))).ravel()
        unit = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ features
        similarity = (unit[test_rows] @ unit[train_rows].T).toarray()
    else:
        unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        similarity = unit[test_rows] @ unit[train_rows].T
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def nearest_by_euclidean(features: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray, k: int) -> np.ndarray:
    scale = features[train_rows].std(axis=0)
    standard = (features - features[train_rows].mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    distance = ((standard[test_rows, None, :] - standard[None, train_rows, :]) ** 2).sum(axis=-1)
    return np.argsort(distance, axis=1, kind="stable")[:, :k]


def kg_features(dataset: PreparedDataset) -> dict[str, tuple[np.ndarray | sparse.csr_matrix, str]]:
    """Feature name -> (``(N, F)`` features, metric) from the prepared KG and TuckER embeddings."""
    node_index, relation_id, neighbor_id = dataset.kg.neighbor_index(dataset.node_table["entity"].astype(str))
    num_nodes = len(dataset.node_ids)
    counts = np.bincount(node_index, minlength=num_nodes)[:, None]
    messages = dataset.relation_embeddings[relation_id] * dataset.entity_embeddings[neighbor_id]
    tucker_mean = np.zeros((num_nodes, messages.shape[1]))
    np.add.at(tucker_mean, node_index, messages)
    one_hot = sparse.csr_matrix(
        (np.ones(len(node_index)), (node_index, neighbor_id)), shape=(num_nodes, dataset.kg.num_entities)
    )
    relations = np.unique(relation_id)
    degree = np.stack([np.bincount(node_index[relation_id == r], minlength=num_nodes) for r in relations], axis=1)
    return {
        "TuckER neighbour mean r*t": (tucker_mean / counts, "cosine"),
        "neighbour-set overlap": (one_hot, "cosine"),
        "log degree per relation": (np.log1p(degree), "euclidean"),
    }


def model_features(model: Path, dataset: PreparedDataset) -> np.ndarray:
    """``(N, condition_dim)``: a trained pipeline's ``phi`` for the dataset's nodes, in node-table order."""
    pipe = KGDiffPipeline.from_pretrained(model)
    check_pipeline_matches(pipe, dataset)
    with torch.no_grad():
        return pipe.condition(list(dataset.node_ids)).float().numpy()


def probe(dataset: PreparedDataset, models: list[Path], ks: list[int]) -> list[dict]:
    """One row per feature space: its name and the donor MAE for each ``k``."""
    profiles = mean_profiles(dataset)
    has_data = dataset.day_mask.any(axis=1)  # a node without a valid day has no profile to give or score
    train_rows = np.asarray(dataset.train_rows)[has_data[dataset.train_rows]]
    test_rows = np.asarray(dataset.test_rows)[has_data[dataset.test_rows]]
    features = kg_features(dataset)
    for model in models:
        features[f"phi of {model.name}"] = (model_features(model, dataset), "cosine")
    coords = dataset.node_table[["lat", "lon"]].to_numpy(dtype=np.float64)
    rows = []
    for name, (values, metric) in features.items():
        nearest = nearest_by_cosine if metric == "cosine" else nearest_by_euclidean
        rows.append({"feature": name, **{
            f"k={k}": donor_mae(profiles, train_rows, test_rows, nearest(values, train_rows, test_rows, k))
            for k in ks
        }})
    rows.append({"feature": "geography (haversine)", **{
        f"k={k}": donor_mae(profiles, train_rows, test_rows, nearest_training_nodes(
            coords[train_rows], coords[test_rows], k)[0]) for k in ks
    }})
    every_donor = np.abs(profiles[train_rows][None] - profiles[test_rows][:, None]).mean(axis=(2, 3))
    global_mean = np.abs(profiles[train_rows].mean(axis=0) - profiles[test_rows]).mean()
    rows.append({"feature": "random training node (expectation)", **{f"k={k}": None for k in ks},
                 f"k={ks[0]}": float(every_donor.mean())})
    rows.append({"feature": "global mean profile (of node profiles)", **{f"k={k}": None for k in ks},
                 f"k={ks[0]}": float(global_mean)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    parser.add_argument("--model", type=Path, action="append", default=[], help="a trained pipeline (repeatable)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3], help="donors per test node")
    parser.add_argument("--output", type=Path, help="results JSON (default: print only)")
    args = parser.parse_args(argv)
    if not (args.data / "prepared.json").is_file():
        parser.error(f"--data: {args.data} is not a prepared dataset folder (no prepared.json)")
    dataset = PreparedDataset.load(args.data)
    num_train = int(dataset.day_mask[dataset.train_rows].any(axis=1).sum())
    if not all(1 <= k <= num_train for k in args.k):
        parser.error(f"--k: each value must lie in [1, {num_train}] (training nodes with data); got {args.k}")
    if dataset.entity_embeddings is None:
        parser.error(f"--data: {args.data} has no KG embeddings (run scripts/pretrain_kg.py on it)")
    rows = probe(dataset, args.model, args.k)
    header = ["feature space", *(f"donor MAE, k={k}" for k in args.k)]
    table = markdown_table(header, [
        [row["feature"], *("" if row[f"k={k}"] is None else f"{row[f'k={k}']:.3f}" for k in args.k)] for row in rows
    ])
    print(f"{dataset.name}: {len(dataset.test_rows)} test / {len(dataset.train_rows)} training nodes; MAE between "
          "the donors' mean profile and the test node's mean valid day, data units\n")
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = {"machine": machine_info(), "data": str(args.data), "models": [str(m) for m in args.model],
                  "rows": rows}
        args.output.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
