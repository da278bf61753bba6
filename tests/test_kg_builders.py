import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kgdiff_diffusers.kg.builders import (
    band_relation,
    build_area_kg,
    build_sensor_kg,
    grid_cell_entity,
    new_node_triples,
    read_triples,
)
from kgdiff_diffusers.kg.graph import KnowledgeGraph
from kgdiff_diffusers.kg.spatial import METRES_PER_DEGREE, grid_cells, haversine_m

UUKG_RELATIONS = {"ANA", "ALB", "PLA", "PHPC", "RLA", "JLA", "JHJC"}


def node_table(ids, lat, lon, kind="Sensor"):
    return pd.DataFrame(
        {"node_id": [str(i) for i in ids], "lat": lat, "lon": lon, "entity": [f"{kind}/{i}" for i in ids]}
    )


def neighbours(kg: KnowledgeGraph, entity: str, relation_prefix: str = "") -> set[str]:
    """Entities linked to ``entity`` (either direction) by relations whose name starts with the prefix."""
    found = set()
    for head, relation, tail in kg.named_triples():
        if relation.startswith(relation_prefix):
            if head == entity:
                found.add(tail)
            elif tail == entity:
                found.add(head)
    return found


def linked_rows(kg: KnowledgeGraph, entities: list[str]) -> np.ndarray:
    node_index, _, _ = kg.neighbor_index(entities)
    return np.bincount(node_index, minlength=len(entities))


def north_of(lat: float, metres: float) -> float:
    return lat + metres / METRES_PER_DEGREE


def test_distance_bands_follow_great_circle_distance():
    # b is 500 m north of a, c 2.5 km north, d 40 km away: SNS_1km, SNS_3km and (beyond 10 km) SNS_far
    lat0, lon0 = 37.3, -121.9
    table = node_table("abcd", [lat0, north_of(lat0, 500), north_of(lat0, 2500), north_of(lat0, 40000)], [lon0] * 4)
    kg = build_sensor_kg(table)
    triples = set(kg.named_triples())
    assert ("Sensor/a", "SNS_1km", "Sensor/b") in triples and ("Sensor/b", "SNS_1km", "Sensor/a") in triples
    assert ("Sensor/a", "SNS_3km", "Sensor/c") in triples
    assert ("Sensor/b", "SNS_3km", "Sensor/c") in triples
    assert neighbours(kg, "Sensor/d", "SNS") == {"Sensor/c"}
    assert ("Sensor/d", "SNS_far", "Sensor/c") in triples
    assert not any(r.startswith("SNS") and "Sensor/d" in (h, t) and r != "SNS_far" for h, r, t in triples)
    assert band_relation("SNS", 500) == "SNS_0.5km"


def test_max_neighbors_caps_band_links():
    lat = 37.3 + np.arange(20) * 100 / METRES_PER_DEGREE  # 20 sensors 100 m apart on a line
    table = node_table(range(20), lat, np.full(20, -121.9))
    kg = build_sensor_kg(table, max_neighbors=2)
    # each keeps its 2 nearest, the union of both directions: interior sensors have exactly 2
    assert len(neighbours(kg, "Sensor/10", "SNS")) == 2
    assert neighbours(kg, "Sensor/10", "SNS") == {"Sensor/9", "Sensor/11"}


def test_grid_cells_give_containment_and_adjacency():
    cell_size = 2000.0
    lat0, lon0 = 37.31, -121.91
    row, col = (int(x[0]) for x in grid_cells([lat0], [lon0], cell_size))
    table = node_table("abc", [lat0, lat0 + 1e-4, north_of(lat0, 2 * cell_size)], [lon0, lon0 + 1e-4, lon0])
    kg = build_sensor_kg(table, cell_size_m=cell_size)
    triples = set(kg.named_triples())
    home = grid_cell_entity(row, col)
    assert ("Sensor/a", "SLA", home) in triples and ("Sensor/b", "SLA", home) in triples
    far_cell = [t for h, r, t in triples if h == "Sensor/c" and r == "SLA"][0]
    assert far_cell != home
    # two rows apart: not touching, so no ANA between them
    assert (home, "ANA", far_cell) not in triples
    middle = grid_cell_entity(*(int(x[0]) for x in grid_cells([north_of(lat0, cell_size)], [lon0], cell_size)))
    kg2 = build_sensor_kg(
        pd.concat([table, node_table("m", [north_of(lat0, cell_size)], [lon0])]), cell_size_m=cell_size
    )
    assert {(home, "ANA", middle), (middle, "ANA", far_cell)} <= set(kg2.named_triples())


def test_road_distances_meta_and_osm_edges():
    table = node_table([1, 2, 3], [37.30, 37.31, 37.32], [-121.9, -121.9, -121.9])
    distances = pd.DataFrame(
        {"from": [1, 1, 2, 2, 9], "to": [1, 2, 3, 1, 1], "cost": [0.0, 2500.0, 800.0, 12000.0, 5.0]}
    )
    meta = pd.DataFrame(
        {
            "ID": [1, 2, 3],
            "Fwy": [101, 101, 280],
            "Dir": ["N", "N", "S"],
            "City": [68000.0, np.nan, 68000.0],
            "Lanes": [2, 4, 6],
            "Type": ["ML", "ML", "HV"],
        }
    )
    osm = pd.DataFrame({"sid": [1, 2, 3], "u": [10, 11, 50], "v": [11, 12, 51]})
    triples = set(build_sensor_kg(table, distances=distances, station_meta=meta, osm_edges=osm).named_triples())
    assert ("Sensor/1", "SRS_3km", "Sensor/2") in triples  # directed road distance, 2.5 km
    assert ("Sensor/2", "SRS_1km", "Sensor/3") in triples
    assert not any(r.startswith("SRS") and h == "Sensor/2" and t == "Sensor/1" for h, r, t in triples)  # 12 km
    assert {
        ("Sensor/1", "SOF", "Freeway/101"),
        ("Sensor/3", "SHD", "Direction/S"),
        ("Sensor/1", "SLC", "City/68000"),
    } <= triples
    assert not any(h == "Sensor/2" and r == "SLC" for h, r, t in triples)  # missing city: no triple
    assert {
        ("Sensor/1", "SHL", "Lanes/1-2"),
        ("Sensor/2", "SHL", "Lanes/4"),
        ("Sensor/3", "SHL", "Lanes/5+"),
    } <= triples
    assert ("Sensor/3", "SHT", "StationType/HV") in triples
    assert ("Sensor/1", "SOR", "Road/10_11") in triples
    assert ("Road/10_11", "RNR", "Road/11_12") in triples and ("Road/11_12", "RNR", "Road/10_11") in triples
    assert not any(r == "RNR" and "Road/50_51" in (h, t) for h, r, t in triples)


def test_sensor_kg_bad_input():
    table = node_table([1, 2], [37.3, 37.31], [-121.9, -121.9])
    with pytest.raises(ValueError, match="lat/lon"):
        build_sensor_kg(table.assign(lat=[37.3, np.nan]))
    with pytest.raises(ValueError, match="lacks column"):
        build_sensor_kg(table.drop(columns="entity"))
    with pytest.raises(ValueError, match="distance_bands_m"):
        build_sensor_kg(table, distance_bands_m=(3000, 1000))
    with pytest.raises(ValueError, match="sensor_id"):
        build_sensor_kg(table, station_meta=pd.DataFrame({"Fwy": [1]}))
    with pytest.raises(ValueError, match="at least two"):
        build_sensor_kg(table.iloc[:1])


def write_geojson(path: Path, squares: dict[str, tuple[float, float]], size: float = 0.01) -> None:
    features = []
    for key, (lon, lat) in squares.items():
        ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
        features.append(
            {
                "type": "Feature",
                "properties": {"LocationID": int(key), "borough": "Testboro"},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def test_area_kg_from_polygons_adjacency_and_triples(tmp_path):
    # areas 1 and 2 share an edge, 3 touches 2 at a corner only, 4 is far away and 5 has no polygon
    squares = {"1": (-74.0, 40.70), "2": (-73.99, 40.70), "3": (-73.98, 40.71), "4": (-73.90, 40.80)}
    write_geojson(tmp_path / "zones.geojson", squares)
    table = node_table(
        [1, 2, 3, 4, 5],
        [40.705, 40.705, 40.715, 40.805, 40.806],
        [-73.995, -73.985, -73.975, -73.895, -73.894],
        kind="Area",
    )
    kg = build_area_kg(table, polygons_geojson=tmp_path / "zones.geojson")
    triples = set(kg.named_triples())
    assert {("Area/1", "ANA", "Area/2"), ("Area/2", "ANA", "Area/1"), ("Area/2", "ANA", "Area/3")} <= triples
    assert ("Area/1", "ANA", "Area/3") not in triples
    assert ("Area/4", "ALB", "Borough/Testboro") in triples
    assert ("Area/5", "ANN", "Area/4") in triples  # no polygon: linked to the nearest centroid
    assert linked_rows(kg, table["entity"].tolist()).min() >= 1

    adjacency = np.zeros((5, 5), dtype=int)
    adjacency[0, 1] = adjacency[1, 0] = 1
    kg = build_area_kg(table, adjacency=adjacency)
    assert {("Area/1", "ANA", "Area/2"), ("Area/3", "ANN", "Area/2"), ("Area/4", "ANN", "Area/5")} <= set(
        kg.named_triples()
    )
    with pytest.raises(ValueError, match=r"adjacency must be \(5, 5\)"):
        build_area_kg(table, adjacency=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="at least one of"):
        build_area_kg(table)

    with gzip.open(tmp_path / "kg.tsv.gz", "wt") as f:
        f.write("head\trelation\ttail\nArea/1\tANA\tArea/2\nPOI/x\tPLA\tArea/3\nPOI/x\tPHPC\tPC/food\n")
    assert read_triples(tmp_path / "kg.tsv.gz")[0] == ("Area/1", "ANA", "Area/2")
    kg = build_area_kg(table, triples_path=tmp_path / "kg.tsv.gz")
    assert kg.num_relations == 4  # ANA, PLA, PHPC from the file; ANN for areas 4 and 5
    assert linked_rows(kg, table["entity"].tolist()).min() >= 1


def test_new_sensor_links_to_its_nearest_sensors_and_cell():
    rng = np.random.default_rng(0)
    lat = 37.3 + rng.uniform(0, 0.1, 30)
    lon = -121.9 + rng.uniform(0, 0.1, 30)
    table = node_table(range(30), lat, lon)
    kg = build_sensor_kg(table, max_neighbors=4)
    new_lat, new_lon = 37.35, -121.85
    triples = new_node_triples(kg, table, "Sensor/new", new_lat, new_lon, pois=[("h1", "hospital")], max_neighbors=4)
    linked = {t for h, r, t in triples if h == "Sensor/new" and r.startswith("SNS")}
    distance = haversine_m(new_lat, new_lon, lat, lon)
    expected = {f"Sensor/{i}" for i in np.argsort(distance)[:4] if distance[i] <= 10000}
    assert linked == expected
    cell = grid_cell_entity(*(int(x[0]) for x in grid_cells([new_lat], [new_lon], 2000.0)))
    assert ("Sensor/new", "SLA", cell) in triples
    assert ("POI/h1", "PLA", cell) in triples and ("POI/h1", "PHPC", "POICategory/hospital") in triples
    grown = kg.add_triples(triples)
    assert grown.entities[: kg.num_entities] == kg.entities
    assert linked_rows(grown, ["Sensor/new"])[0] >= 5
    with pytest.raises(ValueError, match="already in the knowledge graph"):
        new_node_triples(kg, table, "Sensor/0", new_lat, new_lon)
    with pytest.raises(ValueError, match="kind"):
        new_node_triples(kg, table, "Sensor/x", new_lat, new_lon, kind="road")
    with pytest.raises(ValueError, match="node_table is empty"):
        new_node_triples(kg, table.iloc[:0], "Sensor/x", new_lat, new_lon)


# ----- real data (skipped when ../shared/data is absent) -----


def pems_bay_16_table(folder: Path) -> pd.DataFrame:
    ids = [str(c) for c in pd.read_hdf(folder / "pems-bay-16.h5").columns]
    locations = pd.read_csv(
        folder / "graph_sensor_locations_bay.csv", header=None, names=["node_id", "lat", "lon"], dtype={"node_id": str}
    )
    table = locations.set_index("node_id").loc[ids].reset_index()
    return table.assign(entity="Sensor/" + table["node_id"])


def test_pems_bay_16_kg_connects_every_sensor(shared_data):
    folder = shared_data / "pems_bay_16"
    table = pems_bay_16_table(folder)
    meta = pd.read_csv(folder / "pems_bay_station_meta.csv")
    kg = build_sensor_kg(
        table,
        distances=pd.read_csv(folder / "distances_bay_2017.csv", header=None),
        station_meta=meta,
        osm_edges=pd.read_csv(folder / "sensor_osm_edge.csv"),
    )
    entities = table["entity"].tolist()
    assert len(entities) == 16 and linked_rows(kg, entities).min() >= 1
    for entity in entities:
        assert any(name.startswith("Sensor/") for name in neighbours(kg, entity, "SNS"))
    relations = set(kg.relations)
    assert {"SOF", "SHD", "SLC", "SLY", "SHL", "SHT", "SOR", "SLA", "ANA"} <= relations
    assert any(r.startswith("SRS_") for r in relations) and any(r.startswith("SNS_") for r in relations)
    triples = set(kg.named_triples())
    assert ("Sensor/400001", "SOF", "Freeway/101") in triples  # station 400001 is on US-101
    assert ("Sensor/400045", "SRS_3km", "Sensor/400030") in triples  # 2525.0 m by road in the distances file
    assert ("Sensor/400001", "SOR", "Road/65415943_25457976") in triples
    assert sum(r == "SOR" for _, r, _ in triples) == 16


def test_metr_la_week_kg_connects_by_geographic_bands(shared_data):
    locations = pd.read_csv(shared_data / "metr_la_week" / "graph_sensor_locations.csv")
    table = pd.DataFrame(
        {"node_id": locations["sensor_id"].astype(str), "lat": locations["latitude"], "lon": locations["longitude"]}
    )
    table["entity"] = "Sensor/" + table["node_id"]
    kg = build_sensor_kg(table)
    assert len(table) == 207
    entities = table["entity"].tolist()
    node_index, relation_id, neighbor_id = kg.neighbor_index(entities)
    names = kg.relation_names_with_inverse()
    is_band = np.array([names[r].startswith("SNS_") for r in relation_id])
    assert len(np.unique(node_index[is_band])) == 207
    # a planned sensor next to 773869 (34.15497, -118.31829) gets it as a 1 km neighbour
    triples = new_node_triples(kg, table, "Sensor/planned", 34.1555, -118.3180)
    assert ("Sensor/planned", "SNS_1km", "Sensor/773869") in triples


def test_nyc_kg_from_uukg_triples_maps_every_zone(shared_data):
    folder = shared_data / "nyc_bike_manhattan69"
    zones = pd.read_csv(folder / "zones.csv")
    table = pd.DataFrame(
        {
            "node_id": zones["graph_id"].astype(str),
            "lat": zones["lat"],
            "lon": zones["lon"],
            "entity": "Area/" + zones["zone_id"].astype(str),
        }
    )
    kg = build_area_kg(table, triples_path=folder / "urban_kg_triples.tsv.gz")
    assert len(kg.triples) == 80124 and set(kg.relations) == UUKG_RELATIONS
    entities = table["entity"].tolist()
    absent = [name for name in entities if not kg.has_entity(name)]
    assert absent == []  # all 69 zones are in the triple file
    counts = linked_rows(kg, entities)
    flow = np.load(folder / "bike_inout_30min.npz")["flow"]
    non_empty = flow.sum(axis=(0, 2)) > 0
    assert non_empty.sum() == 64 and counts[non_empty].min() >= 10  # each zone with bikes has POIs, roads ...
    assert counts.min() >= 1

    adjacency = np.load(folder / "zone_adjacency.npy")
    kg_adjacency = build_area_kg(table, adjacency=adjacency)
    ana = {(h, t) for h, r, t in kg_adjacency.named_triples() if r == "ANA"}
    assert len(ana) == int(adjacency.sum()) == 332
    ann = {h for h, r, t in kg_adjacency.named_triples() if r == "ANN"}
    assert ann == {"Area/103", "Area/104", "Area/153"}  # the zones without a neighbour in the matrix

    kg_polygons = build_area_kg(table, polygons_geojson=folder / "zones_wgs84.geojson")
    polygon_ana = {(h, t) for h, r, t in kg_polygons.named_triples() if r == "ANA"}
    assert len(polygon_ana & ana) >= 0.95 * len(ana)  # shared boundaries recover the given adjacency

    # a planned area near Times Square gets the nearest zones as neighbours and their borough
    triples = new_node_triples(kg, table, "Area/planned", 40.7585, -73.9855, kind="area", pois=[("p", "Cate1_18")])
    assert ("Area/planned", "ANA", "Area/230") in triples
    assert ("Area/planned", "ALB", "Borough/Manhattan") in triples
    assert ("POI/p", "PHPC", "PC/Cate1_18") in triples


def test_kg_with_a_tab_in_a_name_is_not_saved(tmp_path):
    kg = KnowledgeGraph.from_triples([("Sensor/s\t3", "SNS_1km", "Sensor/b")])
    with pytest.raises(ValueError, match=r"entity 'Sensor/s\\t3' contains a tab or line break"):
        kg.save(tmp_path / "kg")
    assert not (tmp_path / "kg").exists()
