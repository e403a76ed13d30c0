"""What this machine is: CPU, cores, OS, memory, ONNX Runtime. Recorded with every profile measured here."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from nag_agent import __version__

# /proc/cpuinfo names the CPU differently per architecture (x86: "model name"; many ARM boards: "Hardware"
# or "Model"); the first one present wins.
_CPUINFO_KEYS = ("model name", "Hardware", "Model", "cpu model", "Processor")
_GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    fields: dict[str, str] = {}
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in _CPUINFO_KEYS:
        if fields.get(key):
            return fields[key]
    return platform.processor() or platform.machine()


def memory_bytes() -> int:
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return 0


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 0


def fingerprint() -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "agent_version": __version__,
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "usable_cores": usable_cores(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python_version": platform.python_version(),
        "onnxruntime_version": ort.__version__,
        "providers": list(ort.get_available_providers()),
        "cpu_governor": _read(_GOVERNOR).strip(),
        "memory_bytes": memory_bytes(),
    }
