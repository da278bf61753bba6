"""Readers for the layouts urban-traffic data comes in, each returning a :class:`SpatioTemporalData`.

- :func:`load_dcrnn_h5`: DCRNN's HDF5 frame (``metr-la.h5``, ``pems-bay.h5``) + sensor locations.
- :func:`load_wide_csv`: a CSV of sensor-id columns without timestamps (T-GCN's ``los_speed.csv``).
- :func:`load_flow_npz`: an area flow array ``(time, area, [in, out])`` + a zone table.
- :func:`load_long_table`: a generic ``(timestamp, node_id, features...)`` table + a node table.

Common rules: timestamps go onto a regular grid and timestamps absent from the source (e.g. PeMS-Bay's DST
hour 2017-03-12 02:00-02:55) become NaN rows, never shifted data; NaN in the source is a missing value;
inf, non-numeric values, duplicate or irregular timestamps raise ``ValueError`` naming the file. Every
node with data needs coordinates (``ValueError`` otherwise). Coordinates of ids that have no data (DCRNN
location files list the whole network, a data file often a subset) are ignored with a logged warning, or
raise ``ValueError`` when ``strict_locations=True``.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd

from .days import MINUTES_PER_DAY
from .series import SpatioTemporalData, check_node_ids

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What pandas / numpy / pyarrow / tables raise on empty, truncated or wrong-format files.
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)
_ID_COLUMNS = ("node_id", "sensor_id", "sid", "id", "station_id", "graph_id")
_LAT_COLUMNS = ("lat", "latitude")
_LON_COLUMNS = ("lon", "lng", "longitude")


def require_file(path: PathLike, what: str) -> str:
    """Returns ``path`` as a string; raises ``FileNotFoundError`` / ``ValueError`` for a missing / empty file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path} does not exist; check the path")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); expected a {what} file")
    return path


@contextmanager
def reading(path: str, what: str, hint: str = "") -> Iterator[None]:
    """Turns a reader's own error (truncated gzip/zip/HDF5/parquet/JSON, no columns, bad bytes) into one line.

    Raises:
        ValueError: ``"<path>: not a readable <what> file (<reason>)[; <hint>]"``.
    """
    try:
        yield
    except _READ_ERRORS as err:
        if isinstance(err, pd.errors.EmptyDataError):
            reason = "it holds no rows or columns"
        elif str(err).startswith("HDF5 error back trace"):
            reason = "truncated, or not HDF5"
        elif "allow_pickle" in str(err):
            reason = "it holds pickled Python objects, which are never loaded (unsafe); save plain arrays"
        else:
            lines = str(err).strip().splitlines()
            reason = f"{type(err).__name__}: {lines[0] if lines else 'no details'}"
        raise ValueError(f"{path}: not a readable {what} file ({reason})" + (f"; {hint}" if hint else "")) from None


def check_interval(interval_minutes, path: str) -> int:
    """``interval_minutes`` as an int if it is a whole number of minutes that divides a day, else ``ValueError``."""
    try:
        value = float(np.asarray(interval_minutes).item())
    except (TypeError, ValueError):
        raise ValueError(f"{path}: interval_minutes {interval_minutes!r} is not a number") from None
    if not (value > 0 and value == int(value) and MINUTES_PER_DAY % int(value) == 0):
        divisors = [d for d in range(1, MINUTES_PER_DAY + 1) if MINUTES_PER_DAY % d == 0 and d <= 60]
        raise ValueError(
            f"{path}: interval_minutes={value:g} must be a whole number of minutes that divides a day "
            f"(e.g. {', '.join(map(str, divisors))}); resample the data first"
        )
    return int(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _find_column(columns: Sequence[str], candidates: Sequence[str], path: str, what: str) -> str:
    lowered = {str(column).lower(): column for column in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise ValueError(f"{path}: no {what} column; expected one of {list(candidates)}, found {list(columns)}")


def read_node_table(path: PathLike, id_column: str | None = None) -> pd.DataFrame:
    """Reads node coordinates, with or without a header row.

    Without a header the file must have the three columns ``id, latitude, longitude`` (DCRNN's
    ``graph_sensor_locations_bay.csv``). With a header (``index,sensor_id,latitude,longitude`` in METR-LA,
    or any table with an id column and lat/lon columns) the id column is ``id_column`` or the first of
    ``node_id, sensor_id, sid, id, station_id, graph_id``; lat/lon may be named ``lat/latitude`` and
    ``lon/lng/longitude``. Other columns are kept as node attributes.

    Returns:
        A frame with ``node_id`` (str), ``lat``, ``lon`` (float64, degrees) and any extra columns.
    """
    path = require_file(path, "node location")
    with reading(path, "node location CSV"), open(path, encoding="utf-8") as f:
        first_line = f.readline().strip()
    if not first_line:
        raise ValueError(f"{path} is empty; expected node coordinates")
    first_fields = [field.strip() for field in first_line.split(",")]
    if all(_looks_numeric(field) for field in first_fields):
        if len(first_fields) != 3:
            raise ValueError(
                f"{path}: a location file without a header must have 3 columns (id, latitude, longitude); "
                f"found {len(first_fields)}. Add a header naming the id, lat and lon columns."
            )
        with reading(path, "node location CSV"):
            table = pd.read_csv(path, header=None, names=["node_id", "lat", "lon"], dtype={"node_id": str})
    else:
        with reading(path, "node location CSV"):
            table = pd.read_csv(path, dtype=str)
        id_name = id_column or _find_column(table.columns, _ID_COLUMNS, path, "node id")
        if id_name not in table.columns:
            raise ValueError(f"{path}: no column {id_name!r}; found {list(table.columns)}")
        lat_name = _find_column(table.columns, _LAT_COLUMNS, path, "latitude")
        lon_name = _find_column(table.columns, _LON_COLUMNS, path, "longitude")
        table = table.rename(columns={id_name: "node_id", lat_name: "lat", lon_name: "lon"})
        extra = [column for column in table.columns if column not in ("node_id", "lat", "lon")]
        table = table[["node_id", "lat", "lon"] + extra]
    table["node_id"] = table["node_id"].astype(str).str.strip()
    for column in ("lat", "lon"):
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = numeric.isna() | ~np.isfinite(numeric.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}: {column} of node {table['node_id'].iloc[row]!r} is {table[column].iloc[row]!r}, "
                "not a finite number"
            )
        table[column] = numeric.astype(np.float64)
    _check_degrees(table, path)
    duplicated = table["node_id"][table["node_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: node ids listed more than once: {duplicated.tolist()[:5]}")
    _check_coordinates(table, path)
    return table.reset_index(drop=True)


def _check_degrees(table: pd.DataFrame, path: str) -> None:
    """Refuses latitudes outside [-90, 90] and longitudes outside [-180, 180], as the KG builders would."""
    for column, limit in (("lat", 90.0), ("lon", 180.0)):
        outside = (table[column].abs() > limit).to_numpy()
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            swapped = (table["lat"].abs() > 90).any() and (table["lon"].abs() <= 90).all()
            raise ValueError(
                f"{path}: {column} of node {table['node_id'].iloc[row]!r} is {table[column].iloc[row]:g}, outside "
                f"[-{limit:g}, {limit:g}] degrees ({int(outside.sum())} node(s))"
                + ("; are the latitude and longitude columns swapped?" if swapped else "")
            )


def _check_coordinates(table: pd.DataFrame, path: str) -> None:
    """Refuses a node table whose points all coincide; warns about nodes sharing a point."""
    shared = table.duplicated(["lat", "lon"], keep=False)
    if len(table) > 1 and shared.all() and table[["lat", "lon"]].nunique().max() == 1:
        raise ValueError(
            f"{path}: all {len(table)} nodes have the same coordinates ({table['lat'].iloc[0]}, "
            f"{table['lon'].iloc[0]}); the latitude split and the distance-based KG need each node's location"
        )
    if shared.any():
        logger.warning(
            "%s: %d nodes share their coordinates with another node (e.g. %s); they are 0 m apart in the KG "
            "and the latitude split orders them by row",
            path,
            int(shared.sum()),
            table.loc[shared, "node_id"].tolist()[:4],
        )


def _match_nodes(
    data_ids: Sequence[str],
    locations: pd.DataFrame,
    data_path: str,
    locations_path: str,
    strict_locations: bool,
) -> pd.DataFrame:
    """The rows of ``locations`` for ``data_ids``, in that order; checks both directions."""
    check_node_ids(data_ids, data_path)
    repeated = pd.Index(data_ids)[pd.Index(data_ids).duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"{data_path}: node id(s) {repeated[:5]} appear more than once; each node needs one id")
    known = set(locations["node_id"])
    without_coordinates = [node_id for node_id in data_ids if node_id not in known]
    if without_coordinates:
        raise ValueError(
            f"{len(without_coordinates)} node id(s) in {data_path} have no coordinates in {locations_path}: "
            f"{without_coordinates[:5]}; add them to the location file (or check that the data file has a "
            "header row of node ids)"
        )
    wanted = set(data_ids)
    without_data = [node_id for node_id in locations["node_id"] if node_id not in wanted]
    if without_data:
        message = (
            f"{len(without_data)} node id(s) in {locations_path} have no data in {data_path} "
            f"(e.g. {without_data[:5]})"
        )
        if strict_locations:
            raise ValueError(message + "; remove them or pass strict_locations=False to ignore them")
        logger.warning("%s; they are ignored", message)
    return locations.set_index("node_id").loc[list(data_ids)].reset_index()


def _numeric_frame(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    """``frame`` as float64; raises on non-numeric values and inf (NaN stays: a missing value)."""
    numeric = frame.apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = numeric.isna() & frame.notna()
    if bad.to_numpy().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        raise ValueError(
            f"{path}: non-numeric value {frame.iat[row, column]!r} in column {frame.columns[column]!r} "
            f"at row {frame.index[row]}"
        )
    infinite = np.isinf(numeric.to_numpy())
    if infinite.any():
        row, column = np.argwhere(infinite)[0]
        raise ValueError(
            f"{path}: infinite value in column {frame.columns[column]!r} at row {frame.index[row]}; "
            "use an empty cell / NaN for a missing value"
        )
    return numeric


def to_regular_grid(
    frame: pd.DataFrame, path: str, interval_minutes: int | None = None
) -> tuple[pd.DataFrame, int, int]:
    """Puts a timestamp-indexed frame on a regular grid, inserting absent timestamps as NaN rows.

    Args:
        frame: rows indexed by a ``DatetimeIndex`` (any order).
        path: the source file, named in errors.
        interval_minutes: the grid step; None infers it as the most common step between timestamps.

    Returns:
        ``(frame on the grid, interval_minutes, number of inserted timestamps)``.

    Raises:
        ValueError: duplicate timestamps, or timestamps off the grid (irregular intervals).
    """
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise ValueError(f"{path}: rows are not indexed by timestamps (got {type(frame.index).__name__})")
    if frame.index.hasnans:
        raise ValueError(f"{path}: a row has no timestamp (NaT)")
    duplicated = frame.index[frame.index.duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: duplicate timestamps, e.g. {duplicated[0]} ({len(duplicated)} repeats)")
    frame = frame.sort_index()
    frame.index = frame.index.as_unit("ns")
    offsets = (frame.index.asi8 - frame.index.asi8[0]) // 10**9
    if interval_minutes is None:
        if len(frame) < 2:
            raise ValueError(f"{path}: cannot infer the time interval from fewer than two timestamps")
        steps, counts = np.unique(np.diff(offsets), return_counts=True)
        interval_seconds = int(steps[np.argmax(counts)])
        if interval_seconds % 60:
            raise ValueError(f"{path}: the most common time step is {interval_seconds} s, not whole minutes")
        interval_minutes = interval_seconds // 60
    if interval_minutes <= 0:
        raise ValueError(f"{path}: interval_minutes must be positive; got {interval_minutes}")
    off_grid = offsets % (interval_minutes * 60) != 0
    if off_grid.any():
        raise ValueError(
            f"{path}: irregular intervals: {frame.index[np.argmax(off_grid)]} is not on the "
            f"{interval_minutes}-minute grid starting at {frame.index[0]}; resample the data first"
        )
    grid = pd.date_range(frame.index[0], frame.index[-1], freq=f"{interval_minutes}min")
    inserted = len(grid) - len(frame)
    return frame.reindex(grid), interval_minutes, inserted


def parse_wall_clock(timestamps: pd.Series, path: str) -> tuple[pd.Series, pd.Series]:
    """Parses a timestamp column into local wall-clock times and the instants they name.

    Timestamps with a UTC offset (``2024-03-31T03:00+02:00``; the offset changes with daylight saving time)
    are read as the local time they show, so days are local calendar days: the skipped spring hour becomes
    missing values and the repeated autumn hour appears twice (callers keep its first copy).

    Returns:
        ``(wall clock, instants)``: naive ``datetime64`` series; ``instants`` is in UTC for timestamps with
        an offset and equals ``wall clock`` otherwise.

    Raises:
        ValueError: a value that is not a timestamp, naming the file and row.
    """
    try:
        parsed = pd.to_datetime(timestamps, errors="coerce")
        aware = parsed.dt.tz is not None
    except (ValueError, TypeError):  # mixed UTC offsets: a series crossing a DST change
        aware = True
    if aware:
        local = {}
        for text in pd.unique(timestamps):
            try:
                stamp = pd.Timestamp(text)
            except ValueError:
                stamp = pd.NaT
            local[text] = stamp.tz_localize(None) if stamp.tzinfo is not None else stamp
        parsed = pd.to_datetime(timestamps.map(local))
        instants = pd.to_datetime(timestamps, errors="coerce", utc=True).dt.tz_localize(None)
    else:
        instants = parsed
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise ValueError(f"{path}: row {row} has timestamp {timestamps.iloc[row]!r}, not a timestamp")
    return parsed, instants


def _local_time_index(frame: pd.DataFrame, path: str) -> tuple[pd.DataFrame, int]:
    """A frame with a tz-aware index re-indexed by local wall-clock time (see :func:`parse_wall_clock`).

    Returns:
        ``(frame, number of repeated autumn-hour rows dropped)``.
    """
    if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
        return frame, 0
    duplicated = frame.index[frame.index.duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: duplicate timestamps, e.g. {duplicated[0]} ({len(duplicated)} repeats)")
    wall = frame.index.tz_localize(None)
    repeated = wall.duplicated()
    frame = frame[~repeated]
    frame.index = wall[~repeated]
    return frame, int(repeated.sum())


def _assemble(
    frames: dict[str, pd.DataFrame],
    node_table: pd.DataFrame,
    path: str,
    interval_minutes: int | None,
    zero_is_missing: bool,
    start: str | None,
    end: str | None,
    dst_repeats_dropped: int = 0,
) -> SpatioTemporalData:
    """Builds the data from per-feature ``(time, node)`` frames sharing one index and column order."""
    gridded = {}
    inserted = 0
    for name, frame in frames.items():
        gridded[name], interval_minutes, inserted = to_regular_grid(frame, path, interval_minutes)
    first = next(iter(gridded.values()))
    values = np.stack([frame.to_numpy(dtype=np.float64).T for frame in gridded.values()], axis=-1)
    data = SpatioTemporalData(
        values=values,
        timestamps=first.index,
        node_table=node_table,
        feature_names=list(gridded),
        interval_minutes=interval_minutes,
        zero_is_missing=zero_is_missing,
    )
    if start is not None or end is not None:
        data = data.select_dates(start, end)
    report = {"source": path, "timestamps_inserted": int(inserted)}
    if dst_repeats_dropped:
        key = "dst_repeated_hour_rows_dropped"
        report[key] = dst_repeats_dropped
        logger.warning("%s: dropped %d rows of the repeated autumn DST hour (kept the first)", path, report[key])
    if zero_is_missing:
        zeros = data.values == 0
        data.values[zeros] = np.nan
        report["zeros_as_missing"] = int(zeros.sum())
    report["missing_values"] = int(np.isnan(data.values).sum())
    data.load_report = report
    logger.info(
        "%s: %d nodes x %d steps x %d features, %d timestamps inserted as missing, %d missing values",
        path,
        *data.values.shape,
        inserted,
        report["missing_values"],
    )
    return data


def _with_entities(node_table: pd.DataFrame, entity_prefix: str) -> pd.DataFrame:
    node_table = node_table.copy()
    if "entity" not in node_table.columns:
        node_table.insert(3, "entity", entity_prefix + "/" + node_table["node_id"])
    return node_table


def load_dcrnn_h5(
    h5_path: PathLike,
    locations_csv: PathLike,
    start: str | None = None,
    end: str | None = None,
    key: str | None = None,
    feature_name: str = "speed",
    zero_is_missing: bool = True,
    strict_locations: bool = False,
) -> SpatioTemporalData:
    """Loads DCRNN's HDF5 layout: a pandas frame with a DatetimeIndex and one column per sensor id.

    Args:
        h5_path: e.g. ``pems-bay.h5`` / ``metr-la.h5`` (readable by ``pandas.read_hdf``).
        locations_csv: ``graph_sensor_locations*.csv``, with or without a header (:func:`read_node_table`).
        start, end: first and last calendar day to keep (inclusive), e.g. ``"2017-01-01"``, ``"2017-05-31"``.
        key: the HDF5 key when the file holds several frames (PeMS-Bay's is ``"speed"``).
        feature_name: name of the single feature.
        zero_is_missing: turn zeros (loop detectors' "no reading") into NaN.
        strict_locations: raise instead of warning when the location file lists sensors without data.

    Returns:
        ``values`` ``(N, T_total, 1)`` in the file's units (mph), entity ``"Sensor/<id>"``.
    """
    path = require_file(h5_path, "DCRNN HDF5")
    locations_path = require_file(locations_csv, "sensor location")
    with reading(path, "DCRNN HDF5"):
        frame = pd.read_hdf(path, key=key)
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{path}: expected a pandas DataFrame (DCRNN layout), got {type(frame).__name__}")
    frame = frame.copy()
    frame.columns = [str(column) for column in frame.columns]
    frame, repeats = _local_time_index(_numeric_frame(frame, path), path)
    locations = read_node_table(locations_path)
    node_table = _match_nodes(frame.columns, locations, path, locations_path, strict_locations)
    return _assemble(
        {feature_name: frame}, _with_entities(node_table, "Sensor"), path, None, zero_is_missing, start, end, repeats
    )


def load_wide_csv(
    csv_path: PathLike,
    locations_csv: PathLike,
    start: str,
    interval_minutes: int,
    feature_name: str = "speed",
    zero_is_missing: bool = True,
    strict_locations: bool = False,
) -> SpatioTemporalData:
    """Loads a CSV whose header row holds sensor ids and whose rows are consecutive time steps.

    Args:
        csv_path: e.g. ``los_speed.csv.gz`` (compression from the suffix), no timestamp column.
        locations_csv: node coordinates, with or without a header (see :func:`read_node_table`).
        start: timestamp of the first row, e.g. ``"2012-03-01 00:00"``.
        interval_minutes: minutes between rows.
        feature_name, zero_is_missing, strict_locations: as in :func:`load_dcrnn_h5`.

    Returns:
        ``values`` ``(N, rows, 1)``, entity ``"Sensor/<id>"``. Select days with ``data.select_dates``.
    """
    path = require_file(csv_path, "wide CSV")
    locations_path = require_file(locations_csv, "sensor location")
    interval_minutes = check_interval(interval_minutes, path)
    with reading(path, "wide CSV"):
        frame = pd.read_csv(path, dtype=str)
        # pandas renames a repeated header "a" to "a.1"; read the header row as written to catch it.
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0]
    if frame.empty:
        raise ValueError(f"{path} has no data rows")
    stripped = pd.Series([str(name).strip() for name in header])
    repeated = stripped[stripped.duplicated()].unique().tolist()
    if repeated:
        raise ValueError(
            f"{path}: the header names column(s) {repeated[:5]} more than once; each column must be a "
            "different node id"
        )
    columns = [str(column).strip() for column in frame.columns]
    if columns and columns[0].lower() in ("timestamp", "time", "date", "datetime", "unnamed: 0"):
        raise ValueError(
            f"{path}: the first column {columns[0]!r} looks like timestamps/an index; a wide CSV holds only "
            "node columns (use load_long_table or drop the column)"
        )
    frame.columns = columns
    try:
        first = pd.Timestamp(start)
    except ValueError as err:
        raise ValueError(f"start={start!r} is not a timestamp (e.g. '2012-03-01 00:00')") from err
    frame.index = pd.date_range(first, periods=len(frame), freq=f"{int(interval_minutes)}min")
    frame = _numeric_frame(frame, path)
    locations = read_node_table(locations_path)
    node_table = _match_nodes(columns, locations, path, locations_path, strict_locations)
    return _assemble(
        {feature_name: frame},
        _with_entities(node_table, "Sensor"),
        path,
        interval_minutes,
        zero_is_missing,
        None,
        None,
    )


def load_flow_npz(
    npz_path: PathLike,
    zones_csv: PathLike,
    start: str | None = None,
    end: str | None = None,
    min_mean_flow: float | None = None,
    feature_names: Sequence[str] = ("inflow", "outflow"),
    strict_locations: bool = False,
) -> SpatioTemporalData:
    """Loads an area flow array with its zone table (Citi Bike / taxi in-out flows).

    Args:
        npz_path: an ``.npz`` with ``flow`` ``(time, area, D)`` (or ``(time, area)``), ``start`` (ISO
            timestamp of the first slot) and ``interval_minutes``.
        zones_csv: one row per area with ``graph_id`` (the index into the flow's area axis), ``lat``, ``lon``
            and optionally ``zone_id`` (NYC TLC LocationID = UUKG Area id) and other attributes.
        start, end: first and last calendar day to keep (inclusive), e.g. ``"2019-01-01"``, ``"2019-12-31"``.
        min_mean_flow: drop areas whose mean value over the kept slots and features is below this
            (e.g. 1.0: fewer than one trip per slot on average); the dropped ids go to ``load_report``.
        feature_names: names of the D features (``(time, area)`` arrays have the single feature ``"flow"``).
        strict_locations: raise when the zone table lists areas the flow array does not have.

    Returns:
        ``values`` ``(N, T_total, D)`` trips per slot (zeros are real), ``node_id`` = str(graph_id),
        entity ``"Area/<zone_id>"`` (``"Area/<graph_id>"`` without a zone_id column).
    """
    path = require_file(npz_path, "flow npz")
    zones_path = require_file(zones_csv, "zone table")
    with open(path, "rb") as f:
        if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            raise ValueError(f"{path} is an HDF5 file, not an .npz archive; use --layout dcrnn-h5 (load_dcrnn_h5)")
    with reading(path, "flow .npz"):
        archive = np.load(path, allow_pickle=False)
        contents = {name: archive[name] for name in archive.files} if hasattr(archive, "files") else None
    if contents is None:
        raise ValueError(f"{path}: holds a single .npy array, not an .npz archive of flow, start, interval_minutes")
    missing = [name for name in ("flow", "start", "interval_minutes") if name not in contents]
    if missing:
        raise ValueError(
            f"{path}: unknown layout, missing array(s) {missing}; expected flow (time, area, D), "
            f"start and interval_minutes (found {list(contents)})"
        )
    flow, start_text, interval = contents["flow"], contents["start"], contents["interval_minutes"]
    try:
        first = pd.Timestamp(str(start_text))
    except ValueError:
        raise ValueError(f"{path}: start {str(start_text)!r} is not a timestamp (e.g. 2019-01-01T00:00)") from None
    interval_minutes = check_interval(interval, path)
    if flow.ndim == 2:
        flow = flow[:, :, None]
        feature_names = ["flow"]
    if flow.ndim != 3 or flow.shape[2] != len(feature_names):
        raise ValueError(
            f"{path}: flow has shape {flow.shape}; expected (time, area, {len(feature_names)}) for features "
            f"{list(feature_names)}"
        )
    if not np.issubdtype(flow.dtype, np.number):
        raise ValueError(f"{path}: flow has non-numeric dtype {flow.dtype}")
    if np.issubdtype(flow.dtype, np.floating) and np.isinf(flow).any():
        raise ValueError(f"{path}: flow contains inf; use NaN for a missing value")
    zones = read_node_table(zones_path, id_column="graph_id")
    graph_ids = [str(i) for i in range(flow.shape[1])]
    node_table = _match_nodes(graph_ids, zones, path, zones_path, strict_locations)
    zone_ids = node_table["zone_id"] if "zone_id" in node_table.columns else node_table["node_id"]
    node_table.insert(3, "entity", "Area/" + zone_ids.astype(str))
    timestamps = pd.date_range(first, periods=flow.shape[0], freq=f"{interval_minutes}min")
    data = SpatioTemporalData(
        values=np.transpose(flow, (1, 0, 2)),
        timestamps=timestamps,
        node_table=node_table,
        feature_names=list(feature_names),
        interval_minutes=interval_minutes,
        zero_is_missing=False,
    )
    if start is not None or end is not None:
        data = data.select_dates(start, end)
    report = {"source": path, "timestamps_inserted": 0, "missing_values": int(np.isnan(data.values).sum())}
    if min_mean_flow is not None:
        mean_flow = np.nanmean(data.values, axis=(1, 2))
        keep = mean_flow >= min_mean_flow
        report["min_mean_flow"] = float(min_mean_flow)
        report["nodes_dropped_low_flow"] = [node_id for node_id, k in zip(data.node_ids, keep) if not k]
        if keep.sum() == 0:
            raise ValueError(f"{path}: no area has a mean flow >= min_mean_flow={min_mean_flow}")
        data = data.select_nodes(keep)
        logger.info(
            "%s: dropped %d areas with mean flow < %s: %s",
            path,
            int((~keep).sum()),
            min_mean_flow,
            report["nodes_dropped_low_flow"],
        )
    data.load_report = report
    return data


def _read_table(path: str) -> pd.DataFrame:
    lowered = path.lower()
    if lowered.endswith((".parquet", ".pq")):
        with reading(path, "parquet"):
            return pd.read_parquet(path)
    if lowered.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".tsv", ".tsv.gz")):
        with reading(path, "CSV/TSV"):
            return pd.read_csv(path, sep="\t" if ".tsv" in lowered else ",", dtype=str)
    raise ValueError(f"{path}: unknown table format; use .csv(.gz), .tsv or .parquet")


def load_long_table(
    table_path: PathLike,
    node_table_path: PathLike,
    timestamp_col: str = "timestamp",
    node_col: str = "node_id",
    feature_cols: Sequence[str] | None = None,
    interval_minutes: int | None = None,
    start: str | None = None,
    end: str | None = None,
    entity_prefix: str = "Sensor",
    zero_is_missing: bool = False,
    strict_locations: bool = False,
) -> SpatioTemporalData:
    """Loads a long table with one row per (timestamp, node) and one column per feature.

    Args:
        table_path: ``.csv(.gz)``, ``.tsv`` or ``.parquet``.
        node_table_path: node table with an id column, lat and lon, and any attributes (kept); an
            ``entity`` column, if present, names each node's KG entity.
        timestamp_col, node_col: names of the timestamp and node id columns.
        feature_cols: feature columns (D of them); None takes every other column.
        interval_minutes: the time step; None infers the most common one. (timestamp, node) pairs absent
            from the table are missing values.
        start, end: first and last calendar day to keep (inclusive).
        entity_prefix: KG entity kind for nodes without an ``entity`` column (``"Sensor"``: ``Sensor/<id>``).
        zero_is_missing: turn zeros into NaN (loop-detector speeds).
        strict_locations: raise when the node table lists nodes without data.

    Returns:
        ``values`` ``(N, T_total, D)`` in the table's units, nodes in the node table's order.
    """
    path = require_file(table_path, "long table")
    nodes_path = require_file(node_table_path, "node table")
    table = _read_table(path)
    missing = [column for column in (timestamp_col, node_col) if column not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: unknown layout, no column(s) {missing} (found {list(table.columns)}); "
            "pass timestamp_col and node_col"
        )
    if feature_cols is None:
        feature_cols = [column for column in table.columns if column not in (timestamp_col, node_col)]
    feature_cols = list(feature_cols)
    absent = [column for column in feature_cols if column not in table.columns]
    if absent or not feature_cols:
        raise ValueError(f"{path}: feature column(s) {absent or '(none)'} not found in {list(table.columns)}")
    timestamps, instants = parse_wall_clock(table[timestamp_col], path)
    table = table.assign(**{timestamp_col: instants, node_col: table[node_col].astype(str).str.strip()})
    duplicated = table.duplicated([timestamp_col, node_col])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise ValueError(f"{path}: duplicate timestamp {row[timestamp_col]} for node {row[node_col]!r}")
    table[timestamp_col] = timestamps
    repeated = table.duplicated([timestamp_col, node_col])
    table = table[~repeated]
    numeric = _numeric_frame(table[feature_cols], path)
    numeric[timestamp_col] = table[timestamp_col]
    numeric[node_col] = table[node_col]
    data_ids = list(dict.fromkeys(table[node_col]))
    locations = read_node_table(nodes_path, id_column=node_col if node_col != "node_id" else None)
    with_data = set(data_ids)
    order = [node_id for node_id in locations["node_id"] if node_id in with_data]
    node_table = _match_nodes(data_ids, locations, path, nodes_path, strict_locations).set_index("node_id")
    node_table = node_table.loc[order].reset_index()
    frames = {
        feature: numeric.pivot(index=timestamp_col, columns=node_col, values=feature)[order]
        for feature in feature_cols
    }
    return _assemble(
        frames,
        _with_entities(node_table, entity_prefix),
        path,
        interval_minutes,
        zero_is_missing,
        start,
        end,
        int(repeated.sum()),
    )


def read_distances_csv(path: PathLike) -> pd.DataFrame:
    """Reads DCRNN's ``distances*.csv`` (``from, to, cost`` in metres), with or without a header.

    Returns:
        A frame with ``from``, ``to`` (str sensor ids) and ``cost`` (float64, metres).
    """
    path = require_file(path, "distance")
    with reading(path, "distance CSV"), open(path, encoding="utf-8") as f:
        has_header = not _looks_numeric(f.readline().split(",")[-1].strip())
    with reading(path, "distance CSV"):
        table = pd.read_csv(path, header=0 if has_header else None, dtype=str)
    if table.shape[1] != 3:
        raise ValueError(f"{path}: expected 3 columns (from, to, cost); found {table.shape[1]}")
    table.columns = ["from", "to", "cost"]
    distance = pd.to_numeric(table["cost"], errors="coerce")
    if distance.isna().any() or np.isinf(distance).any():
        row = int(np.flatnonzero((distance.isna() | np.isinf(distance)).to_numpy())[0])
        value = table["cost"].iloc[row]
        raise ValueError(f"{path}: row {row} has distance {value!r}, not a finite number")
    table["from"] = table["from"].str.strip()
    table["to"] = table["to"].str.strip()
    table["cost"] = distance.astype(np.float64)
    return table
