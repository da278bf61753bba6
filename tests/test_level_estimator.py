"""KGDiffLevelEstimator: two-hop features, exact leave-one-out ridge, no self-leakage, the validated weight,
new places, save/load and pipelines saved before it."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.days import split_validation_nodes
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.fingerprint import config_digest
from kgdiff_diffusers.kg.tucker import pretrain_tucker
from kgdiff_diffusers.models.level_estimator import KGDiffLevelEstimator
from kgdiff_diffusers.pipelines.pipeline_kgdiff import _without_added_defaults
from kgdiff_diffusers.training import (
    KGDiffModelConfig,
    build_level_estimator,
    build_pipeline,
    choose_level_estimate_weight,
    node_day_statistics,
    trained_day_types,
)

SMALL = dict(condition_dim=16, block_out_channels=(16, 32), norm_num_groups=8, num_train_timesteps=20)


@pytest.fixture(scope="module")
def city():
    data, kg = make_synthetic_city(num_nodes=24, num_days=6, seed=2)
    tucker = pretrain_tucker(kg, embedding_dim=16, epochs=1, show_progress=False)
    dataset = prepare_dataset(
        data, kg, "level_city", entity_embeddings=tucker.entity_embeddings,
        relation_embeddings=tucker.relation_embeddings,
    )
    _, validation = split_validation_nodes(dataset.node_table, dataset.train_node_ids, 0.25)
    return dataset.with_split(dataset.test_node_ids, validation)


def _estimator(dataset) -> KGDiffLevelEstimator:
    edge_node, _, edge_neighbor = dataset.kg.neighbor_index(dataset.node_table["entity"].astype(str).tolist())
    return build_level_estimator(dataset, (edge_node, edge_neighbor), trained_day_types(dataset))


def _features(estimator: KGDiffLevelEstimator, dataset) -> np.ndarray:
    edge_node, _, edge_neighbor = dataset.kg.neighbor_index(dataset.node_table["entity"].astype(str).tolist())
    edges = torch.from_numpy(edge_node), torch.from_numpy(edge_neighbor)
    counts = estimator._two_hop_counts(*edges, len(dataset.node_ids))
    return estimator._unit_features(counts, estimator.entity_idf.double()).to_dense().numpy()


def _train_rows(dataset) -> np.ndarray:
    has_data = node_day_statistics(dataset)[2]
    rows = np.asarray(dataset.train_rows)
    return rows[has_data[rows]]


def test_training_nodes_get_the_ridge_fitted_without_them(city):
    estimator = _estimator(city)
    features = _features(estimator, city)
    levels = np.log(node_day_statistics(city)[0].mean(-1))  # (N, D); every synthetic level is well above 0
    train = _train_rows(city)
    alpha = estimator.config.ridge_alpha
    for held_out in train[:4]:
        rest = train[train != held_out]
        x, y = features[rest], levels[rest]
        centred = x - x.mean(0)
        beta = np.linalg.solve(centred.T @ centred + alpha * np.eye(x.shape[1]), centred.T @ (y - y.mean(0)))
        by_hand = y.mean(0) + (features[held_out] - x.mean(0)) @ beta
        np.testing.assert_allclose(estimator.node_log_level[0, held_out].numpy(), by_hand, rtol=1e-5, atol=1e-5)
    # a node outside training gets the fit on every training node
    x, y = features[train], levels[train]
    centred = x - x.mean(0)
    beta = np.linalg.solve(centred.T @ centred + alpha * np.eye(x.shape[1]), centred.T @ (y - y.mean(0)))
    test_row = int(city.test_rows[0])
    np.testing.assert_allclose(
        estimator.node_log_level[0, test_row].numpy(), y.mean(0) + (features[test_row] - x.mean(0)) @ beta,
        rtol=1e-5, atol=1e-5,
    )


def test_a_nodes_estimate_does_not_change_when_its_own_days_change(city):
    before = _estimator(city).node_log_level
    row = int(_train_rows(city)[3])
    changed = dataclasses.replace(city, days=city.days.copy())
    changed.days[row] *= 7.0
    after = _estimator(changed).node_log_level
    np.testing.assert_allclose(after[:, row].numpy(), before[:, row].numpy(), rtol=1e-5, atol=1e-5)
    others = [r for r in _train_rows(city) if r != row]
    assert (after[:, others] - before[:, others]).abs().max() > 1e-3  # its data does reach the other nodes


def test_a_new_place_with_a_test_nodes_kg_neighbours_gets_that_nodes_estimate(city):
    estimator = _estimator(city)
    row = int(city.test_rows[1])
    edge_node, _, edge_neighbor = city.kg.neighbor_index([city.node_table["entity"].iloc[row]])
    new = estimator.log_level_for(torch.from_numpy(edge_node), torch.from_numpy(edge_neighbor), 1)
    np.testing.assert_allclose(new[:, 0].numpy(), estimator.node_log_level[:, row].numpy(), rtol=1e-5, atol=1e-6)


def test_a_level_set_two_hops_away_is_learnt():
    # 12 sensors (entities 0-11), each on its own road (12-23); a road is a motorway (24) or a local road (25);
    # a motorway sensor counts about 100, a local one about 10. Sensors 10 and 11 are not trained on.
    motorway = np.arange(12) % 2 == 0
    triples = [(s, 0, 12 + s) for s in range(12)] + [(12 + s, 1, 24 if motorway[s] else 25) for s in range(12)]
    levels = np.where(motorway, 100.0, 10.0) * np.exp(0.05 * np.sin(np.arange(12)))
    estimator = KGDiffLevelEstimator.from_training_data(
        np.log(levels)[None, :, None], np.arange(10), np.arange(12), np.arange(12), 12 + np.arange(12),
        np.array(triples), num_entities=26,
    )
    predicted = estimator.node_log_level[0, 10:, 0].exp().numpy()
    np.testing.assert_allclose(predicted, [100.0, 10.0], rtol=0.15)


def test_no_estimator_without_two_hop_entities():
    triples = np.array([(s, 0, 4) for s in range(4)])  # every sensor next to one area, and nothing beyond it
    assert KGDiffLevelEstimator.from_training_data(
        np.zeros((1, 4, 1)), np.arange(3), np.arange(4), np.arange(4), np.full(4, 4), triples, num_entities=5
    ) is None


def test_the_weight_is_chosen_on_validation_nodes_within_one_standard_error_and_moves_the_level(city):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL))
    assert pipe.level_estimator is not None and pipe.config.level_estimate_weight is None
    nodes = [city.node_ids[r] for r in city.validation_rows]
    donors_mean, donors_scale = pipe.prior(nodes)
    true_log = torch.from_numpy(np.log(node_day_statistics(city)[0][city.validation_rows].mean(-1))).float()
    rows = torch.from_numpy(np.asarray(city.validation_rows))
    pipe.level_estimator.node_log_level[0, rows] = true_log  # an estimator that knows the validation levels
    assert choose_level_estimate_weight(pipe, city) == [1.0]
    mean_day, scale = pipe.prior(nodes)
    level = pipe._to_data_units(mean_day).mean(1)
    np.testing.assert_allclose(level.log().numpy(), true_log.numpy(), rtol=1e-4, atol=1e-4)
    donor_level = pipe._to_data_units(donors_mean).mean(1)
    np.testing.assert_allclose((scale / donors_scale).numpy(), (level / donor_level).numpy(), rtol=1e-4)
    pipe.level_estimator.node_log_level[0, rows] = true_log + 3.0  # twenty times too busy
    assert choose_level_estimate_weight(pipe, city) == [0.0]
    np.testing.assert_array_equal(pipe.prior(nodes)[0].numpy(), donors_mean.numpy())
    # Right where the donors are furthest off, twice as wrong at the next node: the mean prefers w = 1 by a gain
    # smaller than its standard error over the validation nodes, so the donors' level stays.
    donor_log = pipe._to_data_units(donors_mean).mean(1).log()[:, 0]
    miss = (donor_log - true_log[:, 0]).abs()
    first, second = miss.argsort(descending=True)[:2].tolist()
    estimate = donor_log.clone()
    estimate[first] = true_log[first, 0]
    estimate[second] = 2 * donor_log[second] - true_log[second, 0]
    pipe.level_estimator.node_log_level[0, rows, 0] = estimate
    mean_errors = [float((w * estimate + (1 - w) * donor_log - true_log[:, 0]).abs().mean()) for w in (0, 0.5, 1)]
    assert mean_errors[2] < mean_errors[1] < mean_errors[0]
    assert choose_level_estimate_weight(pipe, city) == [0.0]
    with pytest.raises(ValueError, match="level_estimate_weight > 0 needs a level_estimator"):
        KGDiffPipeline(**{**pipe.components, "level_estimator": None}, **{
            k: v for k, v in pipe.config.items() if k not in pipe.components and not k.startswith("_")
        } | {"level_estimate_weight": [0.5]})


def test_saved_with_the_estimator_reloads_bit_identical_and_older_pipelines_load_without_it(city, tmp_path):
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL, num_bank_days=8))
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(level_estimate_weight=[0.75], start_strength=0.0, level_exponent=1.0)
    nodes = [city.node_ids[r] for r in city.test_rows]
    new_place = {"planned": [("SOR", city.node_table["road"].iloc[int(city.test_rows[0])])]}

    def sample(p):
        return p(node_ids=nodes, new_nodes=new_place, num_samples=3, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(0)).series

    expected = sample(pipe)
    pipe.save_pretrained(tmp_path / "now")
    assert KGDiffPipeline._edited_config_files(tmp_path / "now") == []  # every component's file matches its digest
    reloaded = KGDiffPipeline.from_pretrained(tmp_path / "now", local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    for name, tensor in pipe.level_estimator.state_dict().items():
        assert torch.equal(tensor, reloaded.level_estimator.state_dict()[name]), name
    np.testing.assert_array_equal(sample(reloaded), expected)

    # What the previous version wrote: no level_estimator folder, entry or weight.
    pipe.register_to_config(level_estimate_weight=None)
    before = sample(pipe)
    pipe.save_pretrained(tmp_path / "old")
    shutil.rmtree(tmp_path / "old" / "level_estimator")
    index = json.loads((tmp_path / "old" / "model_index.json").read_text())
    del index["level_estimator"], index["level_estimate_weight"], index["config_sha256"]["level_estimator"]
    own = {k: v for k, v in index.items() if k not in pipe.components and k != "config_sha256"}
    index["config_sha256"]["model_index"] = config_digest(_without_added_defaults(own))
    (tmp_path / "old" / "model_index.json").write_text(json.dumps(index))
    old = KGDiffPipeline.from_pretrained(tmp_path / "old", local_files_only=True)
    old.set_progress_bar_config(disable=True)
    assert old.level_estimator is None and old.config.level_estimate_weight is None
    np.testing.assert_array_equal(sample(old), before)


def test_no_estimator_above_the_training_node_cap(city, monkeypatch):
    monkeypatch.setattr("kgdiff_diffusers.models.level_estimator.MAX_TRAINING_NODES", 3)
    assert _estimator(city) is None
    pipe = build_pipeline(city, KGDiffModelConfig(**SMALL))
    assert pipe.level_estimator is None and choose_level_estimate_weight(pipe, city) is None
