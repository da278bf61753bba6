"""Delay embedding sizes for any day length: the automatic rule, validation of a user's choice, TuckER flags."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from kgdiff_diffusers.delay_embedding import (
    DelayEmbedding,
    check_delay_embedding,
    choose_delay_embedding,
    working_delay_embeddings,
)
from kgdiff_diffusers.kg.tucker import DEFAULT_TUCKER_EPOCHS, pretrain_tucker
from kgdiff_diffusers.training import KGDiffModelConfig, build_pipeline

from .test_prepared import make_data, make_kg

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SMALL = {"condition_dim": 16, "block_out_channels": (16, 32, 32), "norm_num_groups": 8, "meta_pattern_hidden_dim": 32}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "steps, expected",
    [(48, (16, 3)), (288, (32, 9)), (24, (8, 3)), (96, (16, 6)), (144, (32, 4)), (1440, (64, 22)), (12, (8, 1))],
)
def test_automatic_choice_reproduces_the_paper_and_gives_square_power_of_two_images(steps, expected) -> None:
    window, stride = choose_delay_embedding(steps)
    assert (window, stride) == expected
    embedding = DelayEmbedding(steps, window, stride)
    assert embedding.image_size == window and embedding.num_columns <= window
    series = torch.randn(2, 1, steps)
    assert torch.equal(embedding.to_series(embedding.to_image(series)), series)


def dataset_with_steps(steps: int):
    from kgdiff_diffusers.data.prepared import prepare_dataset

    data = make_data(num_nodes=6, num_days=8, steps_per_day=steps)
    kg = make_kg(data)
    rng = np.random.default_rng(0)
    return prepare_dataset(
        data,
        kg,
        f"days{steps}",
        test_fraction=1 / 3,
        entity_embeddings=rng.normal(size=(kg.num_entities, 8)),
        relation_embeddings=rng.normal(size=(2 * kg.num_relations, 8)),
    )


@pytest.mark.parametrize("steps", [24, 96, 144])
def test_any_day_length_builds_and_runs_the_unet(steps: int) -> None:
    pipe = build_pipeline(dataset_with_steps(steps), KGDiffModelConfig(**SMALL))
    side = pipe.delay_embedding.image_size
    out = pipe.unet(torch.randn(2, 1, side, side), torch.tensor([1, 5]), torch.randn(2, 16)).sample
    assert out.shape == (2, 1, side, side)


def test_a_choice_the_unet_cannot_halve_is_refused_with_sizes_that_work() -> None:
    dataset = dataset_with_steps(24)
    with pytest.raises(
        ValueError,
        match=r"window=8, stride=2 for 24-step days gives 9x9 images; the UNet halves them, so the side must be a "
        r"multiple of 4; window/stride that work: 8/3 \(8x8\), 12/2 \(12x12\), .*automatic 8/3",
    ):
        build_pipeline(dataset, KGDiffModelConfig(**SMALL, delay_window=8, delay_stride=2))
    with pytest.raises(ValueError, match=r"delay_window=8, delay_stride=None: set both, or neither .* \(8, 3\)"):
        build_pipeline(dataset, KGDiffModelConfig(**SMALL, delay_window=8))
    with pytest.raises(ValueError, match="needs 1 <= stride <= window <= steps per day"):
        check_delay_embedding(24, 30, 2)
    pipe = build_pipeline(dataset, KGDiffModelConfig(**SMALL, delay_window=12, delay_stride=2))
    assert pipe.delay_embedding.image_size == 12
    for window, stride, side in working_delay_embeddings(24, 4):
        assert DelayEmbedding(24, window, stride).image_size == side and side % 4 == 0


def test_train_script_wants_window_and_stride_together(capsys) -> None:
    script = load("train")
    with pytest.raises(SystemExit):
        script.parse_args(["--dataset", "x", "--output_dir", "y", "--delay_window", "8"])
    assert "--delay_window and --delay_stride go together" in capsys.readouterr().err


def test_one_tucker_default_and_meaning_across_scripts(capsys) -> None:
    assert inspect.signature(pretrain_tucker).parameters["epochs"].default == DEFAULT_TUCKER_EPOCHS
    prepare = load("prepare_data").parse_args(["--layout", "synthetic-city", "--output", "o"])
    train = load("train").parse_args(["--dataset", "x", "--output_dir", "y"])
    pretrain = load("pretrain_kg").parse_args(["--kg", "k"])
    assert prepare.tucker_epochs == train.tucker_epochs == pretrain.epochs == DEFAULT_TUCKER_EPOCHS
    assert prepare.tucker_max_seconds is train.tucker_max_seconds is pretrain.max_seconds is None
    assert prepare.tucker_max_steps is train.tucker_max_steps is pretrain.max_steps is None
    again = load("pretrain_kg").parse_args(["--kg", "k", "--tucker_epochs", "7", "--tucker_max_seconds", "9",
                                            "--tucker_max_steps", "11"])
    assert (again.epochs, again.max_seconds, again.max_steps) == (7, 9.0, 11)
    for flags, message in ((["--tucker_max_steps", "0"], "--tucker_max_steps must be >= 1, got 0"),
                           (["--tucker_epochs", "0"], "--tucker_epochs must be >= 1, got 0"),
                           (["--tucker_max_seconds", "nan"], "--tucker_max_seconds must be > 0, got nan")):
        with pytest.raises(SystemExit):
            load("pretrain_kg").parse_args(["--kg", "k", *flags])
        assert message in capsys.readouterr().err
        with pytest.raises(SystemExit):  # before any data is read
            load("prepare_data").parse_args(["--layout", "synthetic-city", "--output", "o", *flags])
        assert message in capsys.readouterr().err
    budget = load("train").parse_args(["--dataset", "x", "--output_dir", "y", "--tucker_max_seconds", "3",
                                       "--tucker_max_steps", "5"])
    assert (budget.tucker_max_seconds, budget.tucker_max_steps) == (3, 5)
    prepared = load("prepare_data").parse_args(["--layout", "synthetic-city", "--output", "o",
                                                "--tucker_max_steps", "4"])
    assert prepared.tucker_max_steps == 4
