"""Latency-targeted pruning on the dependency graph: the knapsack rounds and the closed loop.

Each group of coupled channels (torch-pruning's DepGraph) is a knapsack item family: removing its
``k`` least important units costs their summed importance (the method's Importance, as for MACs
targets) and saves the predicted latency of every tabled layer whose input or output width it
narrows. In the global and protected scopes the next removal is the one with the least importance
per millisecond saved, over all groups; in the local scope every group keeps the same share of its
units and only the stop rule and the width snapping come from the table. Widths move in the steps
the table shows are faster (whole multiples of the alignment where unaligned widths cost more).
See :mod:`pbkit.prune.latency` for the table and the closed loop's rules.
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
from pbkit.prune import latency
from pbkit.prune.latency import LatencySettings, Measured, Table


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


def run(
    model: nn.Module,
    pruner: Any,
    importance: Any,
    tools: Tools,
    s: LatencySettings,
    speedup: float,
    scope: str,
    max_ratio: float,
    input_size: int,
    *,
    collect: Callable[[], None] | None,
    between_steps: Callable[[int], float] | None,
    after_prune: Callable[[], None],
    on_step: Callable[[int, str], None] | None,
) -> tuple[int, list[float], float, dict[str, Any]]:
    """Prune ``model`` until its measured speed-up on the backend meets ``speedup``. Returns
    (steps, step seconds, seconds spent training between steps, the record's ``method.latency``)."""
    t0 = time.perf_counter()
    dense = copy.deepcopy(model)
    table = tools.table(model)
    table_s = time.perf_counter() - t0
    ks = Knapsack(model, pruner, importance, table, max_ratio)
    p0 = ks.predicted()
    macs0 = counts.count_macs(model, input_size)
    trajectory: list[dict[str, Any]] = []
    step_times: list[float] = []
    trained = 0.0
    checks: list[Measured] = []

    def step(goal_ms: float, kind: str) -> None:
        nonlocal trained
        if ks.predicted() <= goal_ms and trajectory:
            return  # this round's goal is already met (widths move in aligned steps)
        if between_steps is not None:
            trained += between_steps(len(step_times) + 1)
        t = time.perf_counter()
        if collect is not None:
            collect()
        ks.score()
        reached = ks.prune_to(goal_ms, scope)
        after_prune()
        step_times.append(time.perf_counter() - t)
        macs = counts.count_macs(model, input_size)
        now = ks.predicted()
        trajectory.append(
            {
                "step": len(step_times),
                "kind": kind,
                "macs": macs,
                "macs_speedup": macs0 / max(macs, 1),
                "predicted_ms": now,
                "predicted_speedup": p0 / now,
            }
        )
        if on_step is not None:
            on_step(
                len(step_times),
                f"{kind}: predicted {p0 / now:.3f}x, MACs {macs0 / max(macs, 1):.3f}x",
            )
        if not reached:
            floor = (
                " (the protected scope keeps >= 10% of every group)" if scope == "protected" else ""
            )
            raise PbkitError(
                f"latency target {speedup:g}x on {s.backend} is unreachable: predicted"
                f" {p0 / now:.2f}x when nothing more can be pruned in the {scope} scope{floor}"
            )

    def check() -> Measured:
        if len(checks) >= s.max_checks:
            best = max(c.speedup for c in checks)
            raise PbkitError(
                f"latency target {speedup:g}x on {s.backend} not met after {s.max_checks}"
                f" end-to-end measurements (best {best:.3f}x); raise prune.latency.max_checks or"
                " lower the target"
            )
        m = tools.measure(dense, model)
        checks.append(m)
        trajectory[-1].update(
            measured_speedup=m.speedup,
            measured_ci=list(m.ci),
            dense_ms=m.dense_ms,
            measured_ms=m.pruned_ms,
            cov=m.cov,
            measure_s=round(m.seconds, 3),
        )
        if on_step is not None:
            on_step(
                len(step_times),
                f"measured {m.speedup:.3f}x [{m.ci[0]:.3f}, {m.ci[1]:.3f}] "
                f"(predicted {trajectory[-1]['predicted_speedup']:.3f}x)",
            )
        return m

    rounds = max(s.rounds, 1)
    first = speedup**latency.FIRST_CHECK  # predicted; the measured steps take it from there
    for r in range(1, rounds + 1):
        step(p0 / first ** (r / rounds), "round")
    while True:
        m = check()
        if latency.meets(m, speedup):
            break
        now = ks.predicted()
        step(latency.next_goal(now, p0 / now, m, speedup, s), "closed loop")
    met = m
    errors = [
        t["predicted_speedup"] / t["measured_speedup"] - 1
        for t in trajectory
        if "measured_speedup" in t
    ]
    macs_sp = trajectory[-1]["macs_speedup"]
    info = {
        "target": "latency",
        "backend": s.backend,
        "precision": s.precision,
        "batch": s.batch,
        "settings": {
            k: v for k, v in vars(s).items() if k not in ("backend", "precision", "batch")
        },
        "table": {
            **table.info,
            "entries": len(table.costs),
            "layers": len(table.layers),
            "scale": table.scale,
            "time_s": round(table_s, 3),
        },
        "trajectory": trajectory,
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
        "checks": len(checks),
        "measure_s": round(sum(c.seconds for c in checks), 3),
        "macs_speedup": macs_sp,
        "realisation": met.speedup / macs_sp,
        "measurement": met.extra,
    }
    return len(step_times), step_times, trained, info
