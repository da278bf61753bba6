"""PreparedDataset: prepare, save as a Hugging Face dataset folder, load back bit-exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from kgdiff_diffusers.data.prepared import PreparedDataset, prepare_dataset
from kgdiff_diffusers.data.series import SpatioTemporalData
from kgdiff_diffusers.kg.graph import KnowledgeGraph

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_data(
    num_nodes: int = 6, num_days: int = 14, steps_per_day: int = 24, seed: int = 0
) -> SpatioTemporalData:
    """Hourly speeds from Monday 2024-01-01 with a few gaps, one node-day missing entirely."""
    rng = np.random.default_rng(seed)
    timestamps = pd.date_range(
        "2024-01-01", periods=num_days * steps_per_day, freq=f"{1440 // steps_per_day}min"
    )
    values = rng.uniform(20.0, 70.0, size=(num_nodes, len(timestamps), 1)).astype(np.float32)
    values[1, 3, 0] = np.nan
    values[2, steps_per_day : 2 * steps_per_day, 0] = np.nan
    ids = [f"s{i}" for i in range(num_nodes)]
    node_table = pd.DataFrame(
        {
            "node_id": ids,
            "lat": rng.uniform(37.0, 38.0, num_nodes),
            "lon": rng.uniform(-122.0, -121.0, num_nodes),
            "entity": [f"Sensor/{i}" for i in ids],
            "lanes": rng.integers(1, 5, num_nodes),
            "name": [f"road {i}" if i % 2 else None for i in range(num_nodes)],
        }
    )
    return SpatioTemporalData(values, timestamps, node_table, ["speed"], 1440 // steps_per_day, True)


def make_kg(data: SpatioTemporalData) -> KnowledgeGraph:
    entities = data.node_table["entity"].tolist()
    triples = [(a, "near", b) for a, b in zip(entities, entities[1:])]
    triples += [(entity, "locatedIn", "Area/1") for entity in entities]
    return KnowledgeGraph.from_triples(triples)


@pytest.fixture()
def prepared() -> PreparedDataset:
    data = make_data()
    kg = make_kg(data)
    rng = np.random.default_rng(1)
    return prepare_dataset(
        data,
        kg,
        "toy",
        test_fraction=1 / 3,
        entity_embeddings=rng.normal(size=(kg.num_entities, 8)),
        relation_embeddings=rng.normal(size=(2 * kg.num_relations, 8)),
    )


def test_prepare_dataset_contents(prepared: PreparedDataset) -> None:
    data = make_data()
    assert prepared.days.shape == (6, 10, 24, 1) and prepared.days.dtype == np.float32
    assert prepared.dates[0] == "2024-01-01" and prepared.dates[5] == "2024-01-08"
    assert prepared.day_mask.sum() == 59 and not prepared.day_mask[2, 1]
    assert prepared.report["days"]["node_days_dropped"] == {
        "no_data": 1,
        "too_many_missing": 0,
        "long_gap": 0,
    }
    assert prepared.report["days"]["values_interpolated"] == 1
    # Days are in data units: a full day equals the input series for that day.
    np.testing.assert_array_equal(prepared.days[0, 1], data.values[0, 24:48])
    assert prepared.steps_per_day == 24 and prepared.num_features == 1
    north = data.node_table.sort_values("lat", ascending=False)["node_id"].tolist()[:2]
    assert sorted(prepared.test_node_ids) == sorted(north)
    assert len(prepared.train_node_ids) == 4
    train_days = prepared.days[prepared.train_rows][prepared.day_mask[prepared.train_rows]]
    np.testing.assert_allclose(prepared.feature_mean, [train_days.mean(dtype=np.float64)], rtol=1e-6)
    np.testing.assert_allclose(prepared.feature_std, [train_days.std(dtype=np.float64)], rtol=1e-6)
    assert prepared.report["kg"] == {"entities": 7, "relations": 2, "triples": 11}


def test_save_load_bit_exact(prepared: PreparedDataset, tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    prepared.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "days",
        "days.parquet",
        "kg",
        "kg_embeddings.safetensors",
        "nodes.csv",
        "prepared.json",
    ]
    loaded = PreparedDataset.load(folder)
    for name in (
        "days",
        "day_mask",
        "feature_mean",
        "feature_std",
        "entity_embeddings",
        "relation_embeddings",
    ):
        original, restored = getattr(prepared, name), getattr(loaded, name)
        assert restored.dtype == original.dtype and restored.shape == original.shape, name
        assert original.tobytes() == restored.tobytes(), name
    pd.testing.assert_frame_equal(loaded.node_table, prepared.node_table)
    assert loaded.dates == prepared.dates and loaded.feature_names == prepared.feature_names
    assert loaded.name == "toy" and loaded.interval_minutes == 60 and loaded.report == prepared.report
    assert loaded.kg.entities == prepared.kg.entities and loaded.kg.relations == prepared.kg.relations
    np.testing.assert_array_equal(loaded.kg.triples, prepared.kg.triples)


def test_days_are_real_hf_datasets(prepared: PreparedDataset, tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    prepared.save(folder)
    from_disk = datasets.load_from_disk(str(folder / "days"))
    from_parquet = datasets.Dataset.from_parquet(
        str(folder / "days.parquet"), cache_dir=str(tmp_path / "cache")
    )
    num_nodes, num_days = prepared.day_mask.shape
    for dataset in (from_disk, from_parquet):
        assert isinstance(dataset, datasets.Dataset) and dataset.num_rows == num_nodes * num_days
        assert dataset.features["values"] == datasets.Array2D((24, 1), "float32")
        rows = dataset.with_format("numpy")[:]
        np.testing.assert_array_equal(rows["values"], prepared.days.reshape(-1, 24, 1))
        np.testing.assert_array_equal(rows["valid"], prepared.day_mask.reshape(-1))
        assert list(rows["node_id"][:num_days]) == [prepared.node_ids[0]] * num_days
        assert list(rows["date"][:num_days]) == prepared.dates
    row = from_disk[num_days + 1]
    assert row["node_id"] == "s1" and row["date"] == prepared.dates[1] and row["valid"]
    assert np.asarray(row["values"], dtype=np.float32).tobytes() == prepared.days[1, 1].tobytes()


def test_save_refuses_overwrite(prepared: PreparedDataset, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"{folder} exists and is not empty"):
        prepared.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    prepared.save(folder, overwrite=True)
    without_embeddings = PreparedDataset.load(folder)
    without_embeddings.entity_embeddings = without_embeddings.relation_embeddings = None
    without_embeddings.name = "second"
    without_embeddings.save(folder, overwrite=True)
    again = PreparedDataset.load(folder)
    assert again.name == "second" and again.entity_embeddings is None
    assert (folder / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    prepared.save(empty)
    assert PreparedDataset.load(empty).days.tobytes() == prepared.days.tobytes()


def test_load_and_prepare_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a prepared dataset folder"):
        PreparedDataset.load(tmp_path)
    data = make_data()
    kg = KnowledgeGraph.from_triples([("Sensor/s0", "near", "Sensor/s1")])
    with pytest.raises(ValueError, match=r"4 of 6 node entities are not in the knowledge graph"):
        prepare_dataset(data, kg, "toy")
    with pytest.raises(ValueError, match="relation embeddings for 2 x 2 relations"):
        prepare_dataset(
            data,
            make_kg(data),
            "toy",
            entity_embeddings=np.zeros((7, 4)),
            relation_embeddings=np.zeros((2, 4)),
        )


def test_pems_bay_prepared_in_mph(tmp_path: Path) -> None:
    folder = SHARED_DATA / "pems_bay_16"
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")
    from kgdiff_diffusers.data.loaders import load_dcrnn_h5

    data = load_dcrnn_h5(
        folder / "pems-bay-16.h5", folder / "graph_sensor_locations_bay.csv", end="2017-05-31"
    )
    prepared = prepare_dataset(data, make_kg(data), "pems_bay_16")
    assert prepared.days.shape == (16, 108, 288, 1) and prepared.day_mask.all()
    assert 55.0 < float(prepared.feature_mean[0]) < 70.0 and 5.0 < float(prepared.feature_std[0]) < 20.0
    assert prepared.report["load"]["zeros_as_missing"] == prepared.report["days"]["values_interpolated"]
    prepared.save(tmp_path / "pems")
    assert PreparedDataset.load(tmp_path / "pems").days.tobytes() == prepared.days.tobytes()


def load_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "prepare_data.py"
    spec = importlib.util.spec_from_file_location("prepare_data_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_data_help_documents_every_layout(capsys) -> None:
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    text = capsys.readouterr().out
    for layout in script.LAYOUTS:
        assert f"--layout {layout} --output" in text
    with pytest.raises(SystemExit):
        script.parse_args(["--layout", "wide-csv", "--output", "x", "--csv", "a.csv"])
    assert "needs --locations --first_timestamp --interval_minutes" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_data_script_synthetic_city(tmp_path: Path) -> None:
    script = load_script()
    output = tmp_path / "synthetic"
    argv = ["--layout", "synthetic-city", "--output", str(output), "--num_nodes", "12", "--num_days", "9"]
    argv += ["--steps_per_day", "24", "--embedding_dim", "8", "--tucker_epochs", "1"]
    script.main(argv)
    prepared = PreparedDataset.load(output)
    assert prepared.days.shape[:3] == (12, 7, 24) and prepared.name == "synthetic"
    assert all(pd.Timestamp(date).day_of_week < 5 for date in prepared.dates)
    assert len(prepared.test_node_ids) == 3
    assert prepared.entity_embeddings.shape == (prepared.kg.num_entities, 8)
    assert prepared.relation_embeddings.shape == (2 * prepared.kg.num_relations, 8)
    assert "mrr" in prepared.report["kg"]["tucker"]
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        script.main(argv)
    script.main(argv + ["--no_kg_embeddings", "--overwrite", "--test_node_ids", prepared.node_ids[0]])
    again = PreparedDataset.load(output)
    assert again.entity_embeddings is None and again.test_node_ids == [prepared.node_ids[0]]


@pytest.mark.slow
def test_prepare_data_script_pems_bay(tmp_path: Path) -> None:
    folder = SHARED_DATA / "pems_bay_16"
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")
    script = load_script()
    argv = ["--layout", "dcrnn-h5", "--output", str(tmp_path / "pems"), "--no_kg_embeddings"]
    argv += [
        "--h5",
        str(folder / "pems-bay-16.h5"),
        "--locations",
        str(folder / "graph_sensor_locations_bay.csv"),
    ]
    argv += ["--distances_csv", str(folder / "distances_bay_2017.csv")]
    argv += ["--station_meta", str(folder / "pems_bay_station_meta.csv")]
    argv += [
        "--osm_edges",
        str(folder / "sensor_osm_edge.csv"),
        "--start",
        "2017-01-01",
        "--end",
        "2017-05-31",
    ]
    script.main(argv)
    prepared = PreparedDataset.load(tmp_path / "pems")
    assert prepared.days.shape == (16, 108, 288, 1) and prepared.day_mask.all()
    lat = prepared.node_table.set_index("node_id")["lat"]
    assert lat[prepared.test_node_ids].min() > lat[prepared.train_node_ids].max()
    assert prepared.report["load"]["timestamps_inserted"] == 12
    heads, tails = prepared.kg.triples[:, 0], prepared.kg.triples[:, 2]
    linked = {prepared.kg.entities[i] for i in np.concatenate([heads, tails])}
    assert set(prepared.node_table["entity"]) <= linked
