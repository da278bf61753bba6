"""TuckER pretraining: sparse 1-N training, filtered ranking, embedding files, the script."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kgdiff_diffusers.kg.graph import KnowledgeGraph
from kgdiff_diffusers.kg.tucker import (
    KnownTails,
    TuckER,
    evaluate_link_prediction,
    load_kg_embeddings,
    one_to_n_loss,
    pretrain_tucker,
    read_triples_tsv,
    save_kg_embeddings,
    split_held_out,
    with_reciprocals,
)

REPO = Path(__file__).resolve().parents[1]
NYC_TRIPLES = REPO.parent / "shared" / "data" / "nyc_bike_manhattan69" / "urban_kg_triples.tsv.gz"


def clustered_kg(num_clusters: int = 8, cluster_size: int = 25, seed: int = 0) -> KnowledgeGraph:
    """Members in clusters: each belongs to its cluster hub, is near 3 cluster-mates and has the
    cluster's category; hubs form a ring. Held-out links are predictable from the cluster structure."""
    rng = np.random.default_rng(seed)
    triples = []
    for c in range(num_clusters):
        members = [f"Member/{c}_{i}" for i in range(cluster_size)]
        triples.append((f"Cluster/{c}", "next", f"Cluster/{(c + 1) % num_clusters}"))
        for i, member in enumerate(members):
            triples.append((member, "in_cluster", f"Cluster/{c}"))
            triples.append((member, "has_category", f"Category/{c % 4}"))
            others = [j for j in range(cluster_size) if j != i]
            triples.extend((member, "near", members[j]) for j in rng.choice(others, 3, replace=False))
    return KnowledgeGraph.from_triples(triples)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~50x slower with 2 OpenMP threads when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread):
    kg = clustered_kg()
    result = pretrain_tucker(
        kg,
        embedding_dim=32,
        epochs=100,
        batch_size=64,
        learning_rate=0.01,
        held_out_fraction=0.2,
        patience=100,
        show_progress=False,
    )
    return kg, result


def test_tucker_learns_held_out_links_far_above_random(trained):
    kg, result = trained
    metrics = result.metrics
    assert metrics["num_test"] >= 40 and metrics["num_valid"] >= 40
    assert metrics["num_train"] + metrics["num_valid"] + metrics["num_test"] == len(kg.triples)
    assert 0.0 < metrics["random_mrr"] < 0.05
    assert metrics["mrr"] > 5 * metrics["random_mrr"]
    assert metrics["hits@1"] <= metrics["hits@3"] <= metrics["hits@10"]
    assert metrics["hits@10"] > 0.35


def test_embedding_shapes_follow_the_graph(trained):
    kg, result = trained
    assert result.entity_embeddings.shape == (kg.num_entities, 32)
    assert result.relation_embeddings.shape == (2 * kg.num_relations, 32)
    assert result.entity_embeddings.dtype == np.float32 == result.relation_embeddings.dtype
    assert np.isfinite(result.entity_embeddings).all() and np.isfinite(result.relation_embeddings).all()


def test_step_budget_stops_mid_epoch_and_repeats_exactly():
    kg = clustered_kg(num_clusters=4, cluster_size=10)
    options = dict(embedding_dim=8, batch_size=16, held_out_fraction=0.2, patience=50, show_progress=False)
    first, again = (pretrain_tucker(kg, epochs=50, max_steps=7, **options) for _ in range(2))
    steps_per_epoch = pretrain_tucker(kg, epochs=1, **options).metrics["steps"]
    assert 7 % steps_per_epoch != 0  # the budget ends inside an epoch, which is still validated
    assert first.metrics["steps"] == 7 and first.metrics["stopped_by"] == "max_steps"
    assert first.metrics["epochs"] == 7 // steps_per_epoch + 1 and first.metrics["valid_mrr"] is not None
    np.testing.assert_array_equal(first.entity_embeddings, again.entity_embeddings)
    np.testing.assert_array_equal(first.relation_embeddings, again.relation_embeddings)
    unlimited = pretrain_tucker(kg, epochs=2, **options).metrics
    assert unlimited["steps"] == 2 * steps_per_epoch and unlimited["stopped_by"] == "epochs"
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        pretrain_tucker(kg, max_steps=0, **options)
    for seconds in (-5.0, 0.0, float("nan")):  # would train one step and save the embeddings as if trained
        with pytest.raises(ValueError, match="max_seconds must be > 0"):
            pretrain_tucker(kg, max_seconds=seconds, **options)


def test_split_held_out_keeps_every_entity_and_relation_in_training():
    kg = clustered_kg(seed=1)
    train, held_out = split_held_out(kg.triples, 0.3, seed=3)
    assert len(held_out) > 0.2 * len(kg.triples)
    assert len(train) + len(held_out) == len(kg.triples)
    assert set(np.unique(train[:, [0, 2]])) == set(range(kg.num_entities))
    assert set(np.unique(train[:, 1])) == set(range(kg.num_relations))
    again_train, again_held = split_held_out(kg.triples, 0.3, seed=3)
    assert np.array_equal(again_held, held_out) and np.array_equal(again_train, train)
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_held_out(kg.triples, 1.0)


def test_known_tails_entries_match_brute_force():
    rng = np.random.default_rng(0)
    triples = np.unique(rng.integers(0, [30, 3, 30], size=(200, 3)), axis=0)
    index = KnownTails(with_reciprocals(triples, 3), 30, 6)
    pair_ids = rng.permutation(index.num_pairs)[:20]
    rows, tails = index.entries(pair_ids)
    heads, relations = index.pairs(pair_ids)
    full = with_reciprocals(triples, 3)
    for i, (h, r) in enumerate(zip(heads, relations)):
        expected = set(full[(full[:, 0] == h) & (full[:, 1] == r), 2])
        assert set(tails[rows == i]) == expected and (rows == i).sum() == len(expected)
    assert np.array_equal(index.find(heads, relations), pair_ids)
    with pytest.raises(KeyError):
        index.find(np.array([31]), np.array([0]))


def test_one_to_n_loss_equals_dense_label_smoothed_bce():
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 4
    rows, tails = torch.tensor([0, 0, 2, 5, 5, 5]), torch.tensor([1, 7, 39, 0, 3, 4])
    dense = torch.zeros(6, 40)
    dense[rows, tails] = 1.0
    expected = F.binary_cross_entropy_with_logits(logits, 0.85 * dense + 1.0 / 40)
    torch.testing.assert_close(one_to_n_loss(logits, rows, tails, 0.15), expected)


class FixedScores(TuckER):
    """A scorer returning a fixed score row per (head, relation) pair, zeros otherwise."""

    def __init__(self, num_entities: int, scores: dict[tuple[int, int], list[float]]) -> None:
        super().__init__(num_entities, 2, embedding_dim=2)
        self.scores = scores

    def forward(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        zeros = [0.0] * self.entity.num_embeddings
        return torch.tensor([self.scores.get((int(h), int(r)), zeros) for h, r in zip(heads, relations)])


def test_ranking_is_filtered_over_both_directions_with_half_ties():
    triples = np.array([[0, 0, 1], [0, 0, 2]])
    known = KnownTails(with_reciprocals(triples, 1), 5, 2)
    model = FixedScores(5, {(0, 0): [0.0, 0.5, 0.9, 0.1, 0.7]})
    metrics = evaluate_link_prediction(model, triples, known, num_relations=1)
    # (0,0,1): entity 2 (0.9) is a known answer and filtered, entity 4 (0.7) is not -> rank 2;
    # (0,0,2): rank 1; head queries (1,inv,0) and (2,inv,0): all 5 scores tie -> rank 1 + 4/2 = 3.
    assert metrics["num_queries"] == 4
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3 + 1 / 3) / 4)
    assert metrics["hits@1"] == 0.25 and metrics["hits@3"] == 1.0
    harmonic = np.cumsum(1 / np.arange(1, 6))
    assert metrics["random_mrr"] == pytest.approx((2 * harmonic[3] / 4 + 2 * harmonic[4] / 5) / 4)


def test_huge_entity_table_trains_with_batch_sized_memory():
    num_entities = 200_000
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, 50, 300), rng.integers(0, 2, 300), rng.integers(0, 50, 300)], axis=1)
    kg = KnowledgeGraph([f"E/{i}" for i in range(num_entities)], ["a", "b"], np.unique(triples, axis=0))
    # a dense (pairs x entities) or (entities x entities) label matrix would need >= 20 GB / 160 GB here
    result = pretrain_tucker(kg, embedding_dim=8, epochs=1, batch_size=64, show_progress=False)
    assert result.entity_embeddings.shape == (num_entities, 8)
    assert np.isfinite(result.metrics["mrr"])


def test_save_load_round_trip_is_bit_exact(tmp_path, trained):
    kg, result = trained
    path = tmp_path / "kg_embeddings.safetensors"
    save_kg_embeddings(path, result.entity_embeddings, result.relation_embeddings, metadata=result.metrics)
    entities, relations = load_kg_embeddings(path, kg)
    assert np.array_equal(entities, result.entity_embeddings)
    assert np.array_equal(relations, result.relation_embeddings)
    with pytest.raises(ValueError, match="pretrain the embeddings on this graph again"):
        load_kg_embeddings(path, clustered_kg(num_clusters=3))


def test_bad_embedding_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain_kg.py"):
        load_kg_embeddings(tmp_path / "absent.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_kg_embeddings(corrupt)
    from safetensors.numpy import save_file

    save_file({"entity_embeddings": np.zeros((3, 4), np.float32)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(KeyError, match="relation_embeddings"):
        load_kg_embeddings(tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="dims must be equal"):
        save_kg_embeddings(tmp_path / "x.safetensors", np.zeros((3, 4)), np.zeros((2, 5)))


def test_read_triples_tsv_skips_header_and_rejects_bad_lines(tmp_path):
    path = tmp_path / "kg.tsv.gz"
    with gzip.open(path, "wt") as f:
        f.write("head\trelation\ttail\nArea/4\tANA\tArea/79\nPOI/1\tPLA\tArea/4\nArea/4\tANA\tArea/79\n")
    kg = read_triples_tsv(path)
    assert kg.entities == ["Area/4", "Area/79", "POI/1"] and kg.relations == ["ANA", "PLA"]
    assert len(kg.triples) == 2
    bad = tmp_path / "bad.tsv"
    bad.write_text("Area/4\tANA\tArea/79\nArea/4 ANA Area/80\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        read_triples_tsv(bad)


@pytest.mark.skipif(not NYC_TRIPLES.is_file(), reason="../shared/data/nyc_bike_manhattan69 is absent")
def test_reads_the_nyc_urban_kg():
    kg = read_triples_tsv(NYC_TRIPLES)
    assert (kg.num_entities, kg.num_relations, len(kg.triples)) == (47_915, 7, 80_124)
    assert all(kg.has_entity(f"Area/{zone}") for zone in (4, 79, 148))


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_kg", REPO / "scripts" / "pretrain_kg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_embeddings_into_a_prepared_dataset_and_refuses_overwrite(tmp_path):
    kg = clustered_kg(num_clusters=4, cluster_size=10)
    kg.save(tmp_path / "dataset" / "kg")
    script = load_script()
    argv = ["--kg", str(tmp_path / "dataset"), "--embedding_dim", "16", "--epochs", "3", "--batch_size", "32"]
    metrics = script.main(argv)
    entities, relations = load_kg_embeddings(tmp_path / "dataset" / "kg_embeddings.safetensors", kg)
    assert entities.shape == (kg.num_entities, 16) and relations.shape == (2 * kg.num_relations, 16)
    written = json.loads((tmp_path / "dataset" / "kg_embeddings.metrics.json").read_text())
    assert written["mrr"] == pytest.approx(metrics["mrr"]) and written["epochs"] == 3
    with pytest.raises(FileExistsError, match="--overwrite"):
        script.main(argv)
    script.main([*argv, "--overwrite"])
    with pytest.raises(ValueError, match="--output is required"):
        script.main(["--kg", str(tmp_path / "dataset" / "kg")])
