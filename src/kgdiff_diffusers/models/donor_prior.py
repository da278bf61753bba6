"""KGDiffDonorPrior: a node's expected day and day-to-day spread from the data of KG-related training nodes."""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

DONOR_WEIGHTINGS = ("uniform", "learned")
# Donor features: log scaled distance, geo rank, KG similarity, KG rank, has-location flag, |log level-proxy gap|.
NUM_DONOR_FEATURES = 6
_EPS = 1e-6
# Floor of the residual scale in normalised units: a node whose donors never vary still gets some spread.
_MIN_SCALE = 1e-3


def _kg_similarity(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of unit-norm neighbour-set vectors: ``(Q, E)`` dense x ``(B, E)`` sparse -> ``(Q, B)``."""
    return torch.sparse.mm(bank, query.t()).t()


class KGDiffDonorPrior(ModelMixin, ConfigMixin):
    r"""Estimates each node's mean day ``f`` and residual scale ``s`` from training nodes ("donors") near it.

    A node's candidates are its ``num_donors`` geographically nearest training nodes and its ``num_donors``
    training nodes with the most similar KG neighbourhood (cosine of IDF-weighted neighbour-entity sets:
    shared POIs, roads, junctions, areas; an entity every donor shares, such as the borough, weighs little).
    A donor found by both searches counts twice. With weights ``w_j`` over the ``2K`` candidates::

        level  = exp( sum_j w_j log L_j )          per feature (a geometric mean of the donors' levels)
        shape  = sum_j w_j P_j / L_j
        f      = level * shape                      data units ("additive" mode: f = sum_j w_j P_j)
        s      = level * sum_j w_j sigma_j / L_j    per feature: the donors' relative day-to-day spread

    with ``P_j`` the donor's mean day, ``L_j`` its mean level and ``sigma_j`` the RMS deviation of its days
    from ``P_j``. Splitting level from shape lets a quiet zone borrow the shape of a busy one without its
    volume. ``"multiplicative"`` mode needs non-negative data (counts, speeds); data with negative values
    use ``"additive"`` mode.

    ``weighting="uniform"`` (the default) gives every candidate ``w_j = 1 / 2K``. ``"learned"`` scores each
    candidate from ``NUM_DONOR_FEATURES`` numbers (scaled log distance, geographic rank, KG similarity,
    KG rank, has-location flag, source) with a small MLP, adds a pseudo-donor "mean of all training nodes"
    and a learnt elasticity ``a`` of the level to the gap in log KG degree per relation
    (``log level += a^T (g_q - sum_j w_j g_j)``), trained leave-one-out on the training nodes. On the
    training-side latitude folds of NYC-Bike and PeMS-Bay-16 the learned weights were worse than uniform
    ones (they fit interpolation between training nodes, not extrapolation to a new area): see
    bench/README.md.

    With ``num_day_types > 1`` (weekday / weekend) each donor keeps one summary (``P``, ``L``, ``sigma``) per
    day type, stacked in blocks: row ``k * num_bank + j`` of ``bank_profile`` / ``bank_level`` /
    ``bank_spread`` is donor ``j``'s over its days of type ``k``, and the prior of a day type is built from
    the donors' summaries of that type (the same candidates and weights).

    A node is never its own donor, so no node's prior depends on its own data. The donors' summaries
    (``P``, ``L``, ``sigma``, locations, neighbour sets) are buffers, saved with the weights; priors of new
    places are computed from their location (optional) and KG neighbours by :meth:`candidates_for`.

    With ``num_bank_days > 0`` up to that many real days of each donor (per day type, in the same blocks)
    are stored too, so a saved pipeline holds that much training data: :meth:`donor_days` draws whole days
    from a node's candidates, rescaled to its level, as the starting points from which the pipeline
    denoises (copied days keep the day-to-day structure that a mean plus noise lacks).

    With ``num_bank_days > 0`` the prior also stores each donor's leave-one-out level error (``level_error``:
    the donor's own mean level against the level its own candidates predict for it, in log units;
    ``"additive"`` mode: data units), so :meth:`donor_days` can spread the copies' level as widely as the
    prior misses the level of a training node (``level_noise``). They are computed when the prior is built
    (with ``weighting="learned"``, from the untrained scorer's weights).

    Args:
        num_nodes: nodes with precomputed candidates (the pipeline's ``node_ids``, in order).
        num_bank: training nodes that can be donors.
        num_entities: KG entities (width of the neighbour-set vectors).
        num_relations: relation ids of the KG index (forward and inverse).
        seq_len: ``T``.
        num_features: ``D``.
        num_donors: candidates per source (geography, KG).
        hidden_dim: width of the scoring MLP (``weighting="learned"``).
        level_mode: ``"multiplicative"`` or ``"additive"``.
        distance_scale_km: distances are divided by this (the median nearest-donor distance) before the log.
        num_bank_edges: stored (donor, entity) pairs of the donors' neighbour sets.
        feature_mean, feature_std: ``(D,)`` the pipeline's normalisation; outputs are in normalised units.
        weighting: ``"uniform"`` or ``"learned"`` donor weights.
        num_day_types: day types with their own donor summaries (``1``: one over all days).
        num_bank_days: real days stored per donor and day type for :meth:`donor_days` (0: none).
        has_level_errors: store the donors' leave-one-out level errors (``level_error``, ``(K * num_bank, D)``).
    """

    @register_to_config
    def __init__(
        self,
        num_nodes: int,
        num_bank: int,
        num_entities: int,
        num_relations: int,
        seq_len: int = 48,
        num_features: int = 1,
        num_donors: int = 8,
        hidden_dim: int = 32,
        level_mode: str = "multiplicative",
        distance_scale_km: float = 1.0,
        num_bank_edges: int = 0,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        weighting: str = "uniform",
        num_day_types: int = 1,
        num_bank_days: int = 0,
        has_level_errors: bool = False,
    ):
        super().__init__()
        if num_day_types < 1:
            raise ValueError(f"num_day_types must be >= 1, got {num_day_types}")
        if level_mode not in ("multiplicative", "additive"):
            raise ValueError(f"level_mode must be 'multiplicative' or 'additive', got {level_mode!r}")
        if weighting not in DONOR_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {DONOR_WEIGHTINGS}, got {weighting!r}")
        num_candidates = 2 * num_donors
        mean, std = feature_mean or [0.0] * num_features, feature_std or [1.0] * num_features
        self.register_buffer("feature_mean_", torch.tensor(mean).view(-1, 1), persistent=False)
        self.register_buffer("feature_std_", torch.tensor(std).view(-1, 1), persistent=False)
        self.register_buffer("node_bank_row", torch.full((num_nodes,), -1, dtype=torch.long))
        num_summaries = num_day_types * num_bank
        self.register_buffer("bank_profile", torch.zeros(num_summaries, num_features, seq_len))
        self.register_buffer("bank_level", torch.ones(num_summaries, num_features))
        self.register_buffer("bank_spread", torch.zeros(num_summaries, num_features))
        self.register_buffer("bank_location", torch.zeros(num_bank, 2))
        self.register_buffer("bank_log_degree", torch.zeros(num_bank, num_relations))
        self.register_buffer("bank_edge_row", torch.zeros(num_bank_edges, dtype=torch.long))
        self.register_buffer("bank_edge_entity", torch.zeros(num_bank_edges, dtype=torch.long))
        self.register_buffer("bank_edge_weight", torch.zeros(num_bank_edges))
        self.register_buffer("entity_idf", torch.ones(num_entities))
        self.register_buffer("candidate_index", torch.zeros(num_nodes, num_candidates, dtype=torch.long))
        self.register_buffer("candidate_features", torch.zeros(num_nodes, num_candidates, NUM_DONOR_FEATURES))
        self.register_buffer("node_log_degree", torch.zeros(num_nodes, num_relations))
        if num_bank_days > 0:  # absent from pipelines saved before the day bank existed
            self.register_buffer("bank_days", torch.zeros(num_summaries, num_bank_days, num_features, seq_len))
            self.register_buffer("bank_day_count", torch.zeros(num_summaries, dtype=torch.long))
        if has_level_errors:  # absent from pipelines saved before level errors existed
            self.register_buffer("level_error", torch.zeros(num_summaries, num_features))
        if weighting == "learned":
            self.scorer = nn.Sequential(
                nn.Linear(NUM_DONOR_FEATURES, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 2 * num_features)
            )
            self.global_logit = nn.Parameter(torch.full((2 * num_features,), -2.0))
            self.level_elasticity = nn.Parameter(torch.zeros(num_features, num_relations))

    # ----------------------------------------------------------------------------------------------------
    # Building from data
    @classmethod
    def from_training_data(
        cls,
        profiles: np.ndarray,
        spreads: np.ndarray,
        bank_rows: np.ndarray,
        locations: np.ndarray,
        edge_node: np.ndarray,
        edge_relation: np.ndarray,
        edge_neighbor: np.ndarray,
        num_entities: int,
        num_relations: int,
        feature_mean: np.ndarray,
        feature_std: np.ndarray,
        num_donors: int = 8,
        hidden_dim: int = 32,
        weighting: str = "uniform",
        days: np.ndarray | None = None,
        day_masks: np.ndarray | None = None,
        num_bank_days: int = 0,
    ) -> KGDiffDonorPrior:
        """Builds the prior for ``N`` nodes whose rows ``bank_rows`` are the training nodes with data.

        Args:
            profiles: ``(N, D, T)`` each node's mean valid day, data units (only ``bank_rows`` are read); or
                ``(K, N, D, T)`` one per day type, for a prior with ``num_day_types = K``.
            spreads: ``(N, D)`` std of each node's days around its mean day (only ``bank_rows`` are read); or
                ``(K, N, D)`` one per day type.
            bank_rows: ``(B,)`` rows of the donor nodes (training nodes with data).
            locations: ``(N, 2)`` latitude, longitude in degrees.
            edge_node, edge_relation, edge_neighbor: ``(E,)`` the KG index of the ``N`` nodes.
            feature_mean, feature_std: ``(D,)`` normalisation of the pipeline.
            days: ``(N, S, T, D)`` data units; with ``num_bank_days > 0``, that many days of each donor
                (evenly spaced in time) are stored per day type, chosen by ``day_masks``.
            day_masks: ``(K, N, S)`` bool, the days of each day type to store (or ``(N, S)`` for one type).
        """
        bank_rows = np.asarray(bank_rows, dtype=np.int64)
        if num_bank_days > 0 and (days is None or day_masks is None):
            raise ValueError("num_bank_days > 0 needs the days and day_masks of the nodes")
        if len(bank_rows) < 2:
            raise ValueError(f"the donor prior needs at least 2 training nodes with data, got {len(bank_rows)}")
        if profiles.ndim == 3:
            profiles, spreads = profiles[None], spreads[None]
        num_day_types, num_nodes, num_features, seq_len = profiles.shape
        if spreads.shape != profiles.shape[:3]:
            raise ValueError(f"spreads {spreads.shape} do not match profiles {profiles.shape}")
        bank_profile = profiles[:, bank_rows].reshape(-1, num_features, seq_len)
        bank_spread = spreads[:, bank_rows].reshape(-1, num_features)
        if not np.isfinite(bank_profile).all() or not np.isfinite(bank_spread).all():
            raise ValueError("training profiles for the donor prior contain NaN or inf")
        level_mode = "multiplicative" if bank_profile.min() >= 0 else "additive"
        if level_mode == "multiplicative":
            bank_level = bank_profile.mean(axis=2)
        else:
            bank_level = np.ones((len(bank_profile), num_features))
        edge_node, edge_relation, edge_neighbor = (
            np.asarray(a, dtype=np.int64) for a in (edge_node, edge_relation, edge_neighbor)
        )
        is_bank = np.full(num_nodes, -1, dtype=np.int64)
        is_bank[bank_rows] = np.arange(len(bank_rows))
        # IDF over the donors' neighbour sets: an entity shared by every donor (the borough) says nothing.
        bank_edges = is_bank[edge_node] >= 0
        pairs = np.unique(np.stack([is_bank[edge_node[bank_edges]], edge_neighbor[bank_edges]]), axis=1)
        document_frequency = np.bincount(pairs[1], minlength=num_entities)
        idf = np.log((1 + len(bank_rows)) / (1 + document_frequency)) + 1.0
        weights = idf[pairs[1]]
        norms = np.sqrt(np.bincount(pairs[0], weights=weights**2, minlength=len(bank_rows)))
        model = cls(
            num_nodes=num_nodes,
            num_bank=len(bank_rows),
            num_entities=num_entities,
            num_relations=num_relations,
            seq_len=seq_len,
            num_features=num_features,
            num_donors=min(num_donors, len(bank_rows) - 1),
            hidden_dim=hidden_dim,
            level_mode=level_mode,
            num_bank_edges=pairs.shape[1],
            feature_mean=[float(m) for m in feature_mean],
            feature_std=[float(v) for v in feature_std],
            weighting=weighting,
            num_day_types=num_day_types,
            num_bank_days=num_bank_days,
            has_level_errors=num_bank_days > 0,
        )
        if num_bank_days > 0:
            model._store_bank_days(days, day_masks if day_masks.ndim == 3 else day_masks[None], bank_rows)
        log_degree = _log_degree(edge_node, edge_relation, num_nodes, num_relations)
        with torch.no_grad():
            model.bank_profile.copy_(torch.from_numpy(bank_profile))
            model.bank_level.copy_(torch.from_numpy(np.maximum(bank_level, _EPS)))
            model.bank_spread.copy_(torch.from_numpy(bank_spread))
            model.bank_location.copy_(torch.tensor(np.asarray(locations, dtype=np.float64)[bank_rows]))
            model.bank_log_degree.copy_(torch.from_numpy(log_degree[bank_rows]))
            model.bank_edge_row.copy_(torch.from_numpy(pairs[0]))
            model.bank_edge_entity.copy_(torch.from_numpy(pairs[1]))
            model.bank_edge_weight.copy_(torch.from_numpy(weights / np.maximum(norms[pairs[0]], _EPS)))
            model.entity_idf.copy_(torch.from_numpy(idf))
            model.node_log_degree.copy_(torch.from_numpy(log_degree))
            model.node_bank_row.copy_(torch.from_numpy(is_bank))
            locations_t = torch.tensor(np.asarray(locations, dtype=np.float64), dtype=torch.float32)
            nearest = _pairwise_km(model.bank_location, model.bank_location)
            nearest.fill_diagonal_(float("inf"))
            model.register_to_config(distance_scale_km=float(nearest.min(dim=1).values.median().clamp_min(1e-3)))
            index, features = model.candidates_for(
                locations_t,
                torch.from_numpy(edge_node),
                torch.from_numpy(edge_neighbor),
                num_nodes,
                exclude_bank=torch.from_numpy(is_bank),
            )
            model.candidate_index.copy_(index)
            model.candidate_features.copy_(features)
            if num_bank_days > 0:
                model.level_error.copy_(model._leave_one_out_level_errors(torch.from_numpy(bank_rows)))
        return model

    def _leave_one_out_level_errors(self, bank_nodes: torch.Tensor) -> torch.Tensor:
        """``(K * num_bank, D)``: each donor's own level against its prior's (its candidates exclude it)."""
        errors = []
        for day_type in range(self.config.num_day_types):
            day_types = torch.full_like(bank_nodes, day_type)
            mean_day, _ = self(bank_nodes, day_types=day_types)
            predicted = (mean_day * self.feature_std_ + self.feature_mean_).mean(-1)  # (B, D) data units
            own = self.bank_profile[day_type * self.config.num_bank + torch.arange(len(bank_nodes))].mean(-1)
            if self.config.level_mode == "multiplicative":
                errors.append(own.clamp_min(_EPS).log() - predicted.clamp_min(_EPS).log())
            else:
                errors.append(own - predicted)
        return torch.cat(errors)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Level errors are derived from the other buffers when the prior is built: a training checkpoint
        # written before they existed resumes with the ones just computed instead of failing on a missing key.
        if self.config.get("has_level_errors", False) and prefix + "level_error" not in state_dict:
            state_dict[prefix + "level_error"] = self.level_error.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _store_bank_days(self, days: np.ndarray, day_masks: np.ndarray, bank_rows: np.ndarray) -> None:
        capacity, num_bank = self.config.num_bank_days, self.config.num_bank
        if len(day_masks) != self.config.num_day_types:
            raise ValueError(f"day_masks has {len(day_masks)} day types, the prior {self.config.num_day_types}")
        for day_type, mask in enumerate(day_masks):
            for bank_row, node in enumerate(bank_rows):
                valid = np.flatnonzero(mask[node])
                if not len(valid):
                    raise ValueError(f"donor row {node} has no day to store for day type {day_type}")
                chosen = valid[np.linspace(0, len(valid) - 1, min(capacity, len(valid))).round().astype(np.int64)]
                if not np.isfinite(days[node, chosen]).all():
                    raise ValueError("training days for the donor prior's day bank contain NaN or inf")
                summary = day_type * num_bank + bank_row
                self.bank_days[summary, : len(chosen)] = torch.from_numpy(days[node, chosen].transpose(0, 2, 1))
                self.bank_day_count[summary] = len(chosen)

    # ----------------------------------------------------------------------------------------------------
    # Candidates
    def _bank_matrix(self) -> torch.Tensor:
        size = (self.config.num_bank, self.config.num_entities)
        indices = torch.stack([self.bank_edge_row, self.bank_edge_entity])
        return torch.sparse_coo_tensor(indices, self.bank_edge_weight, size, check_invariants=True).coalesce()

    def candidates_for(
        self,
        locations: torch.Tensor | None,
        edge_node: torch.Tensor,
        edge_neighbor: torch.Tensor,
        num_queries: int,
        exclude_bank: torch.Tensor | None = None,
        chunk_size: int = 128,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate donors and their features for arbitrary query places.

        Args:
            locations: ``(Q, 2)`` latitude, longitude (degrees), NaN rows (or ``None``) for unknown places:
                those get KG candidates only (the geographic ones repeat them, flagged by a feature).
            edge_node, edge_neighbor: ``(E,)`` the queries' KG neighbours (row in ``[0, Q)``, entity id).
            exclude_bank: ``(Q,)`` bank row each query must not use (itself), ``-1`` for none.

        Returns:
            ``(Q, 2K)`` bank rows and ``(Q, 2K, NUM_DONOR_FEATURES)`` features.
        """
        k = self.config.num_donors
        device = self.bank_location.device
        if locations is None:
            locations = torch.full((num_queries, 2), float("nan"), device=device)
        pairs = torch.unique(torch.stack([edge_node, edge_neighbor]).to(device), dim=1)
        weights = self.entity_idf[pairs[1]]
        norms = torch.zeros(num_queries, device=device).index_add_(0, pairs[0], weights**2).sqrt()
        values = weights / norms[pairs[0]].clamp_min(_EPS)
        bank = self._bank_matrix()
        all_index, all_features = [], []
        for start in range(0, num_queries, chunk_size):
            stop = min(start + chunk_size, num_queries)
            keep = (pairs[0] >= start) & (pairs[0] < stop)
            query = torch.zeros(stop - start, bank.shape[1], device=device)
            query[pairs[0][keep] - start, pairs[1][keep]] = values[keep]
            similarity = _kg_similarity(query, bank)  # (q, B)
            distance = _pairwise_km(locations[start:stop].to(device).float(), self.bank_location)
            has_location = torch.isfinite(distance).all(dim=1, keepdim=True)
            distance = torch.where(has_location, distance, torch.zeros_like(distance))
            if exclude_bank is not None:
                own = exclude_bank[start:stop].to(device)
                rows = torch.nonzero(own >= 0).squeeze(1)
                similarity[rows, own[rows]] = -float("inf")
                distance[rows, own[rows]] = float("inf")
            kg_index = similarity.topk(k, dim=1).indices
            geo_index = torch.where(has_location, (-distance).topk(k, dim=1).indices, kg_index)
            index = torch.cat([geo_index, kg_index], dim=1)
            all_index.append(index)
            all_features.append(self._features(index, similarity, distance, has_location))
        return torch.cat(all_index), torch.cat(all_features)

    def _features(
        self, index: torch.Tensor, similarity: torch.Tensor, distance: torch.Tensor, has_location: torch.Tensor
    ) -> torch.Tensor:
        k = self.config.num_donors
        scaled = torch.log1p(distance.gather(1, index) / self.config.distance_scale_km)
        scaled = torch.where(has_location, scaled, torch.zeros_like(scaled))
        rank = (torch.arange(2 * k, device=index.device) % k).float().expand_as(index) / max(k - 1, 1)
        is_geo = (torch.arange(2 * k, device=index.device) < k).float().expand_as(index)
        geo_rank = torch.where(is_geo.bool(), rank, torch.ones_like(rank))
        kg_rank = torch.where(is_geo.bool(), torch.ones_like(rank), rank)
        kg_similarity = similarity.gather(1, index).clamp_min(0)
        return torch.stack(
            [scaled, geo_rank, kg_similarity, kg_rank, has_location.float().expand_as(scaled), is_geo], dim=-1
        )

    # ----------------------------------------------------------------------------------------------------
    # Prior
    def forward(
        self,
        node_rows: torch.Tensor | None = None,
        candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        day_types: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior of indexed nodes (``node_rows``) or of new places (``candidates``).

        Args:
            node_rows: ``(B,)`` rows of precomputed candidates.
            candidates: ``(index (B, 2K), features (B, 2K, F), log_degree (B, R))`` for new places.
            day_types: ``(B,)`` day type of each prior, in ``[0, num_day_types)``; needed when
                ``num_day_types > 1``.

        Returns:
            ``mean_day`` ``(B, D, T)`` and ``scale`` ``(B, D)`` in normalised units (the pipeline's
            ``(x - feature_mean) / feature_std``; a scale is divided by ``feature_std``).
        """
        if candidates is None:
            index, features = self.candidate_index[node_rows], self.candidate_features[node_rows]
            log_degree = self.node_log_degree[node_rows]
        else:
            index, features, log_degree = candidates
        num_features = self.config.num_features
        batch, num_candidates = index.shape
        day_types = self._check_day_types(day_types, batch, index.device)
        summary = index + (day_types * self.config.num_bank).unsqueeze(1)
        level, profile, spread = self.bank_level[summary], self.bank_profile[summary], self.bank_spread[summary]
        donor_log_degree = self.bank_log_degree[index]  # (B, 2K, R)
        if self.config.weighting == "uniform":
            shape_weight = level_weight = torch.full(
                (batch, num_candidates, num_features), 1.0 / num_candidates, device=index.device
            )
        else:
            logits = torch.cat(
                [self.scorer(features), self.global_logit.expand(batch, 1, 2 * num_features)], dim=1
            )  # (B, 2K+1, 2D): the last candidate is the mean of all donors
            weights = torch.softmax(logits, dim=1)
            shape_weight, level_weight = weights[..., :num_features], weights[..., num_features:]
            level = torch.cat([level, self._mean_of_donors(self.bank_level, day_types)], dim=1)
            profile = torch.cat([profile, self._mean_of_donors(self.bank_profile, day_types)], dim=1)
            spread = torch.cat([spread, self._mean_of_donors(self.bank_spread, day_types)], dim=1)
            donor_log_degree = torch.cat([donor_log_degree, self.bank_log_degree.mean(0).expand(batch, 1, -1)], dim=1)

        if self.config.level_mode == "additive":
            return self._normalised((shape_weight.unsqueeze(-1) * profile).sum(1), (shape_weight * spread).sum(1))
        log_level = (level_weight * level.log()).sum(1)  # (B, D)
        if self.config.weighting == "learned":
            degree_gap = log_degree.unsqueeze(1) - (level_weight.unsqueeze(-1) * donor_log_degree.unsqueeze(2)).sum(1)
            log_level = log_level + (self.level_elasticity * degree_gap).sum(-1)
        shape = (shape_weight.unsqueeze(-1) * profile / level.unsqueeze(-1)).sum(1)
        relative_spread = (shape_weight * spread / level).sum(1)
        level_value = log_level.exp()
        return self._normalised(level_value.unsqueeze(-1) * shape, level_value * relative_spread)

    @torch.no_grad()
    def donor_days(
        self,
        index: torch.Tensor,
        mean_day: torch.Tensor,
        level_exponent: float,
        generator: torch.Generator | list[torch.Generator] | None = None,
        day_types: torch.Tensor | None = None,
        random_donor_share: float = 0.0,
        level_noise: float = 0.0,
        sample_index: torch.Tensor | None = None,
        num_samples: int = 1,
        return_copies: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One real day of a random candidate donor per row, rescaled towards the row's level.

        Each row draws a candidate uniformly (a donor found by both searches twice as often), or, with
        probability ``random_donor_share``, any donor uniformly (the candidates' days are no closer to a new
        place than random training days where its neighbours differ from it); then one of the donor's stored
        days ``x`` (of the row's day type); with the row's level ``l`` (the time mean of ``mean_day`` in data
        units) and the donor's level ``L``, the day becomes ``x (l / L)^a`` (``"additive"`` mode:
        ``x + a (l - L)``), where ``a = level_exponent`` (0: copied as it was, 1: the row's level).

        With ``sample_index``, the rows of one place are its ``num_samples`` days and their donors are stratified:
        each day draws its donor from its own one of ``num_samples`` equal slices of the donor mixture (any donor
        with probability ``random_donor_share``, else a candidate, in that order), so the place's days cover the
        mixture evenly instead of by chance (5 independent draws from 16 candidates repeat one in about half the
        sets, and their number of random donors varies from 0 to 5). Days take the slices in van der Corput
        order, so the first ``n`` of them are spread over the mixture too. Level noise is stratified the same
        way over the donors' level errors ranked by their mean over features, in base-3 order, so that a day's
        slice of errors does not follow its slice of donors: a place's mean level no longer carries the luck of
        its draws (on NYC-Bike the level factor of 20 independent days has a standard deviation of 8 % at
        ``lam = 0.5`` and 16 % at ``lam = 1``).

        Args:
            index: ``(B, 2K)`` candidate bank rows of each generated day (from :meth:`candidates_for` or the
                stored ones).
            mean_day: ``(B, D, T)`` each day's prior mean, normalised (:meth:`forward`).
            level_exponent: ``a``.
            generator: one generator, one per row, or ``None``.
            day_types: ``(B,)`` day type of each row; needed when ``num_day_types > 1``.
            random_donor_share: in ``[0, 1]``; the share of rows whose donor is any training node.
            level_noise: ``lam >= 0``, the scale of the drawn level errors (0: none).
            sample_index: ``(B,)`` each row's index ``j`` in ``[0, num_samples)`` among its place's days, or
                ``None`` (independent draws).
            num_samples: days per place (with ``sample_index``).
            return_copies: also return the days before level noise (the copies whose expectation is
                :meth:`expected_donor_day`).

        Returns:
            ``(B, D, T)`` days in normalised units; with ``return_copies``, ``(days, copies)``.
        """
        if self.config.get("num_bank_days", 0) == 0:
            raise ValueError("this donor prior stores no days (num_bank_days=0)")
        if not 0 <= random_donor_share <= 1:
            raise ValueError(f"random_donor_share must be in [0, 1], got {random_donor_share}")
        if not (math.isfinite(level_noise) and level_noise >= 0):
            raise ValueError(f"level_noise must be a finite number >= 0, got {level_noise}")
        if level_noise > 0 and not self.config.get("has_level_errors", False):
            raise ValueError("level_noise > 0 needs a donor prior that stores level errors (built after they existed)")
        batch = index.shape[0]
        if sample_index is not None and (
            sample_index.shape != (batch,) or not 0 <= int(sample_index.min()) <= int(sample_index.max()) < num_samples
        ):
            raise ValueError(f"sample_index must be ({batch},) indices in [0, {num_samples}), got {sample_index}")
        day_types = self._check_day_types(day_types, batch, index.device)
        generators = generator if isinstance(generator, list) else [generator] * batch
        # Draws 2-3 only with random donors and 4 only with level noise, so days generated without them stay
        # as they were.
        num_draws = 5 if level_noise > 0 else 4 if random_donor_share > 0 else 2
        draws = torch.stack([torch.rand(num_draws, generator=g, device=index.device) for g in generators])
        rows = torch.arange(batch, device=index.device)
        num_bank, num_candidates = self.config.num_bank, index.shape[1]
        if sample_index is not None:
            # the mixture's inverse distribution at one uniform of the j-th slice: any donor below the share
            mixture = (_spread_order(num_samples, draws.device)[sample_index] + draws[:, 0]) / num_samples
            any_donor = (mixture / max(random_donor_share, _EPS) * num_bank).long().clamp_max(num_bank - 1)
            slot = (mixture - random_donor_share).clamp_min(0) / max(1 - random_donor_share, _EPS) * num_candidates
            candidate = index[rows, slot.long().clamp_max(num_candidates - 1)]
            donor = torch.where(mixture < random_donor_share, any_donor, candidate)
        else:
            donor = index[rows, (draws[:, 0] * num_candidates).long().clamp_max(num_candidates - 1)]
            if random_donor_share > 0:
                any_donor = (draws[:, 2] * num_bank).long().clamp_max(num_bank - 1)
                donor = torch.where(draws[:, 3] < random_donor_share, any_donor, donor)
        summary = donor + day_types * self.config.num_bank
        count = self.bank_day_count[summary]
        day = self.bank_days[summary, (draws[:, 1] * count).long().clamp_max(count - 1)]  # (B, D, T)
        level = (mean_day * self.feature_std_ + self.feature_mean_).mean(-1)  # (B, D) data units
        donor_level = self.bank_profile[summary].mean(-1)
        if self.config.level_mode == "multiplicative":
            ratio = level.clamp_min(0) / donor_level.clamp_min(_EPS)
            day = day * ratio.pow(level_exponent).unsqueeze(-1)
        else:
            day = day + (level_exponent * (level - donor_level)).unsqueeze(-1)
        copies = day
        if level_noise > 0:
            level_draw = draws[:, 4]
            if sample_index is not None:
                # the level errors stratified too, in base-3 order so that a day's slice of errors does not follow
                # its slice of donors
                level_draw = (_spread_order(num_samples, draws.device, base=3)[sample_index] + level_draw) / num_samples
            day = self._with_level_noise(day, level_draw, day_types, level_noise)
        day = (day - self.feature_mean_) / self.feature_std_
        return (day, (copies - self.feature_mean_) / self.feature_std_) if return_copies else day

    @torch.no_grad()
    def expected_donor_day(
        self,
        index: torch.Tensor,
        mean_day: torch.Tensor,
        level_exponent: float,
        day_types: torch.Tensor | None = None,
        random_donor_share: float = 0.0,
    ) -> torch.Tensor:
        """The expectation of :meth:`donor_days` before level noise, over its donors and their stored days.

        A row's donor is one of its ``2K`` candidate slots (uniformly) or, with probability
        ``random_donor_share``, any donor; its day is one of the donor's stored days (uniformly), rescaled by
        ``(l / L)^a``. Level noise is left out: its factor has mean 1 (``"additive"``: mean 0).

        Args:
            index: ``(B, 2K)`` candidate bank rows.
            mean_day: ``(B, D, T)`` each row's prior mean, normalised.
            level_exponent: ``a``.
            day_types: ``(B,)`` day type of each row; needed when ``num_day_types > 1``.
            random_donor_share: in ``[0, 1]``.

        Returns:
            ``(B, D, T)`` in normalised units.
        """
        if self.config.get("num_bank_days", 0) == 0:
            raise ValueError("this donor prior stores no days (num_bank_days=0)")
        day_types = self._check_day_types(day_types, index.shape[0], index.device)
        stored = torch.arange(self.bank_days.shape[1], device=index.device) < self.bank_day_count.unsqueeze(1)
        stored_mean = (self.bank_days * stored[..., None, None]).sum(1) / self.bank_day_count.clamp_min(1)[
            :, None, None
        ]  # (K * num_bank, D, T) data units
        donor_level = self.bank_profile.mean(-1).unsqueeze(-1)  # (K * num_bank, D, 1)
        level = (mean_day * self.feature_std_ + self.feature_mean_).mean(-1, keepdim=True)  # (B, D, 1)
        if self.config.level_mode == "multiplicative":
            # (l / L_j)^a = l^a * L_j^-a, so the donors' mean needs no (B, num_bank) table
            per_donor = stored_mean * donor_level.clamp_min(_EPS).pow(-level_exponent)
        else:
            per_donor = stored_mean - level_exponent * donor_level
        summary = index + (day_types * self.config.num_bank).unsqueeze(1)
        mixture = random_donor_share * self._mean_of_donors(per_donor, day_types).squeeze(1) + (
            1 - random_donor_share
        ) * per_donor[summary].mean(1)
        if self.config.level_mode == "multiplicative":
            expected = level.clamp_min(0).pow(level_exponent) * mixture
        else:
            expected = mixture + level_exponent * level
        return (expected - self.feature_mean_) / self.feature_std_

    def _with_level_noise(
        self, day: torch.Tensor, draw: torch.Tensor, day_types: torch.Tensor, level_noise: float
    ) -> torch.Tensor:
        """``(B, D, T)`` days (data units) with the level of a donor drawn by ``(B,)`` uniforms ``draw``."""
        num_bank = self.config.num_bank
        errors = self.level_error.view(self.config.num_day_types, num_bank, -1)[day_types]  # (B, num_bank, D)
        # by rank of the mean error over features, so that stratified draws spread over the errors' values
        ranked = errors.mean(-1).argsort(dim=1)  # (B, num_bank)
        rows = torch.arange(len(draw), device=draw.device)
        drawn = errors[rows, ranked[rows, (draw * num_bank).long().clamp_max(num_bank - 1)]]  # (B, D)
        if self.config.level_mode == "multiplicative":
            # exp(lam e_j) / mean_i exp(lam e_i), in logs so that a large lam cannot overflow
            log_mean = torch.logsumexp(level_noise * errors, dim=1) - math.log(num_bank)
            return day * torch.exp(level_noise * drawn - log_mean).unsqueeze(-1)
        return day + (level_noise * (drawn - errors.mean(1))).unsqueeze(-1)

    def own_statistics(
        self, node_rows: torch.Tensor, day_types: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, D, T)`` mean day and ``(B, D)`` spread of training nodes' OWN data, normalised.

        The training target of the residual diffusion (never used to sample: :meth:`forward` is). With
        ``(B,)`` ``day_types`` (needed when ``num_day_types > 1``), each node's statistics of that day type.
        """
        bank_rows = self.node_bank_row[node_rows]
        if (bank_rows < 0).any():
            raise ValueError("own_statistics: some nodes are not training nodes with data")
        day_types = self._check_day_types(day_types, len(bank_rows), bank_rows.device)
        bank_rows = bank_rows + day_types * self.config.num_bank
        return self._normalised(self.bank_profile[bank_rows], self.bank_spread[bank_rows])

    @torch.no_grad()
    def spread_level_elasticity(self) -> torch.Tensor:
        """``(D,)`` how a donor's day-to-day spread grows with its level: the least-squares slope of ``log sigma_j``
        on ``log L_j`` over the stored donor summaries (all day types) with ``sigma_j, L_j > 0``, clipped to
        ``[0, 1]``. Counts come out near 1 (a busier zone varies proportionally more: 0.7-0.9 on NYC-Bike's
        folds), speeds at 0 (a slower sensor is the congested one and varies more: slopes -0.7 to -7 on
        PeMS-Bay-16 and METR-LA); 0 with fewer than two such donors or one level.
        """
        log_level = self.bank_level.clamp_min(_EPS).log()  # (K * num_bank, D)
        log_spread = self.bank_spread.clamp_min(_EPS).log()
        valid = ((self.bank_level > 0) & (self.bank_spread > 0)).float()
        count = valid.sum(0)
        centred_level = (log_level - (valid * log_level).sum(0) / count.clamp_min(1)) * valid
        centred_spread = (log_spread - (valid * log_spread).sum(0) / count.clamp_min(1)) * valid
        variance = (centred_level**2).sum(0)
        slope = (centred_level * centred_spread).sum(0) / variance.clamp_min(_EPS)
        return torch.where((count >= 2) & (variance > _EPS), slope.clamp(0.0, 1.0), torch.zeros_like(slope))

    def _check_day_types(self, day_types: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """``(batch,)`` long day types; ``None`` means type 0, allowed only without day types."""
        num_day_types = self.config.num_day_types
        if day_types is None:
            if num_day_types > 1:
                raise ValueError(f"this donor prior keeps {num_day_types} day types: pass day_types")
            return torch.zeros(batch, dtype=torch.long, device=device)
        day_types = torch.as_tensor(day_types, dtype=torch.long, device=device)
        if day_types.shape != (batch,):
            raise ValueError(f"day_types must have shape ({batch},), got {tuple(day_types.shape)}")
        if batch and (int(day_types.min()) < 0 or int(day_types.max()) >= num_day_types):
            raise ValueError(f"day types must lie in [0, {num_day_types})")
        return day_types

    def _mean_of_donors(self, summary: torch.Tensor, day_types: torch.Tensor) -> torch.Tensor:
        """``(K * num_bank, ...)`` donor summaries -> ``(B, 1, ...)`` their mean over the donors of each day type."""
        blocks = summary.view(self.config.num_day_types, self.config.num_bank, *summary.shape[1:]).mean(1)
        return blocks[day_types].unsqueeze(1)

    def _normalised(self, mean_day: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_day = (mean_day - self.feature_mean_) / self.feature_std_
        return mean_day, (scale / self.feature_std_.squeeze(-1)).clamp_min(_MIN_SCALE)

    def log_degree_of(self, edge_node: torch.Tensor, edge_relation: torch.Tensor, num_queries: int) -> torch.Tensor:
        """``(Q, R)`` log(1 + count) of each query's KG edges per relation."""
        counts = torch.zeros(num_queries, self.config.num_relations, device=edge_node.device)
        counts.index_put_((edge_node, edge_relation), torch.ones_like(edge_node, dtype=torch.float), accumulate=True)
        return counts.log1p()


def _spread_order(num_samples: int, device: torch.device, base: int = 2) -> torch.Tensor:
    """``(num_samples,)`` a permutation of the slices ``0..num_samples - 1`` by the van der Corput sequence in
    ``base`` (base 2, bit reversal: 0, 1/2, 1/4, 3/4, ...): every prefix of it is spread over ``[0, num_samples)``.
    Two bases give two orders whose pairs are spread over the square too (a Halton sequence)."""
    index = torch.arange(num_samples, device=device)
    radical_inverse = torch.zeros(num_samples, dtype=torch.float64, device=device)
    digit, scale = index.clone(), 1.0 / base
    while bool((digit > 0).any()):
        radical_inverse += (digit % base) * scale
        digit, scale = digit // base, scale / base
    return torch.argsort(torch.argsort(radical_inverse))


def _log_degree(edge_node: np.ndarray, edge_relation: np.ndarray, num_nodes: int, num_relations: int) -> np.ndarray:
    counts = np.zeros((num_nodes, num_relations), dtype=np.float64)
    np.add.at(counts, (edge_node, edge_relation), 1.0)
    return np.log1p(counts).astype(np.float32)


def _pairwise_km(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(Q, 2)`` x ``(B, 2)`` latitude/longitude in degrees -> ``(Q, B)`` haversine distance in km."""
    lat_a, lon_a = torch.deg2rad(a[:, :1]), torch.deg2rad(a[:, 1:])
    lat_b, lon_b = torch.deg2rad(b[:, 0]), torch.deg2rad(b[:, 1])
    h = torch.sin((lat_b - lat_a) / 2) ** 2 + torch.cos(lat_a) * torch.cos(lat_b) * torch.sin((lon_b - lon_a) / 2) ** 2
    return 2 * 6371.0 * torch.asin(h.clamp(0, 1).sqrt())

