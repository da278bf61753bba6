"""UUKG-style urban knowledge graphs around spatio-temporal nodes (DESIGN.md §2).

Entities are named ``<Kind>/<id>``; relations use UUKG's names where UUKG has them:

==============  =====================================================================================
relation        meaning (head -> tail)
==============  =====================================================================================
``SNS_<b>km``   sensor near sensor: great-circle distance in the band ending at ``b`` km (both ways)
``SNS_far``     sensor -> its nearest sensor, when no sensor lies within the largest band
``SRS_<b>km``   sensor reaches sensor along the road network within the band (directed, from a
                DCRNN distances file)
``SLA``         sensor located in area (a grid cell ``Area/cell_<row>_<col>`` or a city area)
``ANA``         area adjacent to area (both ways)
``ANN``         area -> its nearest area by centroid, when it has no other neighbour
``ALB``         area located in borough
``PLA``         POI located in area
``PHPC``        POI has POI category
``RLA``         road located in area
``RHRC``        road has road category
``SOR``         sensor on road segment (``Road/<u>_<v>``: an OpenStreetMap edge, or a city road)
``RNR``         road next to road: segments sharing an OSM node (both ways)
``SOF``         sensor on freeway ``Freeway/<number>``
``SHD``         sensor has direction ``Direction/<N|S|E|W>``
``SLC``         sensor located in city ``City/<code>``
``SLY``         sensor located in county ``County/<code>``
``SHL``         sensor has lanes ``Lanes/<1-2|3|4|5+>``
``SHT``         sensor has station type ``StationType/<ML|HV|...>``
==============  =====================================================================================

Every builder makes sure each data node has at least one neighbour (``KnowledgeGraph.neighbor_index``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .graph import KnowledgeGraph
from .spatial import grid_cells, nearest_neighbors, polygon_adjacency, read_polygons, touching_cells

logger = logging.getLogger(__name__)

Triple = tuple[str, str, str]

DEFAULT_DISTANCE_BANDS_M = (1000.0, 3000.0, 5000.0, 10000.0)
DEFAULT_MAX_NEIGHBORS = 8
DEFAULT_CELL_SIZE_M = 2000.0
NODE_TABLE_COLUMNS = ("node_id", "lat", "lon", "entity")
GRID_CELL_PREFIX = "Area/cell_"


def band_relation(prefix: str, band_m: float) -> str:
    """The name of a distance-band relation, e.g. ``band_relation("SNS", 1000) == "SNS_1km"``."""
    return f"{prefix}_{band_m / 1000:g}km"


def grid_cell_entity(row: int, col: int) -> str:
    """The entity name of a global grid cell (see :func:`kgdiff_diffusers.kg.spatial.grid_cells`)."""
    return f"{GRID_CELL_PREFIX}{row}_{col}"


def build_sensor_kg(
    node_table: pd.DataFrame,
    distances: pd.DataFrame | None = None,
    station_meta: pd.DataFrame | None = None,
    osm_edges: pd.DataFrame | None = None,
    distance_bands_m: Sequence[float] = DEFAULT_DISTANCE_BANDS_M,
    road_distance_bands_m: Sequence[float] = DEFAULT_DISTANCE_BANDS_M,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
) -> KnowledgeGraph:
    """A KG around road sensors (PeMS-Bay, METR-LA style).

    Always: ``SNS_<b>km`` great-circle bands to each sensor's ``max_neighbors`` nearest sensors (``SNS_far``
    to the nearest one when none is within the largest band), and ``SLA`` containment in global grid cells
    of ``cell_size_m`` with ``ANA`` between touching occupied cells. When given: ``SRS_<b>km`` road-distance
    bands, station metadata (``SOF``, ``SHD``, ``SLC``, ``SLY``, ``SHL``, ``SHT``) and OSM road segments
    (``SOR``, ``RNR``). Rows of the side tables about sensors that are not in ``node_table`` are ignored.

    Args:
        node_table: one row per sensor with ``node_id``, ``lat``, ``lon`` (degrees) and ``entity``
            (e.g. ``"Sensor/400001"``).
        distances: road-network distances, columns ``from``, ``to``, ``cost`` (metres), or the header-less
            DCRNN ``distances*.csv`` read with ``header=None`` (first three columns are used).
        station_meta: Caltrans station metadata with a ``sensor_id``/``ID`` column and any of ``Fwy``,
            ``Dir``, ``City``, ``County``, ``Lanes``, ``Type`` (case-insensitive).
        osm_edges: each sensor's OSM edge, columns ``sid`` (or ``sensor_id``), ``u``, ``v``.
        distance_bands_m: increasing upper edges (metres) of the great-circle bands.
        road_distance_bands_m: increasing upper edges (metres) of the road-distance bands.
        max_neighbors: nearest sensors linked per sensor and band family (union of both directions).
        cell_size_m: side of the grid cells used as areas.

    Returns:
        The knowledge graph; every sensor of ``node_table`` has at least one neighbour.
    """
    nodes = _check_node_table(node_table, "node_table")
    if len(nodes) < 2:
        raise ValueError("build_sensor_kg: node_table needs at least two sensors to relate them")
    bands = _check_bands(distance_bands_m, "distance_bands_m")
    entity_of = dict(zip(nodes["node_id"], nodes["entity"]))
    lat, lon = nodes["lat"].to_numpy(), nodes["lon"].to_numpy()
    entities = nodes["entity"].tolist()

    triples: list[Triple] = []
    query_index, point_index, relations = _sensor_bands(lat, lon, lat, lon, bands, max_neighbors, True)
    for i, j, relation in zip(query_index, point_index, relations):
        triples += [(entities[i], relation, entities[j]), (entities[j], relation, entities[i])]
    triples += _grid_triples(entities, lat, lon, cell_size_m)
    if distances is not None:
        road_bands = _check_bands(road_distance_bands_m, "road_distance_bands_m")
        triples += _road_distance_triples(distances, entity_of, road_bands, max_neighbors)
    if station_meta is not None:
        triples += _station_meta_triples(station_meta, entity_of)
    if osm_edges is not None:
        triples += _osm_edge_triples(osm_edges, entity_of)
    kg = KnowledgeGraph.from_triples(triples)
    _check_every_node_linked(kg, entities)
    return kg


def build_area_kg(
    node_table: pd.DataFrame,
    triples_path: str | os.PathLike | None = None,
    adjacency: np.ndarray | None = None,
    polygons_geojson: str | os.PathLike | None = None,
    polygon_id_property: str = "LocationID",
    borough_property: str = "borough",
    area_prefix: str = "Area/",
    boundary_tolerance_m: float = 20.0,
) -> KnowledgeGraph:
    """A KG around city areas (NYC taxi zones style), from any of three sources (their union if several).

    Args:
        node_table: one row per area with ``node_id``, ``lat``, ``lon`` (centroid, degrees) and ``entity``
            (e.g. ``"Area/4"``, UUKG's Area id = TLC LocationID).
        triples_path: a UUKG-style triple file (TSV ``head, relation, tail``, optional header line, may be
            gzipped) whose ``Area/<id>`` entities are the data's nodes; all its triples are kept.
        adjacency: ``(N, N)`` 0/1 matrix in ``node_table`` row order; ``ANA`` for each non-zero off-diagonal.
        polygons_geojson: a GeoJSON of the areas' polygons; areas whose boundaries come within
            ``boundary_tolerance_m`` get ``ANA``, and ``borough_property`` (if present) gives ``ALB``.
        polygon_id_property: the GeoJSON property holding the area id (entity = ``area_prefix + id``).
        borough_property: the GeoJSON property holding the borough name.
        area_prefix: prefix of area entities.
        boundary_tolerance_m: how close two boundaries must come to count as touching (metres).

    Returns:
        The knowledge graph. An area left with no triple at all gets ``ANN`` to its nearest area.
    """
    nodes = _check_node_table(node_table, "node_table")
    if triples_path is None and adjacency is None and polygons_geojson is None:
        raise ValueError("build_area_kg: give at least one of triples_path, adjacency or polygons_geojson")
    entities = nodes["entity"].tolist()
    triples: list[Triple] = []
    if triples_path is not None:
        file_triples = read_triples(triples_path)
        mentioned = {name for head, _, tail in file_triples for name in (head, tail)}
        absent = [name for name in entities if name not in mentioned]
        if absent:
            logger.warning(
                "%s: %d data node(s) not in the triple file: %s", triples_path, len(absent), absent
            )
        triples += file_triples
    if adjacency is not None:
        triples += _adjacency_triples(adjacency, entities)
    if polygons_geojson is not None:
        triples += _polygon_triples(
            polygons_geojson, polygon_id_property, borough_property, area_prefix, boundary_tolerance_m
        )
    linked = {name for head, _, tail in triples for name in (head, tail)}
    isolated = np.array([name not in linked for name in entities])
    if isolated.any():
        if len(entities) < 2:
            raise ValueError("build_area_kg: the only area has no triple and no other area to link to")
        lat, lon = nodes["lat"].to_numpy(), nodes["lon"].to_numpy()
        lonely = np.flatnonzero(isolated)
        query, point, _ = nearest_neighbors(lat, lon, lat[lonely], lon[lonely], 1, query_point_index=lonely)
        triples += [(entities[lonely[q]], "ANN", entities[p]) for q, p in zip(query, point)]
        logger.info("linked %d area(s) with no other triple to their nearest area (ANN)", len(lonely))
    kg = KnowledgeGraph.from_triples(triples)
    _check_every_node_linked(kg, entities)
    return kg


def read_triples(path: str | os.PathLike) -> list[Triple]:
    """Reads a UUKG-style TSV of ``head<TAB>relation<TAB>tail`` (a header line is skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"triple file {path} does not exist")
    table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=3)
    if table.shape[1] != 3:
        raise ValueError(
            f"{path}: expected 3 tab-separated columns (head, relation, tail); got {table.shape[1]}"
        )
    if tuple(table.iloc[0].str.lower()) == ("head", "relation", "tail"):
        table = table.iloc[1:]
    if (table == "").any().any():
        raise ValueError(
            f"{path}: a triple has an empty field (line {int((table == '').any(axis=1).idxmax()) + 1})"
        )
    return list(zip(table[0], table[1], table[2]))


def new_node_triples(
    kg: KnowledgeGraph,
    node_table: pd.DataFrame,
    entity: str,
    lat: float,
    lon: float,
    kind: str = "sensor",
    pois: Sequence[tuple[str, str]] | None = None,
    distance_bands_m: Sequence[float] = DEFAULT_DISTANCE_BANDS_M,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
    num_adjacent_areas: int = 3,
) -> list[Triple]:
    """Triples that link a NEW (planned) sensor or area, known only by its position, to existing entities.

    ``kg.add_triples(new_node_triples(...))`` then gives it a neighbourhood by the builders' rules:

    - ``kind="sensor"``: ``SNS_<b>km`` to its ``max_neighbors`` nearest existing sensors of ``node_table``
      (``SNS_far`` to the nearest when none is in a band), ``SLA`` to its grid cell (a new cell also gets
      ``ANA`` to the touching cells already in ``kg``). Use the same bands and cell size as the builder.
    - ``kind="area"``: ``ANA`` to its ``num_adjacent_areas`` nearest existing areas (by centroid: a stand-in
      for shared boundaries) and ``ALB`` to the borough(s) of the nearest one.
    - ``pois``: ``(poi_name, category)`` pairs become ``POI/<name>`` ``PLA`` the node's area and ``PHPC`` the
      category; a category already in ``kg`` (as ``POICategory/<c>`` or UUKG's ``PC/<c>``) is reused.
    - ``PNS`` (POI near sensor), when ``kg`` uses it (the synthetic city does): a new sensor is linked to the
      POIs located in its grid cell and to the given ``pois``, so its condition sees them directly.

    Args:
        kg: the existing graph.
        node_table: the existing nodes (``node_id``, ``lat``, ``lon``, ``entity``), all entities in ``kg``.
        entity: the new node's entity name (e.g. ``"Sensor/new_1"``), not yet in ``kg``.
        lat, lon: its position in degrees.
        kind: ``"sensor"`` or ``"area"``.
        pois: optional POIs at the new node.
        distance_bands_m, max_neighbors, cell_size_m: as in :func:`build_sensor_kg`.
        num_adjacent_areas: nearest areas a new area is adjacent to.

    Returns:
        ``(head, relation, tail)`` name triples.
    """
    if kind not in ("sensor", "area"):
        raise ValueError(f"kind must be 'sensor' or 'area'; got {kind!r}")
    if kg.has_entity(entity):
        raise ValueError(
            f"entity {entity!r} is already in the knowledge graph; new_node_triples is for new nodes"
        )
    if not (np.isfinite(lat) and np.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"the new node's lat={lat}, lon={lon} are not valid degrees")
    nodes = _check_node_table(node_table, "node_table")
    unknown = [name for name in nodes["entity"] if not kg.has_entity(name)]
    if unknown:
        raise ValueError(
            f"node_table entities {unknown[:5]} are not in kg; pass the table the kg was built from"
        )
    node_lat, node_lon = nodes["lat"].to_numpy(), nodes["lon"].to_numpy()
    entities = nodes["entity"].tolist()
    if not entities:
        raise ValueError(f"node_table is empty: the new {kind} {entity!r} would have no neighbours")
    triples: list[Triple] = []
    if kind == "sensor":
        bands = _check_bands(distance_bands_m, "distance_bands_m")
        _, point, relations = _sensor_bands(node_lat, node_lon, [lat], [lon], bands, max_neighbors, False)
        for j, relation in zip(point, relations):
            triples += [(entity, relation, entities[j]), (entities[j], relation, entity)]
        row, col = (int(x[0]) for x in grid_cells([lat], [lon], cell_size_m))
        area = grid_cell_entity(row, col)
        triples.append((entity, "SLA", area))
        if not kg.has_entity(area):
            triples += _new_cell_adjacency(kg, row, col, cell_size_m)
        elif "PNS" in kg.relations and "PLA" in kg.relations:
            located = kg.triples[(kg.triples[:, 1] == kg.relation_id("PLA")) & (kg.triples[:, 2] == kg.entity_id(area))]
            triples += [(kg.entities[poi], "PNS", entity) for poi in located[:, 0]]
    else:
        area = entity
        _, point, _ = nearest_neighbors(node_lat, node_lon, [lat], [lon], num_adjacent_areas)
        for j in point:
            triples += [(entity, "ANA", entities[j]), (entities[j], "ANA", entity)]
        nearest = kg.entity_id(entities[point[0]])
        if "ALB" in kg.relations:
            alb = kg.triples[(kg.triples[:, 0] == nearest) & (kg.triples[:, 1] == kg.relation_id("ALB"))]
            triples += [(entity, "ALB", kg.entities[tail]) for tail in alb[:, 2]]
    for name, category in pois or []:
        poi = name if "/" in name else f"POI/{name}"
        triples += [(poi, "PLA", area), (poi, "PHPC", _category_entity(kg, category))]
        if kind == "sensor":
            triples.append((poi, "PNS", entity))
    if not any(kg.has_entity(head) or kg.has_entity(tail) for head, _, tail in triples):
        raise ValueError(f"the new {kind} {entity!r} at ({lat}, {lon}) links to no existing entity")
    return triples


def _sensor_bands(
    lat: np.ndarray,
    lon: np.ndarray,
    query_lat: Sequence[float],
    query_lon: Sequence[float],
    bands: np.ndarray,
    max_neighbors: int,
    exclude_self: bool,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Band relations from each query point to its nearest points; ``SNS_far`` for a query with none."""
    query_lat = np.asarray(query_lat, dtype=np.float64)
    query_lon = np.asarray(query_lon, dtype=np.float64)
    self_index = np.arange(len(query_lat)) if exclude_self else None
    query, point, distance = nearest_neighbors(
        lat, lon, query_lat, query_lon, max_neighbors, bands[-1], query_point_index=self_index
    )
    relations = [band_relation("SNS", bands[b]) for b in np.searchsorted(bands, distance)]
    lonely = np.setdiff1d(np.arange(len(query_lat)), query)
    if len(lonely):
        far_query, far_point, _ = nearest_neighbors(
            lat,
            lon,
            query_lat[lonely],
            query_lon[lonely],
            1,
            query_point_index=lonely if exclude_self else None,
        )
        query = np.concatenate([query, lonely[far_query]])
        point = np.concatenate([point, far_point])
        relations += ["SNS_far"] * len(far_query)
    return query, point, relations


def _grid_triples(entities: list[str], lat: np.ndarray, lon: np.ndarray, cell_size_m: float) -> list[Triple]:
    rows, cols = grid_cells(lat, lon, cell_size_m)
    cells = [grid_cell_entity(r, c) for r, c in zip(rows.tolist(), cols.tolist())]
    triples = [(name, "SLA", cell) for name, cell in zip(entities, cells)]
    unique = np.unique(np.stack([rows, cols], 1), axis=0)
    i, j = touching_cells(unique[:, 0], unique[:, 1], cell_size_m)
    triples += [
        (grid_cell_entity(*unique[a]), "ANA", grid_cell_entity(*unique[b]))
        for a, b in zip(i.tolist(), j.tolist())
    ]
    return triples


def _new_cell_adjacency(kg: KnowledgeGraph, row: int, col: int, cell_size_m: float) -> list[Triple]:
    """``ANA`` both ways between a new grid cell and the touching cells already in ``kg``."""
    existing = []
    for name in kg.entities:
        if name.startswith(GRID_CELL_PREFIX):
            parts = name[len(GRID_CELL_PREFIX) :].split("_")
            if len(parts) == 2 and all(p.lstrip("-").isdigit() for p in parts):
                existing.append((int(parts[0]), int(parts[1])))
    rows = np.array([row] + [r for r, _ in existing], dtype=np.int64)
    cols = np.array([col] + [c for _, c in existing], dtype=np.int64)
    i, j = touching_cells(rows, cols, cell_size_m)
    new = grid_cell_entity(row, col)
    triples = []
    for b in j[i == 0].tolist():
        other = grid_cell_entity(int(rows[b]), int(cols[b]))
        triples += [(new, "ANA", other), (other, "ANA", new)]
    return triples


def _road_distance_triples(
    distances: pd.DataFrame, entity_of: dict[str, str], bands: np.ndarray, max_neighbors: int
) -> list[Triple]:
    columns = (
        ["from", "to", "cost"] if {"from", "to", "cost"} <= set(distances.columns) else distances.columns[:3]
    )
    if len(columns) < 3:
        raise ValueError("distances needs columns from, to, cost (metres); got fewer than three columns")
    table = pd.DataFrame(
        {
            "from": _id_strings(distances[columns[0]]),
            "to": _id_strings(distances[columns[1]]),
            "cost": pd.to_numeric(distances[columns[2]], errors="coerce"),
        }
    )
    if table["cost"].isna().any() or (table["cost"] < 0).any():
        raise ValueError("distances: the cost column must hold non-negative numbers (metres)")
    table = table[
        table["from"].isin(entity_of) & table["to"].isin(entity_of) & (table["from"] != table["to"])
    ]
    table = table[table["cost"] <= bands[-1]].sort_values(["from", "cost"], kind="stable")
    table = table.groupby("from", sort=False).head(max_neighbors)
    relations = [band_relation("SRS", bands[b]) for b in np.searchsorted(bands, table["cost"].to_numpy())]
    return [(entity_of[f], r, entity_of[t]) for f, r, t in zip(table["from"], relations, table["to"])]


def _station_meta_triples(station_meta: pd.DataFrame, entity_of: dict[str, str]) -> list[Triple]:
    lower = {str(c).lower(): c for c in station_meta.columns}
    id_column = next((lower[c] for c in ("sensor_id", "id", "station_id", "station") if c in lower), None)
    if id_column is None:
        raise ValueError(
            f"station_meta needs a sensor_id (or ID) column; it has {list(station_meta.columns)}"
        )
    meta = station_meta.assign(_node=_id_strings(station_meta[id_column]))
    meta = meta[meta["_node"].isin(entity_of)]
    triples = []
    attributes = (
        ("fwy", "SOF", "Freeway"),
        ("dir", "SHD", "Direction"),
        ("city", "SLC", "City"),
        ("county", "SLY", "County"),
        ("type", "SHT", "StationType"),
    )
    for column, relation, kind in attributes:
        if column in lower:
            values = _id_strings(meta[lower[column]])
            triples += [
                (entity_of[node], relation, f"{kind}/{value}")
                for node, value in zip(meta["_node"], values)
                if value != ""
            ]
    if "lanes" in lower:
        lanes = pd.to_numeric(meta[lower["lanes"]], errors="coerce")
        for node, count in zip(meta["_node"], lanes):
            if np.isfinite(count):
                bucket = "1-2" if count <= 2 else ("5+" if count >= 5 else str(int(count)))
                triples.append((entity_of[node], "SHL", f"Lanes/{bucket}"))
    return triples


def _osm_edge_triples(osm_edges: pd.DataFrame, entity_of: dict[str, str]) -> list[Triple]:
    id_column = next((c for c in ("sid", "sensor_id") if c in osm_edges.columns), None)
    if id_column is None or not {"u", "v"} <= set(osm_edges.columns):
        raise ValueError(
            f"osm_edges needs columns sid (or sensor_id), u, v; it has {list(osm_edges.columns)}"
        )
    edges = pd.DataFrame(
        {
            "node": _id_strings(osm_edges[id_column]),
            "u": _id_strings(osm_edges["u"]),
            "v": _id_strings(osm_edges["v"]),
        }
    )
    edges = edges[edges["node"].isin(entity_of)]
    roads = [f"Road/{u}_{v}" for u, v in zip(edges["u"], edges["v"])]
    triples = [(entity_of[node], "SOR", road) for node, road in zip(edges["node"], roads)]
    by_osm_node: dict[str, set[str]] = {}
    for road, u, v in zip(roads, edges["u"], edges["v"]):
        by_osm_node.setdefault(u, set()).add(road)
        by_osm_node.setdefault(v, set()).add(road)
    for sharing in by_osm_node.values():
        triples += [(a, "RNR", b) for a in sharing for b in sharing if a != b]
    return triples


def _adjacency_triples(adjacency: np.ndarray, entities: list[str]) -> list[Triple]:
    matrix = np.asarray(adjacency)
    if matrix.shape != (len(entities), len(entities)):
        raise ValueError(
            f"adjacency must be ({len(entities)}, {len(entities)}) in node_table order; got {matrix.shape}"
        )
    if not np.isfinite(matrix.astype(np.float64)).all():
        raise ValueError("adjacency contains NaN or inf")
    i, j = np.nonzero(matrix)
    return [(entities[a], "ANA", entities[b]) for a, b in zip(i.tolist(), j.tolist()) if a != b]


def _polygon_triples(
    path: str | os.PathLike, id_property: str, borough_property: str, prefix: str, tolerance_m: float
) -> list[Triple]:
    rings, properties = read_polygons(path, id_property)
    triples = []
    for a, b in polygon_adjacency(rings, tolerance_m):
        triples += [(prefix + a, "ANA", prefix + b), (prefix + b, "ANA", prefix + a)]
    for key, props in properties.items():
        if props.get(borough_property):
            triples.append((prefix + key, "ALB", f"Borough/{props[borough_property]}"))
    return triples


def _category_entity(kg: KnowledgeGraph, category: str) -> str:
    if "/" in category:
        return category
    for prefix in ("POICategory/", "PC/"):
        if kg.has_entity(prefix + category):
            return prefix + category
    return f"POICategory/{category}"


def _check_node_table(node_table: pd.DataFrame, argument: str) -> pd.DataFrame:
    missing = [c for c in NODE_TABLE_COLUMNS if c not in node_table.columns]
    if missing:
        raise ValueError(f"{argument} lacks column(s) {missing}; it needs {list(NODE_TABLE_COLUMNS)}")
    nodes = node_table.reset_index(drop=True)
    nodes = nodes.assign(node_id=_id_strings(nodes["node_id"]))
    lat = pd.to_numeric(nodes["lat"], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(nodes["lon"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        raise ValueError(
            f"{argument}: nodes {nodes['node_id'][bad].tolist()[:5]} have no valid lat/lon (degrees)"
        )
    if nodes["entity"].duplicated().any():
        raise ValueError(
            f"{argument}: entity names repeat, e.g. {nodes['entity'][nodes['entity'].duplicated()].iloc[0]}"
        )
    return nodes.assign(lat=lat, lon=lon, entity=nodes["entity"].astype(str))


def _check_bands(bands: Sequence[float], argument: str) -> np.ndarray:
    edges = np.asarray(bands, dtype=np.float64)
    if edges.ndim != 1 or len(edges) == 0 or (edges <= 0).any() or (np.diff(edges) <= 0).any():
        raise ValueError(f"{argument} must be increasing positive distances in metres; got {list(bands)}")
    return edges


def _id_strings(values: pd.Series) -> pd.Series:
    """Ids as strings; integral numbers lose their ``.0`` (``400001.0`` -> ``"400001"``); missing -> ``""``."""
    present = values.notna().to_numpy()
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    text = np.full(len(values), "", dtype=object)
    if (np.isfinite(numeric) == present).all() and (numeric[present] == np.round(numeric[present])).all():
        text[present] = numeric[present].astype(np.int64).astype(str)
    else:
        text[present] = values[present].astype(str).to_numpy()
    return pd.Series(text, index=values.index, dtype=object)


def _check_every_node_linked(kg: KnowledgeGraph, entities: list[str]) -> None:
    missing = [name for name in entities if not kg.has_entity(name)]
    node_index, _, _ = kg.neighbor_index([name for name in entities if kg.has_entity(name)])
    if missing or len(np.unique(node_index)) < len(entities):
        raise RuntimeError(
            f"knowledge graph leaves {len(entities) - len(np.unique(node_index))} node(s) unlinked"
        )
