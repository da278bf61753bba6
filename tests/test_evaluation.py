"""kgdiff_diffusers.evaluation and scripts/evaluate.py on a tiny synthetic city with an untrained pipeline."""

import dataclasses
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import PreparedDataset, prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.evaluation import (
    MODEL_NAME,
    best_value,
    check_pipeline_matches,
    evaluate_baselines,
    evaluate_pipeline,
    generate_for_nodes,
    markdown_table,
    new_node_neighbors,
    training_split_note,
    use_sampler,
    with_training_split,
)
from kgdiff_diffusers.kg.tucker import pretrain_tucker
from kgdiff_diffusers.metrics import evaluate_nodes
from kgdiff_diffusers.training import KGDiffModelConfig, build_pipeline

ROOT = Path(__file__).resolve().parents[1]
BASELINES = {"global_mean_profile", "random_training_days"} | {
    f"knn{k}_{kind}" for k in (1, 3, 5) for kind in ("profile", "days")
}
METRICS = ("mae", "rmse", "mmd", "mmd_fixed_bandwidth", "jsd", "crps", "spread_ratio", "out_of_range")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def build_tiny_folders(folder: Path) -> tuple[PreparedDataset, Path, Path]:
    """A 16-sensor, 10-day synthetic city (8 weekdays, 4 test nodes) and an untrained small pipeline."""
    data, kg = make_synthetic_city(num_nodes=16, num_days=10, seed=0)
    tucker = pretrain_tucker(kg, embedding_dim=16, epochs=2, show_progress=False)
    dataset = prepare_dataset(data, kg, "tiny_city", entity_embeddings=tucker.entity_embeddings,
                              relation_embeddings=tucker.relation_embeddings)
    # one test node loses days, so nodes have different numbers of real days
    dataset.day_mask[dataset.test_rows[1], :3] = False
    dataset.days[dataset.test_rows[1], :3] = 0.0
    pipe = build_pipeline(dataset, KGDiffModelConfig(
        condition_dim=16, block_out_channels=(16, 32), norm_num_groups=8, num_train_timesteps=20,
        meta_pattern_hidden_dim=32,
    ))
    data_dir, model_dir = folder / "data", folder / "model"
    dataset.save(data_dir)
    pipe.save_pretrained(model_dir)
    return dataset, data_dir, model_dir


def load_script(name: str):
    """Imports ``scripts/<name>.py`` as a module (for in-process calls of its functions)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    dataset, data_dir, model_dir = build_tiny_folders(tmp_path_factory.mktemp("tiny"))
    from kgdiff_diffusers import KGDiffPipeline

    pipe = KGDiffPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return dataset, pipe, data_dir, model_dir


@pytest.mark.slow
def test_evaluate_script_writes_metrics_samples_report_and_pictures(tiny, tmp_path):
    dataset, _, data_dir, model_dir = tiny
    out, samples = tmp_path / "eval", tmp_path / "eval" / "samples.npz"
    result = run_script("scripts/evaluate.py", "--model", str(model_dir), "--data", str(data_dir),
                        "--output_dir", str(out), "--num_inference_steps", "3", "--sampler", "ddim",
                        "--save_samples", str(samples))
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(f"| {method} |" in result.stdout for method in BASELINES | {MODEL_NAME})

    metrics = json.loads((out / "metrics.json").read_text())
    test_rows = dataset.test_rows
    assert metrics["dataset"] == "tiny_city" and metrics["split"] == "test"
    assert metrics["test_node_ids"] == dataset.test_node_ids
    assert metrics["num_test_nodes"] == len(test_rows) == 4
    assert (metrics["sampler"], metrics["num_inference_steps"]) == ("ddim", 3)
    assert "mmd_bandwidth" in metrics and metrics["jsd_bins"] == 50
    assert set(metrics["methods"]) == BASELINES | {MODEL_NAME}
    for scores in metrics["methods"].values():
        assert all(isinstance(scores[name], float) and math.isfinite(scores[name]) for name in METRICS)
        assert 0.0 <= scores["jsd"] <= math.log(2) and 0.0 <= scores["mmd"] <= 10.0
        assert scores["rmse"] >= scores["mae"] > 0.0
        assert scores["crps"] > 0.0 and scores["spread_ratio"] >= 0.0 and 0.0 <= scores["out_of_range"] <= 1.0
    assert metrics["lower_bound"] == [0.0]  # synthetic counts are never negative
    for profile in ("global_mean_profile", "knn3_profile"):  # a repeated day has no day-to-day spread
        assert metrics["methods"][profile]["spread_ratio"] == 0.0

    # the global-mean baseline's MAE, computed here from the dataset alone
    train_days = dataset.days[dataset.train_rows][dataset.day_mask[dataset.train_rows]]
    profile = train_days.astype(np.float64).mean(axis=0)
    expected = np.mean([
        np.abs(dataset.days[row][dataset.day_mask[row]].astype(np.float64).mean(axis=0) - profile).mean()
        for row in test_rows
    ])
    assert metrics["methods"]["global_mean_profile"]["mae"] == pytest.approx(expected, rel=1e-6)

    with np.load(samples) as npz:
        arrays = {key: npz[key] for key in npz.files}
    assert arrays["node_ids"].tolist() == dataset.test_node_ids
    np.testing.assert_array_equal(arrays["real"], dataset.days[test_rows])
    np.testing.assert_array_equal(arrays["real_mask"], dataset.day_mask[test_rows])
    counts = dataset.day_mask[test_rows].sum(axis=1)
    assert counts.tolist() == [8, 5, 8, 8]
    assert arrays["generated"].shape == (4, 8, 48, 1)
    np.testing.assert_array_equal(arrays["generated_mask"].sum(axis=1), counts)
    generated, generated_mask = arrays["generated"], arrays["generated_mask"]  # 5 days, then NaN, for the node of 5
    assert np.isfinite(generated[generated_mask]).all() and np.isnan(generated[~generated_mask]).all()
    # anyone can recompute the model's metrics from the samples file
    recomputed = evaluate_nodes(arrays["generated"], arrays["real"], arrays["real_mask"],
                                arrays["generated_mask"], jsd_range=metrics["jsd_range"],
                                lower_bound=metrics["lower_bound"])
    for name in METRICS:
        assert recomputed[name] == pytest.approx(metrics["methods"][MODEL_NAME][name], rel=1e-9)

    report = (out / "report.md").read_text()
    assert "| method | MAE | RMSE | MMD | MMD-fixed | JSD | CRPS | spread ratio | out of range |" in report
    assert "Spread ratio: std of generated days" in report
    assert all(f"| {method} |" in report for method in BASELINES | {MODEL_NAME})
    assert "`ddim` with 3 inference steps" in report and "bw0" in report
    assert all(f"`{node_id}`" in report for node_id in dataset.test_node_ids)
    for picture in ("daily_profiles.png", "value_kde.png", "tsne.png"):
        content = (out / picture).read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 10_000

    evaluate = load_script("evaluate")
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate.main(["--model", str(model_dir), "--data", str(data_dir), "--output_dir", str(out)])


def test_generate_for_nodes_masks_counts_and_is_seeded(tiny):
    dataset, pipe, _, _ = tiny
    node_ids = dataset.test_node_ids[:3]
    scheduler = pipe.scheduler
    generated, mask = generate_for_nodes(pipe, node_ids, [2, 3, 1], num_inference_steps=3, sampler="dpm++")
    assert pipe.scheduler is scheduler
    assert generated.shape == (3, 3, 48, 1) and generated.dtype == np.float32
    np.testing.assert_array_equal(mask, [[True, True, False], [True, True, True], [True, False, False]])
    assert np.isfinite(generated[mask]).all() and np.isnan(generated[~mask]).all()
    again, _ = generate_for_nodes(pipe, node_ids, [2, 3, 1], num_inference_steps=3, sampler="dpm++")
    np.testing.assert_array_equal(generated, again)
    other, _ = generate_for_nodes(pipe, node_ids, [2, 3, 1], num_inference_steps=3, sampler="dpm++", seed=1)
    assert not np.allclose(generated[mask], other[mask])
    # one number of days for all: one call with the seed, as the pipeline gives it
    same, full = generate_for_nodes(pipe, node_ids, 2, num_inference_steps=3, sampler="dpm++", seed=4)
    assert full.all()
    use_sampler(pipe, "dpm++")
    direct = pipe(node_ids=node_ids, num_samples=2, num_inference_steps=3, generator=torch.Generator().manual_seed(4))
    pipe.scheduler = scheduler
    np.testing.assert_array_equal(same, direct.series)
    with pytest.raises(ValueError, match="num_samples"):
        generate_for_nodes(pipe, node_ids, [2, 0, 1], num_inference_steps=3)
    with pytest.raises(ValueError, match="one per node"):
        generate_for_nodes(pipe, node_ids, [2, 1], num_inference_steps=3)


def test_a_node_with_fewer_days_gets_a_whole_mean_matched_set(tiny):
    dataset, _, _, model_dir = tiny
    pipe = KGDiffPipeline.from_pretrained(model_dir)  # not the shared one: its config changes here
    pipe.set_progress_bar_config(disable=True)
    node_ids = dataset.test_node_ids[:2]
    pipe.register_to_config(start_strength=0.0, level_exponent=1.0, random_donor_share=0.0, level_noise=0.0,
                            match_donor_mean=True, mean_match_strength=1.0)
    generated, mask = generate_for_nodes(pipe, node_ids, [3, 7], num_inference_steps=3, sampler="ddim")
    prior, rows = pipe.donor_prior, torch.tensor([pipe._row_of_node[n] for n in node_ids])
    expected = pipe._to_data_units(prior.expected_donor_day(prior.candidate_index[rows], prior(rows)[0], 1.0)).numpy()
    for node, count in enumerate((3, 7)):
        days = generated[node, :count]
        if (days > 0).all():  # no clipped value: the set's mean is exactly the expected donor day
            np.testing.assert_allclose(days.mean(axis=0), expected[node], rtol=1e-4, atol=1e-3)
    assert (generated[0, :3] > 0).all()  # the node with fewer days is checked, not skipped


def test_evaluate_pipeline_caps_days_per_node(tiny):
    dataset, pipe, _, _ = tiny
    result = evaluate_pipeline(pipe, dataset, num_inference_steps=2, include_baselines=False,
                               max_days_per_node=3, seed=5)
    valid = dataset.day_mask[dataset.test_rows]
    assert result.real_mask.sum(axis=1).tolist() == [3, 3, 3, 3]
    assert not (result.real_mask & ~valid).any()
    assert result.generated.shape == (4, 3, 48, 1) and result.generated_mask.all()
    assert set(result.metrics["methods"]) == {MODEL_NAME} and result.metrics["num_real_days"] == 12
    again = evaluate_pipeline(pipe, dataset, num_inference_steps=2, include_baselines=False,
                              max_days_per_node=3, seed=5)
    np.testing.assert_array_equal(result.real_mask, again.real_mask)
    assert result.metrics == again.metrics


def test_validation_split_is_evaluated_and_baselines_alone_match(tiny):
    dataset, pipe, _, _ = tiny
    split = dataset.with_split(dataset.test_node_ids, dataset.train_node_ids[:3])
    result = evaluate_pipeline(pipe, split, num_inference_steps=2, max_days_per_node=3, split="validation", seed=2)
    assert result.metrics["split"] == "validation"
    assert result.node_ids == result.metrics["test_node_ids"] == dataset.train_node_ids[:3]
    assert not set(result.node_ids) & set(dataset.test_node_ids)
    alone = evaluate_baselines(split, split="validation", seed=2, max_days_per_node=3)
    assert alone["test_node_ids"] == result.node_ids and MODEL_NAME not in alone["methods"]
    for name, scores in alone["methods"].items():
        assert scores == result.metrics["methods"][name]
    # the donors are the remaining train nodes only: never a validation or test node
    donors = split.train_rows
    assert len(donors) == len(dataset.train_rows) - 3
    profile = split.days[donors][split.day_mask[donors]].astype(np.float64).mean(axis=0)
    real_mask = result.real_mask
    expected = np.mean([np.abs(result.real[n][real_mask[n]].mean(axis=0) - profile).mean() for n in range(3)])
    assert alone["methods"]["global_mean_profile"]["mae"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate_baselines(split, split="valid")


def test_knn_baselines_that_need_more_training_nodes_than_there_are_are_left_out(tiny, caplog):
    dataset, pipe, _, _ = tiny
    split = dataset.with_split(dataset.test_node_ids, dataset.train_node_ids[4:])  # 4 training nodes remain
    with caplog.at_level(logging.WARNING):
        result = evaluate_pipeline(pipe, split, num_inference_steps=2, max_days_per_node=3, seed=1)
    assert set(result.metrics["methods"]) == BASELINES - {"knn5_profile", "knn5_days"} | {MODEL_NAME}
    assert "left out the kNN baselines with k = [5]: only 4 training node(s) have days" in caplog.text
    alone = evaluate_baselines(split, seed=1, max_days_per_node=3)
    assert alone["methods"]["knn3_days"] == result.metrics["methods"]["knn3_days"]


def test_evaluation_reuses_the_validation_nodes_the_model_was_trained_without(tiny, tmp_path, caplog):
    dataset, _, _, _ = tiny
    with caplog.at_level(logging.WARNING):
        assert with_training_split(dataset, tmp_path) is dataset  # no training_config.json (e.g. from the Hub)
    assert "validation nodes of the training run are unknown" in caplog.text  # the baselines' donors may differ
    assert "training_config.json" in training_split_note(dataset, tmp_path)
    (tmp_path / "training_config.json").write_text(json.dumps({"validation_node_ids": dataset.train_node_ids[:2]}))
    assert training_split_note(dataset, tmp_path) is None
    split = with_training_split(dataset, tmp_path)
    assert split.validation_node_ids == dataset.train_node_ids[:2]
    assert split.train_node_ids == dataset.train_node_ids[2:] and split.test_node_ids == dataset.test_node_ids
    assert with_training_split(split, tmp_path) is split  # a dataset with its own validation split is kept
    assert training_split_note(split, tmp_path.parent) is None
    (tmp_path / "training_config.json").write_text(json.dumps({"validation_node_ids": ["elsewhere"]}))
    with pytest.raises(ValueError, match="not nodes of dataset.*the data and the model differ"):
        with_training_split(dataset, tmp_path)
    (tmp_path / "training_config.json").write_text(json.dumps({"validation_node_ids": dataset.test_node_ids[:1]}))
    with pytest.raises(ValueError, match=rf"\['{dataset.test_node_ids[0]}'\] are test nodes.*the data and the model"):
        with_training_split(dataset, tmp_path)


def test_a_pipeline_folder_without_training_config_names_its_validation_nodes_itself(tiny, tmp_path, caplog):
    """A pipeline from the Hub has no training_config.json; since 2026-12-06 its model_index.json names them."""
    dataset, pipe, _, _ = tiny
    held_out = dataset.train_node_ids[:2]
    with_ids = KGDiffPipeline(**pipe.components, **{**_own_config(pipe), "validation_node_ids": held_out})
    with_ids.save_pretrained(tmp_path)
    assert KGDiffPipeline.from_pretrained(tmp_path).config.validation_node_ids == held_out
    with caplog.at_level(logging.WARNING):
        split = with_training_split(dataset, tmp_path)
    assert split.validation_node_ids == held_out and training_split_note(dataset, tmp_path) is None
    assert "unknown" not in caplog.text
    with pytest.raises(ValueError, match=r"validation_node_ids \['nowhere'\] are not in node_ids"):
        KGDiffPipeline(**pipe.components, **{**_own_config(pipe), "validation_node_ids": ["nowhere"]})


def test_evaluate_script_checks_its_arguments_before_loading(tiny, tmp_path, capsys):
    _, _, data_dir, model_dir = tiny
    evaluate = load_script("evaluate")
    samples = tmp_path / "samples.npz"
    samples.write_bytes(b"earlier samples")
    args = ["--model", str(model_dir), "--data", str(data_dir), "--output_dir", str(tmp_path / "eval")]
    with pytest.raises(FileExistsError, match="--save_samples .*samples.npz exists; pass --overwrite"):
        evaluate.main([*args, "--save_samples", str(samples)])
    for seed in ("-1", str(2**64)):
        with pytest.raises(SystemExit):
            evaluate.parse_args([*args, "--seed", seed])
        assert f"--seed must be in [0, 2**63); got {seed}" in capsys.readouterr().err


def test_pipeline_dataset_mismatch_is_a_clear_error(tiny):
    dataset, pipe, _, _ = tiny
    renamed = dataset.node_table.copy()
    renamed.loc[dataset.test_rows[0], "node_id"] = "elsewhere"
    with pytest.raises(ValueError, match="does not know 1 test node.*elsewhere"):
        check_pipeline_matches(pipe, dataclasses.replace(dataset, node_table=renamed))
    with pytest.raises(ValueError, match="feature names differ"):
        check_pipeline_matches(pipe, dataclasses.replace(dataset, feature_names=["speed"]))


def test_markdown_table_marks_the_best_value_per_column():
    metrics = {"methods": {
        "KGDiff": {"mae": 1.0, "rmse": 2.0, "mmd": 0.5, "mmd_fixed_bandwidth": None, "jsd": 0.1},
        "knn3_days": {"mae": 1.5, "rmse": 1.9, "mmd": 0.25, "mmd_fixed_bandwidth": None, "jsd": 0.2},
        "knn5_days": {"mae": 1.0001, "rmse": 2.5, "mmd": 0.3, "mmd_fixed_bandwidth": None, "jsd": 0.3},
    }}
    lines = markdown_table(metrics).splitlines()
    assert lines[0].startswith("| method | MAE | RMSE | MMD | MMD-fixed | JSD |")
    assert lines[2] == ("| KGDiff | **1.000** | 2.000 | 0.5000 | n/a | **0.1000** | n/a | n/a | n/a | "
                        "this pipeline, conditioned on the node's KG neighbourhood |")
    assert lines[3] == ("| knn3_days | 1.500 | **1.900** | **0.2500** | n/a | 0.2000 | n/a | n/a | n/a | "
                        "random days of the k=3 nearest training nodes |")
    assert lines[4].startswith("| knn5_days | **1.000** | 2.500 |")  # equal when rounded: bold as well
    spread = {"methods": {"a": {"spread_ratio": 0.5, "out_of_range": 0.06}, "b": {"spread_ratio": 1.2,
                                                                                  "out_of_range": 0.0}}}
    rows = markdown_table(spread).splitlines()
    assert "| 0.500 |" in rows[2] and "| 6.00% |" in rows[2]
    assert "| **1.200** |" in rows[3] and "| **0.00%** |" in rows[3]  # nearest to 1 is the best spread
    assert best_value("spread_ratio", [0.0, 2.5, None]) == 2.5  # no spread is worse than 2.5x too much
    assert best_value("spread_ratio", [0.45, 2.0]) == 2.0 and best_value("mae", [None, 3.0, 2.0]) == 2.0


def test_new_node_neighbors_reads_both_directions_and_drops_unknown_names():
    triples = [
        ("Sensor/new", "SNS_1km", "Sensor/a"),
        ("Sensor/a", "SNS_1km", "Sensor/new"),
        ("Sensor/new", "SLA", "Area/cell_new"),
        ("POI/p", "PLA", "Area/cell_new"),
        ("Sensor/new", "SNS_1km", "Sensor/a"),
    ]
    kept, dropped = new_node_neighbors(
        "Sensor/new", triples, ["Sensor/a", "Area/1"], ["SNS_1km", "SLA", "SNS_1km_inv", "SLA_inv"]
    )
    assert kept == [("SNS_1km", "Sensor/a"), ("SNS_1km_inv", "Sensor/a")]
    assert dropped == [("SLA", "Area/cell_new")]


def _own_config(pipe) -> dict:
    return {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in pipe.components}
