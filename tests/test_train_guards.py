"""scripts/train.py refuses what would damage the dataset or the run, or fail only after training.

Flag checks run ``parse_args`` in-process; the rest reuse the tiny runs of ``test_train_recovery``.
"""

import json
import shutil
import subprocess
import sys
import time
from argparse import Namespace

import pytest
from accelerate import Accelerator
from safetensors.torch import load_file

from kgdiff_diffusers.checkpointing import CorruptCheckpointError, verify_checkpoint
from kgdiff_diffusers.data.prepared import EMBEDDINGS_FILE, PreparedDataset

from .test_train_recovery import (
    ENV,
    REPO,
    copy_run,
    data_dir,
    last_line,
    pausing_script,
    reference,
    train,
    train_script,
)
from .test_train_script import TINY

__all__ = ["data_dir", "reference", "train_script"]  # module fixtures of test_train_recovery used here


def parse_error(train_script, capsys, *args: str) -> str:
    with pytest.raises(SystemExit):
        train_script.parse_args([*TINY, *args])
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("output", "where"), [("data", "is"), ("data/run", "is inside"), (".", "contains")]
)
def test_an_output_dir_that_is_inside_or_holds_the_dataset_is_refused(train_script, capsys, tmp_path, output, where):
    message = parse_error(
        train_script, capsys, "--dataset", str(tmp_path / "data"), "--output_dir", str(tmp_path / output)
    )
    assert f"{where} the --dataset folder {tmp_path / 'data'}" in message
    assert "choose an --output_dir outside" in message


def test_a_data_folder_that_is_no_cached_city_is_not_deleted_for_the_synthetic_city(train_script, capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "measurements.csv").write_text("mine")
    message = parse_error(train_script, capsys, "--output_dir", str(tmp_path))
    assert f"--output_dir {tmp_path} holds a data folder that is not a synthetic city cached by train.py" in message
    assert "(measurements.csv)" in message
    (tmp_path / "data" / "synthetic_request.json").write_text("{}")  # a request file does not make it a city
    assert "(measurements.csv)" in parse_error(train_script, capsys, "--output_dir", str(tmp_path))
    (tmp_path / "data" / "measurements.csv").unlink()
    (tmp_path / "data" / "nodes.csv").write_text("")  # what a city cached for other flags holds: rebuilt
    train_script.parse_args([*TINY, "--output_dir", str(tmp_path)])
    (tmp_path / "data" / "synthetic_request.json").unlink()  # a city build killed before its request file: rebuilt
    train_script.parse_args([*TINY, "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--num_donors", "0"), "--num_donors must be >= 1, got 0"),
        (("--condition_dim", "0"), "--condition_dim must be >= 1, got 0"),
        (("--embedding_dim", "-3"), "--embedding_dim must be >= 1, got -3"),
        (("--block_out_channels", "16,abc"), "--block_out_channels must be comma-separated positive ints"),
        (("--block_out_channels", "0,32"), "--block_out_channels must be comma-separated positive ints"),
        (("--seed", "-1"), "--seed must be in [0, 2**32), got -1"),
        (("--checkpoints_total_limit", "0"), "--checkpoints_total_limit must be >= 1 (how many checkpoints to keep)"),
        (("--checkpoints_total_limit", "-2"), "--checkpoints_total_limit must be >= 1 (how many checkpoints to keep)"),
        (("--tucker_max_steps", "0"), "--tucker_max_steps must be >= 1, got 0"),
        (("--tucker_max_seconds", "-5"), "--tucker_max_seconds must be > 0, got -5.0"),
        (("--tucker_max_seconds", "nan"), "--tucker_max_seconds must be > 0, got nan"),
        (("--meta_pattern_weight", "-10"), "--meta_pattern_weight must be >= 0"),
        (("--max_grad_norm", "0"), "--max_grad_norm must be > 0"),
        (("--learning_rate", "1e38"), "--learning_rate must be in (0, 1e+12], got 1e+38"),
        (("--validation_max_days", "0"), "--validation_max_days must be >= 1, got 0"),
        (("--final_inference_steps", "0"), "--final_inference_steps must be >= 1, got 0"),
        (("--ema_decay", "-0.5"), "--ema_decay must be in [0, 1)"),
        (("--num_train_timesteps", "5"), "--validation_inference_steps 20 is more than the 5 diffusion steps"),
        (("--num_train_timesteps", "30", "--final_evaluation"),
         "--final_inference_steps 50 is more than the 30 diffusion steps"),
    ],
)
def test_bad_flag_values_are_refused_naming_the_flag(train_script, capsys, flags, expected):
    assert expected in parse_error(train_script, capsys, "--output_dir", "x", *flags)


def test_inference_steps_are_checked_against_the_preset_default_timesteps(train_script, capsys):
    train_script.parse_args([*TINY, "--output_dir", "x", "--num_train_timesteps", "30"])  # final steps unused
    without = [a for i, a in enumerate(TINY) if "--num_train_timesteps" not in TINY[max(i - 1, 0) : i + 1]]
    with pytest.raises(SystemExit):
        train_script.parse_args([*without, "--output_dir", "x", "--final_evaluation", "--final_inference_steps", "201"])
    assert "--final_inference_steps 201 is more than the 200 diffusion steps" in capsys.readouterr().err


def test_cached_embeddings_are_pretrained_again_for_other_tucker_flags(train_script, data_dir, tmp_path):
    plain = PreparedDataset.load(data_dir)
    plain.entity_embeddings = plain.relation_embeddings = None
    plain.save(tmp_path / "plain")
    output = tmp_path / "run"
    output.mkdir()
    accelerator = Accelerator(cpu=True)

    def embeddings(dim: int, epochs: int = 1, max_steps: int | None = None):
        args = Namespace(dataset=str(tmp_path / "plain"), output_dir=output, embedding_dim=dim, tucker_epochs=epochs,
                         tucker_max_seconds=None, tucker_max_steps=max_steps)
        return train_script.load_dataset(args, accelerator).entity_embeddings

    assert embeddings(8).shape[1] == 8
    stamp = (output / EMBEDDINGS_FILE).stat().st_mtime_ns
    assert embeddings(8).shape[1] == 8 and (output / EMBEDDINGS_FILE).stat().st_mtime_ns == stamp  # reused
    assert embeddings(12).shape[1] == 12  # not the stale d=8 file
    assert embeddings(12, epochs=2).shape[1] == 12 and (output / EMBEDDINGS_FILE).stat().st_mtime_ns != stamp
    request = json.loads((output / train_script.EMBEDDINGS_REQUEST_FILE).read_text())
    assert "tucker_max_steps" not in request  # unset: the request reads as before the flag, so old caches match
    stamp = (output / EMBEDDINGS_FILE).stat().st_mtime_ns
    embeddings(12, epochs=2, max_steps=1)
    assert (output / EMBEDDINGS_FILE).stat().st_mtime_ns != stamp
    stamp = (output / EMBEDDINGS_FILE).stat().st_mtime_ns
    embeddings(12, epochs=2, max_steps=1)
    assert (output / EMBEDDINGS_FILE).stat().st_mtime_ns == stamp
    (output / train_script.EMBEDDINGS_REQUEST_FILE).unlink()  # what an older version left
    before = (output / EMBEDDINGS_FILE).stat().st_mtime_ns
    embeddings(12, epochs=2)
    assert (output / EMBEDDINGS_FILE).stat().st_mtime_ns != before


def test_resume_refuses_data_changed_since_the_run_started(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run", checkpoints=("checkpoint-3",))
    (run / "model_index.json").unlink()
    dataset = PreparedDataset.load(run / "data")  # the cached city: same ids and KG, rescaled days
    dataset.days = dataset.days * 1.5
    dataset.save(run / "data", overwrite=True)
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode == 1 and "the data of --dataset synthetic-city changed since the run started" in (
        last_line(result)
    )


def test_a_run_saved_before_the_data_digest_resumes_with_a_warning(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run", checkpoints=("checkpoint-3",))
    (run / "model_index.json").unlink()
    config_file = run / "checkpoints" / "checkpoint-3" / "training_config.json"
    stored = json.loads(config_file.read_text())
    del stored["data_digest"]
    config_file.write_text(json.dumps(stored))
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert "saved before runs recorded a digest of their days" in result.stderr
    assert (run / "model_index.json").is_file()


# Stops when validation runs the N-th time.
PAUSING_VALIDATION = pausing_script("kgdiff_diffusers.evaluation", "evaluate_pipeline")


def test_a_kill_before_a_validation_does_not_lose_its_score(tmp_path):
    run = tmp_path / "run"
    flags = (*TINY, "--output_dir", str(run), "--validation_steps", "3", "--validation_inference_steps", "2",
             "--validation_max_days", "1", "--validation_draws", "1")
    marker = tmp_path / "validating"
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSING_VALIDATION, str(marker), "2", str(REPO / "scripts" / "train.py"), *flags],
        env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, "train.py never reached step 6's validation"
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]
    train(*flags, "--resume_from_checkpoint", "latest")
    history = json.loads((run / "validation.json").read_text())["history"]
    assert [entry["step"] for entry in history] == [3, 6]


def test_resume_validates_a_checkpoint_step_that_has_no_score(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run", checkpoints=("checkpoint-3",))
    (run / "model_index.json").unlink()
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", "--validation_steps", "3",
                   "--validation_inference_steps", "2", "--validation_max_days", "1", "--validation_draws", "1")
    assert "validation.json has no score for step 3" in result.stderr
    history = json.loads((run / "validation.json").read_text())["history"]
    assert [entry["step"] for entry in history] == [3, 6]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("model.safetensors", None, "model.safetensors is not a readable safetensors file"),
        ("ema.safetensors", None, "ema.safetensors is not a readable safetensors file"),
        ("optimizer.bin", b"garbage", "optimizer.bin is not a file torch.save wrote"),
        ("random_states_0.pkl", None, "random_states_0.pkl"),
        ("training_config.json", b"{\n broken", "training_config.json is not valid JSON"),
    ],
)
def test_a_corrupt_checkpoint_file_is_named_with_the_earlier_checkpoint(reference, tmp_path, name, content, problem):
    checkpoints = copy_run(reference, tmp_path / "run").joinpath("checkpoints")
    verify_checkpoint(checkpoints / "checkpoint-6")
    file = checkpoints / "checkpoint-6" / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2] if content is None else content)
    with pytest.raises(CorruptCheckpointError) as error:
        verify_checkpoint(checkpoints / "checkpoint-6")
    message = str(error.value)
    assert f"checkpoint {checkpoints / 'checkpoint-6'} is corrupt: {problem}" in message
    assert "then --resume_from_checkpoint latest takes checkpoint-3" in message
    assert "weights_only" not in message


def test_resuming_a_truncated_checkpoint_fails_with_one_line(reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    model = run / "checkpoints" / "checkpoint-6" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    (run / "model_index.json").unlink()
    result = train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "checkpoint-6 is corrupt: model.safetensors" in last_line(result)
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")  # as the message says: then latest resumes from 3
    train(*TINY, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert load_file(run / "checkpoints" / "checkpoint-6" / "model.safetensors").keys()


def test_resuming_below_the_checkpoints_step_is_refused(train_script, reference, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    checkpoint = run / "checkpoints" / "checkpoint-6"
    args = train_script.parse_args([*TINY, "--output_dir", str(run), "--max_train_steps", "4"])
    with pytest.raises(ValueError, match=r"--max_train_steps 4 is below the step of .*checkpoint-6 \(6\): .* Give "
                                         r"--max_train_steps 6 or more"):
        train_script.check_resumed_settings(args, checkpoint)
    args = train_script.parse_args([*TINY, "--output_dir", str(run), "--max_train_steps", "6"])
    train_script.check_resumed_settings(args, checkpoint)


def test_a_named_checkpoint_resolves_in_the_run_and_later_ones_are_protected(train_script, reference, tmp_path):
    checkpoints = copy_run(reference, tmp_path / "run").joinpath("checkpoints")
    assert train_script.resolve_named_checkpoint("checkpoint-6", checkpoints) == checkpoints / "checkpoint-6"
    with pytest.raises(FileNotFoundError, match="checkpoint-99 does not exist .*checkpoint-3, checkpoint-6"):
        train_script.resolve_named_checkpoint("checkpoint-99", checkpoints)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_script.resolve_named_checkpoint(str(tmp_path / "elsewhere" / "checkpoint-3"), checkpoints)
    with pytest.raises(FileExistsError, match=r"holds later checkpoints \(checkpoint-6\)"):
        train_script.resolve_named_checkpoint(str(checkpoints / "checkpoint-3"), checkpoints)
    (checkpoints / "checkpoint-6" / "checkpoint_complete.json").unlink()
    with pytest.raises(FileNotFoundError, match="save was interrupted"):
        train_script.resolve_named_checkpoint("checkpoint-6", checkpoints)
    assert train_script.resolve_named_checkpoint("checkpoint-3", checkpoints) == checkpoints / "checkpoint-3"


def test_mean_match_strength_flag_sets_the_pipeline_config_and_refuses_values_outside_0_1(train_script, capsys):
    default = train_script.model_config(train_script.parse_args([*TINY, "--output_dir", "x"]))
    full = train_script.model_config(
        train_script.parse_args([*TINY, "--output_dir", "x", "--mean_match_strength", "1"])
    )
    assert (default.mean_match_strength, full.mean_match_strength) == (0.75, 1.0)
    for bad in ("1.5", "-0.5", "nan"):
        with pytest.raises(SystemExit):
            train_script.parse_args([*TINY, "--output_dir", "x", "--mean_match_strength", bad])
        assert "--mean_match_strength must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_script.parse_args([*TINY, "--output_dir", "x", "--mean_match_strength", "0.5", "--no_match_donor_mean"])
    assert "it does nothing with --no_match_donor_mean" in capsys.readouterr().err


def test_no_level_estimator_flag_builds_the_previous_default(train_script):
    default = train_script.model_config(train_script.parse_args([*TINY, "--output_dir", "x"]))
    without = train_script.model_config(train_script.parse_args([*TINY, "--output_dir", "x", "--no_level_estimator"]))
    assert default.use_level_estimator and not without.use_level_estimator
    assert {k: v for k, v in vars(default).items() if k != "use_level_estimator"} == {
        k: v for k, v in vars(without).items() if k != "use_level_estimator"
    }


def test_config_values_are_checked_like_their_flags(train_script, capsys, tmp_path):
    config = tmp_path / "run.yaml"
    for text, message in (
        ('no_guidance: "false"\n', "no_guidance is a switch; give true or false (unquoted), got 'false'"),
        ("max_train_steps: 2.5\n", "max_train_steps must be int, got 2.5"),
        ("learning_rate: fast\n", "learning_rate must be float, got 'fast'"),
        ("mixed_precision: no\n", "mixed_precision got false: YAML reads unquoted yes/no"),
        ("validation_metric: mea\n", "validation_metric must be one of"),
        ("train_batch_size: [8, 16]\n", "train_batch_size takes one value, got [8, 16]"),
        ("dataset: [synthetic-city\n", "not valid YAML (line 2"),
        ("- dataset\n", "must map argument names to values"),
    ):
        config.write_text(text)
        assert f"--config {config}: {message}" in parse_error(
            train_script, capsys, "--output_dir", str(tmp_path / "run"), "--config", str(config)
        )
    config.write_text("no_guidance: true\nvalidation_draws: 2\nlearning_rate: 1e-4\nmixed_precision: 'no'\n")
    args = train_script.parse_args([*TINY, "--output_dir", str(tmp_path / "run"), "--config", str(config)])
    assert (args.no_guidance, args.validation_draws, args.learning_rate, args.mixed_precision) == (True, 2, 1e-4, "no")
    assert type(args.validation_draws) is int


def test_final_evaluation_without_a_scorable_test_node_fails_before_training(data_dir, tmp_path):
    dataset = PreparedDataset.load(data_dir)
    dataset.day_mask[dataset.test_rows] = False
    dataset.save(tmp_path / "data")
    args = [a if a != "synthetic-city" else str(tmp_path / "data") for a in TINY]
    result = train(*args, "--output_dir", str(tmp_path / "run"), "--final_evaluation", check=False)
    assert result.returncode == 1 and "no test node has a valid day, so --final_evaluation" in last_line(result)
    assert not (tmp_path / "run" / "checkpoints").exists()
