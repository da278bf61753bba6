"""Fingerprints that tie a pipeline to the data and the configs it was trained with.

- :func:`data_fingerprint` digests a prepared dataset's node ids (in order), its test nodes and its KG;
  ``scripts/train.py`` stores it in the pipeline (``data_fingerprint`` in ``model_index.json``) and
  ``scripts/evaluate.py`` / ``scripts/generate.py`` compare it with their ``--data`` folder
  (:func:`check_data_fingerprint`).
- :func:`training_data_digest` digests the days themselves (values, masks, dates, normalisation); a training
  run records it in ``training_config.json`` so that resuming refuses data changed since the run started.
- :func:`kg_digest` digests a KG; it keys TuckER embeddings cached for a dataset that has none.
- :func:`config_digest` digests one config (a component's, or the pipeline's own entries); the pipeline
  records one per component when it is saved and compares them when it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .kg.graph import KnowledgeGraph

logger = logging.getLogger(__name__)

DIGEST_LENGTH = 16  # hex characters of sha256 kept: plenty to tell datasets apart


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:DIGEST_LENGTH]


def config_digest(config: Mapping) -> str:
    """Digest of a config's public entries (keys starting with ``_`` are diffusers' bookkeeping)."""
    public = {key: value for key, value in config.items() if not key.startswith("_")}
    return _digest(json.dumps(public, sort_keys=True, default=list).encode())


def kg_digest(kg: KnowledgeGraph) -> str:
    """Digest of a KG's entity and relation names and its triples."""
    names = json.dumps([kg.entities, kg.relations]).encode()
    return _digest(names + kg.triples.astype("<i8").tobytes())


def training_data_digest(
    days: np.ndarray,
    day_mask: np.ndarray,
    dates: Sequence[str],
    feature_names: Sequence[str],
    feature_mean: np.ndarray,
    feature_std: np.ndarray,
) -> str:
    """Digest of a dataset's day values (N, S, T, D), day mask, dates, feature names and normalisation statistics.

    Two folders with the same node ids and KG but other days, dates or statistics get different digests.
    """
    hasher = hashlib.sha256()
    hasher.update(json.dumps([list(dates), list(feature_names), list(np.shape(days))]).encode())
    for array, dtype in ((days, "<f4"), (day_mask, "?"), (feature_mean, "<f4"), (feature_std, "<f4")):
        hasher.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return hasher.hexdigest()[:DIGEST_LENGTH]


def data_fingerprint(node_table: pd.DataFrame, kg: KnowledgeGraph, name: str | None = None) -> dict:
    """``{"dataset", "num_nodes", "num_test_nodes", "node_ids", "test_node_ids", "kg"}`` of a prepared dataset.

    ``node_ids`` digests the ids in their order (the encoder's rows), ``test_node_ids`` the set of unseen
    nodes and ``kg`` the entity and relation names and the triples. Training-side validation nodes are cut
    from the train nodes after loading, so they do not enter the fingerprint.
    """
    node_ids = node_table["node_id"].astype(str).tolist()
    test_ids = sorted(node_table.loc[node_table["split"] == "test", "node_id"].astype(str))
    return {
        "dataset": name,
        "num_nodes": len(node_ids),
        "num_test_nodes": len(test_ids),
        "node_ids": _digest(json.dumps(node_ids).encode()),
        "test_node_ids": _digest(json.dumps(test_ids).encode()),
        "kg": kg_digest(kg),
    }


def check_data_fingerprint(recorded: Mapping | None, actual: Mapping, data: str, allow_mismatch: bool) -> None:
    """``ValueError`` when ``--data`` is not the data the pipeline was trained on (a warning if allowed).

    Args:
        recorded: the pipeline's ``config.data_fingerprint`` (``None`` for pipelines saved without one).
        actual: :func:`data_fingerprint` of the ``--data`` folder.
        data: the folder, for the message.
        allow_mismatch: warn instead of raising (``--ignore_data_fingerprint``).
    """
    if recorded is None:
        logger.warning("the pipeline was saved without a data fingerprint: cannot check that --data %s is the data "
                       "it was trained on", data)
        return
    differ = [key for key in ("node_ids", "test_node_ids", "kg") if recorded.get(key) != actual[key]]
    if not differ:
        return
    message = (
        f"--data {data} is not the data the pipeline was trained on: its {', '.join(differ)} differ (pipeline: "
        f"{recorded.get('dataset')}, {recorded.get('num_nodes')} nodes, {recorded.get('num_test_nodes')} test nodes; "
        f"--data: {actual['dataset']}, {actual['num_nodes']} nodes, {actual['num_test_nodes']} test nodes)"
    )
    if not allow_mismatch:
        raise ValueError(message + "; pass --ignore_data_fingerprint to use it anyway")
    logger.warning("%s; going on because of --ignore_data_fingerprint", message)
