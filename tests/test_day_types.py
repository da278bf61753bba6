"""Day types (weekday / weekend): learnt in training, chosen at generation, scored per type in evaluation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from kgdiff_diffusers import KGDiffPipeline
from kgdiff_diffusers.data.days import DAY_TYPES, day_type_indices
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.evaluation import MODEL_NAME, evaluate_pipeline, write_report
from kgdiff_diffusers.fingerprint import config_digest
from kgdiff_diffusers.hub import render_model_card
from kgdiff_diffusers.kg.tucker import pretrain_tucker
from kgdiff_diffusers.training import (
    KGDiffModelConfig,
    build_pipeline,
    kgdiff_loss,
    trained_day_types,
    training_day_types,
    training_samples,
)

from .test_evaluation import load_script

TINY = KGDiffModelConfig(
    condition_dim=16, block_out_channels=(16, 32), norm_num_groups=8, num_train_timesteps=20, meta_pattern_hidden_dim=32
)


@pytest.fixture(scope="module")
def city():
    """Two weeks (Mon 1 - Sun 14 January 2024) of a 16-sensor synthetic city, with and without weekends."""
    data, kg = make_synthetic_city(num_nodes=16, num_days=14, seed=0)
    tucker = pretrain_tucker(kg, embedding_dim=16, epochs=2, show_progress=False)
    embeddings = {"entity_embeddings": tucker.entity_embeddings, "relation_embeddings": tucker.relation_embeddings}
    week = prepare_dataset(data, kg, "week_city", include_weekends=True, **embeddings)
    weekdays = prepare_dataset(data, kg, "weekday_city", **embeddings)
    return week, weekdays


def tiny_pipeline(dataset) -> KGDiffPipeline:
    torch.manual_seed(0)
    pipe = build_pipeline(dataset, TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: KGDiffPipeline, node_ids: list[str], **kwargs) -> np.ndarray:
    return pipe(node_ids=node_ids, num_samples=2, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), **kwargs).series


def test_day_type_of_each_date() -> None:
    dates = ["2024-01-05", "2024-01-06", "2024-01-07", "2024-01-08"]  # Friday .. Monday
    assert day_type_indices(dates).tolist() == [0, 1, 1, 0] and DAY_TYPES == ("weekday", "weekend")


def test_a_pipeline_trained_with_weekends_generates_the_day_type_asked_for(city) -> None:
    week, weekdays = city
    pipe = tiny_pipeline(week)
    assert pipe.config.day_types == ["weekday", "weekend"] == trained_day_types(week)
    assert pipe.condition_encoder.config.num_day_types == pipe.donor_prior.config.num_day_types == 2
    nodes = week.test_node_ids[:2]
    weekday, weekend = generate(pipe, nodes, day_type="weekday"), generate(pipe, nodes, day_type="weekend")
    assert weekday.shape == weekend.shape == (2, 2, 48, 1) and np.isfinite(weekend).all()
    assert not np.allclose(weekday, weekend)  # same noise, another day type
    np.testing.assert_array_equal(generate(pipe, nodes), weekday)  # the default is the first day type
    with pytest.raises(ValueError, match=r"day_type must be one of \['weekday', 'weekend'\]"):
        generate(pipe, nodes, day_type="holiday")

    weekday_pipe = tiny_pipeline(weekdays)
    assert weekday_pipe.config.day_types == ["weekday"]
    assert not hasattr(weekday_pipe.condition_encoder, "day_type_embedding")  # no new parameters without weekends
    with pytest.raises(ValueError, match="trained on weekday days only.*--include_weekends"):
        generate(weekday_pipe, nodes, day_type="weekend")
    np.testing.assert_array_equal(generate(weekday_pipe, nodes, day_type="weekday"), generate(weekday_pipe, nodes))


def test_the_weekend_prior_comes_from_the_donors_weekend_days(city) -> None:
    week, _ = city
    weekend_dates = day_type_indices(week.dates) == 1
    busy = dataclasses.replace(week, days=np.where(weekend_dates[None, :, None, None], 3 * week.days, week.days))

    def prior_in_data_units(dataset, day_type: str) -> np.ndarray:
        pipe = tiny_pipeline(dataset)
        mean_day = pipe.prior(dataset.test_node_ids, day_type=day_type)[0]
        return (pipe._to_data_units(mean_day)).numpy()  # (nodes, T, D)

    np.testing.assert_allclose(prior_in_data_units(busy, "weekend"), 3 * prior_in_data_units(week, "weekend"),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prior_in_data_units(busy, "weekday"), prior_in_data_units(week, "weekday"),
                               rtol=1e-4, atol=1e-4)


def test_training_conditions_each_day_on_its_type(city) -> None:
    week, _ = city
    pipe = tiny_pipeline(week)
    days, rows = training_samples(week)
    day_types = training_day_types(week, pipe.config.day_types)
    expected = day_type_indices(week.dates)[np.nonzero(week.day_mask[week.train_rows])[1]]
    np.testing.assert_array_equal(day_types.numpy(), expected)
    batch = torch.arange(0, len(days), 7)
    args = (pipe.unet, pipe.condition_encoder, pipe.meta_pattern, pipe.scheduler, pipe.delay_embedding,
            days[batch], rows[batch])
    loss = kgdiff_loss(*args, donor_prior=pipe.donor_prior, day_types=day_types[batch],
                       generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert pipe.condition_encoder.day_type_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 day types: pass day_types"):
        kgdiff_loss(*args, donor_prior=pipe.donor_prior)


def test_evaluation_scores_each_day_type_against_its_own_real_days(city, tmp_path) -> None:
    week, _ = city
    pipe = tiny_pipeline(week)
    result = evaluate_pipeline(pipe, week, num_inference_steps=2, sampler="ddim", include_baselines=False)
    metrics = result.metrics
    test_mask = week.day_mask[week.test_rows]
    weekend = day_type_indices(week.dates) == 1
    by_type = metrics["day_types"]
    assert list(by_type) == ["weekday", "weekend"]
    assert by_type["weekday"]["num_real_days"] == int(test_mask[:, ~weekend].sum())
    assert by_type["weekend"]["num_real_days"] == int(test_mask[:, weekend].sum()) > 0
    assert metrics["num_real_days"] == by_type["weekday"]["num_real_days"] + by_type["weekend"]["num_real_days"]
    for scores in [metrics, *by_type.values()]:
        assert np.isfinite(scores["methods"][MODEL_NAME]["mae"])
    # each node gets as many generated days of a type as it has real days of it
    np.testing.assert_array_equal(result.generated_mask.sum(axis=1), test_mask.sum(axis=1))

    pipe.save_pretrained(tmp_path)
    write_report(result, tmp_path, week.interval_minutes, week.feature_names)
    report = (tmp_path / "report.md").read_text()
    weekend_days = by_type["weekend"]["num_real_days"]
    assert f"### weekend: {weekend_days} real days of {by_type['weekend']['num_test_nodes']} nodes" in report
    card = render_model_card(tmp_path, repo_id="user/kgdiff-week").text
    assert 'It was trained on weekday and weekend days' in card and 'pipe(..., day_type="weekend")' in card
    assert f"### weekend: {weekend_days} real days" in card and "day types learnt: weekday, weekend" in card


@pytest.fixture
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_generate_script_day_type(city, tmp_path, fresh_accelerate_state) -> None:
    week, weekdays = city
    generate_script = load_script("generate")
    folders = {}
    for dataset in (week, weekdays):
        folders[dataset.name] = tmp_path / dataset.name
        tiny_pipeline(dataset).save_pretrained(folders[dataset.name])
    nodes = ",".join(week.test_node_ids[:2])

    def run(model: Path, day_type: str) -> np.ndarray:
        output = tmp_path / f"{model.name}_{day_type}.npz"
        generate_script.main(["--model", str(model), "--node_ids", nodes, "--num_samples", "2",
                              "--num_inference_steps", "2", "--day_type", day_type, "--output", str(output)])
        with np.load(output) as npz:
            return npz["series"]

    assert not np.allclose(run(folders["week_city"], "weekend"), run(folders["week_city"], "weekday"))
    with pytest.raises(ValueError, match="trained on weekday days only"):
        run(folders["weekday_city"], "weekend")
    with pytest.raises(SystemExit):
        generate_script.parse_args(["--model", "m", "--node_ids", nodes, "--output", "x.npz", "--day_type", "holiday"])


def test_pipelines_saved_before_day_types_still_load_and_take_no_day_type(city, tmp_path) -> None:
    _, weekdays = city
    torch.manual_seed(0)
    pipe = build_pipeline(weekdays, dataclasses.replace(TINY, num_bank_days=0))
    pipe.set_progress_bar_config(disable=True)
    nodes = weekdays.test_node_ids[:2]
    expected = generate(pipe, nodes)
    pipe.save_pretrained(tmp_path)
    # What an earlier version wrote: no day_types / num_day_types / donor-day start, digests of the configs
    # as they were.
    index = json.loads((tmp_path / "model_index.json").read_text())
    for name in ("condition_encoder", "donor_prior"):
        path = tmp_path / name / "config.json"
        config = json.loads(path.read_text())
        del config["num_day_types"]
        config.pop("num_bank_days", None)
        config.pop("has_level_errors", None)
        path.write_text(json.dumps(config))
        index["config_sha256"][name] = config_digest(config)
    for added in ("day_types", "start_strength", "level_exponent", "random_donor_share", "level_noise",
                  "validation_node_ids", "level_estimate_weight", "level_estimator", "match_donor_mean",
                  "mean_match_strength", "residual_at_blend_level"):
        del index[added]
    del index["config_sha256"]["level_estimator"]
    shutil.rmtree(tmp_path / "level_estimator")
    own = {k: v for k, v in index.items() if k not in pipe.components and k != "config_sha256"}
    index["config_sha256"]["model_index"] = config_digest(own)
    (tmp_path / "model_index.json").write_text(json.dumps(index))

    old = KGDiffPipeline.from_pretrained(tmp_path)
    old.set_progress_bar_config(disable=True)
    assert old.config.day_types is None
    np.testing.assert_array_equal(generate(old, nodes), expected)
    with pytest.raises(ValueError, match="saved without day types"):
        generate(old, nodes, day_type="weekday")


def test_a_weekend_day_starts_from_a_weekend_day_of_a_candidate_donor(city) -> None:
    week, _ = city
    pipe = tiny_pipeline(week)
    pipe.register_to_config(match_donor_mean=False, start_strength=0.0, level_exponent=0.0)  # the donor days themselves
    row = int(week.test_rows[0])
    bank = torch.nonzero(pipe.donor_prior.node_bank_row >= 0).squeeze(1).numpy()
    donors = np.unique(bank[pipe.donor_prior.candidate_index[row].numpy()])
    weekend = day_type_indices(week.dates) == DAY_TYPES.index("weekend")
    for day_type, of_type in (("weekend", weekend), ("weekday", ~weekend)):
        candidates = np.concatenate([week.days[d][week.day_mask[d] & of_type] for d in donors])
        others = np.concatenate([week.days[d][week.day_mask[d] & ~of_type] for d in donors])
        days = generate(pipe, [week.node_ids[row]], day_type=day_type)[0]
        for day in days:
            assert np.abs(candidates - day).max(axis=(1, 2)).min() < 1e-3 * np.abs(candidates).max()
            assert np.abs(others - day).max(axis=(1, 2)).min() > 1e-3 * np.abs(others).max()
    pipe.register_to_config(match_donor_mean=True, mean_match_strength=1.0)  # a set's mean: the expected weekend copy
    mean_day, _, candidates = pipe._prior_and_candidates([week.node_ids[row]], {}, None, "weekend")
    expected = pipe.donor_prior.expected_donor_day(candidates, mean_day, 0.0, pipe._day_type_rows("weekend", 1))
    days = generate(pipe, [week.node_ids[row]], day_type="weekend")[0]
    unclipped = (days > 0).all(axis=0)
    np.testing.assert_allclose(days.mean(axis=0)[unclipped], pipe._to_data_units(expected)[0].numpy()[unclipped],
                               rtol=1e-4, atol=1e-3)
