"""Loaders, day samples, gap handling and the latitude split, on the real folders and on hand-made files."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kgdiff_diffusers.data.days import (
    feature_stats,
    interpolate_gaps,
    longest_run,
    make_day_samples,
    split_nodes_by_latitude,
)
from kgdiff_diffusers.data.loaders import (
    load_dcrnn_h5,
    load_flow_npz,
    load_long_table,
    load_wide_csv,
    read_distances_csv,
    read_node_table,
)
from kgdiff_diffusers.data.series import SpatioTemporalData

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_folder(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")
    return folder


@pytest.fixture(scope="module")
def pems_jan_may() -> SpatioTemporalData:
    folder = real_folder("pems_bay_16")
    return load_dcrnn_h5(
        folder / "pems-bay-16.h5",
        folder / "graph_sensor_locations_bay.csv",
        start="2017-01-01",
        end="2017-05-31",
    )


def test_pems_bay_16_jan_may_weekdays(pems_jan_may: SpatioTemporalData) -> None:
    raw = pd.read_hdf(real_folder("pems_bay_16") / "pems-bay-16.h5")
    raw = raw.loc["2017-01-01":"2017-05-31"]
    zeros = int((raw.to_numpy() == 0).sum())
    assert zeros > 0
    data = pems_jan_may
    assert data.node_ids == [str(column) for column in raw.columns]
    assert data.node_table["entity"].tolist() == [f"Sensor/{column}" for column in raw.columns]
    assert data.feature_names == ["speed"] and data.interval_minutes == 5 and data.zero_is_missing
    # 151 days of 288 steps: the file lacks the 12 DST steps, which come back as NaN rows.
    assert len(raw) == 151 * 288 - 12
    assert data.values.shape == (16, 151 * 288, 1)
    assert data.load_report["timestamps_inserted"] == 12
    assert data.load_report["zeros_as_missing"] == zeros
    assert not (data.values == 0).any()
    assert int(np.isnan(data.values).sum()) == zeros + 12 * 16

    days, day_mask, dates, report = make_day_samples(data)
    assert days.shape == (16, 108, 288, 1)
    assert day_mask.all()
    assert len(dates) == 108 and dates[0] == "2017-01-02" and dates[-1] == "2017-05-31"
    assert all(pd.Timestamp(date).day_of_week < 5 for date in dates)
    assert report["values_interpolated"] == zeros == report["values_missing"]
    assert not np.isnan(days).any()
    # Days stay in mph: a filled zero lies between its neighbours, not at 0.
    assert 55 < days.mean() < 70 and days.min() > 0


def test_pems_bay_dst_hour_is_missing_not_shifted(pems_jan_may: SpatioTemporalData) -> None:
    raw = pd.read_hdf(real_folder("pems_bay_16") / "pems-bay-16.h5")
    data = pems_jan_may
    dst = data.timestamps.get_indexer(pd.date_range("2017-03-12 02:00", periods=12, freq="5min"))
    assert (dst >= 0).all()
    assert np.isnan(data.values[:, dst]).all()
    after = data.timestamps.get_loc(pd.Timestamp("2017-03-12 03:00"))
    np.testing.assert_array_equal(data.values[:, after, 0], raw.loc["2017-03-12 03:00"].to_numpy(np.float32))
    with_weekends, _, dates, _ = make_day_samples(data, include_weekends=True, max_gap_steps=12)
    sunday = dates.index("2017-03-12")
    # A 12-step gap is interpolated in place: 02:00..02:55 lie on the line from 01:55 to 03:00.
    before = raw.loc["2017-03-12 01:55"].to_numpy(np.float32)
    after_value = raw.loc["2017-03-12 03:00"].to_numpy(np.float32)
    midway = with_weekends[:, sunday, 24 + 6, 0]
    np.testing.assert_allclose(midway, before + (after_value - before) * 7 / 13, rtol=1e-5)


def test_pems_bay_locations_without_header_and_distances() -> None:
    folder = real_folder("pems_bay_16")
    locations = read_node_table(folder / "graph_sensor_locations_bay.csv")
    assert len(locations) == 325 and locations["node_id"].iloc[0] == "400001"
    assert locations["lat"].between(37.2, 37.5).all()
    distances = read_distances_csv(folder / "distances_bay_2017.csv")
    assert list(distances.columns) == ["from", "to", "cost"]
    assert distances["cost"].min() == 0 and distances["cost"].max() > 1000


def test_metr_la_week_wide_csv() -> None:
    folder = real_folder("metr_la_week")
    data = load_wide_csv(folder / "los_speed.csv.gz", folder / "graph_sensor_locations.csv", "2012-03-01", 5)
    header_ids = (folder / "graph_sensor_ids.txt").read_text().strip().split(",")
    assert data.node_ids == header_ids
    assert data.values.shape == (207, 2016, 1)
    days, day_mask, dates, report = make_day_samples(data)
    assert days.shape == (207, 5, 288, 1) and day_mask.all()
    assert dates == ["2012-03-01", "2012-03-02", "2012-03-05", "2012-03-06", "2012-03-07"]
    assert report["weekend_days_excluded"] == 2


def test_nyc_bike_2019_flows() -> None:
    folder = real_folder("nyc_bike_manhattan69")
    data = load_flow_npz(
        folder / "bike_inout_30min.npz", folder / "zones.csv", start="2019-01-01", end="2019-12-31"
    )
    with np.load(folder / "bike_inout_30min.npz") as archive:
        flow = archive["flow"][: 365 * 48]
    assert data.values.shape == (69, 365 * 48, 2)
    assert data.feature_names == ["inflow", "outflow"] and not data.zero_is_missing
    np.testing.assert_array_equal(data.values, np.transpose(flow, (1, 0, 2)).astype(np.float32))
    zones = pd.read_csv(folder / "zones.csv")
    assert data.node_table["entity"].tolist() == [f"Area/{zone_id}" for zone_id in zones["zone_id"]]
    days, day_mask, dates, _ = make_day_samples(data)
    assert days.shape == (69, 261, 48, 2) and day_mask.all()
    # Zeros are real trips counts here: the zones without bike flow keep their all-zero days.
    assert (days[18] == 0).all()

    busy = load_flow_npz(
        folder / "bike_inout_30min.npz",
        folder / "zones.csv",
        start="2019-01-01",
        end="2019-12-31",
        min_mean_flow=1.0,
    )
    kept_mean = flow.mean(axis=(0, 2)) >= 1.0
    assert busy.node_ids == [str(i) for i in np.flatnonzero(kept_mean)]
    assert {"18", "19", "27", "28", "38"} <= set(busy.load_report["nodes_dropped_low_flow"])


def test_latitude_split_picks_northernmost(pems_jan_may: SpatioTemporalData) -> None:
    table = pems_jan_may.node_table
    train, test = split_nodes_by_latitude(table, test_fraction=0.25)
    assert len(test) == 4 and len(train) == 12
    lat = table.set_index("node_id")["lat"]
    assert lat[test].min() > lat[train].max()
    assert test == [node_id for node_id in table["node_id"] if node_id in test]
    train, test = split_nodes_by_latitude(table, test_node_ids=[table["node_id"].iloc[0]])
    assert test == [table["node_id"].iloc[0]] and len(train) == 15


def small_table(lats: list[float]) -> pd.DataFrame:
    ids = [str(i) for i in range(len(lats))]
    return pd.DataFrame({"node_id": ids, "lat": lats, "lon": 0.0, "entity": ["Sensor/" + i for i in ids]})


def test_latitude_split_errors() -> None:
    table = small_table([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="test split is empty"):
        split_nodes_by_latitude(table, test_fraction=0.1)
    with pytest.raises(ValueError, match="at least two are needed"):
        split_nodes_by_latitude(table, test_fraction=0.75)
    with pytest.raises(ValueError, match="not nodes of the data"):
        split_nodes_by_latitude(table, test_node_ids=["9"])
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        split_nodes_by_latitude(table, test_fraction=1.0)
    with pytest.raises(ValueError, match="test split is empty"):
        split_nodes_by_latitude(table, test_node_ids=[])


def test_interpolation_and_gap_runs() -> None:
    series = np.array([[np.nan, 2.0, np.nan, np.nan, 8.0, np.nan], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    filled, count = interpolate_gaps(series)
    np.testing.assert_allclose(filled[0], [2.0, 2.0, 4.0, 6.0, 8.0, 8.0])
    np.testing.assert_array_equal(filled[1], series[1])
    assert count == 4
    missing = np.array([[1, 1, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(longest_run(missing), [3, 0, 7])


def hand_made_days() -> SpatioTemporalData:
    """Three nodes over Mon 2024-01-01 .. Sun 2024-01-07 at 6-hour steps (4 steps a day)."""
    timestamps = pd.date_range("2024-01-01", periods=7 * 4, freq="360min")
    values = np.arange(3 * 28, dtype=np.float32).reshape(3, 28, 1) + 1.0
    values[0, 1, 0] = np.nan  # Monday, one step: interpolated
    values[1, 5:7, 0] = np.nan  # Tuesday, two steps in a row: a long gap for max_gap_steps=1
    values[2, 8:12, 0] = np.nan  # Wednesday, no data
    values[2, 12, 0] = 0.0  # Thursday, a zero that means "missing"
    return SpatioTemporalData(values, timestamps, small_table([1.0, 2.0, 3.0]), ["speed"], 360, True)


def test_make_day_samples_rules() -> None:
    data = hand_made_days()
    days, day_mask, dates, report = make_day_samples(data, max_gap_steps=1, max_missing_fraction=0.5)
    assert dates == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    assert days.shape == (3, 5, 4, 1)
    np.testing.assert_array_equal(day_mask, [[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 0, 1, 1]])
    assert days[0, 0, 1, 0] == pytest.approx((1.0 + 3.0) / 2)
    assert days[2, 3, 0, 0] == days[2, 3, 1, 0]  # the masked zero at a day's start takes the next reading
    assert (days[~day_mask] == 0).all()
    assert report["node_days_dropped"] == {"no_data": 1, "too_many_missing": 0, "long_gap": 1}
    assert report["zeros_masked"] == 1 and report["values_interpolated"] == 2
    assert report["node_days_kept"] == 13 and report["weekend_days_excluded"] == 2
    _, mask_strict, _, strict = make_day_samples(data, max_gap_steps=4, max_missing_fraction=0.25)
    assert strict["node_days_dropped"] == {"no_data": 1, "too_many_missing": 1, "long_gap": 0}
    assert not mask_strict[1, 1]
    all_days, _, all_dates, _ = make_day_samples(data, include_weekends=True)
    assert len(all_dates) == 7 and all_days.shape[1] == 7


def test_feature_stats_over_train_valid_days() -> None:
    days = np.zeros((3, 2, 4, 2), dtype=np.float32)
    days[0, 0] = [[1.0, 10.0]] * 4
    days[1, 0] = [[3.0, 30.0]] * 4
    days[1, 1] = [[100.0, 100.0]] * 4  # an invalid day: ignored
    days[2] = 1000.0  # a test node: ignored
    day_mask = np.array([[True, False], [True, False], [True, True]])
    mean, std = feature_stats(days, day_mask, train_rows=[0, 1])
    np.testing.assert_allclose(mean, [2.0, 20.0])
    np.testing.assert_allclose(std, [1.0, 10.0])
    assert mean.dtype == np.float32
    with pytest.raises(ValueError, match="no valid day"):
        feature_stats(days, np.zeros((3, 2), dtype=bool), train_rows=[0, 1])


# ---------------------------------------------------------------- bad input


def write_locations(path: Path, ids: list[str], header: bool = True) -> Path:
    rows = [f"{node_id},{34 + i / 100},{-118 - i / 100}" for i, node_id in enumerate(ids)]
    path.write_text(("sensor_id,latitude,longitude\n" if header else "") + "\n".join(rows) + "\n")
    return path


def write_wide(path: Path, ids: list[str], rows: list[list[str]]) -> Path:
    path.write_text(",".join(ids) + "\n" + "\n".join(",".join(row) for row in rows) + "\n")
    return path


def test_missing_files_are_named(tmp_path: Path) -> None:
    locations = write_locations(tmp_path / "loc.csv", ["1"])
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_dcrnn_h5(tmp_path / "nope.h5", locations)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        load_wide_csv(
            write_wide(tmp_path / "w.csv", ["1"], [["1"]]), tmp_path / "absent.csv", "2024-01-01", 5
        )
    with pytest.raises(FileNotFoundError, match="flow.npz"):
        load_flow_npz(tmp_path / "flow.npz", locations)


def test_ids_without_coordinates_and_extra_coordinates(tmp_path: Path, caplog) -> None:
    wide = write_wide(tmp_path / "w.csv", ["1", "2"], [["5", "6"], ["7", "8"]])
    with pytest.raises(
        ValueError, match=r"node id\(s\) in .*w.csv have no coordinates in .*loc.csv: \['2'\]"
    ):
        load_wide_csv(wide, write_locations(tmp_path / "loc.csv", ["1"]), "2024-01-01", 5)
    extra = write_locations(tmp_path / "extra.csv", ["1", "2", "3"], header=False)
    with caplog.at_level(logging.WARNING):
        data = load_wide_csv(wide, extra, "2024-01-01", 5)
    assert data.node_ids == ["1", "2"] and "have no data" in caplog.text
    with pytest.raises(ValueError, match=r"extra.csv have no data"):
        load_wide_csv(wide, extra, "2024-01-01", 5, strict_locations=True)


def test_non_numeric_and_inf_values(tmp_path: Path) -> None:
    locations = write_locations(tmp_path / "loc.csv", ["1", "2"])
    bad = write_wide(tmp_path / "bad.csv", ["1", "2"], [["5", "6"], ["7", "fast"]])
    with pytest.raises(ValueError, match=r"bad.csv: non-numeric value 'fast' in column '2'"):
        load_wide_csv(bad, locations, "2024-01-01", 5)
    infinite = write_wide(tmp_path / "inf.csv", ["1", "2"], [["5", "inf"], ["7", "8"]])
    with pytest.raises(ValueError, match=r"inf.csv: infinite value in column '2'"):
        load_wide_csv(infinite, locations, "2024-01-01", 5)
    gaps = write_wide(tmp_path / "nan.csv", ["1", "2"], [["5", ""], ["0", "8"]])
    data = load_wide_csv(gaps, locations, "2024-01-01", 5)
    assert np.isnan(data.values[:, :, 0]).tolist() == [[False, True], [True, False]]


def write_h5(path: Path, index: pd.DatetimeIndex, ids: list[int]) -> Path:
    frame = pd.DataFrame(np.full((len(index), len(ids)), 60.0), index=index, columns=ids)
    frame.to_hdf(path, key="speed")
    return path


def test_h5_duplicate_and_irregular_timestamps(tmp_path: Path) -> None:
    locations = write_locations(tmp_path / "loc.csv", ["1", "2"], header=False)
    regular = pd.date_range("2024-01-01", periods=6, freq="5min")
    duplicated = write_h5(tmp_path / "dup.h5", regular[[0, 1, 1, 2, 3, 4]], [1, 2])
    with pytest.raises(ValueError, match=r"dup.h5: duplicate timestamps, e.g. 2024-01-01 00:05:00"):
        load_dcrnn_h5(duplicated, locations)
    irregular = write_h5(
        tmp_path / "irr.h5", regular[:5].append(pd.DatetimeIndex(["2024-01-01 00:27"])), [1, 2]
    )
    with pytest.raises(ValueError, match=r"irr.h5: irregular intervals: 2024-01-01 00:27:00"):
        load_dcrnn_h5(irregular, locations)
    gap = write_h5(tmp_path / "gap.h5", regular.delete(2), [1, 2])
    data = load_dcrnn_h5(gap, locations)
    assert data.values.shape == (2, 6, 1) and np.isnan(data.values[:, 2]).all()


def test_unknown_layouts(tmp_path: Path) -> None:
    locations = write_locations(tmp_path / "loc.csv", ["0"])
    np.savez(tmp_path / "flow.npz", counts=np.zeros((4, 1, 2)))
    with pytest.raises(ValueError, match=r"flow.npz: unknown layout, missing array\(s\) \['flow'"):
        load_flow_npz(tmp_path / "flow.npz", locations)
    table = tmp_path / "long.csv"
    table.write_text("time,sensor,speed\n2024-01-01 00:00,0,5\n")
    with pytest.raises(
        ValueError, match=r"long.csv: unknown layout, no column\(s\) \['timestamp', 'node_id'\]"
    ):
        load_long_table(table, locations)
    (tmp_path / "long.json").write_text("{}")
    with pytest.raises(ValueError, match="long.json: unknown table format"):
        load_long_table(tmp_path / "long.json", locations)
    headerless = tmp_path / "four.csv"
    headerless.write_text("0,1,34.0,-118.0\n")
    with pytest.raises(ValueError, match="without a header must have 3 columns"):
        read_node_table(headerless)


def test_long_table_round_trip(tmp_path: Path) -> None:
    timestamps = pd.date_range("2024-01-01", periods=4, freq="15min")
    rows = [
        (t, node, 10.0 * k + i, float(i))
        for k, node in enumerate(["b", "a"])
        for i, t in enumerate(timestamps)
    ]
    table = pd.DataFrame(rows, columns=["timestamp", "node_id", "inflow", "outflow"]).drop(index=5)
    table.to_parquet(tmp_path / "long.parquet")
    nodes = pd.DataFrame(
        {"node_id": ["a", "b", "c"], "lat": [1.0, 2.0, 3.0], "lon": [4.0, 5.0, 6.0], "kind": "x"}
    )
    nodes.to_csv(tmp_path / "nodes.csv", index=False)
    data = load_long_table(tmp_path / "long.parquet", tmp_path / "nodes.csv", entity_prefix="Area")
    assert data.node_ids == ["a", "b"] and data.feature_names == ["inflow", "outflow"]
    assert data.node_table["entity"].tolist() == ["Area/a", "Area/b"] and "kind" in data.node_table
    assert data.interval_minutes == 15
    np.testing.assert_array_equal(data.values[1, :, 0], [0.0, 1.0, 2.0, 3.0])
    assert np.isnan(data.values[0, 1]).all() and data.values[0, 2, 0] == 12.0
    table.iloc[[0, 0]].to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match="dup.csv: duplicate timestamp 2024-01-01 00:00:00 for node 'b'"):
        load_long_table(tmp_path / "dup.csv", tmp_path / "nodes.csv")


def test_pems_bay_16_full_half_year() -> None:
    folder = real_folder("pems_bay_16")
    data = load_dcrnn_h5(folder / "pems-bay-16.h5", folder / "graph_sensor_locations_bay.csv", key="speed")
    assert data.load_report["zeros_as_missing"] == 16 and data.load_report["timestamps_inserted"] == 12
    days, day_mask, dates, report = make_day_samples(data)
    assert days.shape == (16, 130, 288, 1) and day_mask.all() and dates[-1] == "2017-06-30"
    assert report["values_interpolated"] == 16


def test_coordinates_outside_degrees_are_refused_where_the_node_table_is_read(tmp_path: Path) -> None:
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("sensor_id,latitude,longitude\n1,-118.3,34.1\n2,-118.2,34.2\n")
    with pytest.raises(
        ValueError,
        match=r"swapped.csv: lat of node '1' is -118.3, outside \[-90, 90\] degrees \(2 node\(s\)\); are the "
        r"latitude and longitude columns swapped\?",
    ):
        read_node_table(swapped)
    far = tmp_path / "far.csv"
    far.write_text("node_id,lat,lon\na,34.0,-118.0\nb,34.1,200.0\n")
    with pytest.raises(ValueError, match=r"far.csv: lon of node 'b' is 200, outside \[-180, 180\] degrees"):
        read_node_table(far)


def test_wide_csv_duplicate_header_and_zero_interval(tmp_path: Path) -> None:
    locations = write_locations(tmp_path / "loc.csv", ["1", "2"])
    repeated = write_wide(tmp_path / "dup.csv", ["1", "1", "2"], [["5", "6", "7"]])
    with pytest.raises(ValueError, match=r"dup.csv: the header names column\(s\) \['1'\] more than once"):
        load_wide_csv(repeated, locations, "2024-01-01", 5)
    wide = write_wide(tmp_path / "w.csv", ["1", "2"], [["5", "6"], ["7", "8"]])
    for interval in (0, -5, 7):
        with pytest.raises(ValueError, match=rf"w.csv: interval_minutes={interval} must be a whole number"):
            load_wide_csv(wide, locations, "2024-01-01", interval)


@pytest.mark.parametrize("character, name", [("\t", "a tab"), ("\n", "a newline"), ("\r", "a carriage return")])
def test_node_ids_with_tabs_or_line_breaks_are_refused(tmp_path: Path, character: str, name: str) -> None:
    bad_id = f"s{character}3"
    quoted = '"' + bad_id + '"'
    locations = tmp_path / "loc.csv"
    locations.write_text(f"sensor_id,latitude,longitude\n{quoted},34.0,-118.0\nb,34.1,-118.1\n")
    wide = tmp_path / "w.csv"
    wide.write_text(f"{quoted},b\n5,6\n7,8\n")
    message = re.escape(f"node id {bad_id!r} contains {name}")
    with pytest.raises(ValueError, match=r"w.csv: " + message):
        load_wide_csv(wide, locations, "2024-01-01", 5)
    table = tmp_path / "long.csv"
    table.write_text(f"timestamp,node_id,speed\n2024-01-01 00:00,{quoted},5\n2024-01-01 00:00,b,6\n")
    with pytest.raises(ValueError, match=r"long.csv: " + message):
        load_long_table(table, locations)
    nodes = pd.DataFrame({"node_id": ["a"], "lat": [34.0], "lon": [-118.0], "entity": [f"Sensor/{bad_id}"]})
    with pytest.raises(ValueError, match=r"node_table: entity .* contains " + name):
        SpatioTemporalData(np.zeros((1, 2, 1)), pd.date_range("2024-01-01", periods=2, freq="5min"), nodes,
                           ["speed"], 5, False)


@pytest.mark.parametrize("names", [["sample"], ["timestamp"], ["speed", "speed"]])
def test_feature_names_that_would_clash_in_the_output_tables_are_refused(names):
    nodes = pd.DataFrame({"node_id": ["a"], "lat": [34.0], "lon": [-118.0], "entity": ["Sensor/a"]})
    with pytest.raises(ValueError, match=r"must be unique and not \['node_id', 'sample', 'step', 'timestamp'\]"):
        SpatioTemporalData(np.zeros((1, 2, len(names))), pd.date_range("2024-01-01", periods=2, freq="5min"), nodes,
                           names, 5, False)
