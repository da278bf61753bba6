"""bench/selection.py's rules: which (level noise, strength) each picks from validation scores alone."""

import pytest

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
