"""Hub sharing: cards from a tiny run's metrics, upload lists, mocked pushes, loading from a Hub cache."""

import contextlib
import glob
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects

from kgdiff_diffusers import KGDiffPipeline, hub
from kgdiff_diffusers.data.prepared import PreparedDataset, prepare_dataset
from kgdiff_diffusers.data.synthetic import make_synthetic_city
from kgdiff_diffusers.evaluation import evaluate_pipeline, markdown_table, write_report
from kgdiff_diffusers.training import KGDiffModelConfig, build_pipeline

from .conftest import make_tiny_pipeline

REPO_ID = "user/kgdiff-tiny"
TOKEN_IN_CONFIG = "hf_not_a_real_token"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "push_to_hub.py"
EXPECTED_FILES = [
    "condition_encoder/config.json",
    "condition_encoder/diffusion_pytorch_model.safetensors",
    "daily_profiles.png",
    "donor_prior/config.json",
    "donor_prior/diffusion_pytorch_model.safetensors",
    "level_estimator/config.json",
    "level_estimator/diffusion_pytorch_model.safetensors",
    "meta_pattern/config.json",
    "meta_pattern/diffusion_pytorch_model.safetensors",
    "metrics.json",
    "model_index.json",
    "report.md",
    "scheduler/scheduler_config.json",
    "tsne.png",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "value_kde.png",
]


@dataclass
class TinyRun:
    model_dir: Path
    dataset_dir: Path
    dataset: PreparedDataset
    pipe: KGDiffPipeline
    metrics: dict


def _tiny_dataset(name: str) -> PreparedDataset:
    data, kg = make_synthetic_city(num_nodes=12, num_days=10, steps_per_day=48, seed=0)
    rng = np.random.default_rng(0)
    return prepare_dataset(
        data,
        kg,
        name,
        test_fraction=0.25,
        entity_embeddings=rng.normal(size=(kg.num_entities, 16)).astype(np.float32),
        relation_embeddings=rng.normal(size=(2 * kg.num_relations, 16)).astype(np.float32),
    )


def _tiny_pipeline(dataset: PreparedDataset, **switches) -> KGDiffPipeline:
    """An untrained pipeline with 16x16 images, 16-dim conditions and 50 diffusion steps."""
    config = KGDiffModelConfig(
        condition_dim=16,
        num_train_timesteps=50,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        meta_pattern_hidden_dim=32,
        **switches,
    )
    pipe = build_pipeline(dataset, config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> TinyRun:
    root = tmp_path_factory.mktemp("run")
    dataset = _tiny_dataset("synthetic_city")
    dataset.save(root / "data")
    torch.manual_seed(0)
    pipe = _tiny_pipeline(dataset)
    pipe.set_progress_bar_config(disable=True)
    model_dir = root / "model"
    pipe.save_pretrained(model_dir)
    # metrics.json, report.md and pictures as scripts/evaluate.py writes them, from a real (tiny) evaluation.
    scheduler = pipe.scheduler
    result = evaluate_pipeline(pipe, dataset, num_inference_steps=4, sampler="ddim", seed=0)
    write_report(result, model_dir, dataset.interval_minutes, list(dataset.feature_names))
    pipe.scheduler = scheduler  # evaluate_pipeline swapped in the DDIM sampler
    training_config = {  # keys as scripts/train.py writes them
        "dataset": str(root / "data"),
        "output_dir": str(model_dir),
        "hub_token": TOKEN_IN_CONFIG,
        "dataset_name": dataset.name,
        "train_node_ids": dataset.train_node_ids,
        "test_node_ids": dataset.test_node_ids,
    }
    (model_dir / "training_config.json").write_text(json.dumps(training_config))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return TinyRun(model_dir, root / "data", dataset, pipe, metrics)


def _copy_model(run: TinyRun, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(run.model_dir, target)
    return target


@pytest.mark.parametrize(
    ("name", "flavour"),
    [
        ("pems_bay_16", "pems-bay"),
        ("PEMS-BAY", "pems-bay"),
        ("metr_la_week", "metr-la"),
        ("nyc_bike_manhattan69", "nyc-bike"),
        ("citi-bike", "nyc-bike"),
        ("nyc_taxi", "generic"),
        ("synthetic_city", "generic"),
    ],
)
def test_detect_flavour(name, flavour):
    assert hub.detect_flavour(name) == flavour


def test_wheel_ships_the_card_templates(tmp_path):
    """A non-editable install must find the templates: they are package data, not repository files."""
    pytest.importorskip("setuptools")
    repo_root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the repository
    for folder in ("src", "hub_cards"):
        shutil.copytree(repo_root / folder, source / folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=source, check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("kgdiff_diffusers-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if "/hub_cards/" in name}
    templates = {
        "kgdiff_diffusers/" + path.relative_to(hub.TEMPLATE_DIR.parent).as_posix()
        for path in hub.TEMPLATE_DIR.rglob("*") if path.is_file()
    }
    assert {"kgdiff_diffusers/hub_cards/model_card.md", "kgdiff_diffusers/hub_cards/dataset_card.md"} <= templates
    assert shipped == templates
    assert hub.TEMPLATE_DIR == repo_root / "hub_cards"  # the top-level layout of the design card
    modules = {path.relative_to(repo_root / "src").as_posix() for path in (repo_root / "src").rglob("*.py")}
    assert modules <= set(zipfile.ZipFile(wheel).namelist())  # pyproject's package list misses none


@pytest.mark.parametrize("flavour", hub.FLAVOURS)
def test_model_card_metadata_round_trips_metrics(run, tmp_path, flavour):
    card = hub.render_model_card(run.model_dir, flavour=flavour, repo_id=REPO_ID)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.library_name == "kgdiff-diffusers"
    assert data.pipeline_tag is None
    assert data.license == "apache-2.0"
    assert data.datasets == ["synthetic_city"]
    assert {"diffusers", "kgdiff", "spatio-temporal", "knowledge-graph"} <= set(data.tags)
    assert set(hub.load_flavour(flavour)["domain_tags"]) <= set(data.tags)
    assert data.model_name == "kgdiff-tiny"
    expected = {k: v for k, v in run.metrics["methods"]["KGDiff"].items() if math.isfinite(v)}
    assert {r.metric_type: r.metric_value for r in data.eval_results} == expected
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert {r.dataset_args["num_test_nodes"] for r in data.eval_results} == {len(run.dataset.test_node_ids)}
    text = loaded.text
    assert hub.load_flavour(flavour)["title"] in text
    assert markdown_table(run.metrics).strip() + "\n\n" in text  # a blank line ends the table
    for name, values in run.metrics["methods"].items():
        assert re.search(rf"\| {name} \| (\*\*)?{values['mae']:.3f}(\*\*)? \|", text), name
    assert "@inproceedings{kgdiff2026" in text
    assert (
        "Knowledge Graph Guided Heterogeneity-Informed Diffusion Model for Spatio-Temporal Generation" in text
    )


def test_model_card_data_split_and_training_config(run):
    card = hub.render_model_card(run.model_dir, repo_id=REPO_ID)
    text = card.text
    assert hub.load_flavour("generic")["title"] in text  # flavour detected from "synthetic_city"
    dates = run.dataset.dates
    assert f"{len(dates)} dates from {dates[0]} to {dates[-1]} (weekdays only); day types learnt: weekday" in text
    assert "It was trained on weekday days only (`pipe.config.day_types`) and refuses another `day_type`" in text
    assert "Test (unseen): " + ", ".join(run.dataset.test_node_ids) in text
    train_ids = [n for n in run.pipe.config.node_ids if n not in set(run.dataset.test_node_ids)]
    assert "Training: " + ", ".join(train_ids) in text
    kg = run.dataset.kg
    assert f"{kg.num_entities} entities, {kg.num_relations} relations, {len(kg.triples)} triples" in text
    assert TOKEN_IN_CONFIG not in str(card)
    assert '"hub_token": "<removed>"' in text
    assert '"dataset_name": "synthetic_city"' in text and '"train_node_ids"' not in text
    assert 'make_sampler("ddim", pipe.scheduler.config)' in text
    unet_params = sum(p.numel() for p in run.pipe.unet.parameters())
    assert f"| `unet` | `KGDiffUNet2DModel` | {unet_params:,} |" in text
    bank = run.pipe.donor_prior.config
    assert f"stores up to {bank.num_bank_days} real days of each of its {bank.num_bank} training" in text
    assert "strength 1 (pure noise: the stored days are not used)" in text  # saved before any start was chosen


def test_model_card_states_the_chosen_donor_day_start(run, tmp_path):
    model_dir = _copy_model(run, tmp_path)
    index = json.loads((model_dir / "model_index.json").read_text())
    index.update(start_strength=0.25, level_exponent=0.5)
    (model_dir / "model_index.json").write_text(json.dumps(index))
    text = hub.render_model_card(model_dir, repo_id=REPO_ID).text
    assert "exponent 0.5) noised to\nstrength 0.25 of the chain" in text
    assert "from a day of any training" not in text
    index.update(random_donor_share=0.25)
    (model_dir / "model_index.json").write_text(json.dumps(index))
    text = hub.render_model_card(model_dir, repo_id=REPO_ID).text
    assert "validation nodes). A share 0.25 of the days starts from a day of any training" in text
    assert "level error" not in text
    index.update(level_noise=0.5)
    (model_dir / "model_index.json").write_text(json.dumps(index))
    text = hub.render_model_card(model_dir, repo_id=REPO_ID).text
    assert "leave-one-out level error of a random training" in text and "(scaled by 0.5, mean level kept)" in text
    matched = "they are shifted together so that their mean moves 0.75 of the way from the mean of the donors"
    assert index["match_donor_mean"] and matched in " ".join(text.split())  # the default of a new pipeline
    index.update(mean_match_strength=1.0)
    (model_dir / "model_index.json").write_text(json.dumps(index))
    text = " ".join(hub.render_model_card(model_dir, repo_id=REPO_ID).text.split())
    assert "shifted together so that their mean is the expected donor day, not the mean of the donors" in text
    index.update(match_donor_mean=False)
    (model_dir / "model_index.json").write_text(json.dumps(index))
    assert matched not in " ".join(hub.render_model_card(model_dir, repo_id=REPO_ID).text.split())
    blended = "The mean day mixes the donor prior's with the KG regression `f(phi)`, weight [0.4] on the donors"
    assert "The mean day mixes" not in text  # all weight on the donors: nothing to say
    assert index["residual_at_blend_level"]  # the default of a new pipeline
    index.update(prior_blend=[0.4])
    (model_dir / "model_index.json").write_text(json.dumps(index))
    text = " ".join(hub.render_model_card(model_dir, repo_id=REPO_ID).text.split())
    assert blended in text and "Days vary around the mix at its level" in text
    index.update(residual_at_blend_level=False)
    (model_dir / "model_index.json").write_text(json.dumps(index))
    text = " ".join(hub.render_model_card(model_dir, repo_id=REPO_ID).text.split())
    assert blended in text and "Days vary around the mix" not in text


def test_model_card_rejects_metrics_of_another_pipeline(run, tmp_path):
    model_dir = _copy_model(run, tmp_path)
    metrics = dict(run.metrics, test_node_ids=["not-a-node"])
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="another pipeline"):
        hub.render_model_card(model_dir)


def test_files_to_upload_excludes_training_state(run, tmp_path):
    model_dir = _copy_model(run, tmp_path)
    state = [
        "checkpoints/checkpoint-10/unet/config.json",
        "checkpoints/checkpoint-10/unet/diffusion_pytorch_model.safetensors",
        "checkpoints/checkpoint-10/optimizer.bin",
        "checkpoint-20/random_states_0.pkl",
        "optimizer.pt",
        "scheduler.bin",
        "random_states_0.pkl",
        "unet/diffusion_pytorch_model.bin",
        "unet/optimizer_state.pt",
        "logs/train/events.out.tfevents.1",
        "ema/diffusion_pytorch_model.safetensors",
    ]
    for path in state:
        (model_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / path).write_bytes(b"x")
    assert hub.files_to_upload(model_dir) == EXPECTED_FILES


def test_files_to_upload_of_a_two_feature_pipeline(tmp_path):
    # feature_names / feature_mean of two features look like [library, class] pairs in model_index.json
    make_tiny_pipeline(num_features=2).save_pretrained(tmp_path)
    expected = [
        f for f in EXPECTED_FILES
        if ("/" in f and not f.startswith(("donor_prior/", "level_estimator/"))) or f == "model_index.json"
    ]
    assert hub.files_to_upload(tmp_path) == expected


def test_pickled_weights_are_refused(run, tmp_path):
    model_dir = _copy_model(run, tmp_path)
    weights = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ValueError, match="safe_serialization=True"):
        hub.files_to_upload(model_dir)


def test_not_a_pipeline_folder(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved KGDiff pipeline"):
        hub.push_pipeline(tmp_path, REPO_ID, dry_run=True)
    model_dir = _copy_model(run, tmp_path)
    index = json.loads((model_dir / "model_index.json").read_text())
    (model_dir / "model_index.json").write_text(json.dumps(dict(index, _class_name="DDPMPipeline")))
    with pytest.raises(ValueError, match="'DDPMPipeline', not a KGDiffPipeline"):
        hub.push_pipeline(model_dir, REPO_ID, dry_run=True)


def test_missing_metrics(run, tmp_path):
    model_dir = _copy_model(run, tmp_path)
    (model_dir / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="scripts/evaluate.py"):
        hub.push_pipeline(model_dir, REPO_ID, dry_run=True)


def test_not_logged_in(run, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    upload_folder = mock.Mock(side_effect=AssertionError("must not upload"))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    for push, folder in ((hub.push_pipeline, run.model_dir), (hub.push_prepared_dataset, run.dataset_dir)):
        with pytest.raises(hub.NotLoggedInError, match=r"hf auth login.*huggingface-cli login.*HF_TOKEN"):
            push(folder, REPO_ID)
    assert not (run.model_dir / "README.md").exists()


def _load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_dry_run_script_prints_files_and_card(run, capsys, monkeypatch):
    script = _load_script()
    for method in ("create_repo", "upload_folder"):
        monkeypatch.setattr(
            HfApi, method, mock.Mock(side_effect=AssertionError("dry run must not contact the Hub"))
        )
    monkeypatch.setattr(hub, "get_token", lambda: None)  # a dry run needs no login
    upload = script.main(["--model", str(run.model_dir), "--repo_id", REPO_ID, "--dry_run"])
    out = capsys.readouterr().out
    assert upload.files == sorted(EXPECTED_FILES + ["README.md"])
    listed = re.findall(r"^  (\S+)$", out.split("--- README.md ---")[0], flags=re.MULTILINE)
    assert listed == upload.files
    assert out.split("--- README.md ---\n")[1].strip() == str(upload.card).strip()
    assert f'KGDiffPipeline.from_pretrained("{REPO_ID}")' in out
    assert not (run.model_dir / "README.md").exists()


def test_push_with_mocked_hf_api(run, tmp_path):
    model_dir = _copy_model(run, tmp_path)
    for path in ("checkpoints/checkpoint-10/unet/config.json", "optimizer.bin", "logs/events.out.tfevents.1"):
        (model_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / path).write_bytes(b"x")
    commit = SimpleNamespace(commit_url=f"https://huggingface.co/{REPO_ID}/commit/abc")
    with (
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "upload_folder", return_value=commit) as upload_folder,
    ):
        upload = hub.push_pipeline(model_dir, REPO_ID, private=True, token="hf_test")
    create_repo.assert_called_once_with(REPO_ID, repo_type="model", private=True, exist_ok=True)
    kwargs = upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == REPO_ID and kwargs["repo_type"] == "model"
    assert kwargs["folder_path"] == str(model_dir)
    assert kwargs["allow_patterns"] == [glob.escape(path) for path in upload.files]
    # What upload_folder would send: huggingface_hub's own filter over every file of the folder.
    every_file = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    sent = list(filter_repo_objects(every_file, allow_patterns=kwargs["allow_patterns"]))
    assert sent == sorted(EXPECTED_FILES + ["README.md"])
    assert upload.commit_url == commit.commit_url
    assert ModelCard.load(model_dir / "README.md").data.eval_results[0].metric_type == "mae"


def _blob_name(data: bytes, path: str) -> str:
    """The cache's blob name: sha256 for LFS files (weights), git's blob sha1 for the others."""
    if path.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _add_snapshot(cache: Path, repo_id: str, folder: Path, files: list[str], ref: str) -> str:
    """Lays out ``files`` of ``folder`` as one commit of ``repo_id`` in a Hub cache and points ``refs/<ref>``
    at it (``models--user--name/{blobs,snapshots/<commit>,refs}``, snapshot files as relative symlinks)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{ref}:{folder}".encode()).hexdigest()
    for path in files:
        data = (folder / path).read_bytes()
        blob = repo / "blobs" / _blob_name(data, path)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(run, tmp_path, monkeypatch) -> SimpleNamespace:
    """A Hub cache with ``user/kgdiff-tiny`` at ``main`` (the tiny run, with its card) and at a branch ``dev``
    (another pipeline), in offline mode."""
    cache = tmp_path / "hub"
    model_dir = _copy_model(run, tmp_path)
    upload = hub.push_pipeline(model_dir, REPO_ID, dry_run=True)
    upload.card.save(model_dir / "README.md")
    main = _add_snapshot(cache, REPO_ID, model_dir, upload.files, "main")
    torch.manual_seed(1)
    other = _tiny_pipeline(run.dataset, use_meta_pattern=False)
    other.save_pretrained(tmp_path / "other")
    dev = _add_snapshot(cache, REPO_ID, tmp_path / "other", hub.files_to_upload(tmp_path / "other"), "dev")
    # huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE into constants at import: patch both.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return SimpleNamespace(cache=cache, main=main, dev=dev, card=upload.card, other=other)




def _generate(pipe: KGDiffPipeline, node_ids: list[str]) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        node_ids=node_ids, num_samples=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    ).series


def test_from_pretrained_by_hub_id_offline(run, hub_cache):
    pipe = KGDiffPipeline.from_pretrained(REPO_ID)
    nodes = run.dataset.test_node_ids[:2]
    assert np.array_equal(_generate(pipe, nodes), _generate(run.pipe, nodes))
    assert pipe.config._name_or_path == REPO_ID


def test_from_pretrained_honours_revision(run, hub_cache):
    nodes = run.dataset.test_node_ids[:1]
    for revision in ("dev", hub_cache.dev):
        pipe = KGDiffPipeline.from_pretrained(REPO_ID, revision=revision)
        assert pipe.meta_pattern is None
        assert np.array_equal(_generate(pipe, nodes), _generate(hub_cache.other, nodes))
    assert KGDiffPipeline.from_pretrained(REPO_ID, revision=hub_cache.main).meta_pattern is not None
    with pytest.raises(OSError, match="not fully cached locally"):
        KGDiffPipeline.from_pretrained(REPO_ID, revision="no-such-branch")


def test_card_usage_snippet_runs_from_hub_cache(hub_cache):
    snippet = re.search(r"```python\n(.*?)```", hub_cache.card.text, flags=re.DOTALL).group(1)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(snippet, "README.md", "exec"), {})
    assert stdout.getvalue().strip() == "(1, 8, 48, 1)"


def test_dataset_card_and_local_load_dataset(run, tmp_path):
    staging = tmp_path / "repo"
    upload = hub.stage_prepared_dataset(run.dataset_dir, staging, repo_id="user/tiny-city")
    assert "days.parquet" not in upload.files
    assert {
        "README.md",
        "data/train.parquet",
        "data/test.parquet",
        "nodes.csv",
        "prepared.json",
        "kg/triples.tsv",
        "kg_embeddings.safetensors",
    } <= set(upload.files)
    card = DatasetCard.load(staging / "README.md")
    configs = {c["config_name"]: c for c in card.data.configs}
    assert configs["default"]["data_files"] == [
        {"split": "train", "path": "data/train.parquet"},
        {"split": "test", "path": "data/test.parquet"},
    ]
    assert 'load_dataset("user/tiny-city")' in card.text

    dataset = run.dataset
    loaded = datasets.load_dataset(str(staging), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "test"}
    for split, rows in (("train", dataset.train_rows), ("test", dataset.test_rows)):
        table = loaded[split].with_format("numpy")[:]
        assert len(table["node_id"]) == len(rows) * len(dataset.dates)
        row_of = {node_id: i for i, node_id in enumerate(dataset.node_ids)}
        date_of = {date: j for j, date in enumerate(dataset.dates)}
        node_rows = np.array([row_of[n] for n in table["node_id"]])
        assert set(node_rows) == set(rows)
        date_cols = np.array([date_of[d] for d in table["date"]])
        assert np.array_equal(table["values"], dataset.days[node_rows, date_cols])
        assert np.array_equal(table["valid"], dataset.day_mask[node_rows, date_cols])
    nodes = datasets.load_dataset(str(staging), "nodes", cache_dir=str(tmp_path / "cache"))[
        "train"
    ].to_pandas()
    assert nodes["node_id"].tolist() == dataset.node_ids  # ids such as "00" stay strings
    assert np.array_equal(nodes["lat"].to_numpy(), dataset.node_table["lat"].to_numpy())
    assert nodes["split"].tolist() == dataset.node_table["split"].tolist()

    again = PreparedDataset.load(staging)
    assert np.array_equal(again.days, dataset.days) and np.array_equal(again.day_mask, dataset.day_mask)
    assert again.test_node_ids == dataset.test_node_ids


def test_push_prepared_dataset_with_mocked_hf_api(run):
    sent = {}

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        sent.update(kwargs, files=list(filter_repo_objects(files, allow_patterns=kwargs["allow_patterns"])))
        return SimpleNamespace(commit_url="https://huggingface.co/datasets/user/tiny-city/commit/abc")

    with (
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "upload_folder", upload_folder),
    ):
        upload = hub.push_prepared_dataset(run.dataset_dir, "user/tiny-city", token="hf_test")
    create_repo.assert_called_once_with("user/tiny-city", repo_type="dataset", private=False, exist_ok=True)
    assert sent["repo_type"] == "dataset" and sent["files"] == upload.files
    assert upload.repo_id == "user/tiny-city" and upload.commit_url.endswith("/abc")
    assert 'load_dataset("user/tiny-city")' in upload.card.text


def test_dataset_dry_run_script(run, capsys, monkeypatch):
    script = _load_script()
    no_upload = mock.Mock(side_effect=AssertionError("a dry run uploads nothing"))
    monkeypatch.setattr(HfApi, "upload_folder", no_upload)
    upload = script.main(["--dataset", str(run.dataset_dir), "--repo_id", "user/tiny-city", "--dry_run"])
    out = capsys.readouterr().out
    assert upload.repo_type == "dataset" and "data/test.parquet" in upload.files
    assert re.findall(r"^  (\S+)$", out.split("--- README.md ---")[0], flags=re.MULTILINE) == upload.files
    with pytest.raises(SystemExit):
        script.parse_args(["--dataset", "d", "--repo_id", "u/n", "--dataset_repo_id", "u/d"])


def test_a_bad_repo_id_is_refused_even_in_a_dry_run(run):
    for repo_id in ("user/kgdiff/extra", "my model"):
        with pytest.raises(ValueError, match=f"repo_id '{repo_id}' is not a Hub repository id such as USER/NAME"):
            hub.push_pipeline(run.model_dir, repo_id, dry_run=True)
        with pytest.raises(ValueError, match=f"repo_id '{repo_id}' is not a Hub repository id"):
            hub.push_prepared_dataset(run.dataset_dir, repo_id, dry_run=True)
    with pytest.raises(ValueError, match="dataset_repo_id 'a/b/c' is not a Hub repository id"):
        hub.push_pipeline(run.model_dir, REPO_ID, dry_run=True, dataset_repo_id="a/b/c")
