"""scripts/train.py as a hostile user runs it: diverging runs, kills, edited files and changed flags.

The script runs in a subprocess (plain ``python``: one process needs no ``accelerate launch``), on the
tiny synthetic city of ``test_train_script``.
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import PreparedDataset

from .test_evaluation import load_script
from .test_train_script import TINY

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# TINY without the synthetic-city flags, for runs on a prepared dataset folder
MODEL = TINY[TINY.index("--condition_dim") :]


def train(*args: str, check: bool = True, threads: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": str(threads)}, cwd=REPO, timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed:\n{result.stderr[-5000:]}")
    return result


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def train_script():
    return load_script("train")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted TINY run: 6 steps, checkpoints at 3 and 6."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(*TINY, "--output_dir", str(run))
    return run


@pytest.fixture(scope="module")
def data_dir(reference) -> Path:
    """The tiny synthetic city as a prepared dataset folder."""
    return reference / "data"


def copy_run(reference: Path, target: Path, checkpoints=("checkpoint-3", "checkpoint-6")) -> Path:
    shutil.copytree(reference, target, ignore=lambda folder, names: [
        n for n in names if Path(folder).name == "checkpoints" and n not in checkpoints
    ])
    return target


def pausing_script(module: str, function: str) -> str:
    """Python that runs scripts/train.py but stops it (for the test to kill) when ``module.function`` is called
    the N-th time; argv: marker file, N, the script, its flags."""
    return f"""
import runpy, sys, time
import {module} as patched
marker, pause_at, script = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.argv = sys.argv[3:]
original, calls = patched.{function}, []
def pausing(*args, **kwargs):
    calls.append(1)
    if len(calls) == pause_at:
        open(marker, "w").close()
        time.sleep(600)
    return original(*args, **kwargs)
patched.{function} = pausing
runpy.run_path(script, run_name="__main__")
"""


# Stops when Accelerate's save_state is called the N-th time.
PAUSING_TRAIN = pausing_script("accelerate.accelerator", "save_accelerator_state")


def kill_during_save(tmp_path: Path, pause_at: int, *args: str) -> None:
    """Starts train.py and kill -9s it in the middle of its ``pause_at``-th checkpoint save."""
    marker = tmp_path / "saving"
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSING_TRAIN, str(marker), str(pause_at), str(REPO / "scripts" / "train.py"), *args],
        env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "train.py never reached the checkpoint save"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


def test_a_diverging_learning_rate_stops_before_anything_is_saved(reference, data_dir, tmp_path):
    run = tmp_path / "run"
    result = train(*MODEL, "--dataset", str(data_dir), "--output_dir", str(run), "--learning_rate", "1e12",
                   "--checkpointing_steps", "1", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = last_line(result)
    assert message.startswith("error: non-finite loss (nan) at step ") and "nothing of this step was applied" in message
    labels = message.split("training days (node@date): ")[1].split(". ")[0].split(", ")
    dataset = PreparedDataset.load(data_dir)
    trained_on = json.loads((reference / "training_config.json").read_text())["train_node_ids"]
    assert len(labels) == 16  # --train_batch_size
    for label in labels:  # real (train node, valid date) pairs
        node, date = label.split("@")
        assert node in trained_on and dataset.day_mask[dataset.node_ids.index(node), dataset.dates.index(date)]
    assert not (run / "model_index.json").exists()
    # the checkpoints written before the divergence hold finite weights only
    checkpoints = list((run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    for checkpoint in checkpoints:
        for name, tensor in load_file(checkpoint / "model.safetensors").items():
            assert tensor.isfinite().all(), (checkpoint, name)


@pytest.mark.parametrize("flag", ["--learning_rate", "--max_grad_norm", "--ema_decay", "--meta_pattern_weight"])
def test_non_finite_flags_are_refused(train_script, flag, capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args([*TINY, "--output_dir", "x", flag, "inf"])
    assert f"{flag} must be a finite number, got inf" in capsys.readouterr().err


@pytest.mark.parametrize("ablation", ["--no_donor_prior", "--no_meta_pattern"])
def test_a_residual_centre_without_the_donor_prior_is_refused(train_script, ablation, capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args([*TINY, "--output_dir", "x", ablation, "--residual_centre", "prior"])
    assert "--residual_centre sets the donor prior's residual: it does nothing with" in capsys.readouterr().err


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(second[name], tensor), name


def assert_same_training_state(a: Path, b: Path) -> None:
    """Two checkpoints hold equal weights, EMA weights, noise generator, AdamW moments and LR schedule."""
    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files == sorted(p.name for p in b.glob("*.safetensors"))
    for name in files:
        assert_same_weights(a / name, b / name)
    first, second = (torch.load(folder / "optimizer.bin", weights_only=True) for folder in (a, b))
    assert first["param_groups"] == second["param_groups"] and first["state"].keys() == second["state"].keys()
    for index, state in first["state"].items():
        for key, tensor in state.items():  # the curvature's first resumed gradient once differed in its last bits
            assert torch.equal(second["state"][index][key], tensor), (index, key)
    assert torch.load(a / "scheduler.bin", weights_only=True) == torch.load(b / "scheduler.bin", weights_only=True)


def test_kill_during_a_checkpoint_save_keeps_the_previous_checkpoint_to_resume_from(reference, tmp_path):
    run = tmp_path / "run"
    limit = ("--checkpoints_total_limit", "1")
    kill_during_save(tmp_path, 2, *TINY, "--output_dir", str(run), *limit)  # in the save of checkpoint-6
    assert (run / "checkpoints" / "checkpoint-3" / "model.safetensors").is_file()
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", *limit)
    assert "resumed from" in result.stderr and "at step 3" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-6"]
    assert_same_training_state(*(folder / "checkpoints" / "checkpoint-6" for folder in (reference, run)))


def test_latest_skips_an_incomplete_checkpoint(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run", checkpoints=("checkpoint-3",))
    (run / "model_index.json").unlink()
    (run / "checkpoints" / "checkpoint-6").mkdir()  # what an older version's interrupted save left
    (run / "checkpoints" / "checkpoint-6" / "model.safetensors").write_bytes(b"")
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert "skipping incomplete checkpoint-6" in result.stderr and "at step 3" in result.stderr
    assert_same_training_state(*(folder / "checkpoints" / "checkpoint-6" for folder in (reference, run)))


def test_resume_latest_refuses_to_retrain_over_a_finished_pipeline(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run", checkpoints=())
    before = (run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode == 1
    assert "holds a finished pipeline and no complete checkpoint to resume from; pass --overwrite_output_dir" in (
        last_line(result)
    )
    assert (run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_overwrite_output_dir_removes_the_earlier_run_and_its_cached_city(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    for name in ("metrics.json", "report.md", "daily_profiles.png"):
        (run / name).write_text("from the earlier run")
    train(*TINY, "--output_dir", str(run), "--overwrite_output_dir", "--synthetic_nodes", "14",
          "--max_train_steps", "1")
    assert not any((run / name).exists() for name in ("metrics.json", "report.md", "daily_profiles.png"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert len(PreparedDataset.load(run / "data").node_ids) == 14
    assert len(KGDiffPipeline.from_pretrained(run).config.node_ids) == 14
    config = json.loads((run / "training_config.json").read_text())
    assert config["synthetic_nodes"] == 14 and config["max_train_steps"] == 1


def test_resume_with_changed_flags_names_each_and_changes_nothing(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    before = (run / "training_config.json").read_text()
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", "--learning_rate", "0.001",
                   "--condition_dim", "32", "--no_meta_pattern", "--train_batch_size", "8", check=False)
    assert result.returncode == 1
    message = last_line(result)
    assert "checkpoint-6 was trained with other settings" in message
    assert "--learning_rate: 0.0005 -> 0.001 (restored from the checkpoint: the new value would be ignored)" in message
    assert "--condition_dim: 16 -> 32 (changes the model" in message
    assert "--no_meta_pattern: False -> True (changes the model" in message
    assert "--train_batch_size: 16 -> 8 (changes the model" in message
    assert (run / "training_config.json").read_text() == before


def test_resume_runs_no_pickled_code_from_the_checkpoint(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run", checkpoints=("checkpoint-3",))
    (run / "model_index.json").unlink()
    checkpoint = run / "checkpoints" / "checkpoint-3"
    witness = tmp_path / "pickle_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    for index in (0, 1):  # where Accelerate keeps registered custom states
        (checkpoint / f"custom_checkpoint_{index}.pkl").write_bytes(pickle.dumps(Payload()))
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", check=False)
    assert not witness.exists()
    assert result.returncode == 1 and "Number of custom checkpoints" in last_line(result)  # Accelerate's own check
    for index in (0, 1):
        (checkpoint / f"custom_checkpoint_{index}.pkl").unlink()
    # the package's own states are safetensors
    assert {"ema.safetensors", "noise_generator_0.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert_same_weights(*(folder / "checkpoints" / "checkpoint-6" / "ema.safetensors" for folder in (reference, run)))


def test_the_trained_pipeline_carries_its_data_fingerprint(reference, data_dir):
    from kgdiff_diffusers.fingerprint import data_fingerprint

    dataset = PreparedDataset.load(data_dir)
    recorded = KGDiffPipeline.from_pretrained(reference).config.data_fingerprint
    assert recorded == data_fingerprint(dataset.node_table, dataset.kg, "synthetic-city")
    assert recorded["num_nodes"] == 12 and recorded["num_test_nodes"] == len(dataset.test_node_ids)


def test_resume_with_another_thread_count_says_it_is_exact_to_rounding_only(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run", checkpoints=("checkpoint-3",))
    (run / "model_index.json").unlink()
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", threads=2)
    assert "resuming with num_threads: 1 -> 2: kernels then sum in another order" in result.stderr
    first = load_file(reference / "checkpoints" / "checkpoint-6" / "model.safetensors")
    second = load_file(run / "checkpoints" / "checkpoint-6" / "model.safetensors")
    worst = max((first[name] - second[name]).abs().max().item() for name in first)
    print(f"max |difference| after resuming with 2 threads: {worst:.2e}")
    assert worst < 1e-5


def test_a_run_saved_before_residual_centre_and_the_level_estimator_resumes_and_refuses_another_centre(
    reference, tmp_path
):
    run = copy_run(reference, tmp_path / "run", checkpoints=("checkpoint-3",))
    (run / "model_index.json").unlink()
    config_file = run / "checkpoints" / "checkpoint-3" / "training_config.json"  # what resuming compares with
    stored = json.loads(config_file.read_text())
    del stored["model"]["residual_centre"], stored["residual_centre"]
    del stored["model"]["use_level_estimator"], stored["no_level_estimator"]
    del stored["model"]["match_donor_mean"], stored["model"]["mean_match_strength"]  # sampling only: resumes too
    config_file.write_text(json.dumps(stored))
    refused = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", "--residual_centre",
                    "prior", check=False)
    assert refused.returncode == 1 and "model differ from the run it continues" in last_line(refused)
    train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert_same_weights(*(folder / "checkpoints" / "checkpoint-6" / "ema.safetensors" for folder in (reference, run)))
