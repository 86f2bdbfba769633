"""How far this machine's speed-ups drift between benches minutes apart (issue #37).

Measured on a quiet 2-core VM (``benchmarks/coverage.py``), a bench's interval holds the noise of
its own minute but not the machine's state drifting between benches a few minutes apart (a
resnet18_cifar speed-up wandered by an SD of 2.3% between rounds while one bench's interval was
±2%), so it covered a repeat bench's speed-up in 30-50% of pairs. No bench of a minute can see a
drift of minutes; benches of the same files spaced in time can (``bench.repeats``). What they
measured is kept here, per machine, backend and precision, for the model they measured, and a
later single bench's repeat interval adds it (``bench.drift: auto``,
:func:`pbkit.core.intervals.with_drift`): this model's own where it was measured, else the largest
this machine showed on that backend.

One JSON file in pbkit's cache (``$PBKIT_CACHE/drift.json``, default ``~/.cache/pbkit``), written
atomically under a lock; a file that does not read is one line that names it, never overwritten.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pbkit.core import lock
from pbkit.core.errors import PbkitError
from pbkit.core.fileio import atomic_write_json, cache_dir
from pbkit.machine import envinfo

VERSION = 1


def path() -> Path:
    return cache_dir("drift.json")


@dataclass(frozen=True)
class Drift:
    """The drift repeat benches of one model measured on one backend and precision."""

    sd: float  # relative SD of the speed-up between benches, beyond their own noise
    repeats: int  # benches it was estimated from (degrees of freedom: repeats - 1)
    spacing_s: float
    model: str
    run_id: str
    utc: str

    @property
    def df(self) -> int:
        return max(1, self.repeats - 1)

    def source(self, model: str | None = None) -> str:
        """Where it comes from, in words (for the record and every view)."""
        whose = "" if model is None or model == self.model else f" (largest here; of {self.model})"
        return (
            f"measured on this machine by {self.repeats} benches {self.spacing_s:g} s apart"
            f" on {self.utc[:10]}{whose}"
        )


def _read(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("machines", {}), dict):
            raise ValueError("not a drift file")
        return data
    except (OSError, ValueError) as e:
        raise PbkitError(
            f"the drift file {str(file)!r} does not read ({e}); move it away, or set"
            " bench.drift to a number (0: none)"
        ) from e


def check() -> None:
    """Before a long measurement: the drift file reads (else one line that names it)."""
    _read(path())


def machine_key(host: dict[str, Any] | None, gpu_name: str | None = None) -> str:
    """Whose drift: the GPU a point measured on, else the CPU model and its logical cores (as
    :func:`pbkit.machine.envinfo.machine` names a machine)."""
    return envinfo.machine({"host": host or {}, "gpus": [{"name": gpu_name}] if gpu_name else []})


def _key(backend: str, precision: str) -> str:
    return f"{backend}/{precision}"


def lookup(machine: str, backend: str, precision: str, model: str) -> Drift | None:
    """This machine's measured drift on ``backend`` at ``precision``: ``model``'s own where
    repeats measured it, else the largest any model showed (conservative); None if none did."""
    entries = _read(path()).get("machines", {}).get(machine, {}).get(_key(backend, precision), {})
    try:
        found = [Drift(**e) for e in entries.values()]
    except TypeError as e:
        raise PbkitError(
            f"the drift file {str(path())!r} has an entry pbkit does not read ({e}); move it"
            " away, or set bench.drift to a number (0: none)"
        ) from e
    mine = [d for d in found if d.model == model]
    if mine:
        return mine[0]
    return max(found, key=lambda d: d.sd, default=None)


def save(machine: str, backend: str, precision: str, drift: Drift) -> Path:
    """Keep what repeats measured (replacing that model's earlier entry on this backend)."""
    file = path()
    with lock.exclusive(file.with_name(file.name + ".lock"), timeout_s=60):
        data = _read(file)
        data["version"] = VERSION
        machines = data.setdefault("machines", {})
        machines.setdefault(machine, {}).setdefault(_key(backend, precision), {})[drift.model] = (
            asdict(drift)
        )
        return atomic_write_json(file, data)
