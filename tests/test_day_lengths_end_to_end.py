"""Hourly, 15-minute and 7-day data end to end: prepare_data.py -> train.py (20 steps) -> evaluate.py.

7-day data trains a pipeline conditioned on the day type (weekday / weekend), evaluated per day type.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kgdiff_diffusers import KGDiffPipeline

from .test_delay_choice import load

TINY_MODEL = ["--preset", "cpu-small", "--condition_dim", "16", "--block_out_channels", "16,32,32"]
TINY_MODEL += ["--norm_num_groups", "8", "--meta_pattern_hidden_dim", "32", "--num_train_timesteps", "20"]


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_day, image_side, weekends", [(24, 8, False), (96, 16, False), (24, 8, True)])
def test_prepare_train_evaluate(tmp_path: Path, steps_per_day: int, image_side: int, weekends: bool) -> None:
    data, model, report = tmp_path / "data", tmp_path / "model", tmp_path / "eval"
    prepared = load("prepare_data").main(
        ["--layout", "synthetic-city", "--output", str(data), "--num_nodes", "10", "--num_days", "8"]
        + ["--steps_per_day", str(steps_per_day), "--embedding_dim", "8", "--tucker_epochs", "2"]
        + (["--include_weekends"] if weekends else [])
    )
    day_of_week = pd.DatetimeIndex(prepared.dates).day_of_week
    assert len(prepared.dates) == (8 if weekends else 6) and (day_of_week >= 5).any() == weekends
    load("train").main(
        ["--dataset", str(data), "--output_dir", str(model), *TINY_MODEL, "--max_train_steps", "20"]
        + ["--train_batch_size", "16", "--validation_steps", "1000", "--checkpointing_steps", "1000"]
        + ["--ema_decay", "0", "--report_to", "none", "--lr_warmup_steps", "2"]
    )
    pipe = KGDiffPipeline.from_pretrained(model)
    assert pipe.delay_embedding.image_size == image_side and pipe.config.seq_len == steps_per_day
    day_types = ["weekday", "weekend"] if weekends else ["weekday"]
    assert pipe.config.day_types == day_types
    assert json.loads((model / "training_config.json").read_text())["day_types"] == day_types
    result = load("evaluate").main(
        ["--model", str(model), "--data", str(data), "--output_dir", str(report), "--sampler", "ddim"]
        + ["--num_inference_steps", "4", "--max_days_per_node", "8" if weekends else "2"]
    )
    metrics = json.loads((report / "metrics.json").read_text())
    kgdiff = metrics["methods"]["KGDiff"]
    assert np.isfinite([kgdiff["mae"], kgdiff["rmse"], kgdiff["mmd"]]).all() and kgdiff["mae"] > 0
    assert list(metrics.get("day_types", {})) == (day_types if weekends else [])
    for scores in metrics.get("day_types", {}).values():
        assert scores["num_real_days"] > 0 and np.isfinite(scores["methods"]["KGDiff"]["mae"])
    used = result.generated[result.generated_mask]
    assert len(used) and used.shape[1:] == (steps_per_day, 1) and np.isfinite(used).all()
