"""Training checkpoints that a kill cannot corrupt, and whose own states load without unpickling.

A checkpoint is written by :func:`save_checkpoint` to ``partial-checkpoint-N``; only when every file is
there does it get a ``checkpoint_complete.json`` and its final name ``checkpoint-N`` (one ``rename``),
and only then are old checkpoints removed. :func:`list_checkpoints` sees complete checkpoints only, so a
kill at any moment leaves the previous complete checkpoint to resume from.

Inside a checkpoint, Accelerate writes the models (``model*.safetensors``), the optimiser, the LR
schedule and the RNG states (``optimizer.bin``, ``scheduler.bin``, ``random_states_<process>.pkl``,
read back with ``torch.load(weights_only=True)``); this module adds the EMA weights and the loss's noise
generator as safetensors plus JSON, and the run's settings (``training_config.json``) to compare a
resumed run against.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_PREFIX = "partial-"
COMPLETE_FILE = "checkpoint_complete.json"
RUN_CONFIG_FILE = "training_config.json"
EMA_FILE = "ema.safetensors"


class CorruptCheckpointError(ValueError):
    """A complete checkpoint whose files cannot be read (truncated, overwritten, edited)."""


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def _numbered(folder: Path) -> list[Path]:
    found = [p for p in Path(folder).glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=checkpoint_step)


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders of ``folder``, oldest first."""
    return [p for p in _numbered(folder) if (p / COMPLETE_FILE).is_file()]


def incomplete_checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-N`` folders without the completion mark (an interrupted save, or an older version's)."""
    return [p for p in _numbered(folder) if not (p / COMPLETE_FILE).is_file()]


def _generator_file(process_index: int) -> str:
    return f"noise_generator_{process_index}.safetensors"


def save_checkpoint(
    accelerator: Accelerator,
    folder: Path,
    step: int,
    ema: EMAModel | None,
    generator: torch.Generator,
    run_config: Mapping,
    total_limit: int | None = None,
) -> Path:
    """Writes ``folder/checkpoint-<step>`` atomically (see the module docstring); every process calls it.

    Args:
        ema: the EMA weights (saved by the main process), or ``None``.
        generator: this process's noise generator.
        run_config: the run's settings (JSON-serialisable), stored as ``training_config.json``.
        total_limit: keep at most this many complete checkpoints (the oldest go, after the new one is complete).
    """
    folder = Path(folder)
    final = folder / f"{CHECKPOINT_PREFIX}{step}"
    partial = folder / f"{PARTIAL_PREFIX}{final.name}"
    if accelerator.is_main_process:
        for leftover in folder.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    save_file({"state": generator.get_state()}, partial / _generator_file(accelerator.process_index))
    if accelerator.is_main_process:
        if ema is not None:
            save_ema(ema, partial / EMA_FILE)
        (partial / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / COMPLETE_FILE).write_text(json.dumps({"step": step}))
        if final.exists():  # an interrupted save of an older version, or the step re-run after a resume
            shutil.rmtree(final)
        os.replace(partial, final)
        if total_limit is not None:
            for old in list_checkpoints(folder)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _corrupt(path: Path, name: str, problem: str) -> CorruptCheckpointError:
    earlier = [p for p in list_checkpoints(path.parent) if checkpoint_step(p) < checkpoint_step(path)]
    advice = (
        f"resume from an earlier checkpoint: move {path.name} out of {path.parent}, then --resume_from_checkpoint "
        f"latest takes {earlier[-1].name}"
        if earlier
        else f"there is no earlier complete checkpoint in {path.parent}: start over with --overwrite_output_dir"
    )
    return CorruptCheckpointError(f"checkpoint {path} is corrupt: {name} {problem}; {advice}")


def verify_checkpoint(path: Path) -> None:
    """Checks that every file of a complete checkpoint can be read, without loading (or unpickling) its states.

    JSON files must parse, safetensors files must have a header that covers the whole file, and the files
    ``torch.save`` wrote (``*.bin``, ``*.pkl``) must be intact zip archives (their CRCs are checked).

    Raises:
        CorruptCheckpointError: naming the checkpoint, the file and the earlier checkpoint to resume from.
    """
    path = Path(path)
    for file in sorted(path.iterdir()):
        if not file.is_file() or file.name.startswith("custom_checkpoint_"):
            continue  # custom states: Accelerate refuses them itself (this package registers none)
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            elif file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as f:
                    f.keys()
            elif file.suffix in (".bin", ".pkl"):
                if not zipfile.is_zipfile(file):
                    raise _corrupt(path, file.name, "is not a file torch.save wrote (not a zip archive)")
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise _corrupt(path, file.name, f"has a damaged entry ({bad})")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _corrupt(path, file.name, f"is not valid JSON ({err})") from None
        except SafetensorError as err:
            raise _corrupt(path, file.name, f"is not a readable safetensors file ({err})") from None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise _corrupt(path, file.name, f"cannot be read ({err})") from None


def load_checkpoint(accelerator: Accelerator, path: Path, ema: EMAModel | None, generator: torch.Generator) -> int:
    """Restores a complete checkpoint into the prepared objects, ``ema`` and ``generator``; returns its step.

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint.
        CorruptCheckpointError: one of its files cannot be read (named, with the earlier checkpoint to use).
    """
    path = Path(path)
    if not (path / COMPLETE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_FILE}: its save was interrupted)")
    verify_checkpoint(path)
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, FileNotFoundError) as err:
        raise ValueError(f"cannot restore {path}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # e.g. an intact archive with content the weights-only unpickler refuses
        raise _corrupt(path, "its Accelerate state", f"cannot be restored ({type(err).__name__})") from None
    generator.set_state(load_file(path / _generator_file(accelerator.process_index))["state"])
    if ema is not None:
        if not (path / EMA_FILE).is_file():
            raise ValueError(f"{path} has no EMA weights ({EMA_FILE}): it was written with --ema_decay 0")
        load_ema(ema, path / EMA_FILE)
    return checkpoint_step(path)


def save_ema(ema: EMAModel, path: Path) -> None:
    """EMA shadow weights as safetensors; its scalar settings go to the file's metadata (JSON)."""
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file(
        {f"shadow.{i}": p.detach().contiguous() for i, p in enumerate(shadow)},
        path,
        metadata={"ema_settings": json.dumps(state)},
    )


def load_ema(ema: EMAModel, path: Path) -> None:
    """Restores :func:`save_ema`'s file into ``ema``, onto the devices of its current weights."""
    with safe_open(str(path), framework="pt") as f:
        if len(f.keys()) != len(ema.shadow_params):
            raise ValueError(f"{path}: {len(f.keys())} EMA tensors, but the model has {len(ema.shadow_params)}")
        state = json.loads(f.metadata()["ema_settings"])
        state["shadow_params"] = [f.get_tensor(f"shadow.{i}").to(p.device) for i, p in enumerate(ema.shadow_params)]
    ema.load_state_dict(state)


def differing_settings(stored: Mapping, current: Mapping, ignore: set[str] = frozenset()) -> list[str]:
    """``"key: stored -> current"`` for every key of both mappings whose values differ (except ``ignore``)."""
    return [
        f"{key}: {stored[key]!r} -> {current[key]!r}"
        for key in sorted(set(stored) & set(current) - set(ignore))
        if stored[key] != current[key]
    ]
