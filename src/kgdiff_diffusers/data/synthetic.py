"""A seeded procedural city whose sensors' daily traffic follows their knowledge-graph surroundings.

The city is a grid of square areas (the global grid cells of :mod:`kgdiff_diffusers.kg.builders`, so
``new_node_triples`` places a planned sensor in the right area) grouped into boroughs. Each area has a
dominant land use and POIs of the categories in :data:`POI_CATEGORIES`; roads of the categories in
:data:`ROAD_CATEGORIES` run through it, and sensors sit on those roads.

A sensor's ground-truth land-use mix ``w`` (``node_table`` columns ``weight_<category>``) is the POI
category share of its own area plus ``neighbor_area_weight`` times that of the touching areas: exactly
what its KG neighbourhood (``SLA`` -> area <- ``PLA`` POIs -> ``PHPC`` categories, ``ANA`` areas) shows.
The POIs of a sensor's own area are also linked to it directly (``PNS``, POI near sensor), so the
condition encoder, which reads one hop, sees them.
Its flow is::

    flow[n, day, t] = capacity[n] * (w[n] @ profile[daytype(day)])[t] * day_factor[day]
                      * node_day_factor[n, day] * noise[n, day, t]

with the per-category profiles of :func:`category_profiles` (residential: morning and evening peaks;
office: commute peaks; school: morning and mid-afternoon; hospital: three peaks with the largest at
midday; mall: afternoon and evening; park: midday; weekends differ), capacity set by the road category,
and log-normal day, node-day and step noise. The feature is ``"flow"`` in vehicles per hour (> 0).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..kg.builders import DEFAULT_CELL_SIZE_M, build_sensor_kg, grid_cell_entity
from ..kg.graph import KnowledgeGraph
from ..kg.spatial import cell_bounds, grid_cells, touching_cells
from .series import SpatioTemporalData

POI_CATEGORIES = ("residential", "office", "school", "hospital", "mall", "park")
ROAD_CATEGORIES = ("motorway", "primary", "secondary", "residential")
ROAD_CAPACITY_VEH_H = {"motorway": 4000.0, "primary": 1500.0, "secondary": 800.0, "residential": 300.0}
LOCAL_ROAD_CATEGORY = {
    "residential": "residential",
    "office": "primary",
    "school": "secondary",
    "hospital": "secondary",
    "mall": "primary",
    "park": "secondary",
}
NIGHT_LEVEL = 0.08

# (amplitude, centre hour, width in hours) of the Gaussian bumps of each category's day
_WEEKDAY_PEAKS = {
    "residential": ((1.0, 7.75, 1.0), (0.85, 18.0, 1.5)),
    "office": ((1.0, 8.75, 0.8), (0.35, 12.5, 0.8), (0.95, 17.5, 1.0)),
    "school": ((1.0, 7.75, 0.6), (0.75, 15.25, 0.8)),
    "hospital": ((0.6, 7.5, 1.0), (1.0, 12.5, 1.2), (0.65, 18.5, 1.2)),
    "mall": ((0.6, 13.0, 1.8), (1.0, 18.5, 1.8)),
    "park": ((1.0, 12.5, 2.2), (0.3, 17.5, 1.5)),
}
_WEEKEND_PEAKS = {
    "residential": ((0.6, 11.0, 2.0), (0.6, 17.5, 2.0)),
    "office": ((0.15, 12.0, 3.0),),
    "school": ((0.05, 12.0, 3.0),),
    "hospital": ((0.5, 8.0, 1.2), (0.8, 12.5, 1.5), (0.5, 18.5, 1.5)),
    "mall": ((0.9, 14.0, 2.2), (0.9, 18.0, 2.0)),
    "park": ((1.3, 13.0, 2.5),),
}
# demand factor of each weekday, Monday .. Sunday (Saturday and Sunday scale the weekend profile)
_DAY_OF_WEEK_FACTOR = np.array([0.97, 1.0, 1.01, 1.02, 1.06, 1.0, 0.88])


def category_profiles(steps_per_day: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative demand of each POI category over a day (night level ``NIGHT_LEVEL``, peaks about 1).

    Args:
        steps_per_day: ``T``; step ``t`` covers the time ``t * 24 / T`` hours after midnight.

    Returns:
        ``(weekday, weekend)``, each ``(C, T)`` float64 in :data:`POI_CATEGORIES` order.
    """
    hours = np.arange(steps_per_day) * 24.0 / steps_per_day

    def day_shape(peaks: tuple[tuple[float, float, float], ...]) -> np.ndarray:
        shape = np.full(steps_per_day, NIGHT_LEVEL)
        for amplitude, centre, width in peaks:
            gap = (hours - centre + 12.0) % 24.0 - 12.0
            shape += amplitude * np.exp(-0.5 * (gap / width) ** 2)
        return shape

    weekday = np.stack([day_shape(_WEEKDAY_PEAKS[c]) for c in POI_CATEGORIES])
    weekend = np.stack([day_shape(_WEEKEND_PEAKS[c]) for c in POI_CATEGORIES])
    return weekday, weekend


def make_synthetic_city(
    num_nodes: int = 40,
    num_days: int = 30,
    steps_per_day: int = 48,
    seed: int = 0,
    start_date: str = "2024-01-01",
    center: tuple[float, float] = (37.5, -121.0),
    area_size_m: float = DEFAULT_CELL_SIZE_M,
    sensors_per_area: float = 3.0,
    num_boroughs: int = 4,
    pois_per_area: float = 8.0,
    dominance: float = 0.75,
    neighbor_area_weight: float = 0.1,
    noise: float = 0.05,
) -> tuple[SpatioTemporalData, KnowledgeGraph]:
    """Generates a synthetic city: sensor flows plus the urban KG that explains them.

    Args:
        num_nodes: sensors ``N``.
        num_days: calendar days ``S`` from ``start_date`` (weekdays and weekends).
        steps_per_day: ``T``; must divide 1440 (interval = ``1440 / T`` minutes).
        seed: everything is a function of the arguments and this seed.
        start_date: first day (ISO date).
        center: ``(lat, lon)`` of the city centre in degrees.
        area_size_m: side of the square areas (use the same ``cell_size_m`` in ``new_node_triples``).
        sensors_per_area: mean sensors per area; the city has ``ceil(N / sensors_per_area)`` areas or more
            (at least one per POI category), laid out as a near-square grid.
        num_boroughs: boroughs, as a near-square split of the area grid.
        pois_per_area: mean POIs per area (Poisson, at least one).
        dominance: probability that a POI has its area's dominant category.
        neighbor_area_weight: weight of the touching areas' POIs in a sensor's land-use mix.
        noise: standard deviation of the log-normal noise of each step (and of each node-day).

    Returns:
        ``(data, kg)``: ``data.values`` is ``(N, S * T, 1)`` float32 flow in vehicles per hour;
        ``data.node_table`` has ``node_id``, ``lat``, ``lon``, ``entity`` (``"Sensor/<id>"``), ``area``,
        ``borough``, ``road``, ``road_category``, ``capacity_veh_h``, ``dominant_category`` and the ground
        truth ``weight_<category>`` (rows sum to 1). ``kg`` holds the relations of
        :mod:`kgdiff_diffusers.kg.builders` (``SNS_*``, ``SLA``, ``ANA``, ``ALB``, ``PLA``, ``PHPC``, ``RLA``,
        ``RHRC``, ``RNR``, ``SOR``, ``PNS``).
    """
    _check_arguments(num_nodes, num_days, steps_per_day, area_size_m, sensors_per_area, dominance, noise)
    rng = np.random.default_rng(seed)
    num_categories = len(POI_CATEGORIES)

    # areas: a near-square block of global grid cells around the centre
    num_areas = max(num_categories, math.ceil(num_nodes / sensors_per_area))
    grid_rows = math.ceil(math.sqrt(num_areas))
    grid_cols = math.ceil(num_areas / grid_rows)
    local_row, local_col = np.divmod(np.arange(grid_rows * grid_cols), grid_cols)
    center_row, _ = grid_cells([center[0]], [center[1]], area_size_m)
    rows = center_row[0] - grid_rows // 2 + local_row
    row_lat_min, row_lat_max, _, _ = cell_bounds(rows, np.zeros_like(rows), area_size_m)
    _, center_cols = grid_cells((row_lat_min + row_lat_max) / 2, np.full(len(rows), center[1]), area_size_m)
    cols = center_cols - grid_cols // 2 + local_col
    lat_min, lat_max, lon_min, lon_max = cell_bounds(rows, cols, area_size_m)
    area_names = [grid_cell_entity(r, c) for r, c in zip(rows.tolist(), cols.tolist())]
    num_areas = len(area_names)
    touch_i, touch_j = touching_cells(rows, cols, area_size_m)
    split = math.ceil(math.sqrt(num_boroughs))
    borough_of_area = (local_row * split // grid_rows) * split + local_col * split // grid_cols

    # land use: offices and malls near the centre, homes further out; every category dominates somewhere
    radius = np.hypot(local_row - (grid_rows - 1) / 2, local_col - (grid_cols - 1) / 2)
    remoteness = radius / max(radius.max(), 1e-9)
    base = np.array([0.15, 0.05, 0.1, 0.07, 0.05, 0.08])[None] + np.outer(remoteness, [0.55, 0, 0, 0, 0, 0])
    base += np.outer(1 - remoteness, [0, 0.35, 0, 0, 0.15, 0])
    base /= base.sum(1, keepdims=True)
    dominant = (rng.random((num_areas, 1)) > base.cumsum(1)).sum(1)
    dominant[rng.permutation(num_areas)[:num_categories]] = np.arange(num_categories)

    # POIs
    poi_count = np.maximum(1, rng.poisson(pois_per_area, num_areas))
    poi_area = np.repeat(np.arange(num_areas), poi_count)
    other = (rng.random((len(poi_area), 1)) > base[poi_area].cumsum(1)).sum(1)
    poi_category = np.where(rng.random(len(poi_area)) < dominance, dominant[poi_area], other)
    poi_category[np.cumsum(poi_count) - poi_count] = dominant
    area_counts = np.zeros((num_areas, num_categories))
    np.add.at(area_counts, (poi_area, poi_category), 1.0)
    touching = sp.csr_matrix((np.ones(len(touch_i)), (touch_i, touch_j)), shape=(num_areas, num_areas))
    area_mix = area_counts + neighbor_area_weight * (touching @ area_counts)
    area_mix /= area_mix.sum(1, keepdims=True)

    # roads: a local road per area, plus arterial segments along every third row and column
    arterial_row = local_row % 3 == 1
    arterial_col = local_col % 3 == 1
    motorway_row = grid_rows // 2 if grid_rows // 2 % 3 == 1 else -1

    # sensors: every area gets one while sensors last, the rest land at random
    sensor_area = np.concatenate(
        [
            rng.permutation(num_areas)[: min(num_nodes, num_areas)],
            rng.integers(0, num_areas, max(0, num_nodes - num_areas)),
        ]
    )
    inset = rng.uniform(0.05, 0.95, (num_nodes, 2))
    sensor_lat = lat_min[sensor_area] + inset[:, 0] * (lat_max - lat_min)[sensor_area]
    sensor_lon = lon_min[sensor_area] + inset[:, 1] * (lon_max - lon_min)[sensor_area]
    on_row = arterial_row[sensor_area] & (rng.random(num_nodes) < 0.5)
    on_col = arterial_col[sensor_area] & ~on_row & (rng.random(num_nodes) < 0.5)
    local_category = np.array([LOCAL_ROAD_CATEGORY[c] for c in POI_CATEGORIES])[dominant]
    sensor_road_category = np.where(
        on_row,
        np.where(local_row[sensor_area] == motorway_row, "motorway", "primary"),
        local_category[sensor_area],
    )
    sensor_road_category = np.where(on_col, "primary", sensor_road_category)
    sensor_road = [
        _road_name(kind, local_row[a], local_col[a], a)
        for kind, a in zip(np.where(on_row, "row", np.where(on_col, "col", "local")), sensor_area)
    ]
    capacity = np.array([ROAD_CAPACITY_VEH_H[c] for c in sensor_road_category])
    capacity *= rng.lognormal(0.0, 0.2, num_nodes)

    weights = area_mix[sensor_area]
    width = len(str(num_nodes - 1))
    node_ids = [f"{i:0{width}d}" for i in range(num_nodes)]
    node_table = pd.DataFrame(
        {
            "node_id": node_ids,
            "lat": sensor_lat,
            "lon": sensor_lon,
            "entity": [f"Sensor/{i}" for i in node_ids],
            "area": np.array(area_names)[sensor_area],
            "borough": [f"Borough/B{b}" for b in borough_of_area[sensor_area]],
            "road": sensor_road,
            "road_category": sensor_road_category,
            "capacity_veh_h": capacity,
            "dominant_category": np.array(POI_CATEGORIES)[weights.argmax(1)],
        }
    )
    for c, category in enumerate(POI_CATEGORIES):
        node_table[f"weight_{category}"] = weights[:, c]

    values, timestamps = _flows(weights, capacity, num_days, steps_per_day, start_date, noise, rng)
    data = SpatioTemporalData(
        values=values[..., None],
        timestamps=timestamps,
        node_table=node_table,
        feature_names=["flow"],
        interval_minutes=24 * 60 // steps_per_day,
        zero_is_missing=False,
        load_report={"source": "synthetic city", "seed": seed, "areas": num_areas, "pois": len(poi_area)},
    )

    city: list[tuple[str, str, str]] = []
    city += [(area_names[i], "ANA", area_names[j]) for i, j in zip(touch_i.tolist(), touch_j.tolist())]
    city += [(area_names[a], "ALB", f"Borough/B{b}") for a, b in enumerate(borough_of_area.tolist())]
    poi_names = [f"POI/{k}" for k in range(len(poi_area))]
    city += [(poi, "PLA", area_names[a]) for poi, a in zip(poi_names, poi_area.tolist())]
    city += [
        (poi, "PHPC", f"POICategory/{POI_CATEGORIES[c]}") for poi, c in zip(poi_names, poi_category.tolist())
    ]
    city += _road_triples(
        area_names, local_row, local_col, arterial_row, arterial_col, motorway_row, local_category
    )
    city += [(entity, "SOR", road) for entity, road in zip(node_table["entity"], sensor_road)]
    pois_of_area = [[] for _ in area_names]
    for poi, a in zip(poi_names, poi_area.tolist()):
        pois_of_area[a].append(poi)
    city += [
        (poi, "PNS", entity)
        for entity, a in zip(node_table["entity"], sensor_area.tolist())
        for poi in pois_of_area[a]
    ]
    kg = build_sensor_kg(node_table, cell_size_m=area_size_m).add_triples(city)
    return data, kg


def _flows(
    weights: np.ndarray,
    capacity: np.ndarray,
    num_days: int,
    steps_per_day: int,
    start_date: str,
    noise: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """``(N, S * T)`` float32 flows (veh/h) and their timestamps."""
    num_nodes = len(weights)
    days = pd.date_range(pd.Timestamp(start_date).normalize(), periods=num_days, freq="D")
    day_of_week = days.day_of_week.to_numpy()
    weekday, weekend = category_profiles(steps_per_day)
    node_profiles = np.stack([weights @ weekday, weights @ weekend], 1).astype(np.float32)  # (N, 2, T)
    daily = node_profiles[:, (day_of_week >= 5).astype(int)]  # (N, S, T)
    factor = _DAY_OF_WEEK_FACTOR[day_of_week] * rng.lognormal(0.0, 0.04, num_days)
    factor = factor[None] * rng.lognormal(0.0, noise, (num_nodes, num_days))
    flows = daily * (capacity[:, None] * factor).astype(np.float32)[..., None]
    flows *= np.exp(noise * rng.standard_normal(flows.shape, dtype=np.float32))
    interval = 24 * 60 // steps_per_day
    timestamps = pd.date_range(days[0], periods=num_days * steps_per_day, freq=f"{interval}min")
    return flows.reshape(num_nodes, num_days * steps_per_day), timestamps


def _road_name(kind: str, row: int, col: int, area: int) -> str:
    if kind == "row":
        return f"Road/row{row}_seg{col}"
    if kind == "col":
        return f"Road/col{col}_seg{row}"
    return f"Road/local{area}"


def _road_triples(
    area_names: list[str],
    local_row: np.ndarray,
    local_col: np.ndarray,
    arterial_row: np.ndarray,
    arterial_col: np.ndarray,
    motorway_row: int,
    local_category: np.ndarray,
) -> list[tuple[str, str, str]]:
    """``RLA``, ``RHRC`` and ``RNR`` (consecutive arterial segments, and local road to arterial) triples."""
    position = {(r, c): a for a, (r, c) in enumerate(zip(local_row.tolist(), local_col.tolist()))}
    triples = []
    for a, area in enumerate(area_names):
        row, col = int(local_row[a]), int(local_col[a])
        local = _road_name("local", row, col, a)
        roads = [(local, str(local_category[a]))]
        if arterial_row[a]:
            roads.append((_road_name("row", row, col, a), "motorway" if row == motorway_row else "primary"))
            if (row, col + 1) in position:
                nxt = _road_name("row", row, col + 1, position[(row, col + 1)])
                triples += [(roads[-1][0], "RNR", nxt), (nxt, "RNR", roads[-1][0])]
        if arterial_col[a]:
            roads.append((_road_name("col", row, col, a), "primary"))
            if (row + 1, col) in position:
                nxt = _road_name("col", row + 1, col, position[(row + 1, col)])
                triples += [(roads[-1][0], "RNR", nxt), (nxt, "RNR", roads[-1][0])]
        for road, category in roads:
            triples += [(road, "RLA", area), (road, "RHRC", f"RoadCategory/{category}")]
            if road != local:
                triples += [(local, "RNR", road), (road, "RNR", local)]
    return triples


def _check_arguments(
    num_nodes: int,
    num_days: int,
    steps_per_day: int,
    area_size_m: float,
    sensors_per_area: float,
    dominance: float,
    noise: float,
) -> None:
    if num_nodes < 2:
        raise ValueError(f"num_nodes must be at least 2; got {num_nodes}")
    if num_days < 1:
        raise ValueError(f"num_days must be at least 1; got {num_days}")
    if steps_per_day < 1 or (24 * 60) % steps_per_day:
        raise ValueError(f"steps_per_day must divide 1440 (minutes per day); got {steps_per_day}")
    if area_size_m <= 0 or sensors_per_area <= 0:
        raise ValueError(
            f"area_size_m and sensors_per_area must be positive; got {area_size_m}, {sensors_per_area}"
        )
    if not 0.0 <= dominance <= 1.0:
        raise ValueError(f"dominance is a probability in [0, 1]; got {dominance}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative; got {noise}")
