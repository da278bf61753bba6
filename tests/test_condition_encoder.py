import importlib.util
from pathlib import Path

import geoopt.manifolds.stereographic.math as sm
import pytest
import torch

from kgdiff_diffusers import KGConditionEncoder
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.kg.graph import KnowledgeGraph
from kgdiff_diffusers.kg.tucker import pretrain_tucker
from kgdiff_diffusers.models.condition_encoder import GEOMETRY_FORMS
from kgdiff_diffusers.training import KGDiffModelConfig, build_pipeline


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


def relative_difference(a, b):
    return float((a - b).norm() / b.norm())


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
    c1, c2 = encoder.hyperbolic_curvature.item(), encoder.spherical_curvature.item()
    assert c1 < 0 < c2
    assert c1 > -1e-3 and c2 < 1e-3  # they did move all the way towards zero


@pytest.mark.parametrize("scale", [1e2, 1e5, 1e8])
@pytest.mark.parametrize("form", GEOMETRY_FORMS)
def test_large_embeddings_give_finite_outputs_and_gradients(scale, form):
    encoder = random_encoder(scale=scale, train_embeddings=True, geometry_form=form)
    phi = encoder()
    assert torch.isfinite(phi).all()
    phi.sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("form", GEOMETRY_FORMS)
def test_ablation_switches_change_the_model(form):
    full = random_encoder(geometry_form=form)
    assert full.mixture.in_features == 3 * 12
    for switch in ("use_euclidean", "use_hyperbolic", "use_spherical"):
        ablated = random_encoder(geometry_form=form, **{switch: False})
        assert ablated.mixture.in_features == 2 * 12
        assert not torch.allclose(ablated(), full())
    no_moe = random_encoder(use_geometry_moe=False, geometry_form=form)
    assert no_moe.mixture.in_features == 12
    # relation-blind: permuting relations changes nothing
    with torch.no_grad():
        before = no_moe()
        no_moe.edge_relation.copy_(no_moe.edge_relation.flip(0))
    torch.testing.assert_close(no_moe(), before)
    assert torch.count_nonzero(random_encoder(use_guidance=False, geometry_form=form)()) == 0
    with pytest.raises(ValueError, match="at least one expert"):
        random_encoder(use_euclidean=False, use_hyperbolic=False, use_spherical=False, geometry_form=form)


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


@pytest.mark.parametrize("form", GEOMETRY_FORMS)
def test_new_entity_condition_comes_from_its_relations_only(form):
    encoder = random_encoder(geometry_form=form)
    node = 2
    mine = encoder.edge_node == node
    relations, neighbors = encoder.edge_relation[mine], encoder.edge_neighbor[mine]
    phi_new = encoder.encode_neighbors(torch.zeros(len(relations), dtype=torch.long), relations, neighbors, 1)
    torch.testing.assert_close(phi_new[0], encoder(torch.tensor([node]))[0])


@pytest.mark.parametrize("form", GEOMETRY_FORMS)
def test_save_and_load_keep_index_embeddings_and_curvatures(tmp_path, form):
    encoder = random_encoder(train_embeddings=True, geometry_form=form)
    with torch.no_grad():
        encoder.hyperbolic_curvature_raw.fill_(0.3)
        for translation in getattr(encoder, "translations", {}).values():
            translation.mul_(3.0)
    encoder.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = KGConditionEncoder.from_pretrained(tmp_path)
    assert loaded.config.geometry_form == form
    assert loaded.state_dict().keys() == encoder.state_dict().keys()
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


def test_as_published_is_the_default_and_eq_14_bit_for_bit():
    """The published form is computed exactly as eq. 14-15 (same geoopt calls, same order: equal bits)."""
    encoder = random_encoder(scale=0.3)
    assert encoder.config.geometry_form == "as_published"
    assert not hasattr(encoder, "translations") and "entity_unit" not in encoder.state_dict()
    r, t = encoder.relation_embeddings[encoder.edge_relation], encoder.entity_embeddings[encoder.edge_neighbor]
    parts = [r * t]
    for k, radius in ((encoder.hyperbolic_curvature, 3.0), (encoder.spherical_curvature, 0.49 * torch.pi)):
        norm = t.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        point = sm.expmap0(t * torch.clamp(radius / k.abs().sqrt() / norm, max=1.0), k=k)
        parts.append(sm.logmap0(sm.mobius_pointwise_mul(r, point, k=k), k=k))
    messages = encoder.mixture(encoder.message_norm(torch.cat(parts, dim=-1)))
    weights = 1.0 / torch.bincount(encoder.edge_node)[encoder.edge_node]
    expected = torch.zeros(7, 8).index_add_(0, encoder.edge_node, messages * weights.unsqueeze(-1))
    assert torch.equal(encoder(), torch.sigmoid(expected))
    assert torch.equal(random_encoder(scale=0.3, geometry_form="as_published")(), encoder())


def test_unknown_geometry_form_is_an_error():
    with pytest.raises(ValueError, match="geometry_form must be one of"):
        random_encoder(geometry_form="murp")
    with pytest.raises(ValueError, match="expert_summaries belongs to geometry_form='translated'"):
        encoder = random_encoder()
        encoder.expert_summaries(encoder.edge_node, encoder.edge_relation, encoder.edge_neighbor, 7)
    with pytest.raises(ValueError, match="edge_messages belongs to geometry_form='as_published'"):
        random_encoder(geometry_form="translated").edge_messages(torch.arange(2), torch.arange(2))


def summaries_of(encoder):
    return encoder.expert_summaries(encoder.edge_node, encoder.edge_relation, encoder.edge_neighbor, 7)


@pytest.mark.parametrize("scale", [1e-2, 1.0])
def test_translated_experts_differ_from_the_euclidean_one_and_follow_the_curvature(scale):
    """At TuckER-like (1e-2 per entry) and unit scales, H and S are not E in disguise (they are in eq. 14)."""
    encoder = random_encoder(scale=scale, geometry_form="translated")
    with torch.no_grad():  # the same relation translations for every expert: only the geometry differs
        encoder.translations["hyperbolic"].copy_(encoder.translations["euclidean"])
        encoder.translations["spherical"].copy_(encoder.translations["euclidean"])
    summaries = summaries_of(encoder)
    for geometry in ("hyperbolic", "spherical"):
        assert relative_difference(summaries[geometry], summaries["euclidean"]) > 0.1, geometry
    with torch.no_grad():
        encoder.hyperbolic_curvature_raw.add_(1.0)
        encoder.spherical_curvature_raw.add_(1.0)
    changed = summaries_of(encoder)
    for geometry in ("hyperbolic", "spherical"):
        assert relative_difference(changed[geometry], summaries[geometry]) > 0.05, geometry
    torch.testing.assert_close(changed["euclidean"], summaries["euclidean"])
    published = random_encoder(scale=0.1)  # below the clip radius
    r = published.relation_embeddings[published.edge_relation]
    t = published.entity_embeddings[published.edge_neighbor]
    for geometry in ("hyperbolic", "spherical"):  # the published experts: E within float noise
        assert relative_difference(published._geometric_message(r, t, geometry), r * t) < 1e-3


@pytest.mark.parametrize("weighting", ["uniform", "relation"])
def test_translated_experts_are_mobius_translations_and_gyromidpoints(weighting):
    """Per node: the translated points (geoopt's mobius_pointwise_mul and mobius_add) and their weighted
    gyromidpoint (geoopt's dense weighted_midpoint) agree with the sparse scatter implementation."""
    encoder = random_encoder(scale=0.05, geometry_form="translated", neighbor_weighting=weighting)
    with torch.no_grad():  # tails of norm ~1/4 in the encoder's units: no point is clipped to the hemisphere
        encoder.entity_embeddings.mul_(0.5)
    summaries = summaries_of(encoder)
    weights = encoder.edge_weights(encoder.edge_node, encoder.edge_relation, 7)
    r = encoder.relation_embeddings[encoder.edge_relation] / encoder.relation_unit
    t = encoder.entity_embeddings[encoder.edge_neighbor] / encoder.entity_unit
    for node in range(7):
        mine = encoder.edge_node == node
        b = encoder.translations["euclidean"][encoder.edge_relation[mine]]
        torch.testing.assert_close(summaries["euclidean"][node], (weights[mine, None] * (r[mine] * t[mine] + b)).sum(0))
        for geometry in ("hyperbolic", "spherical"):
            k = encoder.curvature(geometry)
            shift = sm.expmap0(encoder.translations[geometry][encoder.edge_relation[mine]], k=k)
            points = sm.mobius_add(sm.mobius_pointwise_mul(r[mine], sm.expmap0(t[mine], k=k), k=k), shift, k=k)
            midpoint = sm.weighted_midpoint(points, weights[mine], k=k, reducedim=[0])
            torch.testing.assert_close(summaries[geometry][node], sm.logmap0(midpoint, k=k), atol=1e-5, rtol=1e-4)
    assert relative_difference(summaries["hyperbolic"], summaries["euclidean"]) > 0.1


def test_translated_form_does_not_depend_on_the_embeddings_scale():
    """Tails and relations are measured in units of their root-mean-square size, set from the embeddings."""
    small, large = (random_encoder(scale=s, geometry_form="translated") for s in (1e-3, 10.0))
    torch.testing.assert_close(large.entity_unit / small.entity_unit, torch.tensor(1e4))
    torch.testing.assert_close(small(), large())


@pytest.mark.parametrize("norm", [1e-3, 1.0, 30.0, 1e3])
def test_translated_form_is_finite_for_embedding_norms_up_to_1e3(norm):
    """Norms relative to the units (e.g. embeddings that grew while fine-tuned), and long translations."""
    encoder = random_encoder(train_embeddings=True, geometry_form="translated")
    with torch.no_grad():
        for table in (encoder.entity_embeddings, encoder.relation_embeddings, *encoder.translations.values()):
            table.mul_(norm / table.norm(dim=-1, keepdim=True))
    phi = encoder()
    assert torch.isfinite(phi).all()
    phi.sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    for geometry, summary in summaries_of(encoder).items():
        assert torch.isfinite(summary).all(), geometry
    # spherical means stay in the hemisphere around 0: tangent length at most pi / 4 / sqrt(c2)
    assert summaries_of(encoder)["spherical"].norm(dim=-1).max() <= torch.pi / 4 / encoder.spherical_curvature.sqrt()


def test_geometry_form_reaches_the_encoder_from_the_train_script(tmp_path):
    spec = importlib.util.spec_from_file_location("train_script", Path(__file__).parents[1] / "scripts" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    required = ["--dataset", "synthetic-city", "--output_dir", str(tmp_path)]
    assert train.model_config(train.parse_args(required)).geometry_form == "as_published"
    config = train.model_config(train.parse_args([*required, "--geometry_form", "translated"]))
    assert config.geometry_form == "translated"
    with pytest.raises(SystemExit):
        train.parse_args([*required, "--geometry_form", "murp"])

    data, kg = make_synthetic_city(num_nodes=12, num_days=8, seed=0)
    tucker = pretrain_tucker(kg, embedding_dim=8, epochs=1, show_progress=False)
    dataset = prepare_dataset(
        data, kg, "tiny", entity_embeddings=tucker.entity_embeddings, relation_embeddings=tucker.relation_embeddings
    )
    small = dict(condition_dim=8, block_out_channels=(8, 16), norm_num_groups=4, meta_pattern_hidden_dim=8)
    pipe = build_pipeline(dataset, KGDiffModelConfig(geometry_form="translated", **small))
    encoder = pipe.condition_encoder
    assert encoder.config.geometry_form == "translated"
    tails = torch.from_numpy(tucker.entity_embeddings)
    torch.testing.assert_close(encoder.entity_unit, 2 * tails.pow(2).sum(-1).mean().sqrt())
    assert torch.isfinite(encoder()).all()
