"""The machine a benchmark runs on: what it is, how loaded it is, and a progress channel.

Benchmark numbers mean little without the machine they came from, and a slow
block means little without knowing whether other processes shared the CPU.
psutil lives here, not in engine/, so that the engine's metrics stay free of
it (they take the busy-time probe as an argument).

Progress goes to stderr so that stdout carries only the result JSON.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import psutil
import torch


def log(msg: str) -> None:
    """A progress line on stderr (stdout is reserved for the JSON)."""
    print(msg, file=sys.stderr, flush=True)


def progress_every(n: int) -> int:
    """Blocks between progress lines: about ten lines per run."""
    return max(1, round(n / 10))


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: torch.device) -> str:
    """The GPU's name for CUDA devices, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def slug(text: str) -> str:
    """A file-name-safe lower-case form of text ("AMD EPYC 7B13" -> "amd-epyc-7b13")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def rss_bytes() -> int:
    """This process's resident set size."""
    return int(psutil.Process().memory_info().rss)


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy (any process), from /proc/stat.

    The probe for engine.metrics.BlockClock's neighbour-load figures.
    """
    ct = psutil.cpu_times()
    busy = ct.user + ct.system + getattr(ct, "nice", 0.0)
    for extra in ("irq", "softirq", "steal"):
        busy += getattr(ct, extra, 0.0)
    return float(busy)


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software versions, and the load average when the run starts."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }


def write_json(result: dict[str, Any], out: Path) -> None:
    """A benchmark's record: indented JSON, its folder made if needed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
