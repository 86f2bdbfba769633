"""The CPU's state around a measurement: load, frequency, and time stolen by the hypervisor.

Read from ``/proc`` and ``/sys`` where Linux has them; a field that cannot be read is None. Steal
time is the share of CPU time between two snapshots that the hypervisor gave to other guests: on
a shared VM, a large share explains a noisy measurement. Other processes' share is the CPU time
the machine spent busy between two snapshots less this process's own (and its waited-for
children's), over all the machine's CPU time: a measurement taken while other work ran is marked
``busy`` (:data:`BUSY_SHARE`), not presented as a quiet machine's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BUSY_SHARE = 0.10  # other processes' share of all CPU time above which a measurement is "busy"


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
        "_own": _own_seconds(),
    }


def _own_seconds() -> float:
    """CPU seconds of this process and its waited-for children, user and system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Both snapshots (without their raw counters) and the steal share between them."""
    steal = others = None
    a, b = before.get("_times"), after.get("_times")
    if a and b and len(a) > 7 and len(b) > 7:
        total = sum(b) - sum(a)
        steal = round((b[7] - a[7]) / total, 4) if total > 0 else 0.0
        others = _others_share(a, b, before.get("_own"), after.get("_own"))
    clean = [{k: v for k, v in s.items() if not k.startswith("_")} for s in (before, after)]
    out: dict[str, Any] = {"before": clean[0], "after": clean[1], "steal_share": steal}
    if others is not None:
        out["others_share"] = others
        out["busy"] = others > BUSY_SHARE
    return out


def _others_share(
    a: list[int], b: list[int], own_a: float | None, own_b: float | None
) -> float | None:
    """Other processes' share of the machine's CPU time between two /proc/stat readings (clock
    ticks: user nice system idle iowait irq softirq steal ...); steal is the hypervisor's, idle
    and iowait nobody's."""
    if own_a is None or own_b is None:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = (sum(b[:8]) - sum(a[:8])) / hz
    if total <= 0:
        return None
    idle = (b[3] + b[4] - a[3] - a[4]) / hz
    steal = (b[7] - a[7]) / hz
    busy = total - idle - steal
    return round(max(0.0, busy - (own_b - own_a)) / total, 4)
