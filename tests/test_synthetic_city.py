import numpy as np
import pandas as pd
import pytest

from kgdiff_diffusers.data.synthetic import POI_CATEGORIES, category_profiles, make_synthetic_city
from kgdiff_diffusers.kg.builders import new_node_triples

STEPS = 48


@pytest.fixture(scope="module")
def city():
    return make_synthetic_city(num_nodes=40, num_days=28, steps_per_day=STEPS, seed=3)


def weekday_profiles(data) -> np.ndarray:
    """``(N, T)`` mean weekday flow of each node."""
    days = data.values[..., 0].reshape(data.num_nodes, -1, STEPS)
    weekday = data.timestamps[::STEPS].day_of_week < 5
    return days[:, weekday].mean(1)


def weights(data) -> np.ndarray:
    return data.node_table[[f"weight_{c}" for c in POI_CATEGORIES]].to_numpy()


def step(hour: float) -> int:
    return int(round(hour * STEPS / 24))


def test_shapes_units_and_calendar(city):
    data, kg = city
    assert data.values.shape == (40, 28 * STEPS, 1) and data.values.dtype == np.float32
    assert data.feature_names == ["flow"] and data.interval_minutes == 30 and not data.zero_is_missing
    assert data.timestamps[0] == pd.Timestamp("2024-01-01") and data.timestamps[1] - data.timestamps[0] == pd.Timedelta(
        "30min"
    )
    assert (data.timestamps[::STEPS].day_of_week >= 5).sum() == 8  # four weekends in 28 days
    assert np.isfinite(data.values).all() and data.values.min() > 0
    assert 50 < np.median(data.values) < 3000  # vehicles per hour
    assert data.node_table["entity"].str.startswith("Sensor/").all()
    np.testing.assert_allclose(weights(data).sum(1), 1.0, rtol=1e-9)
    assert set(data.node_table["dominant_category"]) == set(POI_CATEGORIES)


def test_seeded_determinism():
    a_data, a_kg = make_synthetic_city(num_nodes=12, num_days=3, seed=7)
    b_data, b_kg = make_synthetic_city(num_nodes=12, num_days=3, seed=7)
    c_data, _ = make_synthetic_city(num_nodes=12, num_days=3, seed=8)
    np.testing.assert_array_equal(a_data.values, b_data.values)
    pd.testing.assert_frame_equal(a_data.node_table, b_data.node_table)
    assert a_kg.named_triples() == b_kg.named_triples()
    assert not np.allclose(a_data.values, c_data.values)


def test_profiles_follow_the_land_use(city):
    data, _ = city
    profiles = weekday_profiles(data)
    table = data.node_table
    hospital = table[table["dominant_category"] == "hospital"]["weight_hospital"].idxmax()
    residential = table["weight_residential"].idxmax()
    assert table.loc[hospital, "weight_hospital"] > 0.4 and table.loc[residential, "weight_residential"] > 0.8

    h = profiles[hospital] / profiles[hospital].max()
    # three peaks (07:30, 12:30, 18:30) with the midday one highest and troughs between them
    assert h[step(12.5)] == pytest.approx(1.0, abs=0.05)
    assert h[step(12.5)] > 2 * h[step(10)] and h[step(12.5)] > 2 * h[step(15.5)]
    assert h[step(7.5)] > 1.5 * h[step(10)] and h[step(18.5)] > 1.5 * h[step(15.5)]

    r = profiles[residential] / profiles[residential].max()
    # morning and evening peaks, a midday trough and a quiet night
    assert r[step(8)] > 0.8 and r[step(18)] > 0.7
    assert r[step(12.5)] < 0.3 * r[step(8)] and r[step(3)] < 0.15

    # every node's mean weekday shape matches the mix of its surroundings
    weekday_basis, _ = category_profiles(STEPS)
    expected = weights(data) @ weekday_basis
    correlation = [np.corrcoef(p, e)[0, 1] for p, e in zip(profiles, expected)]
    assert min(correlation) > 0.97


def test_weekends_differ(city):
    data, _ = city
    days = data.values[..., 0].reshape(data.num_nodes, -1, STEPS)
    weekend = np.asarray(data.timestamps[::STEPS].day_of_week >= 5)
    office = data.node_table["weight_office"].to_numpy() > 0.4
    assert office.any()
    morning = slice(step(7.5), step(9.5))
    ratio = days[office][:, weekend, morning].mean() / days[office][:, ~weekend, morning].mean()
    assert ratio < 0.4  # offices are quiet on weekend mornings


def test_kg_explains_the_ground_truth_weights(city):
    data, kg = city
    triples = kg.named_triples()
    area_of = {h: t for h, r, t in triples if r == "SLA"}
    table = data.node_table
    assert [area_of[e] for e in table["entity"]] == table["area"].tolist()
    category_of = {h: t.split("/", 1)[1] for h, r, t in triples if r == "PHPC"}
    counts: dict[str, np.ndarray] = {}
    for h, r, t in triples:
        if r == "PLA":
            counts.setdefault(t, np.zeros(len(POI_CATEGORIES)))[POI_CATEGORIES.index(category_of[h])] += 1
    touching: dict[str, list[str]] = {}
    for h, r, t in triples:
        if r == "ANA":
            touching.setdefault(h, []).append(t)
    for row, area in zip(weights(data), table["area"]):
        mix = counts[area] + 0.1 * sum(counts[a] for a in touching[area])
        np.testing.assert_allclose(row, mix / mix.sum(), rtol=1e-9)
    for relation in ("SLA", "ANA", "ALB", "PLA", "PHPC", "RLA", "RHRC", "RNR", "SOR"):
        assert relation in kg.relations
    assert any(r.startswith("SNS_") for r in kg.relations)
    node_index, _, _ = kg.neighbor_index(table["entity"].tolist())
    assert np.bincount(node_index, minlength=len(table)).min() >= 3


def test_planned_sensor_joins_its_area(city):
    data, kg = city
    table = data.node_table
    lat, lon = table.loc[5, "lat"] + 1e-4, table.loc[5, "lon"] + 1e-4
    triples = new_node_triples(kg, table, "Sensor/planned", lat, lon, pois=[("clinic", "hospital")])
    assert ("Sensor/planned", "SLA", table.loc[5, "area"]) in triples
    assert ("Sensor/planned", "SNS_1km", table.loc[5, "entity"]) in triples
    assert ("POI/clinic", "PHPC", "POICategory/hospital") in triples
    grown = kg.add_triples(triples)
    assert grown.num_entities == kg.num_entities + 2


def test_ten_thousand_nodes_build():
    data, kg = make_synthetic_city(num_nodes=10_000, num_days=2, steps_per_day=STEPS, seed=1)
    assert data.values.shape == (10_000, 2 * STEPS, 1)
    assert data.node_table["node_id"].is_unique and len(data.node_table) == 10_000
    assert kg.num_entities > 10_000 + 3334  # sensors, areas, POIs, roads ...


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps_per_day"):
        make_synthetic_city(steps_per_day=7)
    with pytest.raises(ValueError, match="num_nodes"):
        make_synthetic_city(num_nodes=1)
    with pytest.raises(ValueError, match="dominance"):
        make_synthetic_city(dominance=1.5)


def test_sensors_see_the_pois_of_their_area_in_one_hop(city):
    data, kg = city
    table = data.node_table
    entity = table["entity"].iloc[0]
    area = table["area"].iloc[0]
    pla = kg.relation_id("PLA")
    area_pois = {kg.entities[h] for h, r, t in kg.triples if r == pla and kg.entities[t] == area}
    node_index, relation_id, neighbor_id = kg.neighbor_index([entity])
    pns_inv = kg.relation_id("PNS") + kg.num_relations
    seen = {kg.entities[n] for r, n in zip(relation_id, neighbor_id) if r == pns_inv}
    assert area_pois and seen == area_pois
    # a planned sensor in the same area is linked to the same POIs
    triples = new_node_triples(kg, table, "Sensor/planned", table["lat"].iloc[0], table["lon"].iloc[0])
    assert {h for h, r, t in triples if r == "PNS"} == area_pois
