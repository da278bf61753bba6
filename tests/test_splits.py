"""Validation nodes, latitude folds and re-split datasets (data/days.py, PreparedDataset.with_split)."""

import numpy as np
import pandas as pd
import pytest

from kgdiff_diffusers.data.days import latitude_folds, split_nodes_by_latitude, split_validation_nodes
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city


def _nodes(latitudes):
    return pd.DataFrame({"node_id": [f"n{i}" for i in range(len(latitudes))], "lat": latitudes})


def test_validation_nodes_are_the_northernmost_train_nodes_never_test_nodes():
    table = _nodes([5.0, 9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0, 0.0])
    train, test = split_nodes_by_latitude(table, test_fraction=0.2)
    assert test == ["n1", "n5"]  # latitudes 9 and 8
    kept, validation = split_validation_nodes(table, train, 0.25)
    assert validation == ["n3", "n7"]  # the two highest train latitudes: 7 and 6
    assert not set(validation) & set(test) and not set(validation) & set(kept)
    assert sorted(kept + validation) == sorted(train)
    assert split_validation_nodes(table, train, 0.0) == (train, [])
    assert split_validation_nodes(table, train, 0.01)[1] == ["n3"]  # at least one node when > 0
    with pytest.raises(ValueError, match="at least two are needed"):
        split_validation_nodes(table, ["n0", "n2"], 0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        split_validation_nodes(table, train, 1.0)
    with pytest.raises(ValueError, match="not nodes"):
        split_validation_nodes(table, ["zz"], 0.5)


def test_latitude_folds_cover_every_node_once_in_bands():
    latitudes = np.random.default_rng(0).uniform(40, 41, size=57)
    table = _nodes(latitudes)
    folds = latitude_folds(table, 4)
    assert [len(fold) for fold in folds] == [15, 14, 14, 14]
    assert sorted(sum(folds, [])) == sorted(table["node_id"])
    lat = dict(zip(table["node_id"], latitudes))
    for north, south in zip(folds, folds[1:]):  # bands: every node of a band is north of the next band
        assert min(lat[n] for n in north) > max(lat[n] for n in south)
    assert latitude_folds(_nodes([1.0, 2.0, 3.0, 4.0]), 4) == [["n3"], ["n2"], ["n1"], ["n0"]]
    with pytest.raises(ValueError, match="num_folds"):
        latitude_folds(table, 1)


def test_with_split_recomputes_statistics_and_keeps_the_kg():
    data, kg = make_synthetic_city(num_nodes=16, num_days=8, seed=0)
    dataset = prepare_dataset(data, kg, "tiny_city")
    test, validation = dataset.node_ids[:4], dataset.node_ids[4:7]
    split = dataset.with_split(test, validation, rule="fold 0")
    assert split.test_node_ids == test and split.validation_node_ids == validation
    assert split.train_node_ids == dataset.node_ids[7:]
    assert split.kg is dataset.kg and split.days is dataset.days
    values = dataset.days[7:][dataset.day_mask[7:]].astype(np.float64)
    np.testing.assert_allclose(split.feature_mean, values.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(split.feature_std, values.std(axis=(0, 1)), rtol=1e-6)
    assert split.report["split"]["rule"] == "fold 0" and split.report["split"]["validation_nodes"] == 3
    assert dataset.validation_node_ids == []  # the original is unchanged
    with pytest.raises(ValueError, match="validation nodes .* are test nodes"):
        dataset.with_split(test, test[:1])
    with pytest.raises(ValueError, match="not nodes of dataset"):
        dataset.with_split(["nowhere"])
    with pytest.raises(ValueError, match="at least two"):
        dataset.with_split(dataset.node_ids[:10], dataset.node_ids[10:15])


def test_a_validation_split_survives_save_and_load(tmp_path):
    data, kg = make_synthetic_city(num_nodes=12, num_days=8, seed=1)
    dataset = prepare_dataset(data, kg, "tiny_city")
    test, validation = dataset.node_ids[:3], dataset.node_ids[3:5]
    split = dataset.with_split(test, validation)
    split.save(tmp_path / "fold")
    loaded = type(split).load(tmp_path / "fold")
    assert loaded.validation_node_ids == validation and loaded.test_node_ids == test
    np.testing.assert_array_equal(loaded.feature_mean, split.feature_mean)
