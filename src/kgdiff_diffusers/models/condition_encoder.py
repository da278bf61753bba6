"""KGConditionEncoder: the Geometry mixture of experts over a node's KG neighbours (paper eq. 13-15)."""

from __future__ import annotations

import math

import geoopt.manifolds.stereographic.math as stereographic
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

# Tangent vectors are clipped to this geodesic length (in units of 1/sqrt|k|) before expmap0: past ~3
# float32 hyperbolic points saturate at the ball's edge and spherical ones wrap around (pi / 2).
_MAX_TANGENT_RADIUS = {"hyperbolic": 3.0, "spherical": 0.49 * math.pi}
# The translated form keeps spherical points in the open hemisphere around 0 (|x| < 1/sqrt k, i.e. a tangent
# length below pi / 4 in geoopt's stereographic model), where the gyromidpoint's weights lambda_x - 1 stay > 0.
_MAX_TRANSLATED_RADIUS = {"hyperbolic": 3.0, "spherical": 0.24 * math.pi}
# ... and measures tails in units that give them a root-mean-square norm of 1/2 (inside that radius at |c| = 1).
_TRANSLATED_TAIL_NORM = 0.5
NEIGHBOR_WEIGHTINGS = ("uniform", "relation")
GEOMETRY_FORMS = ("as_published", "translated")
# geoopt's stereographic functions are TorchScript. The optimising executor runs a function's first call as
# profiled eager ops and later calls through autodiff subgraphs whose derivative formulas round differently: the
# gradients of the curvature and embeddings depended on how often the functions had run, so a resumed run's first
# step did not repeat the uninterrupted run's bit for bit. Unoptimised, every call differentiates alike (unless
# other code already ran them optimised in this process: the executor keeps an optimised plan).
_same_gradients_every_call = torch.jit.optimized_execution(False)


class KGConditionEncoder(ModelMixin, ConfigMixin):
    r"""Turns each node's knowledge-graph neighbourhood into a condition vector ``phi``.

    For a node ``gamma`` with neighbours ``N_gamma = {(r, t)}`` (relation and tail embeddings, ``d``-dim)::

        M_E = r * t                                   Euclidean expert (element-wise product)
        M_H = r (x)_{c1} exp_0^{c1}(t)                hyperbolic expert, c1 = -softplus(a) < 0
        M_S = r (x)_{c2} exp_0^{c2}(t)                spherical expert,  c2 = +softplus(b) > 0
        M   = W_m LN[ M_E || log_0^{c1}(M_H) || log_0^{c2}(M_S) ]      (eq. 14)
        phi_gamma = sigmoid( mean_{(r, t) in N_gamma} M(r, t) )       (eq. 15)

    ``(x)_c`` is Mobius point-wise multiplication in the stereographic model of curvature ``c`` (geoopt).

    ``geometry_form="as_published"`` computes exactly this. Mobius point-wise multiplication is conjugate to
    the Euclidean one through ``exp_0``/``log_0`` (``r (x)_c x = exp_0^c(r * log_0^c(x))``), so as eq. 14 is
    written ``log_0(M_H) = log_0(M_S) = M_E`` for any curvature (relative difference ~1e-7): the geometric
    experts only differ from the Euclidean one where the tangent clipping below is active (large embeddings),
    and the "w/o H / E / S" ablations differ only through ``W_m``'s input width.

    ``geometry_form="translated"`` makes each geometry matter, as MuRP / AttH do for KG embeddings: the
    relation scales the tail point-wise and then translates it by its own point ``exp_0(b_r)`` (one learnt
    ``b_r`` per relation and expert), and a node's translated neighbours are averaged by the weighted
    Mobius gyromidpoint (geoopt's ``weighted_midpoint``, the Einstein midpoint for ``c < 0``) before
    ``log_0`` brings the mean back for ``W_m``::

        x_g = (r / u_r) (x)_g exp_0^g(t / u_t)  (+)_g  exp_0^g(b_r^g)     g in {E (c = 0), H (c1), S (c2)}
        phi_gamma = sigmoid( W_m LN[ log_0^g( midpoint^g_{(r, t) in N_gamma} x_g ) for each g ] )

    ``u_t`` (twice the root-mean-square entity norm) and ``u_r`` (root-mean-square relation entry) are buffers
    set from the embeddings by :meth:`from_knowledge_graph`, so that tails have norm ~1/2 and the curvature is
    felt whatever the scale of the pretrained embeddings (TuckER's are ~1e-2 per entry, where a unit ball is
    flat). The Euclidean expert is the same construction at ``c = 0`` (``r t + b_r``, arithmetic mean).
    Spherical points are kept in the hemisphere around 0, where the gyromidpoint is well defined.

    The curvatures are learnt through softplus, so their signs cannot flip. Tangent vectors are clipped to
    a safe geodesic radius before ``exp_0``, so embeddings of any norm give finite outputs. ``phi`` uses
    only the neighbours, never the node's own data, so a node without data (or a new entity given its
    relations) still gets a condition. Aggregation is a gather + scatter-mean over the edge list.

    Ablations (paper Table 3): ``use_euclidean``/``use_hyperbolic``/``use_spherical`` drop an expert
    (``W_m`` then sees only the others); ``use_geometry_moe=False`` replaces the experts by
    ``M = W_m t`` (relation-blind, Euclidean; the translated form mixes the mean tail, ``W_m LN[mean t]``);
    ``use_guidance=False`` returns ``phi = 0`` for every node
    (an unconditional model).

    ``num_day_types > 1`` conditions on the day type too (weekday / weekend): a learnt vector per day type,
    zero at initialisation, is added to ``phi`` (:meth:`add_day_type`), so the meta pattern and the denoiser
    see both. The default ``num_day_types=1`` creates no parameter for it and leaves ``phi`` as above.

    ``neighbor_weighting`` chooses the mean of eq. 15: ``"uniform"`` (as published) weighs every edge the
    same, so a zone with 700 POIs and 5 adjacent zones is described almost only by its POIs;
    ``"relation"`` first averages the messages of each relation, then averages those relation means (each
    relation present at the node weighs the same, as in R-GCN's per-relation normalisation).

    The KG index (the edges of the training nodes) and the embeddings are buffers/parameters of the module,
    so ``save_pretrained`` writes them to safetensors with the weights.

    Args:
        num_entities: rows of the entity embedding table.
        num_relations: rows of the relation embedding table (forward and inverse relations).
        num_nodes: number of indexed nodes (rows that :meth:`forward` can encode by index).
        num_edges: number of (node, relation, neighbour) edges in the stored index.
        embedding_dim: ``d`` of the (TuckER) entity and relation embeddings.
        condition_dim: size of ``phi``.
        train_embeddings: fine-tune the embeddings (``True``) or keep them frozen (``False``).
        use_euclidean, use_hyperbolic, use_spherical, use_geometry_moe, use_guidance: ablation switches.
        neighbor_weighting: ``"uniform"`` (eq. 15) or ``"relation"`` (each relation's mean weighs the same).
        geometry_form: ``"as_published"`` (eq. 14 as printed) or ``"translated"`` (relation translations and
            gyromidpoints, see above).
        init_hyperbolic_curvature: initial ``c1`` (< 0).
        init_spherical_curvature: initial ``c2`` (> 0).
        num_day_types: day types conditioned on (``1``: none).
    """

    @register_to_config
    def __init__(
        self,
        num_entities: int,
        num_relations: int,
        num_nodes: int,
        num_edges: int,
        embedding_dim: int = 128,
        condition_dim: int = 128,
        train_embeddings: bool = False,
        use_euclidean: bool = True,
        use_hyperbolic: bool = True,
        use_spherical: bool = True,
        use_geometry_moe: bool = True,
        use_guidance: bool = True,
        neighbor_weighting: str = "uniform",
        geometry_form: str = "as_published",
        init_hyperbolic_curvature: float = -1.0,
        init_spherical_curvature: float = 1.0,
        num_day_types: int = 1,
    ):
        super().__init__()
        if num_day_types < 1:
            raise ValueError(f"num_day_types must be >= 1, got {num_day_types}")
        if init_hyperbolic_curvature >= 0 or init_spherical_curvature <= 0:
            raise ValueError("init_hyperbolic_curvature must be < 0 and init_spherical_curvature > 0")
        if neighbor_weighting not in NEIGHBOR_WEIGHTINGS:
            raise ValueError(f"neighbor_weighting must be one of {NEIGHBOR_WEIGHTINGS}, got {neighbor_weighting!r}")
        if geometry_form not in GEOMETRY_FORMS:
            raise ValueError(f"geometry_form must be one of {GEOMETRY_FORMS}, got {geometry_form!r}")
        self.experts = [
            name
            for name, used in (
                ("euclidean", use_euclidean),
                ("hyperbolic", use_hyperbolic),
                ("spherical", use_spherical),
            )
            if used
        ]
        if use_geometry_moe and not self.experts:
            raise ValueError("at least one expert must be on while use_geometry_moe=True")
        self.entity_embeddings = nn.Parameter(torch.zeros(num_entities, embedding_dim), requires_grad=train_embeddings)
        self.relation_embeddings = nn.Parameter(
            torch.zeros(num_relations, embedding_dim), requires_grad=train_embeddings
        )
        self.register_buffer("edge_node", torch.zeros(num_edges, dtype=torch.long))
        self.register_buffer("edge_relation", torch.zeros(num_edges, dtype=torch.long))
        self.register_buffer("edge_neighbor", torch.zeros(num_edges, dtype=torch.long))
        # Raw parameters of c1 = -softplus(a) and c2 = softplus(b), i.e. a = b = softplus^{-1}(|c|).
        self.hyperbolic_curvature_raw = nn.Parameter(torch.tensor(_inverse_softplus(-init_hyperbolic_curvature)))
        self.spherical_curvature_raw = nn.Parameter(torch.tensor(_inverse_softplus(init_spherical_curvature)))
        num_inputs = len(self.experts) if use_geometry_moe else 1
        # Pretrained KG embeddings are small (TuckER: ~1e-2 per entry), so raw messages differ little between
        # nodes and phi would be nearly constant; a LayerNorm before W_m puts every message on a unit scale.
        self.message_norm = nn.LayerNorm(num_inputs * embedding_dim)
        self.mixture = nn.Linear(num_inputs * embedding_dim, condition_dim)
        if geometry_form == "translated":
            self.register_buffer("entity_unit", torch.ones(()))
            self.register_buffer("relation_unit", torch.ones(()))
            # b_r per relation and expert, tangent vectors at 0 of norm ~1/4 (tails have norm ~1/2 in these units).
            # Plain Parameters mapped with exp_0 in forward: geoopt's ManifoldParameter does not survive
            # diffusers' meta-device loading.
            self.translations = nn.ParameterDict(
                {
                    name: nn.Parameter(torch.randn(num_relations, embedding_dim) * (0.25 / math.sqrt(embedding_dim)))
                    for name in (self.experts if use_geometry_moe else [])
                }
            )
        if num_day_types > 1:
            self.day_type_embedding = nn.Embedding(num_day_types, condition_dim)
            nn.init.zeros_(self.day_type_embedding.weight)

    @classmethod
    def from_knowledge_graph(
        cls,
        entity_embeddings: torch.Tensor,
        relation_embeddings: torch.Tensor,
        edge_node: torch.Tensor,
        edge_relation: torch.Tensor,
        edge_neighbor: torch.Tensor,
        num_nodes: int,
        **config,
    ) -> KGConditionEncoder:
        """Builds an encoder around given embeddings and a neighbour index.

        Args:
            entity_embeddings: ``(num_entities, d)`` e.g. TuckER entity embeddings.
            relation_embeddings: ``(num_relations, d)`` relation embeddings (forward then inverse).
            edge_node, edge_relation, edge_neighbor: ``(E,)`` int edge list as returned by
                :meth:`KnowledgeGraph.neighbor_index`: node row, relation id, neighbour entity id.
            num_nodes: number of node rows; every row must have at least one edge.
            **config: other constructor arguments (``condition_dim``, ablation switches, ...).
        """
        entity_embeddings = torch.as_tensor(entity_embeddings, dtype=torch.float32)
        relation_embeddings = torch.as_tensor(relation_embeddings, dtype=torch.float32)
        if entity_embeddings.shape[1] != relation_embeddings.shape[1]:
            raise ValueError(
                f"entity embeddings have dim {entity_embeddings.shape[1]} but relation embeddings "
                f"{relation_embeddings.shape[1]}: the experts multiply them element-wise, so they must match"
            )
        edges = [torch.as_tensor(e, dtype=torch.long) for e in (edge_node, edge_relation, edge_neighbor)]
        cls.check_edges(*edges, num_nodes, len(entity_embeddings), len(relation_embeddings))
        encoder = cls(
            num_entities=len(entity_embeddings),
            num_relations=len(relation_embeddings),
            num_nodes=num_nodes,
            num_edges=len(edges[0]),
            embedding_dim=entity_embeddings.shape[1],
            **config,
        )
        with torch.no_grad():
            encoder.entity_embeddings.copy_(entity_embeddings)
            encoder.relation_embeddings.copy_(relation_embeddings)
            encoder.edge_node.copy_(edges[0])
            encoder.edge_relation.copy_(edges[1])
            encoder.edge_neighbor.copy_(edges[2])
            if encoder.config.geometry_form == "translated":
                entity_unit = entity_embeddings.pow(2).sum(-1).mean().sqrt() / _TRANSLATED_TAIL_NORM
                relation_unit = relation_embeddings.pow(2).mean().sqrt()
                encoder.entity_unit.copy_(torch.where(entity_unit > 0, entity_unit, 1.0))
                encoder.relation_unit.copy_(torch.where(relation_unit > 0, relation_unit, 1.0))
        return encoder

    @staticmethod
    def check_edges(
        edge_node: torch.Tensor,
        edge_relation: torch.Tensor,
        edge_neighbor: torch.Tensor,
        num_nodes: int,
        num_entities: int,
        num_relations: int,
    ) -> None:
        """Raises ``ValueError`` for out-of-range ids or nodes without any neighbour."""
        if not (len(edge_node) == len(edge_relation) == len(edge_neighbor)):
            raise ValueError("edge_node, edge_relation and edge_neighbor must have the same length")
        for name, ids, size in (
            ("node", edge_node, num_nodes),
            ("relation", edge_relation, num_relations),
            ("neighbour entity", edge_neighbor, num_entities),
        ):
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= size):
                raise ValueError(f"an edge refers to a {name} id outside [0, {size})")
        lonely = torch.nonzero(torch.bincount(edge_node, minlength=num_nodes) == 0).flatten()
        if len(lonely):
            raise ValueError(
                f"{len(lonely)} node(s) have no knowledge-graph neighbours (rows {lonely[:10].tolist()}): "
                "phi is a mean over neighbours; add relations for them (e.g. distance bands or area containment)"
            )

    @property
    def hyperbolic_curvature(self) -> torch.Tensor:
        """``c1 < 0``."""
        return -F.softplus(self.hyperbolic_curvature_raw)

    @property
    def spherical_curvature(self) -> torch.Tensor:
        """``c2 > 0``."""
        return F.softplus(self.spherical_curvature_raw)

    def curvature(self, geometry: str) -> torch.Tensor:
        """``c1`` for ``"hyperbolic"``, ``c2`` for ``"spherical"``."""
        return self.hyperbolic_curvature if geometry == "hyperbolic" else self.spherical_curvature

    @_same_gradients_every_call
    def _geometric_message(self, relation: torch.Tensor, tail: torch.Tensor, geometry: str) -> torch.Tensor:
        """``log_0^c(r (x)_c exp_0^c(t))`` for ``(E, d)`` relation and tail embeddings."""
        k = self.curvature(geometry)
        point = stereographic.expmap0(_clip_norm(tail, _MAX_TANGENT_RADIUS[geometry] / k.abs().sqrt()), k=k)
        product = stereographic.mobius_pointwise_mul(relation, point, k=k)
        return stereographic.logmap0(product, k=k)

    def edge_messages(self, relation_id: torch.Tensor, neighbor_id: torch.Tensor) -> torch.Tensor:
        """``(E,)`` relation and neighbour ids -> ``(E, condition_dim)`` messages ``M(r, t)`` of eq. 14."""
        if self.config.geometry_form != "as_published":
            raise ValueError(
                "edge_messages belongs to geometry_form='as_published'; the translated form averages on the "
                "manifold before W_m (see expert_summaries)"
            )
        relation = self.relation_embeddings[relation_id]
        tail = self.entity_embeddings[neighbor_id]
        if not self.config.use_geometry_moe:
            return self.mixture(self.message_norm(tail))
        parts = []
        for geometry in self.experts:
            if geometry == "euclidean":
                parts.append(relation * tail)
            else:
                parts.append(self._geometric_message(relation, tail, geometry))
        return self.mixture(self.message_norm(torch.cat(parts, dim=-1)))

    def encode_neighbors(
        self, edge_node: torch.Tensor, relation_id: torch.Tensor, neighbor_id: torch.Tensor, num_nodes: int
    ) -> torch.Tensor:
        """Eq. 15 for an arbitrary edge list (e.g. new entities added to the KG).

        Args:
            edge_node: ``(E,)`` row in ``[0, num_nodes)`` of the node that owns each edge.
            relation_id: ``(E,)`` relation ids (forward or inverse).
            neighbor_id: ``(E,)`` neighbour entity ids.
            num_nodes: number of output rows.

        Returns:
            ``(num_nodes, condition_dim)`` condition ``phi``.
        """
        device = self.mixture.weight.device
        edge_node, relation_id, neighbor_id = (x.to(device) for x in (edge_node, relation_id, neighbor_id))
        self.check_edges(edge_node, relation_id, neighbor_id, num_nodes, *self.embedding_sizes())
        return self._aggregate(edge_node, relation_id, neighbor_id, num_nodes)

    def _aggregate(
        self, edge_node: torch.Tensor, relation_id: torch.Tensor, neighbor_id: torch.Tensor, num_nodes: int
    ) -> torch.Tensor:
        """Eq. 15 on an edge list that is already checked (the stored index is checked once, when built)."""
        device = self.mixture.weight.device
        if not self.config.use_guidance:
            return torch.zeros(num_nodes, self.config.condition_dim, device=device, dtype=self.mixture.weight.dtype)
        if self.config.geometry_form == "translated":
            summaries = self.expert_summaries(edge_node, relation_id, neighbor_id, num_nodes)
            return torch.sigmoid(self.mixture(self.message_norm(torch.cat(list(summaries.values()), dim=-1))))
        messages = self.edge_messages(relation_id, neighbor_id)
        weights = self.edge_weights(edge_node, relation_id, num_nodes).to(messages.dtype)
        averaged = torch.zeros(num_nodes, messages.shape[-1], device=device, dtype=messages.dtype)
        averaged.index_add_(0, edge_node, messages * weights.unsqueeze(-1))
        return torch.sigmoid(averaged)

    @_same_gradients_every_call
    def expert_summaries(
        self, edge_node: torch.Tensor, relation_id: torch.Tensor, neighbor_id: torch.Tensor, num_nodes: int
    ) -> dict[str, torch.Tensor]:
        """What each expert of the translated form says about each node, before ``W_m``.

        Args:
            edge_node: ``(E,)`` row in ``[0, num_nodes)`` of the node that owns each edge.
            relation_id: ``(E,)`` relation ids.
            neighbor_id: ``(E,)`` neighbour entity ids.
            num_nodes: number of output rows.

        Returns:
            expert name -> ``(num_nodes, d)`` tangent vector at 0 of the node's mean translated neighbour
            (``"euclidean"``, ``"hyperbolic"``, ``"spherical"`` for the experts that are on; ``"tail"``, the
            mean tail, when ``use_geometry_moe=False``).
        """
        if self.config.geometry_form != "translated":
            raise ValueError("expert_summaries belongs to geometry_form='translated'")
        weights = self.edge_weights(edge_node, relation_id, num_nodes).unsqueeze(-1)
        tail = self.entity_embeddings[neighbor_id] / self.entity_unit
        if not self.config.use_geometry_moe:
            return {"tail": _scatter_sum(tail * weights, edge_node, num_nodes)}
        scaled = self.relation_embeddings[relation_id] / self.relation_unit * tail
        summaries = {}
        for geometry in self.experts:
            translation = self.translations[geometry]
            if geometry == "euclidean":
                summaries[geometry] = _scatter_sum((scaled + translation[relation_id]) * weights, edge_node, num_nodes)
                continue
            k = self.curvature(geometry)
            max_norm = _MAX_TRANSLATED_RADIUS[geometry] / k.abs().sqrt()
            # r (x)_k exp_0(t) = exp_0(r * t): clipping the product first keeps it from wrapping around the sphere.
            point = stereographic.expmap0(_clip_norm(scaled, max_norm), k=k)
            shift = stereographic.expmap0(_clip_norm(translation, max_norm), k=k)[relation_id]
            moved = stereographic.mobius_add(point, shift, k=k)
            if geometry == "hyperbolic":
                moved = stereographic.project(moved, k=k)
            else:
                moved = _clip_norm(moved, stereographic.tan_k(max_norm, k))
            midpoint = _scatter_gyromidpoint(moved, weights, edge_node, num_nodes, k)
            summaries[geometry] = stereographic.logmap0(midpoint, k=k)
        return summaries

    def edge_weights(self, edge_node: torch.Tensor, relation_id: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """``(E,)`` weights of the mean of eq. 15; they sum to 1 over each node's edges."""
        if self.config.neighbor_weighting == "uniform":
            return 1.0 / torch.bincount(edge_node, minlength=num_nodes)[edge_node]
        num_relations = self.relation_embeddings.shape[0]
        group = edge_node * num_relations + relation_id  # one group per (node, relation)
        unique_groups, group_of_edge, edges_per_group = torch.unique(group, return_inverse=True, return_counts=True)
        relations_per_node = torch.bincount(unique_groups // num_relations, minlength=num_nodes)
        return 1.0 / (edges_per_group[group_of_edge] * relations_per_node[edge_node])

    def embedding_sizes(self) -> tuple[int, int]:
        """``(num_entities, num_relations)``."""
        return self.entity_embeddings.shape[0], self.relation_embeddings.shape[0]

    def add_day_type(self, phi: torch.Tensor, day_types: torch.Tensor | None) -> torch.Tensor:
        """``phi`` plus the learnt vector of each row's day type.

        Args:
            phi: ``(B, condition_dim)`` conditions of the KG neighbourhoods.
            day_types: ``(B,)`` int day type of each row, in ``[0, num_day_types)``; ``None`` only for an
                encoder without day types (``num_day_types=1``, where ``phi`` is returned unchanged).

        Returns:
            ``(B, condition_dim)``.
        """
        num_day_types = self.config.num_day_types
        if day_types is None:
            if num_day_types > 1:
                raise ValueError(f"this encoder is conditioned on {num_day_types} day types: pass day_types")
            return phi
        day_types = torch.as_tensor(day_types, dtype=torch.long, device=phi.device)
        if day_types.shape != phi.shape[:1]:
            raise ValueError(f"day_types must have shape ({len(phi)},), got {tuple(day_types.shape)}")
        if len(day_types) and (int(day_types.min()) < 0 or int(day_types.max()) >= num_day_types):
            raise ValueError(f"day types must lie in [0, {num_day_types})")
        if num_day_types == 1:
            return phi
        return phi + self.day_type_embedding(day_types)

    def forward(self, node_rows: torch.Tensor | None = None, day_types: torch.Tensor | None = None) -> torch.Tensor:
        """The condition of indexed nodes.

        Args:
            node_rows: ``(B,)`` rows of the stored index (may repeat); ``None`` means all nodes.
            day_types: ``(B,)`` day type of each row (see :meth:`add_day_type`); needed when
                ``num_day_types > 1``.

        Returns:
            ``(B, condition_dim)`` ``phi`` (``(num_nodes, condition_dim)`` for ``None``).
        """
        if node_rows is None:
            phi = self._aggregate(self.edge_node, self.edge_relation, self.edge_neighbor, self.config.num_nodes)
            return self.add_day_type(phi, day_types)
        node_rows = torch.as_tensor(node_rows, dtype=torch.long, device=self.edge_node.device)
        if len(node_rows) and (int(node_rows.min()) < 0 or int(node_rows.max()) >= self.config.num_nodes):
            raise ValueError(f"node rows must lie in [0, {self.config.num_nodes})")
        unique_rows, inverse = torch.unique(node_rows, return_inverse=True)
        local_row = torch.full((self.config.num_nodes,), -1, dtype=torch.long, device=node_rows.device)
        local_row[unique_rows] = torch.arange(len(unique_rows), device=node_rows.device)
        keep = local_row[self.edge_node] >= 0
        phi = self._aggregate(
            local_row[self.edge_node[keep]], self.edge_relation[keep], self.edge_neighbor[keep], len(unique_rows)
        )
        return self.add_day_type(phi[inverse], day_types)


def _clip_norm(x: torch.Tensor, max_norm: torch.Tensor) -> torch.Tensor:
    """Rescales the rows of ``x`` whose norm exceeds ``max_norm`` onto that norm."""
    return x * torch.clamp(max_norm / x.norm(dim=-1, keepdim=True).clamp_min(1e-15), max=1.0)


def _scatter_sum(values: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    return torch.zeros(num_rows, values.shape[-1], device=values.device, dtype=values.dtype).index_add_(
        0, index, values
    )


def _scatter_gyromidpoint(
    points: torch.Tensor, weights: torch.Tensor, index: torch.Tensor, num_rows: int, k: torch.Tensor
) -> torch.Tensor:
    """Weighted Mobius gyromidpoint of the ``(E, d)`` points of each row (geoopt's ``weighted_midpoint``, sparse).

    ``m = 1/2 (x)_k ( sum_i w_i lambda_i x_i / sum_i w_i (lambda_i - 1) )`` with ``lambda_x = 2 / (1 + k |x|^2)``:
    a convex combination in the Klein (``k < 0``) or gnomonic (``k > 0``, points in the hemisphere) model.
    ``weights`` is ``(E, 1)`` and positive.
    """
    conformal = stereographic.lambda_x(points, k=k, keepdim=True)
    numerator = _scatter_sum(weights * conformal * points, index, num_rows)
    denominator = _scatter_sum(weights * (conformal - 1), index, num_rows)
    return stereographic.mobius_scalar_mul(points.new_tensor(0.5), numerator / denominator, k=k)


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))
