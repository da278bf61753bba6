import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import PreparedDataset
from kgdiff_diffusers.training import training_samples

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "synthetic-city",
    "--synthetic_nodes",
    "12",
    "--synthetic_days",
    "8",
    "--embedding_dim",
    "16",
    "--tucker_epochs",
    "3",
    "--condition_dim",
    "16",
    "--block_out_channels",
    "16,32",
    "--norm_num_groups",
    "8",
    "--meta_pattern_hidden_dim",
    "32",
    "--num_train_timesteps",
    "50",
    "--train_batch_size",
    "16",
    "--max_train_steps",
    "6",
    "--checkpointing_steps",
    "3",
    "--validation_steps",
    "1000",
    "--report_to",
    "none",
]


def launch(*args: str, check: bool = True, num_processes: int = 1) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "scripts" / "train.py"),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("train") / "run"
    launch(*TINY, "--output_dir", str(output))
    return output


def test_training_writes_a_loadable_pipeline_and_its_config(trained_run):
    assert (trained_run / "model_index.json").is_file()
    pipe = KGDiffPipeline.from_pretrained(trained_run)
    pipe.set_progress_bar_config(disable=True)
    config = json.loads((trained_run / "training_config.json").read_text())
    assert config["model"]["condition_dim"] == 16 and config["max_train_steps"] == 6
    test_ids = config["test_node_ids"]
    assert test_ids and not set(test_ids) & set(config["train_node_ids"])
    out = pipe(node_ids=test_ids[:2], num_samples=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.series.shape == (2, 2, 48, 1) and torch.isfinite(torch.from_numpy(out.series)).all()
    assert [p.name for p in sorted((trained_run / "checkpoints").iterdir())] == ["checkpoint-3", "checkpoint-6"]


def test_resume_continues_exactly_where_the_run_stopped(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    reference = load_file(run / "checkpoints" / "checkpoint-6" / "model.safetensors")
    reference_ema = load_file(run / "checkpoints" / "checkpoint-6" / "ema.safetensors")
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    (run / "model_index.json").unlink()
    result = launch(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert "resumed from" in result.stderr + result.stdout and "at step 3" in result.stderr + result.stdout
    resumed = load_file(run / "checkpoints" / "checkpoint-6" / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name  # same data order, noise, optimiser and LR schedule
    resumed_ema = load_file(run / "checkpoints" / "checkpoint-6" / "ema.safetensors")
    assert all(torch.equal(resumed_ema[name], tensor) for name, tensor in reference_ema.items())
    assert (run / "model_index.json").is_file()


def test_a_run_checkpointed_before_the_donor_day_bank_resumes_without_it(tmp_path):
    run = tmp_path / "run"
    launch(*TINY, "--output_dir", str(run), "--num_bank_days", "0", "--max_train_steps", "3")
    for config_path in (run / "checkpoints" / "checkpoint-3" / "training_config.json", run / "training_config.json"):
        config = json.loads(config_path.read_text())
        del config["num_bank_days"]  # what the version before the day bank wrote
        config_path.write_text(json.dumps(config))
    (run / "model_index.json").unlink()
    result = launch(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert "predates the donor-day start: resuming it with --num_bank_days 0" in result.stderr + result.stdout
    assert json.loads((run / "donor_prior" / "config.json").read_text())["num_bank_days"] == 0


def test_test_nodes_never_reach_the_training_samples(trained_run):
    dataset = PreparedDataset.load(trained_run / "data")
    days, rows = training_samples(dataset)
    assert set(rows.tolist()) <= set(dataset.train_rows.tolist())
    assert not set(rows.tolist()) & set(dataset.test_rows.tolist())
    assert len(days) == int(dataset.day_mask[dataset.train_rows].sum())


def test_existing_output_and_bad_configs_fail_fast(trained_run, tmp_path):
    result = launch(*TINY, "--output_dir", str(trained_run), check=False)
    assert result.returncode != 0 and "already holds a trained pipeline" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    result = launch(
        "--config", str(bad), "--dataset", "synthetic-city", "--output_dir", str(tmp_path / "x"), check=False
    )
    assert result.returncode != 0 and "unknown keys ['learning_rat']" in result.stderr
    result = launch("--dataset", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "y"), check=False)
    assert result.returncode != 0 and "not a prepared dataset folder" in result.stderr


def test_two_cpu_processes_train_unchanged(tmp_path):
    """Also the one run of the non-default relation-weighted mean of eq. 15 through the script."""
    output = tmp_path / "ddp"
    launch(*TINY, "--output_dir", str(output), "--neighbor_weighting", "relation", num_processes=2)
    assert (output / "model_index.json").is_file()
    assert [p.name for p in sorted((output / "checkpoints").iterdir())] == ["checkpoint-3", "checkpoint-6"]
    pipe = KGDiffPipeline.from_pretrained(output)
    assert all(torch.isfinite(p).all() for p in pipe.unet.parameters())
    assert pipe.condition_encoder.config.neighbor_weighting == "relation"
