"""Geometry for KG building: great-circle distances, nearest neighbours, grid cells, polygon adjacency.

Everything works on ``(lat, lon)`` in degrees (WGS84) and returns metres; no GIS library is needed.
"""

from __future__ import annotations

import json
import os

import numpy as np
from scipy.spatial import cKDTree

EARTH_RADIUS_M = 6_371_008.8
METRES_PER_DEGREE = EARTH_RADIUS_M * np.pi / 180.0


def haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (arrays broadcast)."""
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi = phi2 - phi1
    dlmb = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def local_xy_m(lat: np.ndarray, lon: np.ndarray, reference_lat: float) -> np.ndarray:
    """``(n, 2)`` equirectangular coordinates in metres around ``reference_lat`` (KD-trees at city scale)."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    return np.stack([lon * METRES_PER_DEGREE * np.cos(np.radians(reference_lat)), lat * METRES_PER_DEGREE], 1)


def nearest_neighbors(
    lat: np.ndarray,
    lon: np.ndarray,
    query_lat: np.ndarray,
    query_lon: np.ndarray,
    k: int,
    max_distance_m: float = np.inf,
    query_point_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` nearest of ``n`` points to each of ``q`` query points, within ``max_distance_m``.

    Args:
        lat, lon: ``(n,)`` degrees, the points searched.
        query_lat, query_lon: ``(q,)`` degrees.
        k: neighbours per query point (fewer where fewer lie within ``max_distance_m``).
        max_distance_m: search radius in metres (great-circle).
        query_point_index: ``(q,)`` index of the point each query is, when the queries are points
            themselves: a point is not its own neighbour. None: no exclusion.

    Returns:
        ``(query_index, point_index, distance_m)``, each ``(E,)``, sorted by query then distance.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    query_lat = np.asarray(query_lat, dtype=np.float64)
    query_lon = np.asarray(query_lon, dtype=np.float64)
    wanted = int(k)
    k = min(wanted + int(query_point_index is not None), len(lat))
    if k == 0 or len(query_lat) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    reference_lat = float(np.mean(lat))
    tree = cKDTree(local_xy_m(lat, lon, reference_lat))
    # The planar metric differs from the great-circle one by well under 1% at city scale: search a bit wider.
    bound = max_distance_m * 1.01 if np.isfinite(max_distance_m) else np.inf
    _, index = tree.query(local_xy_m(query_lat, query_lon, reference_lat), k=k, distance_upper_bound=bound)
    index = np.asarray(index).reshape(len(query_lat), k)
    query_index = np.repeat(np.arange(len(query_lat)), k)
    point_index = index.ravel()
    keep = point_index < len(lat)
    if query_point_index is not None:
        keep &= point_index != np.asarray(query_point_index)[query_index]
    query_index, point_index = query_index[keep], point_index[keep]
    distance = haversine_m(query_lat[query_index], query_lon[query_index], lat[point_index], lon[point_index])
    keep = distance <= max_distance_m
    query_index, point_index, distance = query_index[keep], point_index[keep], distance[keep]
    order = np.lexsort((distance, query_index))
    query_index, point_index, distance = query_index[order], point_index[order], distance[order]
    # with ties at distance 0 the tree may not return the query's own point: keep k per query
    first = np.searchsorted(query_index, query_index)
    keep = np.arange(len(query_index)) - first < wanted
    return query_index[keep], point_index[keep], distance[keep]


def grid_cells(lat: np.ndarray, lon: np.ndarray, cell_size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Global grid cell ``(row, col)`` of each point: rows ``cell_size_m`` of latitude tall, and in each
    row columns ``cell_size_m`` wide at the row's central latitude (so cells are near-square anywhere).

    Returns:
        ``(row, col)``, each ``(n,)`` int64; both may be negative.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    row_height = cell_size_m / METRES_PER_DEGREE
    row = np.floor(lat / row_height).astype(np.int64)
    col = np.floor(lon / cell_width_deg(row, cell_size_m)).astype(np.int64)
    return row, col


def cell_width_deg(row: np.ndarray, cell_size_m: float) -> np.ndarray:
    """Longitude width in degrees of the cells in grid row(s) ``row`` (see :func:`grid_cells`)."""
    row_height = cell_size_m / METRES_PER_DEGREE
    central_lat = (np.asarray(row, dtype=np.float64) + 0.5) * row_height
    return row_height / np.cos(np.radians(central_lat))


def cell_bounds(row: np.ndarray, col: np.ndarray, cell_size_m: float) -> tuple[np.ndarray, ...]:
    """``(lat_min, lat_max, lon_min, lon_max)`` in degrees of grid cells, each ``(n,)``."""
    row = np.asarray(row, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    row_height = cell_size_m / METRES_PER_DEGREE
    width = cell_width_deg(row, cell_size_m)
    return row * row_height, (row + 1) * row_height, col * width, (col + 1) * width


def touching_cells(rows: np.ndarray, cols: np.ndarray, cell_size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of the given distinct cells that share an edge or a corner (queen adjacency).

    Columns of neighbouring rows are not aligned (their widths differ slightly), so touching is decided
    from the cells' longitude intervals.

    Returns:
        ``(i, j)`` positions into ``rows``/``cols``, each ``(P,)``, with ``i != j``; both orders listed.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    position = {(r, c): i for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))}
    _, _, lon_min, lon_max = cell_bounds(rows, cols, cell_size_m)
    pairs_i, pairs_j = [], []
    for drow in (-1, 0, 1):
        other_rows = rows + drow
        width = cell_width_deg(other_rows, cell_size_m)
        eps = 1e-9 * width
        first = np.floor((lon_min - eps) / width).astype(np.int64)
        last = np.floor((lon_max + eps) / width).astype(np.int64)
        for i in range(len(rows)):
            for other_col in range(first[i], last[i] + 1):
                j = position.get((int(other_rows[i]), other_col))
                if j is not None and j != i:
                    pairs_i.append(i)
                    pairs_j.append(j)
    return np.asarray(pairs_i, dtype=np.int64), np.asarray(pairs_j, dtype=np.int64)


def read_polygons(
    geojson_path: str | os.PathLike, id_property: str
) -> tuple[dict[str, list[np.ndarray]], dict]:
    """Reads a GeoJSON FeatureCollection of (Multi)Polygons in WGS84.

    Args:
        geojson_path: the file.
        id_property: feature property naming each polygon (e.g. ``"LocationID"``); features sharing an id
            are merged into one multi-polygon.

    Returns:
        ``(rings, properties)``: per id, its rings as ``(k, 2)`` arrays of ``(lon, lat)``; per id, the
        properties of its first feature.
    """
    if not os.path.isfile(geojson_path):
        raise FileNotFoundError(f"polygon file {geojson_path} does not exist")
    with open(geojson_path, encoding="utf-8") as f:
        collection = json.load(f)
    rings: dict[str, list[np.ndarray]] = {}
    properties: dict[str, dict] = {}
    for number, feature in enumerate(collection.get("features", [])):
        props = feature.get("properties") or {}
        if id_property not in props:
            raise ValueError(f"{geojson_path}: feature {number} has no property {id_property!r}")
        key = str(props[id_property])
        geometry = feature.get("geometry") or {}
        if geometry.get("type") == "Polygon":
            polygons = [geometry["coordinates"]]
        elif geometry.get("type") == "MultiPolygon":
            polygons = geometry["coordinates"]
        else:
            raise ValueError(
                f"{geojson_path}: feature {number} is a {geometry.get('type')}, not a (Multi)Polygon"
            )
        rings.setdefault(key, []).extend(
            np.asarray(ring, dtype=np.float64)[:, :2] for poly in polygons for ring in poly
        )
        properties.setdefault(key, props)
    if not rings:
        raise ValueError(f"{geojson_path}: no polygon features found")
    return rings, properties


def polygon_adjacency(rings: dict[str, list[np.ndarray]], tolerance_m: float = 20.0) -> list[tuple[str, str]]:
    """Pairs of polygons whose boundaries come within ``tolerance_m`` metres of each other.

    Boundaries are densified to points about ``tolerance_m / 2`` apart, so touching polygons are found
    whether or not they share vertices.

    Returns:
        ``(id_a, id_b)`` pairs with ``id_a < id_b``, sorted.
    """
    ids = sorted(rings)
    all_lat = np.concatenate([ring[:, 1] for key in ids for ring in rings[key]])
    reference_lat = float(np.mean(all_lat))
    points, owners = [], []
    for owner, key in enumerate(ids):
        for ring in rings[key]:
            xy = local_xy_m(ring[:, 1], ring[:, 0], reference_lat)
            start, end = xy[:-1], xy[1:]
            pieces = np.maximum(1, np.ceil(np.linalg.norm(end - start, axis=1) / (tolerance_m / 2))).astype(
                int
            )
            segment = np.repeat(np.arange(len(start)), pieces)
            fraction = (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)) / pieces[
                segment
            ]
            points.append(start[segment] + fraction[:, None] * (end[segment] - start[segment]))
            owners.append(np.full(len(segment), owner))
    points_xy = np.concatenate(points)
    owner_of = np.concatenate(owners)
    pairs = cKDTree(points_xy).query_pairs(tolerance_m, output_type="ndarray")
    a, b = owner_of[pairs[:, 0]], owner_of[pairs[:, 1]]
    keep = a != b
    found = np.unique(np.sort(np.stack([a[keep], b[keep]], 1), axis=1), axis=0)
    return [(ids[i], ids[j]) for i, j in found]
