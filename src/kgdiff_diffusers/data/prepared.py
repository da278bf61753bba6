"""A prepared dataset: weekday samples, node split, normalisation stats and the KG, in one folder.

Folder layout written by :meth:`PreparedDataset.save`::

    days/                        datasets.save_to_disk: one row per (node, day) with node_id, date,
                                 values Array2D(T, D) float32 (data units), valid bool
    days.parquet                 the same rows as a parquet file
    nodes.csv                    the node table (node_id, lat, lon, entity, split, attributes)
    kg/                          KnowledgeGraph.save (triples.tsv, entity2id.txt, relation2id.txt)
    kg_embeddings.safetensors    TuckER embeddings (only when present)
    prepared.json                name, feature names, interval, steps per day, stats, dates, report
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
from datasets.features.features import Array2DExtensionType

from ..kg.graph import KnowledgeGraph
from ..kg.tucker import load_kg_embeddings, save_kg_embeddings
from .checks import check_value_range, mask_sentinels
from .days import DEFAULT_MAX_MISSING_FRACTION, feature_stats, make_day_samples, split_nodes_by_latitude
from .loaders import reading
from .series import SpatioTemporalData

logger = logging.getLogger(__name__)

DAYS_DIR = "days"
DAYS_PARQUET = "days.parquet"
NODES_FILE = "nodes.csv"
# The columns every prepared node table holds.
NODES_FILE_COLUMNS = ("node_id", "lat", "lon", "entity", "split")
KG_DIR = "kg"
EMBEDDINGS_FILE = "kg_embeddings.safetensors"
META_FILE = "prepared.json"
FOLDER_ENTRIES = (DAYS_DIR, DAYS_PARQUET, NODES_FILE, KG_DIR, EMBEDDINGS_FILE, META_FILE)
# "validation": training-side nodes held out of training to choose checkpoints (never test nodes).
SPLITS = ("train", "validation", "test")


def check_output_folder(folder: str | os.PathLike, overwrite: bool = False) -> str:
    """Returns ``folder`` as a string if a prepared dataset may be written there.

    Raises:
        FileExistsError: ``folder`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"output path {folder} is a file, not a folder")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise FileExistsError(
            f"output folder {folder} exists and is not empty; choose another folder or pass "
            "overwrite=True (--overwrite) to replace it"
        )
    parent, base = os.path.split(os.path.abspath(folder))
    for leftover in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.old-*")):
        logger.warning("%s holds what %s held before an interrupted save; delete it when not needed", leftover, folder)
    return folder


@dataclass
class PreparedDataset:
    """Everything training and evaluation read: day samples, node split, stats and the urban KG.

    Attributes:
        name: dataset name (e.g. ``"pems_bay_16"``).
        days: ``(N, S, T, D)`` float32 in data units, gaps interpolated; 0 where ``day_mask`` is False.
        day_mask: ``(N, S)`` bool, True = a usable real day.
        dates: ``(S,)`` ISO dates of the day axis.
        node_table: ``node_id``, ``lat``, ``lon``, ``entity``, ``split`` (``"train"``, ``"validation"`` or
            ``"test"``) and any attributes; row order = axis 0 of ``days``. Validation nodes are cut from the
            training side (:meth:`with_split`); like test nodes, their days never reach the model.
        feature_names: ``(D,)`` feature names.
        interval_minutes: minutes per step (T = 1440 / interval_minutes).
        feature_mean, feature_std: ``(D,)`` float32 over the train nodes' valid days, in data units.
        kg: the urban knowledge graph; it contains every node's ``entity``.
        entity_embeddings: ``(num_entities, d)`` float32 TuckER embeddings, or None.
        relation_embeddings: ``(2 * num_relations, d)`` float32 (forward then inverse relations), or None.
        report: what was loaded, dropped and interpolated, and the split (JSON-serialisable).
    """

    name: str
    days: np.ndarray
    day_mask: np.ndarray
    dates: list[str]
    node_table: pd.DataFrame
    feature_names: list[str]
    interval_minutes: int
    feature_mean: np.ndarray
    feature_std: np.ndarray
    kg: KnowledgeGraph
    entity_embeddings: np.ndarray | None = None
    relation_embeddings: np.ndarray | None = None
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.days = np.asarray(self.days, dtype=np.float32)
        self.day_mask = np.asarray(self.day_mask, dtype=bool)
        self.feature_mean = np.asarray(self.feature_mean, dtype=np.float32)
        self.feature_std = np.asarray(self.feature_std, dtype=np.float32)
        if self.days.ndim != 4:
            raise ValueError(f"days must be (N, S, T, D); got shape {self.days.shape}")
        num_nodes, num_days, steps_per_day, num_features = self.days.shape
        if self.day_mask.shape != (num_nodes, num_days):
            raise ValueError(f"day_mask must be ({num_nodes}, {num_days}); got {self.day_mask.shape}")
        if len(self.dates) != num_days or len(self.node_table) != num_nodes:
            raise ValueError(
                f"{len(self.dates)} dates and {len(self.node_table)} nodes for days of shape "
                f"{self.days.shape}"
            )
        if len(self.feature_names) != num_features:
            raise ValueError(f"{len(self.feature_names)} feature names for {num_features} features")
        if self.feature_mean.shape != (num_features,) or self.feature_std.shape != (num_features,):
            raise ValueError(f"feature_mean and feature_std must be ({num_features},)")
        if not (np.isfinite(self.feature_mean).all() and np.isfinite(self.feature_std).all()):
            raise ValueError(
                f"feature_mean {self.feature_mean.tolist()} / feature_std {self.feature_std.tolist()} are not "
                "finite; prepare the dataset again with this version"
            )
        if not np.isfinite(self.days[self.day_mask]).all():
            raise ValueError("valid days hold NaN or inf; prepare the dataset again with this version")
        if steps_per_day * self.interval_minutes != 24 * 60:
            raise ValueError(f"{steps_per_day} steps of {self.interval_minutes} minutes do not make a day")
        missing = [column for column in NODES_FILE_COLUMNS if column not in self.node_table.columns]
        if missing:
            raise ValueError(f"node_table lacks the column(s) {missing}")
        unknown_splits = set(self.node_table["split"]) - set(SPLITS)
        if unknown_splits:
            raise ValueError(f"node_table split must be one of {SPLITS}; found {sorted(unknown_splits)}")
        absent = [e for e in self.node_table["entity"] if not self.kg.has_entity(e)]
        if absent:
            raise ValueError(f"{len(absent)} node entities are not in the knowledge graph, e.g. {absent[:5]}")
        if (self.entity_embeddings is None) != (self.relation_embeddings is None):
            raise ValueError("give both entity_embeddings and relation_embeddings, or neither")
        if self.entity_embeddings is not None:
            self.entity_embeddings = np.asarray(self.entity_embeddings, dtype=np.float32)
            self.relation_embeddings = np.asarray(self.relation_embeddings, dtype=np.float32)
            if len(self.entity_embeddings) != self.kg.num_entities:
                raise ValueError(
                    f"{len(self.entity_embeddings)} entity embeddings for {self.kg.num_entities} KG entities"
                )
            if len(self.relation_embeddings) != 2 * self.kg.num_relations:
                raise ValueError(
                    f"{len(self.relation_embeddings)} relation embeddings for 2 x {self.kg.num_relations} "
                    "relations (forward and inverse)"
                )

    @property
    def node_ids(self) -> list[str]:
        """``(N,)`` node ids in the order of ``days``' axis 0."""
        return self.node_table["node_id"].tolist()

    def split_node_ids(self, split: str) -> list[str]:
        """Node ids of ``split`` (one of :data:`SPLITS`), in node-table order."""
        return [self.node_ids[row] for row in self.split_rows(split)]

    def split_rows(self, split: str) -> np.ndarray:
        """Indices into axis 0 of the nodes of ``split`` (one of :data:`SPLITS`)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        return np.flatnonzero(self.node_table["split"].to_numpy() == split)

    @property
    def train_node_ids(self) -> list[str]:
        """The nodes the model trains on (validation and test nodes excluded)."""
        return self.split_node_ids("train")

    @property
    def validation_node_ids(self) -> list[str]:
        return self.split_node_ids("validation")

    @property
    def test_node_ids(self) -> list[str]:
        return self.split_node_ids("test")

    @property
    def train_rows(self) -> np.ndarray:
        """Indices into axis 0 of the train nodes."""
        return self.split_rows("train")

    @property
    def validation_rows(self) -> np.ndarray:
        """Indices into axis 0 of the validation nodes."""
        return self.split_rows("validation")

    @property
    def test_rows(self) -> np.ndarray:
        """Indices into axis 0 of the test nodes."""
        return self.split_rows("test")

    def with_split(
        self, test_node_ids: Sequence[str], validation_node_ids: Sequence[str] = (), rule: str = "given node ids"
    ) -> PreparedDataset:
        """A copy with a new node split and normalisation statistics of its train nodes; KG and embeddings shared.

        The KG and its TuckER embeddings do not depend on the split, so spatial folds reuse them unchanged;
        ``feature_mean`` / ``feature_std`` are recomputed from the new train nodes (:func:`feature_stats`).

        Args:
            test_node_ids: the new test nodes.
            validation_node_ids: training-side nodes held out for validation; disjoint from the test nodes.
            rule: how the split was made, stored in ``report["split"]["rule"]``.

        Raises:
            ValueError: unknown ids, validation nodes that are test nodes, or fewer than 2 train nodes.
        """
        test, validation = [str(n) for n in test_node_ids], [str(n) for n in validation_node_ids]
        known = set(self.node_ids)
        unknown = sorted((set(test) | set(validation)) - known)
        if unknown:
            raise ValueError(f"split node ids {unknown[:5]} are not nodes of dataset {self.name!r}")
        overlap = sorted(set(test) & set(validation))
        if overlap:
            raise ValueError(f"validation nodes {overlap[:5]} are test nodes: validation nodes must come from "
                             "the training side")
        if not test:
            raise ValueError("test_node_ids: the test split is empty")
        split = np.where(self.node_table["node_id"].isin(test), "test",
                         np.where(self.node_table["node_id"].isin(validation), "validation", "train"))
        train_rows = np.flatnonzero(split == "train")
        if len(train_rows) < 2:
            raise ValueError(f"only {len(train_rows)} train node(s) remain of {len(known)}; at least two are needed")
        node_table = self.node_table.copy()
        node_table["split"] = split
        mean, std = feature_stats(self.days, self.day_mask, train_rows)
        report = {**self.report, "split": {
            **self.report.get("split", {}),
            "rule": rule,
            "train_nodes": int(len(train_rows)),
            "validation_nodes": len(validation),
            "test_nodes": len(test),
            "test_node_ids": [n for n in self.node_ids if n in set(test)],
            "validation_node_ids": [n for n in self.node_ids if n in set(validation)],
        }}
        return dataclasses.replace(self, node_table=node_table, feature_mean=mean, feature_std=std, report=report)

    @property
    def steps_per_day(self) -> int:
        return self.days.shape[2]

    @property
    def num_features(self) -> int:
        return self.days.shape[3]

    def to_hf_dataset(self) -> datasets.Dataset:
        """The day samples as a ``datasets.Dataset``, one row per (node, day), node-major.

        Columns: ``node_id`` (str), ``date`` (ISO str), ``values`` ``Array2D((T, D), float32)`` in data
        units, ``valid`` (bool, = ``day_mask``).
        """
        num_nodes, num_days, steps, num_features = self.days.shape
        rows = num_nodes * num_days
        flat = pa.array(np.ascontiguousarray(self.days).reshape(-1))
        step_offsets = np.arange(0, rows * steps + 1, dtype=np.int64) * num_features
        inner = pa.ListArray.from_arrays(pa.array(step_offsets.astype(np.int32)), flat)
        row_offsets = np.arange(0, rows + 1, dtype=np.int64) * steps
        outer = pa.ListArray.from_arrays(pa.array(row_offsets.astype(np.int32)), inner)
        table = pa.table(
            {
                "node_id": pa.array(np.repeat(np.asarray(self.node_ids, object), num_days), pa.string()),
                "date": pa.array(np.tile(np.asarray(self.dates, object), num_nodes), pa.string()),
                "values": pa.ExtensionArray.from_storage(
                    Array2DExtensionType((steps, num_features), "float32"), outer
                ),
                "valid": pa.array(self.day_mask.reshape(-1)),
            }
        )
        return datasets.Dataset(datasets.table.InMemoryTable(table))

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> None:
        """Writes the folder layout of this module's docstring.

        Everything is written to a temporary folder beside ``folder`` first and swapped in by renames, so
        an interrupted save leaves the previous contents of ``folder`` intact.

        Args:
            folder: output folder; created if absent.
            overwrite: replace the files this method writes in an existing non-empty folder (other
                files there are kept); without it such a folder raises ``FileExistsError``.
        """
        folder = os.path.abspath(check_output_folder(folder, overwrite))
        parent, base = os.path.split(folder)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{base}.writing-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        try:
            self._write(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not os.path.isdir(folder):
            os.rename(staging, folder)
            return
        backup = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rmdir(backup)
        os.rename(folder, backup)
        os.rename(staging, folder)
        for entry in os.listdir(backup):
            if entry not in FOLDER_ENTRIES:
                os.rename(os.path.join(backup, entry), os.path.join(folder, entry))
        shutil.rmtree(backup)

    def _write(self, folder: str) -> None:
        """Writes every file of the layout into the existing empty ``folder``."""
        dataset = self.to_hf_dataset()
        dataset.save_to_disk(os.path.join(folder, DAYS_DIR))
        dataset.to_parquet(os.path.join(folder, DAYS_PARQUET))
        self.node_table.to_csv(os.path.join(folder, NODES_FILE), index=False)
        self.kg.save(os.path.join(folder, KG_DIR))
        if self.entity_embeddings is not None:
            save_kg_embeddings(
                os.path.join(folder, EMBEDDINGS_FILE), self.entity_embeddings, self.relation_embeddings
            )
        meta = {
            "name": self.name,
            "feature_names": list(self.feature_names),
            "interval_minutes": int(self.interval_minutes),
            "steps_per_day": int(self.steps_per_day),
            "feature_mean": self.feature_mean.tolist(),
            "feature_std": self.feature_std.tolist(),
            "dates": list(self.dates),
            "node_columns": {column: str(dtype) for column, dtype in self.node_table.dtypes.items()},
            "report": self.report,
        }
        with open(os.path.join(folder, META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PreparedDataset:
        """Reads a folder written by :meth:`save`; arrays come back bit-exact."""
        folder = os.fspath(folder)
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"{folder} is not a prepared dataset folder (no {META_FILE}); "
                "create one with scripts/prepare_data.py"
            )
        again = "the folder is damaged or incomplete: prepare it again (scripts/prepare_data.py --overwrite)"
        with reading(meta_path, "JSON", again), open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        nodes_path = os.path.join(folder, NODES_FILE)
        if not os.path.isfile(nodes_path):
            raise FileNotFoundError(f"node table {nodes_path} is missing")
        with reading(nodes_path, "node table CSV", again):
            node_table = pd.read_csv(nodes_path, dtype=str)
        node_table = node_table.astype(
            {column: dtype for column, dtype in meta["node_columns"].items() if column in node_table.columns}
        )
        days_path = os.path.join(folder, DAYS_DIR)
        if not os.path.isdir(days_path):
            raise FileNotFoundError(f"day samples {days_path} are missing")
        with reading(days_path, "datasets.save_to_disk", again):
            rows = datasets.load_from_disk(days_path).with_format("numpy")[:]
        dates = list(meta["dates"])
        node_index = {node_id: i for i, node_id in enumerate(node_table["node_id"])}
        date_index = {date: j for j, date in enumerate(dates)}
        try:
            node_rows = np.array([node_index[node_id] for node_id in rows["node_id"]], dtype=np.int64)
            date_cols = np.array([date_index[date] for date in rows["date"]], dtype=np.int64)
        except KeyError as err:
            raise ValueError(
                f"{days_path}: a row for {err.args[0]!r}, which {NODES_FILE}/{META_FILE} do not list"
            ) from None
        shape = (len(node_table), len(dates))
        if len(node_rows) != shape[0] * shape[1]:
            raise ValueError(f"{days_path}: {len(node_rows)} rows for {shape[0]} nodes x {shape[1]} dates")
        values = rows["values"]
        days = np.zeros(shape + values.shape[1:], dtype=np.float32)
        day_mask = np.zeros(shape, dtype=bool)
        days[node_rows, date_cols] = values
        day_mask[node_rows, date_cols] = rows["valid"]
        embeddings_path = os.path.join(folder, EMBEDDINGS_FILE)
        with reading(os.path.join(folder, KG_DIR), "knowledge graph", again):
            kg = KnowledgeGraph.load(os.path.join(folder, KG_DIR))
        with reading(embeddings_path, "safetensors", again):
            entity_embeddings, relation_embeddings = (
                load_kg_embeddings(embeddings_path, kg) if os.path.isfile(embeddings_path) else (None, None)
            )
        return cls(
            name=meta["name"],
            days=days,
            day_mask=day_mask,
            dates=dates,
            node_table=node_table,
            feature_names=list(meta["feature_names"]),
            interval_minutes=int(meta["interval_minutes"]),
            feature_mean=np.asarray(meta["feature_mean"], dtype=np.float32),
            feature_std=np.asarray(meta["feature_std"], dtype=np.float32),
            kg=kg,
            entity_embeddings=entity_embeddings,
            relation_embeddings=relation_embeddings,
            report=meta["report"],
        )


def prepare_dataset(
    data: SpatioTemporalData,
    kg: KnowledgeGraph,
    name: str,
    test_fraction: float = 0.25,
    test_node_ids: Sequence[str] | None = None,
    include_weekends: bool = False,
    max_gap_steps: int | None = None,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
    entity_embeddings: np.ndarray | None = None,
    relation_embeddings: np.ndarray | None = None,
    missing_values: Sequence[float] = (),
    valid_min: float | None = 0.0,
    valid_max: float | None = None,
    out_of_range: str = "error",
) -> PreparedDataset:
    """Day samples, latitude split and train-node statistics for ``data``, with its KG.

    Args:
        data: the loaded series (any loader, or the synthetic city).
        kg: the urban KG; must contain every node's ``entity``.
        name: dataset name stored with it.
        test_fraction, test_node_ids: the node split (see :func:`split_nodes_by_latitude`).
        include_weekends, max_gap_steps, max_missing_fraction: day sampling (see :func:`make_day_samples`).
        entity_embeddings, relation_embeddings: optional TuckER embeddings of ``kg``.
        missing_values: sentinels meaning "no reading" (e.g. ``[-1]``), masked as missing.
        valid_min, valid_max, out_of_range: the plausible range and what to do outside it
            (see :func:`~kgdiff_diffusers.data.checks.check_value_range`).

    Returns:
        The :class:`PreparedDataset`; its ``report`` has sections ``load``, ``values``, ``days``, ``split``
        and ``kg``. ``data`` is not modified.
    """
    absent = [entity for entity in data.node_table["entity"] if not kg.has_entity(entity)]
    if absent:
        raise ValueError(
            f"{len(absent)} of {data.num_nodes} node entities are not in the knowledge graph "
            f"(e.g. {absent[:5]}); build the KG from this node table"
        )
    data = dataclasses.replace(data, values=data.values.copy())
    value_report = {"sentinels_masked": mask_sentinels(data, missing_values)}
    value_report.update(check_value_range(data, valid_min, valid_max, out_of_range))
    days, day_mask, dates, day_report = make_day_samples(
        data,
        include_weekends=include_weekends,
        max_gap_steps=max_gap_steps,
        max_missing_fraction=max_missing_fraction,
    )
    train_ids, test_ids = split_nodes_by_latitude(data.node_table, test_fraction, test_node_ids)
    node_table = data.node_table.copy()
    node_table["split"] = np.where(node_table["node_id"].isin(test_ids), "test", "train")
    train_rows = np.flatnonzero(node_table["split"].to_numpy() == "train")
    mean, std = feature_stats(days, day_mask, train_rows)
    without_days = [node_id for node_id, ok in zip(data.node_ids, day_mask.any(axis=1)) if not ok]
    report = {
        "load": data.load_report,
        "values": value_report,
        "days": day_report,
        "split": {
            "rule": "given test_node_ids" if test_node_ids is not None else "highest latitudes",
            "test_fraction": None if test_node_ids is not None else float(test_fraction),
            "train_nodes": len(train_ids),
            "test_nodes": len(test_ids),
            "test_node_ids": test_ids,
            "nodes_without_valid_day": without_days,
        },
        "kg": {"entities": kg.num_entities, "relations": kg.num_relations, "triples": int(len(kg.triples))},
    }
    logger.info(
        "%s: %d nodes (%d train, %d test), %d dates kept of %d considered, %d node-days kept, dropped %s, "
        "%d values interpolated; KG %d entities, %d relations, %d triples",
        name,
        data.num_nodes,
        len(train_ids),
        len(test_ids),
        day_report["dates_kept"],
        day_report["dates_considered"],
        day_report["node_days_kept"],
        day_report["node_days_dropped"],
        day_report["values_interpolated"],
        kg.num_entities,
        kg.num_relations,
        len(kg.triples),
    )
    return PreparedDataset(
        name=name,
        days=days,
        day_mask=day_mask,
        dates=dates,
        node_table=node_table,
        feature_names=list(data.feature_names),
        interval_minutes=data.interval_minutes,
        feature_mean=mean,
        feature_std=std,
        kg=kg,
        entity_embeddings=entity_embeddings,
        relation_embeddings=relation_embeddings,
        report=report,
    )
