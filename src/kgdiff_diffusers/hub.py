"""Sharing on the Hugging Face Hub: model and dataset cards from ``hub_cards/``, upload lists and pushes.

A trained pipeline folder (``save_pretrained`` output of ``scripts/train.py``) is pushed as a model repository
holding only what :meth:`KGDiffPipeline.from_pretrained` reads (``model_index.json``, each component's config
and ``*.safetensors``) plus the rendered card (``README.md``) and the evaluation (``metrics.json``,
``report.md``, top-level ``*.png``). Checkpoints, optimizer / scheduler states, pickles and logs never leave
the machine. The card's model-index is built from ``metrics.json``, never typed in.

A prepared dataset folder (:class:`~kgdiff_diffusers.data.prepared.PreparedDataset`) is pushed as a dataset
repository whose card declares ``configs``, so that ``datasets.load_dataset(repo_id)`` loads the day samples
with a ``train`` and a ``test`` split (training / unseen test nodes) and ``load_dataset(repo_id, "nodes")``
the node table (split ``train``); the repository is also a prepared-dataset folder that
``PreparedDataset.load`` reads.

Card templates (Jinja, rendered by ``ModelCard.from_template`` / ``DatasetCard.from_template``) live in
``hub_cards/`` at the repository's top level, shipped in the wheel as ``kgdiff_diffusers/hub_cards/`` (see
pyproject.toml): ``model_card.md``, ``dataset_card.md`` and one
``flavours/<flavour>.yaml`` of text blocks per flavour (:data:`FLAVOURS`).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub.repocard import RepoCard
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open

from .data.prepared import DAYS_DIR, DAYS_PARQUET, EMBEDDINGS_FILE, KG_DIR, META_FILE, NODES_FILE
from .evaluation import MMD_BANDWIDTH_NOTE, MODEL_NAME, day_type_tables, markdown_table
from .kg.graph import INVERSE_SUFFIX, KnowledgeGraph
from .pipelines.pipeline_kgdiff import KGDiffPipeline
from .schedulers.scheduling_kgdiff import SAMPLERS

logger = logging.getLogger(__name__)

# An installed wheel carries the templates inside the package; a source checkout keeps them at its top level.
_PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = next(
    (folder for folder in (_PACKAGE_DIR / "hub_cards", _PACKAGE_DIR.parents[1] / "hub_cards") if folder.is_dir()),
    _PACKAGE_DIR / "hub_cards",
)
FLAVOURS = ("pems-bay", "metr-la", "nyc-bike", "generic")
LIBRARY_NAME = "kgdiff-diffusers"
DEFAULT_LICENSE = "apache-2.0"
MODEL_INDEX_FILE = "model_index.json"
METRICS_FILE = "metrics.json"
TRAINING_CONFIG_FILE = "training_config.json"
CARD_FILE = "README.md"
BASE_TAGS = ["diffusers", "kgdiff", "spatio-temporal", "knowledge-graph", "urban-computing", "time-series"]

# Per component folder named in model_index.json: what from_pretrained reads.
COMPONENT_PATTERNS = ("config.json", "scheduler_config.json", "*.safetensors", "*.safetensors.index.json")
# Top-level evaluation outputs worth sharing next to the weights.
TOP_LEVEL_PATTERNS = (MODEL_INDEX_FILE, CARD_FILE, METRICS_FILE, "report.md", "*.png")
# (metrics.json key, display name); the model-index of a card reports these for KGDiff.
METRICS = (
    ("mae", "MAE"),
    ("rmse", "RMSE"),
    ("mmd", "MMD"),
    ("mmd_fixed_bandwidth", "MMD (fixed bandwidth)"),
    ("jsd", "JSD"),
    ("crps", "CRPS"),
    ("spread_ratio", "spread ratio (1 = real spread)"),
    ("out_of_range", "share below the physical lower bound"),
)
# Hub dataset splits (= node split) and their parquet files.
SPLIT_FILES = {"train": "data/train.parquet", "test": "data/test.parquet"}
# The node table for load_dataset(repo_id, "nodes"): parquet keeps ids such as "00" as strings, CSV not.
NODES_PARQUET = "data/nodes.parquet"
SECRET_KEY = re.compile(r"token|password|secret", re.IGNORECASE)


class NotLoggedInError(RuntimeError):
    """No Hugging Face token: neither ``token=`` nor a saved login / ``HF_TOKEN``."""


@dataclass
class HubUpload:
    """What a push sends (or, for a dry run, would send).

    Attributes:
        repo_id: ``"user/name"``.
        repo_type: ``"model"`` or ``"dataset"``.
        files: repository paths (POSIX), sorted.
        card: the rendered card (uploaded as ``README.md``).
        commit_url: URL of the upload commit; ``None`` for a dry run.
    """

    repo_id: str
    repo_type: str
    files: list[str]
    card: RepoCard
    commit_url: str | None = None


def detect_flavour(dataset_name: str) -> str:
    """Card flavour of a dataset name: ``"pems-bay"``, ``"metr-la"``, ``"nyc-bike"`` or ``"generic"``.

    Matches case- and punctuation-insensitively, e.g. ``"pems_bay_16"`` -> ``"pems-bay"``,
    ``"nyc_bike_manhattan69"`` -> ``"nyc-bike"``.
    """
    key = re.sub(r"[^a-z0-9]", "", str(dataset_name).lower())
    if "pemsbay" in key:
        return "pems-bay"
    if "metrla" in key:
        return "metr-la"
    if ("nyc" in key or "citi" in key) and "bike" in key:
        return "nyc-bike"
    return "generic"


def load_flavour(flavour: str, template_dir: str | os.PathLike | None = None) -> dict:
    """The text blocks of ``hub_cards/flavours/<flavour>.yaml`` (title, tags, units, descriptions, terms)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour={flavour!r} is not one of {FLAVOURS}")
    path = _template_dir(template_dir) / "flavours" / f"{flavour}.yaml"
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _template_dir(template_dir: str | os.PathLike | None) -> Path:
    folder = Path(template_dir) if template_dir is not None else TEMPLATE_DIR
    if not (folder / "model_card.md").is_file():
        raise FileNotFoundError(
            f"card templates not found in {folder}: pass template_dir= (laid out like the package's hub_cards/)"
        )
    return folder


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_model_index(model_dir: str | os.PathLike) -> dict:
    """``model_index.json`` of a saved KGDiff pipeline folder.

    Raises:
        FileNotFoundError: ``model_dir`` has no ``model_index.json``.
        ValueError: the folder holds another pipeline class.
    """
    path = Path(model_dir) / MODEL_INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a saved KGDiff pipeline (no {MODEL_INDEX_FILE}); save one with "
            "pipe.save_pretrained(DIR) or scripts/train.py --output_dir DIR"
        )
    index = _read_json(path)
    if index.get("_class_name") != KGDiffPipeline.__name__:
        raise ValueError(
            f"{path} describes a {index.get('_class_name')!r}, not a {KGDiffPipeline.__name__}; push other "
            "pipelines with their own push_to_hub"
        )
    return index


def read_metrics(model_dir: str | os.PathLike) -> dict:
    """``metrics.json`` of a pipeline folder (the contract's format, with a ``KGDiff`` method)."""
    path = Path(model_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; the card's results come from it. Evaluate the pipeline first: "
            f"python scripts/evaluate.py --model {model_dir} --data PREPARED_DATASET "
            f"--output_dir {model_dir} (scripts/train.py writes it after its final evaluation)"
        )
    metrics = _read_json(path)
    missing = [key for key in ("dataset", "test_node_ids", "methods") if key not in metrics]
    if missing or MODEL_NAME not in metrics.get("methods", {}):
        raise ValueError(
            f"{path} lacks {missing or ['methods.' + MODEL_NAME]}; rewrite it with scripts/evaluate.py"
        )
    return metrics


def _components(index: dict) -> list[str]:
    """Component folder names of a KGDiff model index: the pipeline's modules that were saved (not ``None``).

    Taken from :class:`KGDiffPipeline`'s signature, not guessed from the values: a config entry such as
    ``feature_names: ["inflow", "outflow"]`` looks like a ``[library, class]`` pair.
    """
    modules, _ = KGDiffPipeline._get_signature_keys(KGDiffPipeline)
    return sorted(
        name for name in modules if isinstance(index.get(name), list) and index[name][0] is not None
    )


def files_to_upload(model_dir: str | os.PathLike) -> list[str]:
    """Repository paths of a pipeline folder that a push uploads, sorted.

    Only ``model_index.json``, ``README.md``, ``metrics.json``, ``report.md`` and ``*.png`` at the top level
    and, inside each component folder named in ``model_index.json``, ``config.json`` /
    ``scheduler_config.json`` / ``*.safetensors`` (and safetensors shard indexes). Everything else
    (``checkpoint-*/``, optimizer and scheduler states, ``*.bin``/``*.pt``/``*.pkl``, ``random_states*``,
    logs, ``training_config.json``) stays.

    Raises:
        FileNotFoundError / ValueError: not a KGDiff pipeline folder, or a component without safetensors
            weights (a folder saved with ``safe_serialization=False``).
    """
    root = Path(model_dir)
    index = read_model_index(root)
    files = [
        p.name
        for p in root.iterdir()
        if p.is_file() and any(fnmatch(p.name, pat) for pat in TOP_LEVEL_PATTERNS)
    ]
    for component in _components(index):
        folder = root / component
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{MODEL_INDEX_FILE} names the component {component!r} but {folder} is missing"
            )
        names = [p.name for p in folder.iterdir() if p.is_file()]
        weights = [n for n in names if n.endswith(".safetensors")]
        if not weights and any(n.endswith(".bin") for n in names):
            raise ValueError(
                f"{folder} has only pickled weights (*.bin): re-save the pipeline with "
                "save_pretrained(DIR, safe_serialization=True); only safetensors are uploaded"
            )
        files += [f"{component}/{n}" for n in names if any(fnmatch(n, pat) for pat in COMPONENT_PATTERNS)]
    return sorted(files)


def _count_parameters(folder: Path) -> int:
    """Number of values in the ``*.safetensors`` files of a component folder (read from their headers)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def _prepared_meta(dataset_dir: str | os.PathLike | None, training_config: dict | None) -> dict | None:
    """``prepared.json`` of the training data: from ``dataset_dir``, else the training config's ``dataset``
    folder; ``None`` when neither is a prepared dataset folder."""
    folder = dataset_dir if dataset_dir is not None else (training_config or {}).get("dataset")
    if folder and (Path(folder) / META_FILE).is_file():
        return _read_json(Path(folder) / META_FILE)
    if dataset_dir is not None:
        raise FileNotFoundError(
            f"dataset_dir={dataset_dir} is not a prepared dataset folder (no {META_FILE})"
        )
    return None


def _units(feature_names: list[str], flavour: dict, interval_minutes: int) -> list[dict]:
    units = flavour.get("units") or {}
    features = []
    for name in feature_names:
        unit = units.get(name, "the data's own unit (not recorded)")
        unit = unit.replace("per interval", f"per {interval_minutes} min")
        features.append({"name": name, "unit": unit, "unit_text": f"{name}: {unit}"})
    return features


def eval_results(metrics: dict, dataset_type: str, dataset_name: str) -> list[EvalResult]:
    """Model-index entries of the ``KGDiff`` method of a ``metrics.json`` dict (non-finite values left out).

    Args:
        metrics: the parsed ``metrics.json``.
        dataset_type: Hub dataset id (or the dataset's name when it is not on the Hub).
        dataset_name: human-readable dataset name.
    """
    values = metrics["methods"][MODEL_NAME]
    common = {
        "task_type": "other",
        "task_name": "Spatio-temporal generation for unseen nodes",
        "dataset_type": dataset_type,
        "dataset_name": dataset_name,
        "dataset_split": metrics.get("split", "test"),
        "dataset_args": {"num_test_nodes": len(metrics["test_node_ids"])},
    }
    args = {
        "mmd": {"bandwidth": "pooled real + generated days (KSTDiff)"},
        "mmd_fixed_bandwidth": {"bandwidth": "real days only"},
        "jsd": {"bins": metrics.get("jsd_bins"), "log_base": "e"},
        "out_of_range": {"lower_bound": metrics.get("lower_bound")},
    }
    results = []
    for key, display in METRICS:
        value = values.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            results.append(
                EvalResult(
                    metric_type=key,
                    metric_name=display,
                    metric_value=float(value),
                    metric_args=args.get(key),
                    **common,
                )
            )
    return results


def render_model_card(
    model_dir: str | os.PathLike,
    flavour: str | None = None,
    repo_id: str | None = None,
    dataset_dir: str | os.PathLike | None = None,
    dataset_repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    template_dir: str | os.PathLike | None = None,
) -> ModelCard:
    """The model card of a trained pipeline folder, from ``hub_cards/model_card.md`` and a flavour.

    Args:
        model_dir: folder written by ``save_pretrained`` holding ``metrics.json`` (and optionally
            ``training_config.json``).
        flavour: one of :data:`FLAVOURS`; ``None`` = :func:`detect_flavour` of ``metrics.json``'s ``dataset``.
        repo_id: ``"user/name"`` used in the usage snippet; ``None`` = the local folder path.
        dataset_dir: prepared dataset folder of the training data (period, split rule, KG size); ``None``
            = the training config's ``dataset`` when that folder exists.
        dataset_repo_id: Hub id of the dataset, for the card's ``datasets`` metadata and model-index;
            ``None`` = the dataset's name.
        license: Hub licence id of the weights.
        template_dir: folder holding the templates (default: the package's ``hub_cards/``).
    """
    model_dir = Path(model_dir)
    index = read_model_index(model_dir)
    metrics = read_metrics(model_dir)
    template_dir = _template_dir(template_dir)
    dataset = str(metrics["dataset"])
    text = load_flavour(flavour or detect_flavour(dataset), template_dir)
    node_ids = [str(n) for n in index["node_ids"]]
    test_node_ids = [str(n) for n in metrics["test_node_ids"]]
    unknown = sorted(set(test_node_ids) - set(node_ids))
    if unknown:
        raise ValueError(
            f"{model_dir / METRICS_FILE} evaluates test nodes {unknown[:5]} that {MODEL_INDEX_FILE} does not "
            "list: the metrics belong to another pipeline"
        )
    training_config, redacted = _training_config(model_dir)
    train_node_ids = [str(n) for n in training_config.get("train_node_ids") or []] or [
        n for n in node_ids if n not in set(test_node_ids)
    ]
    shown_config = {k: v for k, v in training_config.items() if k not in ("train_node_ids", "test_node_ids")}
    prepared = _prepared_meta(dataset_dir, training_config)
    sampler = str(metrics.get("sampler", "ddpm"))
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        license=license,
        tags=list(dict.fromkeys(BASE_TAGS + list(text["domain_tags"]))),
        datasets=[dataset_repo_id or dataset],
        metrics=[key for key, _ in METRICS],
        model_name=(repo_id or model_dir.name).split("/")[-1],
        eval_results=eval_results(metrics, dataset_repo_id or dataset, f"{text['title']} ({dataset})"),
    )
    bandwidth = metrics.get("mmd_bandwidth")
    scheduler_config = _read_json(model_dir / "scheduler" / "scheduler_config.json")
    donor_config = _read_json(model_dir / "donor_prior" / "config.json") if (model_dir / "donor_prior").is_dir() else {}
    return ModelCard.from_template(
        card_data,
        template_path=str(template_dir / "model_card.md"),
        title=f"KGDiff: {text['title']} ({dataset})",
        repo_id=repo_id or str(model_dir),
        flavour=text,
        dataset_name=dataset,
        dataset_repo_id=dataset_repo_id,
        num_test_nodes=len(test_node_ids),
        split=metrics.get("split", "test"),
        example_node_id=test_node_ids[0] if test_node_ids else node_ids[0],
        example_is_test=bool(test_node_ids),
        sampler=sampler,
        swap_sampler=sampler in SAMPLERS and sampler != "ddpm",
        num_inference_steps=int(metrics.get("num_inference_steps", 50)),
        results_table=markdown_table(metrics).strip(),
        day_type_results=day_type_tables(metrics).strip(),
        day_types=index.get("day_types"),
        stored_days_per_donor=int(donor_config.get("num_bank_days", 0)),
        num_donors=int(donor_config.get("num_bank", 0)),
        start_strength=index.get("start_strength"),
        level_exponent=index.get("level_exponent"),
        random_donor_share=index.get("random_donor_share"),
        level_noise=index.get("level_noise"),
        match_donor_mean=index.get("match_donor_mean", False),
        mean_match_strength=index.get("mean_match_strength", 1.0),
        prior_blend=index.get("prior_blend"),
        residual_at_blend_level=index.get("residual_at_blend_level", False),
        level_estimate_weight=index.get("level_estimate_weight"),
        mmd_bandwidth=bandwidth if isinstance(bandwidth, str) else MMD_BANDWIDTH_NOTE,
        jsd_bins=metrics.get("jsd_bins", "n/a"),
        features=_units(list(index["feature_names"]), text, int(index["interval_minutes"])),
        seq_len=int(index["seq_len"]),
        interval_minutes=int(index["interval_minutes"]),
        delay_window=int(index["delay_window"]),
        delay_stride=int(index["delay_stride"]),
        **_data_context(prepared),
        kg=_kg_context(index, prepared),
        train_node_ids=train_node_ids,
        test_node_ids=test_node_ids,
        components=[
            {"name": name, "cls": index[name][1], "params": _count_parameters(model_dir / name)}
            for name in _components(index)
            if name != "scheduler"
        ],
        scheduler={
            "cls": index["scheduler"][1],
            "num_train_timesteps": scheduler_config.get("num_train_timesteps"),
            "beta_schedule": scheduler_config.get("beta_schedule"),
        },
        training_config_json=json.dumps(shown_config, indent=2) if shown_config else None,
        redacted=redacted,
    )


def _training_config(model_dir: Path) -> tuple[dict, bool]:
    """``training_config.json`` (``{}`` when absent) with secrets removed, and whether any was."""
    path = model_dir / TRAINING_CONFIG_FILE
    config = _read_json(path) if path.is_file() else {}
    redacted = {
        key: ("<removed>" if SECRET_KEY.search(key) and value else value) for key, value in config.items()
    }
    return redacted, redacted != config


def _data_context(prepared: dict | None) -> dict:
    """Card fields ``period`` and ``split_rule`` from a ``prepared.json`` (``None`` when unknown)."""
    if prepared is None:
        return {"period": None, "split_rule": None}
    dates = prepared["dates"]
    report = prepared.get("report", {})
    period = {
        "start": dates[0],
        "end": dates[-1],
        "num_dates": len(dates),
        "include_weekends": report.get("days", {}).get("include_weekends", False),
    }
    split = report.get("split", {})
    split_rule = split.get("rule")
    if split_rule and split.get("test_fraction") is not None:
        split_rule += f", test fraction {split['test_fraction']}"
    return {"period": period, "split_rule": split_rule}


def _kg_context(index: dict, prepared: dict | None) -> dict:
    """KG size: entity and forward-relation names from the pipeline config, triples from ``prepared.json``."""
    relations = [r for r in index.get("relation_names") or [] if not r.endswith(INVERSE_SUFFIX)]
    return {
        "num_entities": len(index.get("entity_names") or []),
        "num_relations": len(relations),
        "relations": relations,
        "num_triples": (prepared or {}).get("report", {}).get("kg", {}).get("triples"),
    }


def _resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise NotLoggedInError(
            "not logged in to the Hugging Face Hub: run `hf auth login` (`huggingface-cli login` with "
            "huggingface_hub < 1.0), set the HF_TOKEN environment variable, or pass token= / --token"
        )
    return token


def check_repo_id(repo_id: str, name: str = "repo_id") -> None:
    """``ValueError`` naming ``name`` when ``repo_id`` is not a Hub repository id (a dry run would accept it and a
    push fail only after writing the card)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{name} {repo_id!r} is not a Hub repository id such as USER/NAME: {err}") from None


def push_pipeline(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    *,
    flavour: str | None = None,
    dataset_dir: str | os.PathLike | None = None,
    dataset_repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    commit_message: str = "Upload KGDiff pipeline",
) -> HubUpload:
    """Renders the card and uploads a trained pipeline folder to the model repository ``repo_id``.

    The card is written to ``model_dir/README.md`` (replacing one there) and uploaded with the files of
    :func:`files_to_upload`, by ``HfApi.create_repo(exist_ok=True)`` and ``HfApi.upload_folder`` with those
    exact paths as ``allow_patterns``. With ``dry_run`` nothing is written or uploaded and no login is needed.

    Args:
        model_dir: the pipeline folder (``save_pretrained`` output with ``metrics.json``).
        repo_id: ``"user/name"``.
        private: create the repository as private (an existing repository keeps its visibility).
        dry_run: only compute the file list and the card.
        token: Hub token; ``None`` = the saved login or ``HF_TOKEN``.
        flavour, dataset_dir, dataset_repo_id, license: passed to :func:`render_model_card`.
        commit_message: message of the upload commit.

    Returns:
        :class:`HubUpload` (``commit_url`` is ``None`` for a dry run).
    """
    check_repo_id(repo_id)
    if dataset_repo_id is not None:
        check_repo_id(dataset_repo_id, "dataset_repo_id")
    card = render_model_card(
        model_dir,
        flavour=flavour,
        repo_id=repo_id,
        dataset_dir=dataset_dir,
        dataset_repo_id=dataset_repo_id,
        license=license,
    )
    files = sorted(set(files_to_upload(model_dir)) | {CARD_FILE})
    upload = HubUpload(repo_id=repo_id, repo_type="model", files=files, card=card)
    if dry_run:
        return upload
    token = _resolve_token(token)
    card.save(Path(model_dir) / CARD_FILE)
    upload.commit_url = _upload(model_dir, upload, private, token, commit_message)
    return upload


def _upload(
    folder: str | os.PathLike, upload: HubUpload, private: bool, token: str, commit_message: str
) -> str:
    """``create_repo`` + ``upload_folder`` of exactly ``upload.files``; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(upload.repo_id, repo_type=upload.repo_type, private=private, exist_ok=True)
    # upload_folder filters with fnmatch, whose "*" also matches "/": escaped exact paths upload nothing else.
    info = api.upload_folder(
        repo_id=upload.repo_id,
        repo_type=upload.repo_type,
        folder_path=str(folder),
        allow_patterns=[glob.escape(path) for path in upload.files],
        commit_message=commit_message,
    )
    logger.info("uploaded %d files to %s: %s", len(upload.files), upload.repo_id, info.commit_url)
    return str(info.commit_url)


def _size_category(num_rows: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if num_rows < limit:
            return name
    return "1M<n<10M" if num_rows < 10_000_000 else "n>10M"


@dataclass
class _PreparedFolder:
    """What the dataset card and the staging read from a prepared dataset folder."""

    folder: Path
    meta: dict
    nodes: pd.DataFrame
    kg: KnowledgeGraph

    @classmethod
    def read(cls, dataset_dir: str | os.PathLike) -> _PreparedFolder:
        folder = Path(dataset_dir)
        for required in (META_FILE, NODES_FILE, DAYS_PARQUET, DAYS_DIR, KG_DIR):
            if not (folder / required).exists():
                raise FileNotFoundError(
                    f"{folder} is not a prepared dataset folder ({required} is missing); create it with "
                    "scripts/prepare_data.py"
                )
        meta = _read_json(folder / META_FILE)
        nodes = pd.read_csv(folder / NODES_FILE, dtype=str)
        if "split" not in nodes.columns or "node_id" not in nodes.columns:
            raise ValueError(
                f"{folder / NODES_FILE} lacks the node_id/split columns; re-run scripts/prepare_data.py"
            )
        dtypes = {
            c: t for c, t in meta.get("node_columns", {}).items() if c in nodes.columns and c != "node_id"
        }
        return cls(folder, meta, nodes.astype(dtypes), KnowledgeGraph.load(folder / KG_DIR))

    def node_ids(self, split: str) -> list[str]:
        return self.nodes.loc[self.nodes["split"] == split, "node_id"].tolist()

    def split_rows(self) -> dict[str, pa.Table]:
        """``{"train": rows, "test": rows}`` of ``days.parquet`` by the node split."""
        days = pq.read_table(self.folder / DAYS_PARQUET)
        return {
            split: days.filter(
                pc.is_in(days["node_id"], value_set=pa.array(self.node_ids(split), pa.string()))
            )
            for split in SPLIT_FILES
        }


def render_dataset_card(
    dataset_dir: str | os.PathLike,
    repo_id: str | None = None,
    flavour: str | None = None,
    license: str | None = None,
    template_dir: str | os.PathLike | None = None,
) -> DatasetCard:
    """The dataset card of a prepared dataset folder, from ``hub_cards/dataset_card.md`` and a flavour.

    Its metadata declares the ``configs`` of the uploaded layout (see :func:`stage_prepared_dataset`).

    Args:
        dataset_dir: folder written by ``PreparedDataset.save``.
        repo_id: dataset id used in the snippets; ``None`` = ``"<user>/<folder name>"``.
        flavour: one of :data:`FLAVOURS`; ``None`` = :func:`detect_flavour` of the dataset name.
        license: Hub licence id; ``None`` = the flavour's ``dataset_license``.
        template_dir: folder holding the templates (default: the package's ``hub_cards/``).
    """
    return _dataset_card(_PreparedFolder.read(dataset_dir), repo_id, flavour, license, template_dir)


def _dataset_card(
    prepared: _PreparedFolder,
    repo_id: str | None,
    flavour: str | None,
    license: str | None,
    template_dir: str | os.PathLike | None,
    split_rows: dict[str, pa.Table] | None = None,
) -> DatasetCard:
    template_dir = _template_dir(template_dir)
    meta = prepared.meta
    flavour = flavour or detect_flavour(meta["name"])
    text = load_flavour(flavour, template_dir)
    report = meta.get("report", {})
    split_rows = split_rows if split_rows is not None else prepared.split_rows()
    num_rows = {split: rows.num_rows for split, rows in split_rows.items()}
    card_data = DatasetCardData(
        license=license or text["dataset_license"],
        pretty_name=f"{text['title']} ({meta['name']}), prepared for KGDiff",
        tags=list(dict.fromkeys(BASE_TAGS[1:] + list(text["domain_tags"]))),
        size_categories=_size_category(sum(num_rows.values())),
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": path} for split, path in SPLIT_FILES.items()],
                "default": True,
            },
            {"config_name": "nodes", "data_files": [{"split": "train", "path": NODES_PARQUET}]},
        ],
    )
    interval = int(meta["interval_minutes"])
    return DatasetCard.from_template(
        card_data,
        template_path=str(template_dir / "dataset_card.md"),
        title=f"{text['title']} ({meta['name']}) for KGDiff",
        repo_id=repo_id or f"<user>/{prepared.folder.name}",
        name=meta["name"],
        flavour=text,
        steps_per_day=int(meta["steps_per_day"]),
        interval_minutes=interval,
        features=_units(list(meta["feature_names"]), text, interval),
        dates=list(meta["dates"]),
        include_weekends=report.get("days", {}).get("include_weekends", False),
        num_rows=num_rows,
        num_nodes=len(prepared.nodes),
        num_train_nodes=len(prepared.node_ids("train")),
        num_test_nodes=len(prepared.node_ids("test")),
        node_columns=list(prepared.nodes.columns),
        split_rule=report.get("split", {}).get("rule"),
        kg={
            "num_entities": prepared.kg.num_entities,
            "num_relations": prepared.kg.num_relations,
            "relations": list(prepared.kg.relations),
            "num_triples": len(prepared.kg.triples),
        },
        days_report=report.get("days"),
        has_embeddings=(prepared.folder / EMBEDDINGS_FILE).is_file(),
    )


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def stage_prepared_dataset(
    dataset_dir: str | os.PathLike,
    staging_dir: str | os.PathLike,
    repo_id: str | None = None,
    flavour: str | None = None,
    license: str | None = None,
    template_dir: str | os.PathLike | None = None,
) -> HubUpload:
    """Lays out a prepared dataset folder in ``staging_dir`` exactly as its Hub dataset repository.

    Layout: ``README.md`` (card whose ``configs`` are ``default`` = ``data/train.parquet`` /
    ``data/test.parquet`` as splits ``train`` / ``test`` and ``nodes`` = ``data/nodes.parquet``),
    ``data/{train,test}.parquet`` (the rows of ``days.parquet`` of training / test nodes),
    ``data/nodes.parquet`` and ``nodes.csv`` (node table), ``kg/``, ``kg_embeddings.safetensors`` (if
    present), ``days/`` and ``prepared.json``, so that ``datasets.load_dataset`` reads the splits and
    ``PreparedDataset.load`` the whole folder. Files are hard-linked (copied across file systems).

    Args:
        dataset_dir: folder written by ``PreparedDataset.save``.
        staging_dir: empty or absent folder to fill.
        repo_id, flavour, license, template_dir: as in :func:`render_dataset_card`.

    Returns:
        :class:`HubUpload` listing the staged files (POSIX paths relative to ``staging_dir``) and the card.
    """
    prepared = _PreparedFolder.read(dataset_dir)
    staging = Path(staging_dir)
    if staging.exists() and any(staging.iterdir()):
        raise FileExistsError(f"staging folder {staging} is not empty; give an empty or new folder")
    split_rows = prepared.split_rows()
    card = _dataset_card(prepared, repo_id, flavour, license, template_dir, split_rows)
    for split, path in SPLIT_FILES.items():
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(split_rows[split], staging / path)
    prepared.nodes.to_parquet(staging / NODES_PARQUET, index=False)
    for entry in (NODES_FILE, META_FILE, EMBEDDINGS_FILE, KG_DIR, DAYS_DIR):
        path = prepared.folder / entry
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            _link_or_copy(file, staging / file.relative_to(prepared.folder))
    card.save(staging / CARD_FILE)
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    return HubUpload(repo_id=repo_id or str(staging), repo_type="dataset", files=files, card=card)


def push_prepared_dataset(
    dataset_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    *,
    flavour: str | None = None,
    license: str | None = None,
    commit_message: str = "Upload prepared KGDiff dataset",
) -> HubUpload:
    """Uploads a prepared dataset folder as the dataset repository ``repo_id``, staged by
    :func:`stage_prepared_dataset` in a temporary folder, so that ``datasets.load_dataset(repo_id)`` loads it.

    Args: as :func:`push_pipeline`; ``license`` ``None`` = the flavour's data licence.

    Returns:
        :class:`HubUpload` (``commit_url`` is ``None`` for a dry run).
    """
    check_repo_id(repo_id)
    if not dry_run:
        token = _resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="kgdiff-dataset-") as staging:
        upload = stage_prepared_dataset(
            dataset_dir, staging, repo_id=repo_id, flavour=flavour, license=license
        )
        upload.repo_id = repo_id
        if not dry_run:
            upload.commit_url = _upload(staging, upload, private, token, commit_message)
    return upload
