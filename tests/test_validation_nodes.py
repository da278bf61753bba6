"""scripts/train.py validates on training-side validation nodes, never on test nodes (issue 10)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.training import training_samples

ROOT = Path(__file__).resolve().parents[1]


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script_validation", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    return load_train_script()


def test_validation_nodes_come_from_the_training_side_and_never_train(train):
    data, kg = make_synthetic_city(num_nodes=20, num_days=8, seed=0)
    dataset = prepare_dataset(data, kg, "tiny_city")  # 5 test nodes, 15 train nodes
    held = train.hold_out_validation_nodes(dataset, 0.2)
    assert len(held.validation_node_ids) == 3 and len(held.train_node_ids) == 12
    assert not set(held.validation_node_ids) & set(held.test_node_ids)
    assert held.test_node_ids == dataset.test_node_ids
    lat = dict(zip(dataset.node_ids, dataset.node_table["lat"]))
    assert min(lat[n] for n in held.validation_node_ids) >= max(lat[n] for n in held.train_node_ids)
    _, rows = training_samples(held)
    trained = {held.node_ids[row] for row in np.unique(rows.numpy())}
    assert trained == set(held.train_node_ids)  # neither validation nor test nodes reach the model
    assert train.hold_out_validation_nodes(held, 0.5).validation_node_ids == held.validation_node_ids
    assert train.hold_out_validation_nodes(dataset, 0.0).validation_node_ids == []
    leaky = dataset.with_split(dataset.test_node_ids[1:], dataset.test_node_ids[:1])  # a former test node
    assert train.hold_out_validation_nodes(leaky, 0.2).validation_node_ids == dataset.test_node_ids[:1]
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
        train.hold_out_validation_nodes(dataset, 1.5)
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset", "x", "--output_dir", "y", "--validation_fraction", "1"])


@pytest.mark.slow
def test_training_writes_a_validation_history_on_validation_nodes(train, tmp_path):
    output = tmp_path / "run"
    train.main([
        "--dataset", "synthetic-city", "--synthetic_nodes", "12", "--synthetic_days", "8", "--embedding_dim", "16",
        "--tucker_epochs", "2", "--condition_dim", "16", "--block_out_channels", "16,32", "--norm_num_groups", "8",
        "--meta_pattern_hidden_dim", "32", "--num_train_timesteps", "20", "--train_batch_size", "16",
        "--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "2", "--final_weights", "best",
        "--validation_inference_steps", "2", "--validation_max_days", "2", "--report_to", "none",
        "--output_dir", str(output),
    ])
    config = json.loads((output / "training_config.json").read_text())
    validation = json.loads((output / "validation.json").read_text())
    assert validation["validation_node_ids"] == config["validation_node_ids"]
    assert len(config["validation_node_ids"]) == 2  # 0.2 of the 9 train nodes, the northernmost
    assert not set(config["validation_node_ids"]) & set(config["test_node_ids"])
    assert not set(config["validation_node_ids"]) & set(config["train_node_ids"])
    assert [entry["step"] for entry in validation["history"]] == [2, 4]
    scores = [entry["metrics"]["crps"] for entry in validation["history"]]
    assert validation["metric"] == "crps" and validation["best_step"] == [2, 4][int(np.argmin(scores))]
    assert all(set(entry["metrics"]) >= {"mae", "mmd_fixed_bandwidth", "crps", "spread_ratio"}
               for entry in validation["history"])
    # --final_weights best: the saved pipeline holds the EMA weights of the best step's checkpoint
    unet = KGDiffPipeline.from_pretrained(output).unet
    saved = [p.detach() for p in unet.parameters()]

    def ema_weights(step):
        state = load_file(output / "checkpoints" / f"checkpoint-{step}" / "ema.safetensors")
        return [state[f"shadow.{i}"] for i in range(len(saved))]

    best, other = validation["best_step"], 6 - validation["best_step"]
    assert all(torch.equal(a, b) for a, b in zip(saved, ema_weights(best)))
    assert not all(torch.equal(a, b) for a, b in zip(saved, ema_weights(other)))
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset", "x", "--output_dir", "y", "--final_weights", "best",
                          "--validation_steps", "3", "--checkpointing_steps", "2"])
