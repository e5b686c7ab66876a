"""Summaries of measured samples, and a description of the machine they were measured on."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least ``fraction`` of all at or below it."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """count, median, p90, p99, max and min of samples (in their own unit)."""
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "median": statistics.median(samples),
        "p90": percentile(samples, 0.90),
        "p99": percentile(samples, 0.99),
        "max": max(samples),
        "min": min(samples),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, kernel, Python, load when measured."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mib": _memory_total_mib(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load],
    }


def process_memory(pid: int) -> dict[str, float]:
    """Resident set size now and at its peak (VmRSS, VmHWM) of a process, in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = int(rest.split()[0]) / 1024
    return values


def target(what: str, measured: float, limit: float, unit: str, *, at_most: bool = True) -> dict[str, Any]:
    """A target as the report shows it: what, the limit, what was measured, and whether it was met."""
    met = measured <= limit if at_most else measured >= limit
    return {
        "target": f"{what} {'<=' if at_most else '>='} {limit:g} {unit}".strip(),
        "measured": round(measured, 3),
        "unit": unit,
        "met": met,
    }
