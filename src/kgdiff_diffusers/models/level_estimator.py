"""KGDiffLevelEstimator: a node's mean level from the KG entities two hops away (a ridge regression)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

_EPS = 1e-6
# The fit solves a (training nodes)^2 system; above this many training nodes no estimator is built.
MAX_TRAINING_NODES = 5000


class KGDiffLevelEstimator(ModelMixin, ConfigMixin):
    r"""Predicts the log mean level of a node's days (per day type and feature) from its two-hop KG context.

    The donor prior takes a place's level from training nodes near it or with the same direct KG neighbours;
    where the level is set by something one step further out (a sensor's road -> its road category, a
    zone's POIs -> their categories) no donor search sees it. This estimator reads exactly that: a node's
    features are the counts of paths ``node -> a -> e`` through non-node entities ``a`` to non-node entities
    ``e`` that are not its direct neighbours, as ``log(1 + count)`` weighted by their IDF over the training
    nodes and scaled to unit norm. A ridge regression (fixed ``ridge_alpha``, unpenalised intercept) maps them
    to the log level ``log L`` of every training node with data, all day types and features at once. The
    prediction of a training node is its exact leave-one-out prediction (``(y_hat_i - H_ii y_i) / (1 - H_ii)``
    of the linear smoother ``H``), so no node's estimate depends on its own data.

    The pipeline mixes it into the donor prior's level as ``exp(w log L_est + (1 - w) log L_donors)``, with
    ``w`` (``level_estimate_weight``, per feature) chosen at the end of training on the validation nodes; where
    the two-hop context says nothing about the level (NYC-Bike's zones) they choose ``w = 0``.

    Args:
        num_nodes: nodes with stored estimates (the pipeline's ``node_ids``, in order).
        num_entities: KG entities (width of the feature vectors).
        num_features: ``D``.
        num_day_types: day types with their own level (``1``: one over all days).
        ridge_alpha: the ridge penalty (features have unit norm, so it is relative to a kernel of ones).
        num_hop_edges: stored entity -> entity edges between non-node entities (both directions).
    """

    @register_to_config
    def __init__(
        self,
        num_nodes: int,
        num_entities: int,
        num_features: int = 1,
        num_day_types: int = 1,
        ridge_alpha: float = 0.1,
        num_hop_edges: int = 0,
    ):
        super().__init__()
        outputs = num_day_types * num_features
        self.register_buffer("node_log_level", torch.zeros(num_day_types, num_nodes, num_features))
        self.register_buffer("entity_weight", torch.zeros(num_entities, outputs))
        self.register_buffer("intercept", torch.zeros(outputs))
        self.register_buffer("entity_idf", torch.ones(num_entities))
        self.register_buffer("is_node_entity", torch.zeros(num_entities, dtype=torch.bool))
        self.register_buffer("hop_source", torch.zeros(num_hop_edges, dtype=torch.long))
        self.register_buffer("hop_target", torch.zeros(num_hop_edges, dtype=torch.long))

    @classmethod
    def from_training_data(
        cls,
        log_levels: np.ndarray,
        train_rows: np.ndarray,
        node_entities: np.ndarray,
        edge_node: np.ndarray,
        edge_neighbor: np.ndarray,
        kg_triples: np.ndarray,
        num_entities: int,
        ridge_alpha: float = 0.1,
    ) -> KGDiffLevelEstimator | None:
        """Fits the estimator for ``N`` nodes; ``None`` where no training node has a two-hop feature or there are
        more than :data:`MAX_TRAINING_NODES` training nodes (the dual ridge solves a ``B x B`` system).

        Args:
            log_levels: ``(K, N, D)`` log mean level of each node's days per day type (only ``train_rows`` are
                read).
            train_rows: ``(B,)`` rows of the training nodes with data (at least 2).
            node_entities: ``(N,)`` KG entity id of each node.
            edge_node, edge_neighbor: ``(E,)`` the nodes' KG neighbours (row in ``[0, N)``, entity id).
            kg_triples: ``(M, 3)`` head, relation, tail ids of the whole KG.
        """
        train_rows = np.asarray(train_rows, dtype=np.int64)
        if len(train_rows) < 2:
            raise ValueError(f"the level estimator needs at least 2 training nodes with data, got {len(train_rows)}")
        if len(train_rows) > MAX_TRAINING_NODES:
            return None
        if not np.isfinite(log_levels[:, train_rows]).all():
            raise ValueError("training levels for the level estimator contain NaN or inf")
        num_day_types, num_nodes, num_features = log_levels.shape
        is_node = np.zeros(num_entities, dtype=bool)
        is_node[np.asarray(node_entities, dtype=np.int64)] = True
        heads, tails = kg_triples[:, 0], kg_triples[:, 2]
        between = ~is_node[heads] & ~is_node[tails] & (heads != tails)
        forward = np.stack([heads[between], tails[between]])
        hop = np.unique(np.concatenate([forward, forward[::-1]], axis=1), axis=1)
        model = cls(
            num_nodes=num_nodes,
            num_entities=num_entities,
            num_features=num_features,
            num_day_types=num_day_types,
            ridge_alpha=float(ridge_alpha),
            num_hop_edges=hop.shape[1],
        )
        with torch.no_grad():
            model.is_node_entity.copy_(torch.from_numpy(is_node))
            model.hop_source.copy_(torch.from_numpy(hop[0]))
            model.hop_target.copy_(torch.from_numpy(hop[1]))
            counts = model._two_hop_counts(torch.from_numpy(edge_node), torch.from_numpy(edge_neighbor), num_nodes)
            counts = counts.to(torch.float64)
            is_train = torch.zeros(num_nodes, dtype=torch.bool)
            is_train[torch.from_numpy(train_rows)] = True
            train_columns = counts.indices()[1][is_train[counts.indices()[0]]]
            if not len(train_columns):
                return None
            document_frequency = torch.bincount(train_columns, minlength=num_entities).double()
            idf = torch.log((1 + len(train_rows)) / (1 + document_frequency)) + 1.0
            model.entity_idf.copy_(idf)
            features = model._unit_features(counts, idf)  # sparse (N, E) float64
            targets = torch.from_numpy(log_levels.transpose(1, 0, 2).reshape(num_nodes, -1)).double()  # (N, K*D)
            train_index = torch.from_numpy(train_rows)
            weight, intercept, loo = _ridge(features.index_select(0, train_index), targets[train_index], ridge_alpha)
            predicted = torch.sparse.mm(features, weight) + intercept
            predicted[train_index] = loo
            model.entity_weight.copy_(weight)
            model.intercept.copy_(intercept)
            model.node_log_level.copy_(predicted.view(num_nodes, num_day_types, num_features).transpose(0, 1))
        return model

    def _two_hop_counts(self, edge_node: torch.Tensor, edge_neighbor: torch.Tensor, num_queries: int) -> torch.Tensor:
        """``(Q, E)`` sparse counts of paths ``query -> a -> e`` (``a``, ``e`` non-node; ``e`` not a neighbour)."""
        num_entities = self.config.num_entities
        device = self.entity_idf.device
        pairs = torch.unique(torch.stack([edge_node, edge_neighbor]).to(device), dim=1)
        query, middle = pairs[:, ~self.is_node_entity[pairs[1]]]
        # hop_source is sorted: each middle entity's onward edges are one slice of the hop arrays
        starts = torch.searchsorted(self.hop_source, middle)
        lengths = torch.searchsorted(self.hop_source, middle, right=True) - starts
        offsets = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
            lengths.cumsum(0) - lengths, lengths
        )
        target = self.hop_target[torch.repeat_interleave(starts, lengths) + offsets]
        paths = torch.sparse_coo_tensor(
            torch.stack([torch.repeat_interleave(query, lengths), target]),
            torch.ones(len(target), device=device),
            (num_queries, num_entities),
            check_invariants=True,
        ).coalesce()
        index, values = paths.indices(), paths.values()
        keep = ~torch.isin(index[0] * num_entities + index[1], pairs[0] * num_entities + pairs[1])
        return torch.sparse_coo_tensor(
            index[:, keep], values[keep], (num_queries, num_entities), check_invariants=True
        ).coalesce()

    @staticmethod
    def _unit_features(counts: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
        """Sparse ``(Q, E)`` counts -> sparse ``log(1 + count) * idf`` rows of unit norm (of ``idf``'s dtype)."""
        index = counts.indices()
        values = torch.log1p(counts.values().to(idf.dtype)) * idf[index[1]]
        norms = torch.zeros(counts.shape[0], dtype=idf.dtype, device=idf.device).index_add_(0, index[0], values**2)
        values = values / norms.sqrt()[index[0]].clamp_min(_EPS)
        return torch.sparse_coo_tensor(index, values, counts.shape, check_invariants=True).coalesce()

    @torch.no_grad()
    def log_level_for(self, edge_node: torch.Tensor, edge_neighbor: torch.Tensor, num_queries: int) -> torch.Tensor:
        """``(K, Q, D)`` estimated log levels of new places from their KG neighbours (``(E,)`` row, entity id)."""
        features = self._unit_features(self._two_hop_counts(edge_node, edge_neighbor, num_queries), self.entity_idf)
        predicted = torch.sparse.mm(features, self.entity_weight) + self.intercept  # (Q, K*D)
        return predicted.view(num_queries, self.config.num_day_types, self.config.num_features).transpose(0, 1)


def _ridge(
    features: torch.Tensor, targets: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge with an unpenalised intercept, in the dual, on sparse ``(B, E)`` features: ``(E, O)`` weights,
    ``(O,)`` intercept and the ``(B, O)`` exact leave-one-out predictions of the ``B`` training rows."""
    count = features.shape[0]
    mean = torch.sparse.sum(features, dim=0).to_dense() / count  # (E,)
    with warnings.catch_warnings():  # sparse x sparse goes through torch's (beta) CSR kernels
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        gram = torch.sparse.mm(features, features.t()).to_dense()
    projection = torch.sparse.mm(features, mean.unsqueeze(1)).squeeze(1)  # (B,)
    kernel = gram - projection.unsqueeze(0) - projection.unsqueeze(1) + mean @ mean  # of the centred features
    identity = torch.eye(count, dtype=kernel.dtype)
    solve = torch.linalg.solve(kernel + alpha * identity, identity)
    # Fitted values are H y with H = 11^T / B + K_c (K_c + alpha I)^-1: a penalised least-squares smoother, so
    # its leave-one-out predictions are (y_hat_i - H_ii y_i) / (1 - H_ii) exactly.
    hat = kernel @ solve + 1.0 / count
    fitted = hat @ targets
    diagonal = hat.diagonal().unsqueeze(1)
    loo = (fitted - diagonal * targets) / (1 - diagonal).clamp_min(_EPS)
    dual = solve @ targets  # (B, O)
    weight = torch.sparse.mm(features.t(), dual) - mean.unsqueeze(1) * dual.sum(0)  # centred features^T dual
    intercept = targets.mean(0) - mean @ weight
    return weight, intercept, loo
