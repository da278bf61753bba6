"""Bad data stopped at the door: gaps in multi-feature data, implausible values and sentinels, safe overwrite."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kgdiff_diffusers.data.checks import check_data
from kgdiff_diffusers.data.days import interpolate_gaps, make_day_samples
from kgdiff_diffusers.data.loaders import load_long_table
from kgdiff_diffusers.data.prepared import PreparedDataset, prepare_dataset
from kgdiff_diffusers.data.series import SpatioTemporalData
from kgdiff_diffusers.kg.graph import KnowledgeGraph

from .test_prepared import load_script, make_kg


def flow_data(num_nodes: int = 6, num_days: int = 7, steps_per_day: int = 24, seed: int = 0) -> SpatioTemporalData:
    """In/out counts (D = 2) from Monday 2024-01-01, one reading missing in each feature."""
    rng = np.random.default_rng(seed)
    timestamps = pd.date_range("2024-01-01", periods=num_days * steps_per_day, freq=f"{1440 // steps_per_day}min")
    values = rng.poisson(20.0, size=(num_nodes, len(timestamps), 2)).astype(np.float32)
    values[1, 5, 0] = np.nan
    values[2, 30, 1] = np.nan
    ids = [f"a{i}" for i in range(num_nodes)]
    node_table = pd.DataFrame(
        {
            "node_id": ids,
            "lat": np.linspace(40.0, 41.0, num_nodes),
            "lon": np.linspace(-74.0, -73.5, num_nodes),
            "entity": [f"Area/{i}" for i in ids],
        }
    )
    data = SpatioTemporalData(values, timestamps, node_table, ["inflow", "outflow"], 1440 // steps_per_day, False)
    data.load_report = {"source": "flows.csv"}
    return data


def write_long_table(data: SpatioTemporalData, table: Path, nodes: Path) -> None:
    """``data`` (D = 2) as a long CSV table and its node table."""
    rows = [
        (t, node_id, data.values[n, i, 0], data.values[n, i, 1])
        for n, node_id in enumerate(data.node_ids)
        for i, t in enumerate(data.timestamps)
    ]
    pd.DataFrame(rows, columns=["timestamp", "node_id", "inflow", "outflow"]).to_csv(table, index=False)
    data.node_table.to_csv(nodes, index=False)


def test_interpolate_gaps_fills_a_non_contiguous_input() -> None:
    days = np.arange(24, dtype=np.float32).reshape(2, 6, 2)
    days[1, 2, 0] = np.nan
    filled, count = interpolate_gaps(np.moveaxis(days, -1, -2))  # (2, D, T) view, as make_day_samples passes
    assert count == 1 and not np.isnan(filled).any()
    assert filled[1, 0, 2] == pytest.approx(16.0)  # halfway between 14 and 18


def test_multi_feature_gap_is_interpolated_not_nan() -> None:
    data = flow_data()
    days, day_mask, _, report = make_day_samples(data)
    assert day_mask.all() and report["values_interpolated"] == 2
    assert np.isfinite(days).all()
    # The gap (node 1, step 5, inflow) lies on the line between its neighbours.
    assert days[1, 0, 5, 0] == pytest.approx((data.values[1, 4, 0] + data.values[1, 6, 0]) / 2)
    prepared = prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3)
    assert np.isfinite(prepared.feature_mean).all() and np.isfinite(prepared.feature_std).all()


def test_long_table_two_features_with_a_missing_reading(tmp_path: Path) -> None:
    data = flow_data(num_nodes=3)
    rows = [
        (t, node_id, data.values[n, i, 0], data.values[n, i, 1])
        for n, node_id in enumerate(data.node_ids)
        for i, t in enumerate(data.timestamps)
    ]
    table = pd.DataFrame(rows, columns=["timestamp", "node_id", "inflow", "outflow"]).drop(index=[7])
    table.to_csv(tmp_path / "flows.csv", index=False)
    data.node_table.drop(columns="entity").to_csv(tmp_path / "nodes.csv", index=False)
    loaded = load_long_table(tmp_path / "flows.csv", tmp_path / "nodes.csv", entity_prefix="Area")
    prepared = prepare_dataset(loaded, make_kg(loaded), "flows", test_fraction=1 / 3)
    assert np.isfinite(prepared.days).all() and np.isfinite(prepared.feature_mean).all()


def test_prepared_dataset_refuses_nan_days(tmp_path: Path) -> None:
    data = flow_data()
    prepared = prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3)
    broken = prepared.days.copy()
    broken[0, 0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="valid days hold NaN or inf; prepare the dataset again"):
        PreparedDataset(**{**prepared.__dict__, "days": broken})


def test_negative_and_absurd_values_are_refused_with_the_file_named() -> None:
    data = flow_data()
    data.values[2, 10, 1] = -3.0
    with pytest.raises(
        ValueError,
        match=r"flows.csv: 1 value\(s\) of 'outflow' outside the plausible range \[0, .*\], e.g. -3 at node 'a2', "
        r"2024-01-01 10:00:00; if -3 means 'no reading' declare it \(--missing_values -3\)",
    ):
        prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3)
    data = flow_data()
    data.values[4, 50, 0] = 1e30
    with pytest.raises(ValueError, match=r"1 value\(s\) of 'inflow' outside .* e.g. 1e\+30 at node 'a4'"):
        prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3)
    # Masked instead of refused on request: the statistics stay those of real counts.
    prepared = prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3, out_of_range="missing")
    assert prepared.report["values"]["out_of_range_masked"] == {"inflow": 1, "outflow": 0}
    assert prepared.days.max() < 100 and 15 < prepared.feature_mean[0] < 25
    # Signed data is accepted when declared.
    data = flow_data()
    data.values[2, 10, 1] = -3.0
    prepared = prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3, valid_min=None)
    assert prepared.days.min() == -3.0


def test_nan_bounds_are_refused_not_a_check_switched_off() -> None:
    data = flow_data()
    data.values[4, 50, 0] = 1e30
    for bounds in ({"valid_max": float("nan")}, {"valid_min": float("nan")}):
        with pytest.raises(ValueError, match=f"{next(iter(bounds))} must be a number or None, got nan"):
            prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3, **bounds)


def test_declared_sentinel_is_missing() -> None:
    data = flow_data()
    data.values[0, 3, 0] = -1.0
    data.values[5, :24, :] = -1.0  # a whole day without a reading
    prepared = prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3, missing_values=[-1])
    assert prepared.report["values"]["sentinels_masked"] == {"-1": 49}
    assert prepared.report["days"]["node_days_dropped"]["no_data"] == 1 and not prepared.day_mask[5, 0]
    assert prepared.days.min() >= 0
    assert prepared.days[0, 0, 3, 0] == pytest.approx((data.values[0, 2, 0] + data.values[0, 4, 0]) / 2)
    assert (data.values == -1).sum() == 49  # the caller's data is left as it was


def test_script_flags_for_values(tmp_path: Path) -> None:
    script = load_script()
    data = flow_data(num_nodes=4)
    data.values[1, 3, 0] = -1.0
    write_long_table(data, tmp_path / "t.csv", tmp_path / "nodes.csv")
    argv = ["--layout", "long-table", "--output", str(tmp_path / "out"), "--table", str(tmp_path / "t.csv")]
    argv += ["--node_table", str(tmp_path / "nodes.csv"), "--no_kg_embeddings", "--test_fraction", "0.25"]
    with pytest.raises(ValueError, match=r"t.csv: 1 value\(s\) of 'inflow' outside .*--missing_values -1"):
        script.main(argv)
    prepared = script.main(argv + ["--missing_values", "-1"])
    assert prepared.report["values"]["sentinels_masked"] == {"-1": 1}


def test_overwrite_interrupted_keeps_the_old_folder(tmp_path: Path, monkeypatch) -> None:
    data = flow_data()
    kg = make_kg(data)
    folder = tmp_path / "prepared"
    first = prepare_dataset(data, kg, "first", test_fraction=1 / 3)
    first.save(folder)
    (folder / "README.md").write_text("my notes")
    second = prepare_dataset(data, kg, "second", test_fraction=0.5)

    def killed(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(KnowledgeGraph, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        second.save(folder, overwrite=True)
    monkeypatch.undo()
    assert PreparedDataset.load(folder).name == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no staging folder left behind
    second.save(folder, overwrite=True)
    assert PreparedDataset.load(folder).name == "second" and (folder / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_overwrite_never_replaces_an_input_inside_the_output_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my_city"
    folder.mkdir()
    write_long_table(flow_data(num_nodes=4), folder / "flows.csv", folder / "nodes.csv")
    original = (folder / "nodes.csv").read_text()
    argv = ["--layout", "long-table", "--table", str(folder / "flows.csv"), "--node_table", str(folder / "nodes.csv"),
            "--no_kg_embeddings", "--output", str(folder), "--overwrite"]
    with pytest.raises(ValueError, match=r"--node_table .*nodes.csv is inside --output .*my_city, where preparing "
                                         r"writes its own nodes.csv"):
        load_script().main(argv)
    assert (folder / "nodes.csv").read_text() == original


# ------------------------------------------------------------ broken files: one line naming the file


def write_locations(path: Path) -> Path:
    path.write_text("sensor_id,latitude,longitude\n1,34.0,-118.0\n2,34.1,-118.1\n")
    return path


def write_zones(path: Path) -> Path:
    path.write_text("graph_id,lat,lon\n0,40.7,-74.0\n1,40.8,-73.9\n")
    return path


def test_empty_truncated_and_wrong_format_files(tmp_path: Path) -> None:
    from kgdiff_diffusers.data.loaders import load_dcrnn_h5, load_flow_npz, load_wide_csv

    locations, zones = write_locations(tmp_path / "loc.csv"), write_zones(tmp_path / "zones.csv")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.h5 is empty \(0 bytes\); expected a DCRNN HDF5 file$"):
        load_dcrnn_h5(tmp_path / "empty.h5", locations)
    (tmp_path / "cut.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"cut.h5: not a readable DCRNN HDF5 file \(truncated, or not HDF5\)$"):
        load_dcrnn_h5(tmp_path / "cut.h5", locations)
    np.savez(tmp_path / "good.npz", flow=np.ones((48, 2, 2)), start="2024-01-01", interval_minutes=30)
    whole = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut.npz: not a readable flow .npz file \(BadZipFile: "):
        load_flow_npz(tmp_path / "cut.npz", zones)
    frame = pd.DataFrame({"0": [1.0]}, index=pd.date_range("2024-01-01", periods=1))
    frame.to_hdf(tmp_path / "flows.h5", key="flow")
    with pytest.raises(ValueError, match=r"flows.h5 is an HDF5 file, not an .npz archive; use --layout dcrnn-h5"):
        load_flow_npz(tmp_path / "flows.h5", zones)
    import pickle

    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"flow": [1, 2]}))
    with pytest.raises(ValueError, match=r"pickled.npz: .*pickled Python objects, which are never loaded") as info:
        load_flow_npz(tmp_path / "pickled.npz", zones)
    assert "allow_pickle" not in str(info.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty.csv is empty \(0 bytes\); expected a wide CSV file"):
        load_wide_csv(tmp_path / "empty.csv", locations, "2024-01-01", 5)
    (tmp_path / "blank.csv.gz").write_bytes(__import__("gzip").compress(b"\n"))
    with pytest.raises(ValueError, match=r"blank.csv.gz: not a readable wide CSV file \(it holds no rows or columns\)"):
        load_wide_csv(tmp_path / "blank.csv.gz", locations, "2024-01-01", 5)
    with pytest.raises(ValueError, match=r"empty.csv is empty \(0 bytes\); expected a long table file"):
        load_long_table(tmp_path / "empty.csv", locations)


@pytest.mark.parametrize("interval", [0, 29.7, 7])
def test_bad_interval_in_npz(tmp_path: Path, interval) -> None:
    from kgdiff_diffusers.data.loaders import load_flow_npz

    np.savez(tmp_path / "f.npz", flow=np.ones((48, 2, 2)), start="2024-01-01", interval_minutes=interval)
    with pytest.raises(
        ValueError, match=rf"f.npz: interval_minutes={interval:g} must be a whole number of minutes that divides a day"
    ):
        load_flow_npz(tmp_path / "f.npz", write_zones(tmp_path / "zones.csv"))


def test_truncated_prepared_folder(tmp_path: Path) -> None:
    data = flow_data()
    prepared = prepare_dataset(data, make_kg(data), "flows", test_fraction=1 / 3)
    prepared.save(tmp_path / "p")
    meta = (tmp_path / "p" / "prepared.json").read_text()
    (tmp_path / "p" / "prepared.json").write_text(meta[:80])
    with pytest.raises(ValueError, match=r"prepared.json: not a readable JSON file \(JSONDecodeError: .*prepare it"):
        PreparedDataset.load(tmp_path / "p")
    prepared.save(tmp_path / "q")
    arrow = next((tmp_path / "q" / "days").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"q/days: not a readable datasets.save_to_disk file .*prepare it again"):
        PreparedDataset.load(tmp_path / "q")


def dst_table(path: Path, start: str, end: str) -> Path:
    stamps = pd.date_range(start, end, freq="30min", tz="Europe/Berlin", inclusive="left")
    rows = [(stamp.isoformat(), node, 5.0 + i % 7) for i, stamp in enumerate(stamps) for node in ("1", "2")]
    pd.DataFrame(rows, columns=["timestamp", "node_id", "count"]).to_csv(path, index=False)
    return path


def test_tz_aware_timestamps_across_dst_are_local_days(tmp_path: Path) -> None:
    locations = write_locations(tmp_path / "loc.csv")
    spring = load_long_table(dst_table(tmp_path / "spring.csv", "2024-03-30", "2024-04-01"), locations)
    assert spring.values.shape == (2, 96, 1) and spring.timestamps[0] == pd.Timestamp("2024-03-30 00:00")
    # 02:00 and 02:30 on 2024-03-31 do not exist in Berlin: missing, not shifted.
    missing = spring.timestamps[np.isnan(spring.values[0, :, 0])]
    assert list(missing) == [pd.Timestamp("2024-03-31 02:00"), pd.Timestamp("2024-03-31 02:30")]
    assert np.isnan(spring.values).sum() == 4  # those two steps, both nodes
    autumn = load_long_table(dst_table(tmp_path / "autumn.csv", "2024-10-26", "2024-10-28"), locations)
    assert autumn.values.shape == (2, 96, 1) and not np.isnan(autumn.values).any()
    assert autumn.load_report["dst_repeated_hour_rows_dropped"] == 4


def test_all_nodes_at_one_point_are_refused(tmp_path: Path, caplog) -> None:
    from kgdiff_diffusers.data.days import split_nodes_by_latitude
    from kgdiff_diffusers.data.loaders import read_node_table

    same = tmp_path / "same.csv"
    same.write_text("node_id,lat,lon\na,40.0,-74.0\nb,40.0,-74.0\nc,40.0,-74.0\n")
    with pytest.raises(ValueError, match=r"same.csv: all 3 nodes have the same coordinates \(40.0, -74.0\)"):
        read_node_table(same)
    some = tmp_path / "some.csv"
    some.write_text("node_id,lat,lon\na,40.0,-74.0\nb,40.0,-74.0\nc,40.5,-74.0\n")
    with caplog.at_level("WARNING"):
        assert len(read_node_table(some)) == 3
    assert "2 nodes share their coordinates with another node (e.g. ['a', 'b'])" in caplog.text
    table = pd.DataFrame({"node_id": ["a", "b", "c", "d"], "lat": 40.0, "lon": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match="all 4 nodes have latitude 40.0: the latitude split cannot separate them"):
        split_nodes_by_latitude(table, 0.25)
    assert split_nodes_by_latitude(table, test_node_ids=["d"]) == (["a", "b", "c"], ["d"])


# ------------------------------------------------------------ prepare_data.py --check


def test_check_reports_per_node_and_exits_non_zero_on_problems(tmp_path: Path, capsys) -> None:
    script = load_script()
    data = flow_data(num_nodes=4)
    data.values[1, 3, 0] = -1.0
    data.values[2, 24:48] = np.nan  # Tuesday without readings
    data.values[3] = 0.0
    write_long_table(data, tmp_path / "t.csv", tmp_path / "nodes.csv")
    argv = ["--layout", "long-table", "--table", str(tmp_path / "t.csv"), "--node_table", str(tmp_path / "nodes.csv")]
    argv += ["--check"]
    with pytest.raises(ValueError, match=r"--check found 1 problem\(s\): 1 value\(s\) outside the plausible range at 1 "
                       r"node\(s\) \(e.g. \['a1'\]\)"):
        script.main(argv)
    capsys.readouterr()
    assert script.main(argv + ["--missing_values", "-1"]) is None
    out = capsys.readouterr().out
    table = pd.read_fwf(io.StringIO(out.split("\n4 nodes")[0])).set_index("node_id")
    assert table.loc["a1", "sentinels"] == 1 and table.loc["a1", "negatives"] == 1
    assert table.loc["a2", "days_kept"] == 4 and table.loc["a2", "dropped_no_data"] == 1
    assert table.loc["a2", "coverage"] == pytest.approx(1 - 24 / 168, abs=1e-3)
    assert table.loc["a3", "zeros"] == 2 * 168 and table.loc["a3", "max_inflow"] == 0
    assert "1 node(s) read only 0" in out and "delay embedding: window 8, stride 3 -> 8x8 images" in out
    assert "check passed" in out and not (tmp_path / "out").exists()


def test_a_save_killed_between_the_renames_is_reported(tmp_path: Path, caplog) -> None:
    from kgdiff_diffusers.data.prepared import check_output_folder

    (tmp_path / ".prepared.old-abc123").mkdir()  # what a kill after the first rename leaves
    with caplog.at_level("WARNING"):
        check_output_folder(tmp_path / "prepared")
    assert ".prepared.old-abc123 holds what" in caplog.text and "before an interrupted save" in caplog.text


def write_wide_sensors(folder: Path, num_nodes: int = 4, days: int = 7) -> list[str]:
    """A wide CSV of hourly speeds from Monday 2024-01-01 (``w.csv``) and its locations (``loc.csv``); the argv."""
    rng = np.random.default_rng(0)
    ids = [str(400 + i) for i in range(num_nodes)]
    pd.DataFrame(rng.uniform(40, 70, size=(24 * days, num_nodes)), columns=ids).to_csv(folder / "w.csv", index=False)
    lines = [f"{node_id},{34 + i / 50},{-118 - i / 50}" for i, node_id in enumerate(ids)]
    (folder / "loc.csv").write_text("sensor_id,latitude,longitude\n" + "\n".join(lines) + "\n")
    return ["--layout", "wide-csv", "--csv", str(folder / "w.csv"), "--locations", str(folder / "loc.csv"),
            "--first_timestamp", "2024-01-01", "--interval_minutes", "60"]


def test_check_agrees_with_preparation_on_coordinates_and_kg_inputs(tmp_path: Path, capsys) -> None:
    script = load_script()
    argv = write_wide_sensors(tmp_path)
    assert script.main(argv + ["--check"]) is None
    assert "knowledge graph: " in capsys.readouterr().out
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("sensor_id,latitude,longitude\n" + "".join(
        f"{400 + i},{-118 - i / 50},{34 + i / 50}\n" for i in range(4)))
    swapped_argv = [str(swapped) if arg.endswith("loc.csv") else arg for arg in argv]
    for check in (["--check"], ["--output", str(tmp_path / "out"), "--no_kg_embeddings"]):
        with pytest.raises(ValueError, match=r"swapped.csv: lat of node '400' is -118, outside \[-90, 90\] degrees"):
            script.main(swapped_argv + check)
    np.save(tmp_path / "adj.npy", np.ones((3, 3)))
    (tmp_path / "triples.tsv").write_text("garbage\n")
    (tmp_path / "dist.csv").write_text("a,b\n1,2\n")
    kg_inputs = {
        "--adjacency": (
            "adj.npy", r"--adjacency .*adj.npy has shape \(3, 3\); expected \(4, 4\): one row and column per node"
        ),
        "--kg_triples": ("triples.tsv", r".*triples.tsv: expected 3 tab-separated columns"),
        "--distances_csv": ("dist.csv", r".*dist.csv: expected 3 columns \(from, to, cost\); found 2"),
    }
    for flag, (name, message) in kg_inputs.items():
        with pytest.raises(ValueError, match=r"--check found 1 problem\(s\): knowledge graph: " + message):
            script.main(argv + [flag, str(tmp_path / name), "--check"])
        with pytest.raises(ValueError, match=message):
            script.main(argv + [flag, str(tmp_path / name), "--output", str(tmp_path / "out"), "--no_kg_embeddings"])
    assert not (tmp_path / "out").exists()


def test_flow_npz_adjacency_of_the_wrong_shape_names_the_flag(tmp_path: Path) -> None:
    script = load_script()
    np.savez(tmp_path / "f.npz", flow=np.ones((48 * 7, 2, 2)), start="2024-01-01", interval_minutes=30)
    np.save(tmp_path / "adj.npy", np.ones((1, 1)))
    argv = ["--layout", "flow-npz", "--npz", str(tmp_path / "f.npz"), "--zones", str(write_zones(tmp_path / "z.csv"))]
    argv += ["--adjacency", str(tmp_path / "adj.npy"), "--output", str(tmp_path / "out"), "--no_kg_embeddings"]
    with pytest.raises(ValueError, match=r"--adjacency .*adj.npy has shape \(1, 1\); expected \(2, 2\): one row and "
                       r"column per area of --npz \(2\), in graph_id order"):
        script.main(argv)


def test_zero_interval_is_refused_by_the_script(tmp_path: Path, capsys) -> None:
    script = load_script()
    argv = write_wide_sensors(tmp_path)
    with pytest.raises(SystemExit):
        script.parse_args(argv[:-1] + ["0", "--check"])
    assert "--interval_minutes 0 must be a positive number of minutes that divides a day" in capsys.readouterr().err


def test_negative_seed_is_refused_naming_the_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        load_script().parse_args(["--layout", "synthetic-city", "--check", "--seed", "-1"])
    assert "--seed must be >= 0; got -1" in capsys.readouterr().err


def test_check_warns_about_a_stuck_sensor(tmp_path: Path, capsys) -> None:
    script = load_script()
    argv = write_wide_sensors(tmp_path)
    frame = pd.read_csv(tmp_path / "w.csv")
    frame["401"] = 55.0
    frame.to_csv(tmp_path / "w.csv", index=False)
    assert script.main(argv + ["--check"]) is None
    out = capsys.readouterr().out
    assert "warning: 1 node(s) read one constant value throughout (a stuck sensor?): ['401']" in out
    assert "check passed" in out


def test_check_refuses_test_nodes_that_keep_no_day() -> None:
    data = flow_data(num_nodes=6)
    data.values[[4, 5]] = np.nan
    _, summary, problems = check_data(data, test_node_ids=["a5"])
    assert problems == ["no test node keeps a day (['a5']): evaluation after training would have nothing to score; "
                        "choose other --test_node_ids"]
    _, summary, problems = check_data(data, test_node_ids=["a0", "a5"])
    assert not problems and "warning: 1 test node(s) keep no day and cannot be scored: ['a5']" in summary
