"""Latency-targeted pruning on the dependency graph: the knapsack rounds and the closed loop.

Each group of coupled channels (torch-pruning's DepGraph) is a knapsack item family: removing its
``k`` least important units costs their summed importance (the method's Importance, as for MACs
targets) and saves the predicted latency of every tabled layer whose input or output width it
narrows. In the global and protected scopes the next removal is the one with the least importance
per millisecond saved, over all groups; in the local scope every group keeps the same share of its
units and only the stop rule and the width snapping come from the table. Widths move in the steps
the table shows are faster (whole multiples of the alignment where unaligned widths cost more).
See :mod:`pbkit.pruning.latency` for the table and the closed loop's rules.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pbkit.core.errors import PbkitError
from pbkit.models import counts
from pbkit.pruning import latency
from pbkit.pruning.latency import LatencySettings, Measured, Table


@dataclass
class Tools:
    """What the stage gives a latency-targeted run: the table for the dense model (its scale
    calibrated on the dense model's measured latency) and the end-to-end measurement."""

    table: Callable[[nn.Module], Table]
    measure: Callable[
        [nn.Module, nn.Module], Measured
    ]  # (dense, pruned) -> the pruned model's speed-up


@dataclass
class _Unit:
    """One prunable group, as the knapsack sees it."""

    key: int
    module: nn.Module  # the root the group is rebuilt from
    handler: Any
    ch_groups: int
    imp: np.ndarray  # per unit (a channel, or a channel of every head), current order
    effects: list[tuple[str, str, float]]  # (tabled layer, in|out, channels removed per unit)
    floor: int  # units that must stay
    step: int  # units move in multiples of this (alignment)

    @property
    def size(self) -> int:
        return len(self.imp)

    def ks(self) -> np.ndarray:
        """Numbers of units that may go: down to the floor, landing on the step grid."""
        room = self.size - self.floor
        if room <= 0:
            return np.zeros(0, dtype=np.int64)
        ks = np.arange(1, room + 1)
        if self.step > 1:
            ks = ks[(self.size - ks) % self.step == 0]
        return ks


class Knapsack:
    """The groups of one pruner, scored against a latency table."""

    def __init__(
        self, model: nn.Module, pruner: Any, importance: Any, table: Table, max_ratio: float
    ) -> None:
        self.model, self.pruner, self.importance, self.table = model, pruner, importance, table
        self.max_ratio = max_ratio
        self.mods = {n: m for n, m in model.named_modules() if n in table.layers}
        self.names = {m: n for n, m in self.mods.items()}
        self.units: list[_Unit] = []

    def widths(self) -> dict[str, tuple[int, int]]:
        return latency.widths_of(self.model, self.mods)

    def predicted(self) -> float:
        return self.table.predict(self.widths())

    def score(self) -> None:
        """Importance of every prunable group, now (call after the method's collect)."""
        p, dg = self.pruner, self.pruner.DG
        self.units = []
        for group in dg.get_all_groups(
            ignored_layers=p.ignored_layers, root_module_types=p.root_module_types
        ):
            is_attn, _ = p._is_atten_group(group)
            if is_attn:
                group = p._downstream_node_as_root_if_attention(group)
                if group is None:
                    continue
            ch_groups = p._get_channel_groups(group)
            with torch.no_grad():
                imp = p.estimate_importance(group)
            if imp is None:
                continue
            size = len(imp) // ch_groups
            dim_imp = (
                (imp.view(ch_groups, -1).mean(0) if ch_groups > 1 else imp)
                .detach()
                .float()
                .cpu()
                .numpy()
            )
            root, handler = group[0].dep.target.module, group[0].dep.handler
            effects: dict[str, tuple[str, float]] = {}
            for dep, idxs in group:
                name = self.names.get(dep.target.module)
                if name is None or not idxs:
                    continue
                dim = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                if self.table.layers[name].kind == "depthwise":
                    dim = "out"
                per_unit = len(idxs) / size
                effects[name] = (dim, max(per_unit, effects.get(name, (dim, 0.0))[1]))
            init = (
                p.layer_init_out_ch if dg.is_out_channel_pruning_fn(handler) else p.layer_init_in_ch
            ).get(root)
            init_units = (init // ch_groups) if init else size
            floor = max(1, math.ceil(init_units * (1 - self.max_ratio) - 1e-9))
            slow = any(self.table.penalty(n, d) > latency.PENALTY for n, (d, _) in effects.items())
            step = (
                latency.ALIGN if slow and size >= latency.ALIGN else 1
            )  # (per head: head_dim aligned)
            self.units.append(
                _Unit(
                    len(self.units),
                    root,
                    handler,
                    ch_groups,
                    dim_imp,
                    [(n, d, k) for n, (d, k) in effects.items()],
                    floor,
                    step,
                )
            )

    def saved(self, unit: _Unit, ks: np.ndarray, widths: dict[str, tuple[int, int]]) -> np.ndarray:
        """Predicted ms saved by removing each of ``ks`` units of ``unit``, other widths held."""
        total = np.zeros(len(ks))
        for name, dim, per in unit.effects:
            cin, cout = widths[name]
            cut = np.round(ks * per).astype(np.int64)
            kind = self.table.layers[name].kind
            if kind == "depthwise":
                new_in, new_out = cin - cut, cout - cut
            elif dim == "out":
                new_in, new_out = np.full_like(cut, cin), cout - cut
            else:
                new_in, new_out = cin - cut, np.full_like(cut, cout)
            ok = (new_in >= 1) & (new_out >= 1)
            now = float(self.table.layer_ms(name, cin, cout))
            after = self.table.layer_ms(name, np.maximum(new_in, 1), np.maximum(new_out, 1))
            total += np.where(ok, now - after, 0.0)
        out: np.ndarray = total * self.table.scale
        return out

    def option(
        self, unit: _Unit, widths: dict[str, tuple[int, int]], need: float
    ) -> latency.Option | None:
        ks = unit.ks()
        if not unit.effects or len(ks) == 0:
            return None
        return latency.best_option(
            unit.key, np.sort(unit.imp), self.saved(unit, ks, widths), ks, need
        )

    def remove(self, unit: _Unit, k: int) -> bool:
        """Prune the ``k`` least important units of ``unit``; False if the graph refuses."""
        order = np.argsort(unit.imp, kind="stable")[:k]
        idxs = [int(i) + g * unit.size for g in range(unit.ch_groups) for i in order]
        dg = self.pruner.DG
        group = dg.get_pruning_group(unit.module, unit.handler, sorted(idxs))
        if not dg.check_pruning_group(group):
            return False
        if hasattr(self.importance, "adjust_fisher"):  # OBDC keeps its Fisher factors in step
            self.importance.adjust_fisher(group, sorted(idxs))
        group.prune()
        unit.imp = np.delete(unit.imp, order)
        return True

    def prune_to(self, goal_ms: float, scope: str) -> bool:
        """Prune until the predicted latency is at most ``goal_ms``; False if it cannot get
        there."""
        if scope == "local":
            return self._uniform(goal_ms)
        while (now := self.predicted()) > goal_ms:
            widths = self.widths()
            best = latency.pick(self.option(u, widths, now - goal_ms) for u in self.units)
            if best is None:
                return False
            if not self.remove(self.units[best.key], best.k):
                self.units[best.key].floor = self.units[
                    best.key
                ].size  # the graph refuses: leave it
        return True

    def _uniform(self, goal_ms: float) -> bool:
        """Local scope: every group keeps the same share of its units (snapped to its step);
        the share comes from bisection on the predicted latency."""
        sizes = {u.key: u.size for u in self.units}

        def plan(keep: float) -> dict[int, int]:
            out = {}
            for u in self.units:
                want = int(math.floor(sizes[u.key] * keep))
                if u.step <= want < u.size:
                    want -= want % u.step  # onto the group's step grid
                out[u.key] = max(u.size - max(u.floor, want), 0)
            return out

        def predict(cuts: dict[int, int]) -> float:
            widths = dict(self.widths())
            for u in self.units:
                for name, dim, per in u.effects:
                    cin, cout = widths[name]
                    cut = round(cuts[u.key] * per)
                    if self.table.layers[name].kind == "depthwise":
                        widths[name] = (cin - cut, cout - cut)
                    elif dim == "out":
                        widths[name] = (cin, cout - cut)
                    else:
                        widths[name] = (cin - cut, cout)
            if any(a < 1 or b < 1 for a, b in widths.values()):
                return math.inf
            return self.table.predict(widths)

        if self.predicted() <= goal_ms:
            return True
        lo, hi = 0.0, 1.0  # keep shares: lo always meets the goal (or is the floor), hi does not
        if predict(plan(0.0)) > goal_ms:
            cuts = plan(0.0)
        else:
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if predict(plan(mid)) <= goal_ms else (lo, mid)
            cuts = plan(lo)
        for u in self.units:
            if cuts[u.key] > 0:
                self.remove(u, cuts[u.key])
        return self.predicted() <= goal_ms


@dataclass(frozen=True)
class Goal:
    """What a latency-targeted run prunes to: a measured ``speedup`` on the backend of
    ``settings``, in the ``scope``, never cutting a group past ``max_ratio``; MACs are counted at
    ``input_size``."""

    speedup: float
    scope: str
    max_ratio: float
    input_size: int
    settings: LatencySettings


@dataclass(frozen=True)
class StepHooks:
    """What runs around each knapsack step: the method's ``collect`` before scoring, the caller's
    training ``between_steps`` (returns its seconds), ``after_prune`` (the repairs that follow a
    cut), and ``on_step`` (a line of progress)."""

    after_prune: Callable[[], None]
    collect: Callable[[], None] | None = None
    between_steps: Callable[[int], float] | None = None
    on_step: Callable[[int, str], None] | None = None


@dataclass
class Step:
    """One knapsack step: the kind of goal it pruned to (``round``, ``closed loop``), what it
    reached, and the end-to-end measurement made after it, if one was."""

    step: int
    kind: str
    macs: int
    macs_speedup: float
    predicted_ms: float
    predicted_speedup: float
    measured: Measured | None = None

    def to_json(self) -> dict[str, Any]:
        """As the record's ``method.latency.trajectory[]`` holds it."""
        out: dict[str, Any] = {
            "step": self.step,
            "kind": self.kind,
            "macs": self.macs,
            "macs_speedup": self.macs_speedup,
            "predicted_ms": self.predicted_ms,
            "predicted_speedup": self.predicted_speedup,
        }
        m = self.measured
        if m is not None:
            out.update(
                measured_speedup=m.speedup,
                measured_ci=list(m.ci),
                dense_ms=m.dense_ms,
                measured_ms=m.pruned_ms,
                cov=m.cov,
                measure_s=round(m.seconds, 3),
            )
        return out


@dataclass
class TableFacts:
    """The latency table a run pruned with: what its maker reports (``Table.info``: backend,
    precision, batch, cache hits), its size, its calibrated scale and the seconds it took."""

    info: dict[str, Any]
    entries: int
    layers: int
    scale: float
    time_s: float
    file: str | None = None  # where the run folder keeps the table itself

    def to_json(self) -> dict[str, Any]:
        """As the record's ``method.latency.table`` holds it."""
        out = {
            **self.info,
            "entries": self.entries,
            "layers": self.layers,
            "scale": self.scale,
            "time_s": round(self.time_s, 3),
        }
        if self.file is not None:
            out["file"] = self.file
        return out


@dataclass
class LatencyRun:
    """What a latency-targeted run did: the table, every step, every end-to-end measurement (the
    last one met the target), the steps' seconds and the seconds spent training between them.
    :meth:`to_json` is the record's ``method.latency``."""

    settings: LatencySettings
    table: TableFacts
    trajectory: list[Step]
    checks: list[Measured]
    step_times: list[float]
    trained_s: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.step_times)

    @property
    def met(self) -> Measured:
        """The measurement that met the target."""
        return self.checks[-1]

    @property
    def measured_speedup(self) -> float:
        return self.met.speedup

    @property
    def measure_s(self) -> float:
        """Seconds spent measuring end to end."""
        return sum(c.seconds for c in self.checks)

    @property
    def macs_speedup(self) -> float:
        return self.trajectory[-1].macs_speedup

    def prediction_errors(self) -> list[float]:
        """Predicted / measured speed-up - 1 at every step measured."""
        return [
            t.predicted_speedup / t.measured.speedup - 1
            for t in self.trajectory
            if t.measured is not None
        ]

    def to_json(self) -> dict[str, Any]:
        """The record's ``method.latency`` (the same keys, in the same order, as records before
        this type had)."""
        s, met, errors = self.settings, self.met, self.prediction_errors()
        return {
            "target": "latency",
            "backend": s.backend,
            "precision": s.precision,
            "batch": s.batch,
            "settings": {
                k: v for k, v in vars(s).items() if k not in ("backend", "precision", "batch")
            },
            "table": self.table.to_json(),
            "trajectory": [t.to_json() for t in self.trajectory],
            "prediction_error": {
                "mean_abs": float(np.mean(np.abs(errors))),
                "max_abs": float(np.max(np.abs(errors))),
                "per_check": errors,
            },
            "measured_speedup": met.speedup,
            "measured_ci": list(met.ci),
            "dense_ms": met.dense_ms,
            "pruned_ms": met.pruned_ms,
            "cov": met.cov,
            "checks": len(self.checks),
            "measure_s": round(self.measure_s, 3),
            "macs_speedup": self.macs_speedup,
            "realisation": met.speedup / self.macs_speedup,
            "measurement": met.extra,
        }


class _ClosedLoop:
    """The knapsack rounds, then measured steps until a measurement meets the goal."""

    def __init__(
        self, ks: Knapsack, measure: Callable[[], Measured], goal: Goal, hooks: StepHooks
    ) -> None:
        self.ks, self.measure, self.goal, self.hooks = ks, measure, goal, hooks
        self.p0 = ks.predicted()
        self.macs0 = counts.count_macs(ks.model, goal.input_size)
        self.trajectory: list[Step] = []
        self.step_times: list[float] = []
        self.checks: list[Measured] = []
        self.trained = 0.0

    def run(self) -> None:
        s = self.goal.settings
        rounds = max(s.rounds, 1)
        first = self.goal.speedup**latency.FIRST_CHECK  # predicted; measured steps go on from it
        for r in range(1, rounds + 1):
            self.step(self.p0 / first ** (r / rounds), "round")
        while not latency.meets(m := self.check(), self.goal.speedup):
            now = self.ks.predicted()
            self.step(latency.next_goal(now, self.p0 / now, m, self.goal.speedup, s), "closed loop")

    def _say(self, text: str) -> None:
        if self.hooks.on_step is not None:
            self.hooks.on_step(len(self.step_times), text)

    def step(self, goal_ms: float, kind: str) -> None:
        """Prune to a predicted ``goal_ms``; an error when nothing more can be pruned."""
        ks, h = self.ks, self.hooks
        if ks.predicted() <= goal_ms and self.trajectory:
            return  # this round's goal is already met (widths move in aligned steps)
        if h.between_steps is not None:
            self.trained += h.between_steps(len(self.step_times) + 1)
        t = time.perf_counter()
        if h.collect is not None:
            h.collect()
        ks.score()
        reached = ks.prune_to(goal_ms, self.goal.scope)
        h.after_prune()
        self.step_times.append(time.perf_counter() - t)
        macs, now = counts.count_macs(ks.model, self.goal.input_size), ks.predicted()
        self.trajectory.append(
            Step(len(self.step_times), kind, macs, self.macs0 / max(macs, 1), now, self.p0 / now)
        )
        self._say(f"{kind}: predicted {self.p0 / now:.3f}x, MACs {self.macs0 / max(macs, 1):.3f}x")
        if not reached:
            g = self.goal
            floor = (
                " (the protected scope keeps >= 10% of every group)"
                if g.scope == "protected"
                else ""
            )
            raise PbkitError(
                f"latency target {g.speedup:g}x on {g.settings.backend} is unreachable: predicted"
                f" {self.p0 / now:.2f}x when nothing more can be pruned in the {g.scope}"
                f" scope{floor}"
            )

    def check(self) -> Measured:
        """Measure the pruned model against the dense one, end to end."""
        s, g = self.goal.settings, self.goal
        if len(self.checks) >= s.max_checks:
            best = max(c.speedup for c in self.checks)
            raise PbkitError(
                f"latency target {g.speedup:g}x on {s.backend} not met after {s.max_checks}"
                f" end-to-end measurements (best {best:.3f}x); raise prune.latency.max_checks or"
                " lower the target"
            )
        m = self.measure()
        self.checks.append(m)
        last = self.trajectory[-1]
        last.measured = m
        self._say(
            f"measured {m.speedup:.3f}x [{m.ci[0]:.3f}, {m.ci[1]:.3f}] "
            f"(predicted {last.predicted_speedup:.3f}x)"
        )
        return m


def run(
    model: nn.Module,
    pruner: Any,
    importance: Any,
    tools: Tools,
    goal: Goal,
    hooks: StepHooks,
) -> LatencyRun:
    """Prune ``model`` until its measured speed-up on the backend meets ``goal.speedup``: the
    table for the dense model, the knapsack rounds, then measured steps."""
    t0 = time.perf_counter()
    dense = copy.deepcopy(model)
    table = tools.table(model)
    table_s = time.perf_counter() - t0
    ks = Knapsack(model, pruner, importance, table, goal.max_ratio)
    loop = _ClosedLoop(ks, lambda: tools.measure(dense, model), goal, hooks)
    loop.run()
    return LatencyRun(
        settings=goal.settings,
        table=TableFacts(table.info, len(table.costs), len(table.layers), table.scale, table_s),
        trajectory=loop.trajectory,
        checks=loop.checks,
        step_times=loop.step_times,
        trained_s=loop.trained,
    )
