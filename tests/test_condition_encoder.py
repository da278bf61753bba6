import pytest
import torch

from kgdiff_diffusers import KGConditionEncoder
from kgdiff_diffusers.kg.graph import KnowledgeGraph


def random_encoder(seed=0, scale=1.0, **config):
    gen = torch.Generator().manual_seed(seed)
    num_nodes, num_entities, num_relations, dim = 7, 30, 6, 12
    edge_node = torch.cat([torch.arange(num_nodes), torch.randint(0, num_nodes, (20,), generator=gen)])
    edge_relation = torch.randint(0, num_relations, (len(edge_node),), generator=gen)
    edge_neighbor = torch.randint(0, num_entities, (len(edge_node),), generator=gen)
    torch.manual_seed(seed)
    return KGConditionEncoder.from_knowledge_graph(
        torch.randn(num_entities, dim, generator=gen) * scale,
        torch.randn(num_relations, dim, generator=gen) * scale,
        edge_node,
        edge_relation,
        edge_neighbor,
        num_nodes,
        condition_dim=8,
        **config,
    )


def test_scatter_mean_equals_a_per_node_loop():
    encoder = random_encoder()
    phi = encoder()
    for node in range(encoder.config.num_nodes):
        mine = encoder.edge_node == node
        messages = encoder.edge_messages(encoder.edge_relation[mine], encoder.edge_neighbor[mine])
        torch.testing.assert_close(phi[node], torch.sigmoid(messages.mean(0)))
    torch.testing.assert_close(encoder(torch.tensor([3, 0, 3])), phi[[3, 0, 3]])


def test_relation_weighting_averages_each_relation_first():
    encoder = random_encoder(neighbor_weighting="relation")
    phi = encoder()
    for node in range(encoder.config.num_nodes):
        mine = encoder.edge_node == node
        relations, neighbors = encoder.edge_relation[mine], encoder.edge_neighbor[mine]
        messages = encoder.edge_messages(relations, neighbors)
        per_relation = [messages[relations == r].mean(0) for r in relations.unique()]
        torch.testing.assert_close(phi[node], torch.sigmoid(torch.stack(per_relation).mean(0)))
    torch.testing.assert_close(encoder(torch.tensor([5, 2, 5])), phi[[5, 2, 5]])


@pytest.mark.parametrize("weighting", ["uniform", "relation"])
def test_edge_weights_sum_to_one_per_node(weighting):
    encoder = random_encoder(neighbor_weighting=weighting)
    weights = encoder.edge_weights(encoder.edge_node, encoder.edge_relation, encoder.config.num_nodes)
    per_node = torch.zeros(encoder.config.num_nodes, dtype=weights.dtype).index_add_(0, encoder.edge_node, weights)
    torch.testing.assert_close(per_node, torch.ones_like(per_node))


def test_relation_weighting_gives_a_rare_relation_half_the_say():
    """One neighbour of relation 0 against 99 of relation 1: uniform gives it 1 %, relation weighting 50 %."""
    edges = (torch.zeros(100, dtype=torch.long), torch.tensor([0] + [1] * 99), torch.arange(100))
    for weighting, expected in (("uniform", 0.01), ("relation", 0.5)):
        encoder = KGConditionEncoder.from_knowledge_graph(
            torch.randn(100, 4), torch.randn(2, 4), *edges, num_nodes=1, neighbor_weighting=weighting
        )
        assert encoder.edge_weights(edges[0], edges[1], 1)[0].item() == pytest.approx(expected)


def test_unknown_neighbor_weighting_is_an_error():
    with pytest.raises(ValueError, match="neighbor_weighting"):
        random_encoder(neighbor_weighting="degree")


def test_experts_follow_eq_14_with_geoopt_math():
    import geoopt.manifolds.stereographic.math as sm

    encoder = random_encoder(use_hyperbolic=False, use_spherical=False)
    r, t = encoder.relation_embeddings[:2], encoder.entity_embeddings[:2]
    expected = encoder.mixture(encoder.message_norm(r * t))
    torch.testing.assert_close(encoder.edge_messages(torch.arange(2), torch.arange(2)), expected)

    encoder = random_encoder(use_euclidean=False, use_spherical=False)
    r, t = encoder.relation_embeddings[:2] * 0.1, encoder.entity_embeddings[:2] * 0.1  # inside the clip radius
    with torch.no_grad():
        encoder.relation_embeddings[:2] = r
        encoder.entity_embeddings[:2] = t
    k = torch.tensor(-1.0)
    expected = encoder.mixture(
        encoder.message_norm(sm.logmap0(sm.mobius_pointwise_mul(r, sm.expmap0(t, k=k), k=k), k=k))
    )
    torch.testing.assert_close(encoder.edge_messages(torch.arange(2), torch.arange(2)), expected)


def test_curvature_signs_cannot_flip_under_adam():
    encoder = random_encoder()
    optimiser = torch.optim.Adam([encoder.hyperbolic_curvature_raw, encoder.spherical_curvature_raw], lr=0.5)
    for _ in range(200):  # push c1 up and c2 down, i.e. towards flipping their signs
        optimiser.zero_grad()
        (encoder.spherical_curvature - encoder.hyperbolic_curvature).backward()
        optimiser.step()
    c1, c2 = float(encoder.hyperbolic_curvature), float(encoder.spherical_curvature)
    assert c1 < 0 < c2
    assert c1 > -1e-3 and c2 < 1e-3  # they did move all the way towards zero


@pytest.mark.parametrize("scale", [1e2, 1e5, 1e8])
def test_large_embeddings_give_finite_outputs_and_gradients(scale):
    encoder = random_encoder(scale=scale, train_embeddings=True)
    phi = encoder()
    assert torch.isfinite(phi).all()
    phi.sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_ablation_switches_change_the_model():
    full = random_encoder()
    assert full.mixture.in_features == 3 * 12
    for switch in ("use_euclidean", "use_hyperbolic", "use_spherical"):
        ablated = random_encoder(**{switch: False})
        assert ablated.mixture.in_features == 2 * 12
        assert not torch.allclose(ablated(), full())
    no_moe = random_encoder(use_geometry_moe=False)
    assert no_moe.mixture.in_features == 12
    # relation-blind: permuting relations changes nothing
    with torch.no_grad():
        before = no_moe()
        no_moe.edge_relation.copy_(no_moe.edge_relation.flip(0))
    torch.testing.assert_close(no_moe(), before)
    assert torch.count_nonzero(random_encoder(use_guidance=False)()) == 0
    with pytest.raises(ValueError, match="at least one expert"):
        random_encoder(use_euclidean=False, use_hyperbolic=False, use_spherical=False)


def test_frozen_or_trainable_embeddings():
    frozen = random_encoder(train_embeddings=False)
    frozen().sum().backward()
    assert frozen.entity_embeddings.grad is None and frozen.mixture.weight.grad is not None
    trained = random_encoder(train_embeddings=True)
    trained().sum().backward()
    assert trained.entity_embeddings.grad.abs().sum() > 0


def test_node_without_neighbours_is_an_error():
    with pytest.raises(ValueError, match="no knowledge-graph neighbours"):
        KGConditionEncoder.from_knowledge_graph(
            torch.randn(5, 4),
            torch.randn(2, 4),
            torch.tensor([0, 0]),
            torch.tensor([0, 1]),
            torch.tensor([3, 4]),
            num_nodes=2,
        )


def test_new_entity_condition_comes_from_its_relations_only():
    encoder = random_encoder()
    node = 2
    mine = encoder.edge_node == node
    relations, neighbors = encoder.edge_relation[mine], encoder.edge_neighbor[mine]
    phi_new = encoder.encode_neighbors(torch.zeros(len(relations), dtype=torch.long), relations, neighbors, 1)
    torch.testing.assert_close(phi_new[0], encoder(torch.tensor([node]))[0])


def test_save_and_load_keep_index_embeddings_and_curvatures(tmp_path):
    encoder = random_encoder(train_embeddings=True)
    with torch.no_grad():
        encoder.hyperbolic_curvature_raw.fill_(0.3)
    encoder.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = KGConditionEncoder.from_pretrained(tmp_path)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded(), encoder())


def test_built_from_a_knowledge_graph_index():
    kg = KnowledgeGraph.from_triples(
        [("Sensor/a", "near", "Sensor/b"), ("POI/1", "PLA", "Sensor/a"), ("Sensor/b", "on", "Road/x")]
    )
    node_index, relation_id, neighbor_id = kg.neighbor_index(["Sensor/a", "Sensor/b"])
    assert sorted(zip(node_index.tolist(), relation_id.tolist(), neighbor_id.tolist())) == sorted(
        [
            (0, kg.relation_id("near"), kg.entity_id("Sensor/b")),
            (0, kg.relation_id("PLA") + kg.num_relations, kg.entity_id("POI/1")),
            (1, kg.relation_id("on"), kg.entity_id("Road/x")),
            (1, kg.relation_id("near") + kg.num_relations, kg.entity_id("Sensor/a")),
        ]
    )
    encoder = KGConditionEncoder.from_knowledge_graph(
        torch.randn(kg.num_entities, 4),
        torch.randn(2 * kg.num_relations, 4),
        torch.from_numpy(node_index),
        torch.from_numpy(relation_id),
        torch.from_numpy(neighbor_id),
        2,
        condition_dim=3,
    )
    assert encoder().shape == (2, 3)


def test_mobius_pointwise_experts_reduce_to_the_euclidean_one_below_the_clip_radius():
    """Documents a property of eq. 14 as published: log_0(r (x)_c exp_0(t)) = r * t for any curvature c."""
    encoder = random_encoder()
    r = encoder.relation_embeddings[:4] * 0.3
    t = encoder.entity_embeddings[:4] * 0.3
    for geometry in ("hyperbolic", "spherical"):
        torch.testing.assert_close(encoder._geometric_message(r, t, geometry), r * t, atol=1e-5, rtol=1e-4)
    big = encoder.entity_embeddings[:4] * 100  # past the clip radius the experts do differ
    assert not torch.allclose(encoder._geometric_message(r, big, "hyperbolic"), r * big)
