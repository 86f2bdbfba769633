"""The CPU's state around a measurement: load, frequency, and time stolen by the hypervisor.

Read from ``/proc`` and ``/sys`` where Linux has them; a field that cannot be read is None. Steal
time is the share of CPU time between two snapshots that the hypervisor gave to other guests: on
a shared VM, a large share explains a noisy measurement."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _cpu_times() -> list[int] | None:
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    return [int(x) for x in first[1:]] if first and first[0] == "cpu" else None


def _freqs_mhz() -> list[float] | None:
    found = []
    for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        try:
            found.append(int(f.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    if found:
        return found
    try:  # VMs without cpufreq: what /proc/cpuinfo reports
        mhz = [
            float(line.split(":")[1])
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("cpu MHz")
        ]
    except (OSError, ValueError, IndexError):
        return None
    return mhz or None


def snapshot() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    freqs = _freqs_mhz()
    return {
        "loadavg_1m": round(load[0], 2) if load else None,
        "cpu_mhz": [round(f) for f in freqs] if freqs else None,
        "_times": _cpu_times(),
    }


def between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Both snapshots (without their raw counters) and the steal share between them."""
    steal = None
    a, b = before.get("_times"), after.get("_times")
    if a and b and len(a) > 7 and len(b) > 7:
        total = sum(b) - sum(a)
        steal = round((b[7] - a[7]) / total, 4) if total > 0 else 0.0
    clean = [{k: v for k, v in s.items() if not k.startswith("_")} for s in (before, after)]
    return {"before": clean[0], "after": clean[1], "steal_share": steal}
