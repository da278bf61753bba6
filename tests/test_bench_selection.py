"""bench/selection.py's rules: which (level noise, strength) each picks from validation scores alone."""

import pytest

from kgdiff_diffusers.data.days import split_validation_nodes
from kgdiff_diffusers.data.prepared import prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.kg.tucker import pretrain_tucker
from kgdiff_diffusers.training import KGDiffModelConfig, build_pipeline, choose_donor_day_start

from .conftest import load_bench_module


@pytest.fixture(scope="module")
def selection():
    return load_bench_module("selection")


def point(noise, strength, crps, mmd_fixed, test_crps):
    validation = {"crps": crps, "mmd_fixed_bandwidth": mmd_fixed, "mae": 1.0}
    test = {"mae": 2.0, "rmse": 3.0, "mmd": 1.0, "mmd_fixed_bandwidth": 1.0, "crps": test_crps}
    return {"level_noise": noise, "start_strength": strength, "validation": validation, "test": test}


@pytest.fixture
def grid():
    # validation: noise 0.5 is best at strength 0, but the best point overall is (0, 1); MMD-fixed prefers 1
    return [
        point(0.0, 0.0, 10.0, 2.0, 5.0), point(0.0, 1.0, 8.0, 3.0, 6.0),
        point(0.5, 0.0, 9.0, 2.0, 4.0), point(0.5, 1.0, 9.5, 2.0, 7.0),
        point(1.0, 0.0, 9.8, 1.0, 3.0), point(1.0, 1.0, 12.0, 1.5, 9.0),
    ]


def test_staged_rule_fixes_the_noise_at_strength_zero_first(selection, grid):
    chosen = selection.choose(grid, "crps", staged=True)
    assert (chosen["level_noise"], chosen["start_strength"]) == (0.5, 0.0)
    joint = selection.choose(grid, "crps", staged=False)
    assert (joint["level_noise"], joint["start_strength"]) == (0.0, 1.0)
    by_mmd = selection.choose(grid, "mmd_fixed_bandwidth", staged=True)
    assert (by_mmd["level_noise"], by_mmd["start_strength"]) == (1.0, 0.0)


def test_summed_criterion_is_relative_to_the_copies_without_level_noise(selection, grid):
    # relative sums at strength 0: 1 + 1 = 2.0, 0.9 + 1 = 1.9, 0.98 + 0.5 = 1.48 -> noise 1; then strength 0
    chosen = selection.choose(grid, "crps+mmd_fixed_bandwidth", staged=True)
    assert (chosen["level_noise"], chosen["start_strength"]) == (1.0, 0.0)


def test_summary_means_over_runs_and_oracle_takes_each_runs_best_test_point(selection, grid):
    other = [dict(p, test={**p["test"], "crps": p["test"]["crps"] + 1.0}) for p in grid]
    rows = selection.summarise([grid, other])
    assert rows["staged CRPS (default)"]["test"]["crps"] == pytest.approx((4.0 + 5.0) / 2)
    assert rows["staged CRPS (default)"]["choices"] == ["0.5/0", "0.5/0"]
    assert rows["fixed: level noise 1, strength 0"]["test"]["crps"] == pytest.approx((3.0 + 4.0) / 2)
    assert rows["test oracle (peeks; not a method)"]["test"]["crps"] == pytest.approx((3.0 + 4.0) / 2)


def test_an_undefined_validation_score_is_an_error_not_a_silent_choice(selection, grid):
    grid[2]["validation"]["crps"] = None
    with pytest.raises(ValueError, match="validation crps is undefined at 0.5/0"):
        selection.choose(grid, "crps", staged=True)


def test_validation_draws_are_averaged_and_undefined_metrics_stay_undefined(selection):
    draws = [{"mae": 1.0, "rmse": 2.0, "mmd": None, "mmd_fixed_bandwidth": 1.0, "crps": 3.0},
             {"mae": 3.0, "rmse": 4.0, "mmd": None, "mmd_fixed_bandwidth": None, "crps": 5.0}]
    expected = {"mae": 2.0, "rmse": 3.0, "mmd": None, "mmd_fixed_bandwidth": 1.0, "crps": 4.0}
    assert selection.mean_over_draws(draws, selection.METRICS) == expected


def test_the_default_rule_on_a_saved_run_repeats_the_choice_training_made(selection, tmp_path):
    data, kg = make_synthetic_city(num_nodes=20, num_days=10, seed=1)
    tucker = pretrain_tucker(kg, embedding_dim=16, epochs=1, show_progress=False)
    city = prepare_dataset(data, kg, "selection_city", entity_embeddings=tucker.entity_embeddings,
                           relation_embeddings=tucker.relation_embeddings)
    _, validation = split_validation_nodes(city.node_table, city.train_node_ids, 0.25)
    dataset = city.with_split(city.test_node_ids, validation)
    pipe = build_pipeline(dataset, KGDiffModelConfig(condition_dim=16, block_out_channels=(16, 32),
                                                     norm_num_groups=8, num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    choice = choose_donor_day_start(pipe, dataset, num_inference_steps=4, max_days_per_node=4, num_draws=2)
    pipe.save_pretrained(tmp_path / "model")
    dataset.save(tmp_path / "data")

    grid = selection.score_grid(tmp_path / "model", tmp_path / "data", seed=0, num_inference_steps=4,
                                max_days_per_node=4, threads=1, validation_draws=2)
    chosen = selection.choose(grid, "crps", staged=True)
    assert (chosen["level_noise"], chosen["start_strength"]) == (choice["level_noise"], choice["start_strength"])
    noise = f", level noise={chosen['level_noise']:g}" if chosen["level_noise"] else ""
    name = (f"a={choice['level_exponent']:g}, random donors={choice['random_donor_share']:g}{noise}, "
            f"strength={chosen['start_strength']:g}")
    assert chosen["validation"]["crps"] == pytest.approx(choice["validation_crps"][name], rel=1e-6)
