"""scripts/train.py as a hostile user runs it: diverging runs, kills, edited files and changed flags.

The script runs in a subprocess (plain ``python``: one process needs no ``accelerate launch``), on the
tiny synthetic city of ``test_train_script``.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kgdiff_diffusers.data.prepared import PreparedDataset

from .test_evaluation import load_script
from .test_train_script import TINY

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# TINY without the synthetic-city flags, for runs on a prepared dataset folder
MODEL = TINY[TINY.index("--condition_dim") :]


def train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300,
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
def data_dir(tmp_path_factory) -> Path:
    """The tiny synthetic city as a prepared dataset folder (made by a 1-step run)."""
    run = tmp_path_factory.mktemp("data") / "run"
    train(*TINY, "--max_train_steps", "1", "--output_dir", str(run))
    return run / "data"


def test_an_extreme_training_value_stops_the_run_naming_step_node_and_date(data_dir, tmp_path):
    dataset = PreparedDataset.load(data_dir)
    row = dataset.train_rows[2]
    day = np.flatnonzero(dataset.day_mask[row])[1]
    dataset.days[row, day, 7, 0] = 1e30
    dataset.save(tmp_path / "bad")
    result = train(*MODEL, "--dataset", str(tmp_path / "bad"), "--output_dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = last_line(result)
    assert message.startswith("error: non-finite loss (") and " at step " in message
    assert f"values in {dataset.node_ids[row]}@{dataset.dates[day]}" in message
    assert not (tmp_path / "run" / "model_index.json").exists()


def test_a_diverging_learning_rate_stops_before_anything_is_saved(data_dir, tmp_path):
    run = tmp_path / "run"
    result = train(*MODEL, "--dataset", str(data_dir), "--output_dir", str(run), "--learning_rate", "1e12",
                   "--checkpointing_steps", "1", check=False)
    assert result.returncode == 1
    assert "error: non-finite" in last_line(result) and "training days (node@date): " in last_line(result)
    assert not (run / "model_index.json").exists()
    # the checkpoints written before the divergence hold finite weights only
    from safetensors.torch import load_file

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
