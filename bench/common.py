"""Helpers shared by the benchmarks: interleaved timing with warm-up and medians, peak memory of a fresh
process, a description of the machine, and Markdown tables."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from multiprocessing import get_context

import torch


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs of one callable."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Times several callables in rounds (A B C, A B C, ...) so that load drift hits all of them alike.

    Args:
        calls: name -> zero-argument callable.
        repeats: timed rounds (``>= 1``); each callable runs once per round.
        warmup: untimed rounds before them.

    Returns:
        name -> :class:`Timing` (median, min and max seconds over the rounds).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(s), min(s), max(s), len(s)) for name, s in seconds.items()}


def reset_peak_memory() -> int:
    """Resets this process's peak resident set size (Linux ``clear_refs``); returns the current RSS (bytes).

    After the reset, :func:`peak_memory` reports the peak reached from now on. Where the kernel does not allow
    the reset, the peak stays the process's lifetime peak (still an upper bound).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory() -> int:
    """Peak resident set size of this process in bytes since the last :func:`reset_peak_memory`.

    Linux: ``VmHWM`` of ``/proc/self/status``, which ``clear_refs`` resets. Not ``getrusage``: its ``ru_maxrss``
    also keeps the RSS the process had before ``exec``, i.e. the forking parent's size in a spawned child.
    Elsewhere: ``ru_maxrss`` (an upper bound).
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_in_fresh_process(function: Callable, *args) -> object:
    """``function(*args)`` in a new spawned Python process, so its peak memory is its own.

    ``function`` must be importable by the child (a module-level function).
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def machine_info() -> dict:
    """Date (UTC), CPU model, logical cores, memory, load averages, torch version and threads."""
    cpu_model = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            models = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu_model = models[0] if models else cpu_model
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "nproc": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; the first column is left-aligned, the others right-aligned.

    Args:
        header: column titles.
        rows: one sequence of cells per row (already formatted, or anything ``str`` accepts).

    Returns:
        The table, one line per row, ending with a newline.
    """
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def mean_over_draws(draws: Sequence[dict], metrics: Sequence[str]) -> dict:
    """``{metric: mean}`` over evaluation draws; a metric undefined (``None``) in every draw stays ``None``."""
    means = {}
    for metric in metrics:
        values = [draw[metric] for draw in draws if draw.get(metric) is not None]
        means[metric] = statistics.fmean(values) if values else None
    return means
