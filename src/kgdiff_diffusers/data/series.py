"""The in-memory form of a spatio-temporal dataset: node series on a regular time grid."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

NODE_TABLE_COLUMNS = ("node_id", "lat", "lon", "entity")
# Columns of the tables that generated days come back as (the pipeline's "pd" output, scripts/generate.py).
RESERVED_FEATURE_NAMES = ("node_id", "sample", "step", "timestamp")
# The prepared folder's KG files are tab-separated lines, so these can never be part of a node id or entity.
FORBIDDEN_ID_CHARACTERS = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}


def check_node_ids(ids: Iterable[object], where: str, what: str = "node id") -> None:
    """Raises ``ValueError`` naming the first id (node id or KG entity) that holds a tab or line break.

    Args:
        ids: the ids to check.
        where: where they come from (a file, ``"node_table"``), named in the error.
        what: what they are, named in the error (``"node id"``, ``"entity"``).
    """
    for node_id in ids:
        text = str(node_id)
        for character, name in FORBIDDEN_ID_CHARACTERS.items():
            if character in text:
                raise ValueError(
                    f"{where}: {what} {text!r} contains {name} ({character!r}); ids are written to tab- and "
                    "line-separated KG files, so rename the node"
                )


@dataclass
class SpatioTemporalData:
    """Series of ``N`` nodes on a regular time grid, with the nodes' coordinates and KG entities.

    Attributes:
        values: ``(N, T_total, D)`` float32 in the data's own units (mph, trips per slot ...); NaN marks a
            missing value. Timestamps absent from the source (e.g. the DST hour) are NaN rows.
        timestamps: ``(T_total,)`` regular grid, ``interval_minutes`` apart, no duplicates.
        node_table: one row per node in the order of ``values``' axis 0, with at least ``node_id`` (str),
            ``lat``, ``lon`` (float, degrees) and ``entity`` (the node's KG entity name, e.g.
            ``"Sensor/400001"``); extra attribute columns are kept.
        feature_names: ``(D,)`` names, e.g. ``["speed"]`` or ``["inflow", "outflow"]``.
        interval_minutes: minutes between consecutive timestamps.
        zero_is_missing: True when a 0 in the source means "no reading" (loop-detector speeds); loaders of
            such data have already turned those zeros into NaN, and day sampling masks any left.
        load_report: counts recorded while reading (zeros masked, timestamps inserted, nodes dropped ...).
    """

    values: np.ndarray
    timestamps: pd.DatetimeIndex
    node_table: pd.DataFrame
    feature_names: list[str]
    interval_minutes: int
    zero_is_missing: bool
    load_report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        self.timestamps = pd.DatetimeIndex(self.timestamps).as_unit("ns")
        self.feature_names = [str(name) for name in self.feature_names]
        if self.values.ndim != 3:
            raise ValueError(f"values must be (N, T_total, D); got shape {self.values.shape}")
        num_nodes, num_steps, num_features = self.values.shape
        missing = [column for column in NODE_TABLE_COLUMNS if column not in self.node_table.columns]
        if missing:
            raise ValueError(f"node_table lacks the column(s) {missing}; it needs {list(NODE_TABLE_COLUMNS)}")
        if len(self.node_table) != num_nodes:
            raise ValueError(f"node_table has {len(self.node_table)} rows but values has {num_nodes} nodes")
        check_node_ids(self.node_table["node_id"], "node_table")
        check_node_ids(self.node_table["entity"], "node_table", "entity")
        if self.node_table["node_id"].duplicated().any():
            duplicated = self.node_table["node_id"][self.node_table["node_id"].duplicated()].tolist()
            raise ValueError(f"node_table repeats node ids {duplicated[:5]}")
        if len(self.timestamps) != num_steps:
            raise ValueError(f"{len(self.timestamps)} timestamps for {num_steps} time steps in values")
        if len(self.feature_names) != num_features:
            raise ValueError(f"{len(self.feature_names)} feature names for {num_features} features in values")
        clashes = [name for name in self.feature_names if name in RESERVED_FEATURE_NAMES]
        if clashes or len(set(self.feature_names)) != num_features:
            raise ValueError(
                f"feature names {self.feature_names} must be unique and not {list(RESERVED_FEATURE_NAMES)}: generated "
                "days are returned as a table with those columns next to one column per feature; rename the feature "
                "column(s)"
            )
        if int(self.interval_minutes) != self.interval_minutes or self.interval_minutes <= 0:
            raise ValueError(f"interval_minutes must be a positive whole number; got {self.interval_minutes}")
        self.interval_minutes = int(self.interval_minutes)
        steps = np.diff(self.timestamps.asi8)
        if len(steps) and (steps != self.interval_minutes * 60 * 10**9).any():
            raise ValueError(
                f"timestamps must be a regular {self.interval_minutes}-minute grid; "
                "insert missing timestamps as NaN rows (see data.loaders.to_regular_grid)"
            )
        if np.isinf(self.values).any():
            raise ValueError("values contain inf; use NaN for missing values")
        self.node_table = self.node_table.reset_index(drop=True)
        self.node_table["node_id"] = self.node_table["node_id"].astype(str)

    @property
    def node_ids(self) -> list[str]:
        """``(N,)`` node ids in the order of ``values``' axis 0."""
        return self.node_table["node_id"].tolist()

    @property
    def num_nodes(self) -> int:
        return self.values.shape[0]

    @property
    def num_features(self) -> int:
        return self.values.shape[2]

    def select_dates(
        self, start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None
    ) -> SpatioTemporalData:
        """Keeps the time steps whose calendar day lies in ``[start, end]`` (both inclusive, whole days).

        Args:
            start: first day to keep (e.g. ``"2017-01-01"``); None keeps from the beginning.
            end: last day to keep (e.g. ``"2017-05-31"`` keeps all of May 31); None keeps to the end.

        Returns:
            A new :class:`SpatioTemporalData` over the selected steps.
        """
        days = self.timestamps.normalize()
        keep = np.ones(len(days), dtype=bool)
        if start is not None:
            keep &= days >= pd.Timestamp(start).normalize()
        if end is not None:
            keep &= days <= pd.Timestamp(end).normalize()
        if not keep.any():
            raise ValueError(
                f"no time steps between start={start} and end={end}; the data covers "
                f"{self.timestamps[0]} .. {self.timestamps[-1]}"
            )
        return SpatioTemporalData(
            values=self.values[:, keep],
            timestamps=self.timestamps[keep],
            node_table=self.node_table.copy(),
            feature_names=list(self.feature_names),
            interval_minutes=self.interval_minutes,
            zero_is_missing=self.zero_is_missing,
            load_report=dict(self.load_report),
        )

    def select_nodes(self, keep: np.ndarray) -> SpatioTemporalData:
        """Keeps the nodes where the ``(N,)`` boolean ``keep`` is True, in their order."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.num_nodes,):
            raise ValueError(f"keep must be a ({self.num_nodes},) boolean mask; got shape {keep.shape}")
        return SpatioTemporalData(
            values=self.values[keep],
            timestamps=self.timestamps,
            node_table=self.node_table[keep].copy(),
            feature_names=list(self.feature_names),
            interval_minutes=self.interval_minutes,
            zero_is_missing=self.zero_is_missing,
            load_report=dict(self.load_report),
        )
