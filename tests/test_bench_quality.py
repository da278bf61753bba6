"""bench/quality.py's protocol: spatial folds, validation nodes from the training side, fold aggregation."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.kg.tucker import pretrain_tucker

from .conftest import load_bench_module


@pytest.fixture(scope="module")
def quality():
    return load_bench_module("quality")


@pytest.fixture(scope="module")
def base():
    data, kg = make_synthetic_city(num_nodes=22, num_days=8, seed=0)
    tucker = pretrain_tucker(kg, embedding_dim=8, epochs=1, show_progress=False)
    return prepare_dataset(data, kg, "tiny_city", entity_embeddings=tucker.entity_embeddings,
                           relation_embeddings=tucker.relation_embeddings)


def test_folds_test_every_node_once_and_validate_on_the_training_side(quality, base):
    splits = [quality.split_dataset(base, f"fold{k}", 4, 0.2) for k in range(4)]
    tested = [node for split in splits for node in split.test_node_ids]
    assert sorted(tested) == sorted(base.node_ids)  # every node a test node exactly once
    lat = dict(zip(base.node_ids, base.node_table["lat"]))
    for split in splits:
        assert len(split.validation_node_ids) == round(0.2 * (22 - len(split.test_node_ids)))
        assert not set(split.validation_node_ids) & set(split.test_node_ids)
        assert not set(split.validation_node_ids) & set(split.train_node_ids)
        train_side = [n for n in base.node_ids if n not in split.test_node_ids]
        northern = sorted(train_side, key=lambda n: -lat[n])[: len(split.validation_node_ids)]
        assert sorted(split.validation_node_ids) == sorted(northern)
        rows = split.train_rows
        values = split.days[rows][split.day_mask[rows]].astype(np.float64)
        np.testing.assert_allclose(split.feature_mean, values.mean(axis=(0, 1)), rtol=1e-6)
        assert split.entity_embeddings is base.entity_embeddings  # TuckER is not re-run
    paper = quality.split_dataset(base, "paper", 4, 0.2)
    assert paper.test_node_ids == base.test_node_ids


def test_split_folders_are_reused_only_when_their_split_matches(quality, base, tmp_path):
    base.save(tmp_path / "base")
    args = quality.parse_args(["--quick", "--splits_dir", str(tmp_path / "splits")])
    folder = quality.ensure_split("nyc", "fold1", tmp_path / "base", args)
    stamp = (folder / "prepared.json").stat().st_mtime_ns
    assert quality.ensure_split("nyc", "fold1", tmp_path / "base", args) == folder
    assert (folder / "prepared.json").stat().st_mtime_ns == stamp
    args.validation_fraction = 0.4  # a different split must not reuse the folder
    quality.ensure_split("nyc", "fold1", tmp_path / "base", args)
    assert (folder / "prepared.json").stat().st_mtime_ns != stamp


def test_aggregate_means_and_spreads_over_folds_and_tables(quality):
    def row(split, method, mae, spread):
        return {"dataset": "nyc", "split": split, "method": method, "seed": 0,
                "metrics": {"mae": mae, "spread_ratio": spread, "crps": None}}

    rows = [row("fold0", "KGDiff", 2.0, 0.5), row("fold1", "KGDiff", 4.0, 0.7), row("paper", "KGDiff", 3.0, 0.9),
            row("fold0", "knn3_profile", 1.0, 0.0), row("fold1", "knn3_profile", 2.0, 0.0)]
    summary = quality.aggregate(rows)
    folds = summary["nyc"]["folds"]
    assert folds["KGDiff"]["mae"]["mean"] == 3.0 and folds["KGDiff"]["mae"]["std"] == pytest.approx(np.sqrt(2))
    assert summary["nyc"]["paper"]["KGDiff"]["mae"] == {"mean": 3.0, "std": None, "values": [3.0]}
    assert folds["KGDiff"]["crps"]["mean"] is None
    table = quality.quality_table(folds).splitlines()
    assert table[0].startswith("| method | MAE | RMSE | MMD | MMD-fixed | JSD | CRPS | spread ratio |")
    assert "| 3.000 ± 1.414 |" in table[2] and "| **0.600 ± 0.141** |" in table[2]  # spread nearest 1 wins
    assert table[3].startswith("| kNN k=3 profile | **1.500 ± 0.707** |")


def test_bad_bench_arguments_fail_with_a_message(quality, capsys):
    for argv, message in ((["--splits", "fold4"], "--splits: unknown"), (["--variants", "nope"], "--variants"),
                          (["--validation_fraction", "0"], "--validation_fraction")):
        with pytest.raises(SystemExit):
            quality.parse_args(argv)
        assert message in capsys.readouterr().err
    rows = [*quality.VARIANTS, *quality.SAMPLING_VARIANTS]  # every row can be named on the command line
    assert quality.parse_args(["--variants", ",".join(rows)]).variants == rows
    args = quality.parse_args(["--quick", "--curve"])
    assert args.output.name == "quality_curve.json" and args.budget.curve_every == 40
    command = quality.train_command(Path("d"), Path("o"), "KGDiff", 0, args.budget, curve=True)
    assert command[command.index("--validation_steps") + 1] == "40"
    assert command[command.index("--max_train_steps") + 1] == "120"


@pytest.fixture
def untrained_run(quality, base, tmp_path):
    """``(args, split, pipe)``: quick bench arguments, fold0 of the synthetic city saved to ``tmp_path / "split"``
    and an untrained pipeline of it that starts from donor days."""
    from kgdiff_diffusers.training import KGDiffModelConfig, build_pipeline

    args = quality.parse_args(["--quick", "--runs_dir", str(tmp_path / "runs")])
    args.code_version = "test"
    split = quality.split_dataset(base, "fold0", 4, 0.2)
    split.save(tmp_path / "split")
    pipe = build_pipeline(split, KGDiffModelConfig(condition_dim=16, block_out_channels=(16, 32), norm_num_groups=8,
                                                   num_train_timesteps=20))
    pipe.register_to_config(start_strength=0.0, level_exponent=1.0, random_donor_share=0.5)
    return args, split, pipe


def test_a_sampling_row_scores_the_trained_rows_weights_with_its_overrides_and_is_reused(quality, untrained_run,
                                                                                          tmp_path):
    from kgdiff_diffusers.evaluation import evaluate_pipeline

    args, split, pipe = untrained_run
    trained_dir = quality._run_folder(args, quality.Unit("nyc", "fold0", "KGDiff", 0))
    pipe.save_pretrained(trained_dir)
    trained = {"command": ["train.py"], "finished": "then"}
    unit = quality.Unit("nyc", "fold0", "KGDiff without random donors (same weights)", 0)
    record = quality.run_sampling_unit(unit, tmp_path / "split", args, trained)
    assert not record["reused"] and record["evaluation"]["config_overrides"] == {"random_donor_share": 0.0}

    def scores(share):
        pipe.register_to_config(random_donor_share=share)
        result = evaluate_pipeline(pipe, split, num_inference_steps=args.budget.num_inference_steps,
                                   sampler=args.budget.sampler, seed=0, include_baselines=False,
                                   max_days_per_node=args.budget.max_days_per_node)
        return result.metrics["methods"]["KGDiff"]

    assert record["metrics"] == pytest.approx(scores(0.0), rel=1e-6)
    assert record["metrics"]["crps"] != pytest.approx(scores(0.5)["crps"], rel=1e-6)
    assert quality.run_sampling_unit(unit, tmp_path / "split", args, trained)["reused"]
    assert not quality.run_sampling_unit(unit, tmp_path / "split", args, {**trained, "finished": "later"})["reused"]
    assert not (trained_dir / "train.log").exists()  # nothing was trained


def test_more_evaluation_draws_average_the_scores_and_do_not_retrain(quality, untrained_run, tmp_path):
    from kgdiff_diffusers.evaluation import evaluate_baselines, evaluate_pipeline

    args, split, pipe = untrained_run
    unit = quality.Unit("nyc", "fold0", "KGDiff", 0)
    run_dir = quality._run_folder(args, unit)
    pipe.save_pretrained(run_dir)
    command = quality.train_command(tmp_path / "split", run_dir, unit.variant, unit.seed, args.budget)
    one_draw = quality._evaluation_settings(args, 0)
    assert "eval_seeds" not in one_draw  # records written before draws existed stay reusable
    previous = {"unit": {}, "command": [Path(command[0]).name, *command[1:]], "evaluation": one_draw,
                "metrics": {}, "train_seconds": 12.0, "finished": "then"}
    (run_dir / quality.RESULT_FILE).write_text(json.dumps(previous))

    args.eval_draws = 2
    record = quality.run_unit(unit, tmp_path / "split", args)
    assert not record["reused"] and not record["retrained"] and not (run_dir / "train.log").exists()
    assert record["train_seconds"] == 12.0 and record["finished"] == "then"
    assert record["evaluation"]["eval_seeds"] == [0, quality.EVAL_DRAW_STRIDE]
    draws = [evaluate_pipeline(pipe, split, num_inference_steps=args.budget.num_inference_steps,
                               sampler=args.budget.sampler, seed=seed, include_baselines=False,
                               max_days_per_node=args.budget.max_days_per_node).metrics["methods"]["KGDiff"]
             for seed in (0, quality.EVAL_DRAW_STRIDE)]
    assert draws[0]["crps"] != pytest.approx(draws[1]["crps"], rel=1e-6)
    for metric in ("mae", "mmd", "crps"):
        assert record["metrics"][metric] == pytest.approx((draws[0][metric] + draws[1][metric]) / 2, rel=1e-6)
    assert quality.run_unit(unit, tmp_path / "split", args)["reused"]

    rows = quality.baseline_rows("nyc", "fold0", tmp_path / "split", [0], args.budget, eval_draws=2)
    baselines = [evaluate_baselines(split, "test", seed=seed, max_days_per_node=args.budget.max_days_per_node)
                 for seed in (0, quality.EVAL_DRAW_STRIDE)]
    random_days = next(row for row in rows if row["method"] == "random_training_days")["metrics"]
    expected = np.mean([b["methods"]["random_training_days"]["crps"] for b in baselines])
    assert random_days["crps"] == pytest.approx(expected, rel=1e-9)


def test_paired_differences_against_the_baselines(quality):
    def row(split, seed, method, mae, crps):
        return {"dataset": "nyc", "split": split, "method": method, "seed": seed,
                "metrics": {"mae": mae, "crps": crps}}

    rows = [row("fold0", 0, "KGDiff", 2.0, 1.0), row("fold1", 0, "KGDiff", 4.0, None),
            row("fold0", 0, "random_training_days", 3.0, 2.0), row("fold1", 0, "random_training_days", 3.5, 1.0),
            row("paper", 0, "KGDiff", 9.0, 9.0), row("paper", 0, "random_training_days", 0.0, 0.0)]
    differences = quality.paired_differences(rows, "nyc", "folds")
    mae = differences["random_training_days"]["mae"]
    assert mae["mean"] == pytest.approx(-0.25) and mae["se"] == pytest.approx(0.75) and mae["wins"] == 1
    assert differences["random_training_days"]["crps"] == {"mean": -1.0, "se": None, "wins": 1, "n": 1}
    table = quality.paired_table(differences).splitlines()
    assert table[0].startswith("| KGDiff minus | MAE |") and "| -0.25 ± 0.75 (1/2) |" in table[2]


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the real data sets live in ../shared/data")
@pytest.mark.parametrize("key", ["nyc", "pems", "metr"])
def test_every_bench_data_set_passes_the_prepare_check(quality, key, tmp_path):
    command = quality.prepare_command(key, tmp_path / "prepared", SHARED_DATA, 1) + ["--check"]
    result = subprocess.run(command, cwd=quality.REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "check passed" in result.stdout + result.stderr
    assert not (tmp_path / "prepared").exists()  # --check writes nothing
