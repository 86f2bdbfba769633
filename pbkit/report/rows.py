"""A record's row: what a leaderboard shows of one run (its setup facts, metrics, counted and
measured speed-ups, the machine that measured it), read from the record alone."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbkit.core import record
from pbkit.machine import envinfo
from pbkit.report import deployed, setups
from pbkit.report.discover import unfinished


@dataclass(kw_only=True)
class Row:
    """One run, as the leaderboard reads it."""

    model: str
    dataset: str | None
    scope: str  # a latency-targeted run's names its backend (:func:`setups.scope_of`)
    target: float  # the target speed-up
    base_sha256: str  # the base's, short
    recipe: str  # the finetuning recipe's short hash (:func:`recipe_hash`)
    method: str
    metric: str | None
    base: float | None
    pruned: float | None
    finetuned: float | None
    delta: float | None  # final minus base, in points
    ta: float | None  # trainability accuracy
    rising_at_first_decay: bool | None
    params_left: float
    macs_speedup: float
    measured: dict[str, float]  # point label (:func:`point_label`) -> measured speed-up
    measured_ci: dict[str, list[float]]  # ... -> its interval (points that have one)
    step_time_s: float
    regularizer: str | None
    reg_time_s: float | None
    parity_ok: bool | None  # None: nothing checked
    machine: str  # the machine that measured it
    run_id: str
    record: str  # the record's path
    init: str  # pruned | scratch
    seed: Any
    schedule: str  # oneshot | interleaved
    facts: setups.Facts
    recipe_line: str
    entry_key: str  # what repeats of one grid point share: rows with the same key aggregate
    # a non-fp32 point label -> pruned there over dense fp32 on the same backend (INT8: the whole
    # gain a deployment sees), and -> the pruned model's metric on that engine
    vs_dense_fp32: dict[str, float] = field(default_factory=dict)
    engine_acc: dict[str, float] = field(default_factory=dict)
    # point label -> why it is unstable (the pruned point's or the dense point's reasons): only
    # labels where either was measured unstable
    unstable: dict[str, list[str]] = field(default_factory=dict)


def recipe_hash(rec: record.Record) -> str:
    """A short name of the finetuning recipe (its setup facts: seeds apart, they are repeats)."""
    f = setups.from_record(rec)
    key = {
        "ft_epochs": f["ft_epochs"],
        "ft_schedule": f["ft_schedule"],
        "ft_recipe": f["ft_recipe"],
        "init": f["init"],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def point_label(p: record.LatencyPoint) -> str:
    """``backend@bN``, with ``/fp16`` after the backend for non-fp32 points."""
    return f"{p.backend}{'' if p.precision == 'fp32' else '/' + p.precision}@b{p.batch}"


def _points(rec: record.Record) -> dict[str, record.LatencyPoint]:
    """The pruned points per backend and precision, at its smallest batch."""
    out = {}
    for p in rec.latency:
        same = [
            q.batch for q in rec.latency if (q.backend, q.precision) == (p.backend, p.precision)
        ]
        if p.variant == "pruned" and p.batch == min(same):
            out[point_label(p)] = p
    return out


def _deployed(rec: record.Record) -> tuple[dict[str, float], dict[str, float]]:
    """Per point label (smallest batch): pruned over dense fp32 (non-fp32 points), and the pruned
    model's metric on the engine."""
    labels = {(p.backend, p.precision, p.batch): label for label, p in _points(rec).items()}
    vs, accs = {}, {}
    for dp in deployed.points(rec):
        label = labels.get((dp.backend, dp.precision, dp.batch))
        if label is None:
            continue
        if dp.precision != "fp32" and dp.vs_dense_fp32 is not None:
            vs[label] = round(dp.vs_dense_fp32, 3)
        if dp.pruned_acc is not None:
            accs[label] = round(dp.pruned_acc, 4)
    return vs, accs


def _measured(rec: record.Record) -> dict[str, float]:
    """Measured speed-up per backend and precision, at its smallest batch."""
    return {k: round(p.speedup_vs_dense or 0.0, 3) for k, p in _points(rec).items()}


def _measured_ci(rec: record.Record) -> dict[str, list[float]]:
    return {k: [round(x, 3) for x in p.speedup_ci] for k, p in _points(rec).items() if p.speedup_ci}


def _unstable(rec: record.Record) -> dict[str, list[str]]:
    """Per point label (smallest batch), why the pruned point or the dense one it is compared with
    is unstable: their reasons, de-duplicated; a reason only one of them has names it
    (``dense: cov 16.1% > 2.5%``). Labels whose points are both stable are left out."""
    dense = {(p.backend, p.precision, p.batch): p for p in rec.latency if p.variant == "dense"}
    out = {}
    for label, p in _points(rec).items():
        d = dense.get((p.backend, p.precision, p.batch))
        per = {"pruned": p} | ({"dense": d} if d is not None else {})
        bad = {v: q for v, q in per.items() if not q.stable}
        if not bad:
            continue
        reasons = {v: list(q.unstable_reasons) or ["unstable"] for v, q in bad.items()}
        both = [r for r in reasons.get("dense", []) if r in reasons.get("pruned", [])]
        out[label] = merge(
            [
                r if r in both else f"{v}: {r}"
                for v in ("dense", "pruned")
                for r in reasons.get(v, [])
            ]
        )
    return out


def merge(*lists: list[str]) -> list[str]:
    """The reasons of several lists, each once, in the order first seen."""
    return list(dict.fromkeys(r for reasons in lists for r in reasons))


def _strip_seeds(value: Any) -> Any:
    """A run's identity without its seeds: what repeats of one grid point share."""
    if isinstance(value, dict):
        return {k: _strip_seeds(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, list):
        return [_strip_seeds(v) for v in value]
    return value


def seed_of(r: record.Record) -> Any:
    cfg = r.config or {}
    if cfg.get("seed") is not None:
        return cfg["seed"]
    return (cfg.get("finetune") or {}).get("seed", (r.finetune or {}).get("seed"))


def recipe_line(r: record.Record) -> str:
    """The whole finetuning recipe in one line (the scratch baseline's: the base recipe it ran)."""
    ft = r.finetune or {}
    if not ft.get("epochs_run", 1) and not ft.get("history"):
        return "no finetuning"
    sched = str(ft.get("schedule"))
    if sched == "multistep":
        sched += (
            " @"
            + ",".join(str(m) for m in ft.get("milestones_epochs") or [])
            + f" x{ft.get('gamma')}"
        )
    elif sched == "step":
        sched += f" every {ft.get('step_size')} x{ft.get('gamma')}"
    kd = ft.get("kd") or {}
    kd_text = (
        f"KD alpha {kd.get('alpha')} T {kd.get('temperature')} from"
        f" {kd.get('teacher') or 'the dense base'}"
        if kd.get("enabled")
        else "KD off"
    )
    what = "scratch: base recipe" if ft.get("init") == "scratch" else "finetune"
    epochs = f"{ft.get('epochs')} epochs" + (
        f" (= {' + '.join(f'{v} {k}' for k, v in ft['epochs_from'].items() if v)})"
        if ft.get("epochs_from")
        else ""
    )
    opt = str(ft.get("optimizer"))
    if opt == "sgd":
        opt += f" momentum {ft.get('momentum')}" + (" nesterov" if ft.get("nesterov") else "")
    return (
        f"{what}: {epochs}, {opt}, lr {ft.get('lr')} {sched}, batch {ft.get('batch_size')}, "
        f"weight decay {ft.get('weight_decay')}, label smoothing {ft.get('label_smoothing')}, "
        f"augmentation {ft.get('augmentation') or 'not recorded'}, {kd_text}"
    )


def rows(records: Iterable[tuple[Path, record.Record]]) -> list[Row]:
    """One row per record (runs whose finetuning has not run yet are left out:
    :func:`~pbkit.report.discover.unfinished`)."""
    out = []
    for path, r in records:
        if unfinished(r):
            continue
        a = r.accuracy
        after = a.finetuned if a.finetuned is not None else a.pruned
        facts = setups.from_record(r)
        ta = (r.finetune or {}).get("trainability") or {}
        identity = _strip_seeds(r.identity.fields) if r.identity is not None else r.run_id
        entry = {
            "method": r.method.key,
            **{k: v for k, v in facts.items() if k != "base"},
            "identity": identity,
        }
        if r.latency:  # speed-ups of one pruning on two machines are two rows, never two seeds
            bench_env = r.stage_env("bench")
            entry["measured_on"] = [
                envinfo.machine(bench_env),
                (bench_env.get("host") or {}).get("hostname"),
            ]
        vs_fp32, engine_acc = _deployed(r)
        out.append(
            Row(
                vs_dense_fp32=vs_fp32,
                engine_acc=engine_acc,
                model=r.model.name,
                dataset=r.dataset.name if r.dataset else None,
                scope=setups.scope_of(r),
                target=r.method.target_speedup,
                base_sha256=r.model.weights_sha256[:12],
                recipe=recipe_hash(r),
                method=r.method.key,
                metric=a.metric,
                base=a.base,
                pruned=a.pruned,
                finetuned=a.finetuned,
                delta=(after - a.base) if after is not None and a.base is not None else None,
                ta=ta.get("ta"),
                rising_at_first_decay=ta.get("rising_at_first_decay"),
                params_left=r.counts.params_pruned / max(r.counts.params_base, 1),
                macs_speedup=round(r.method.achieved_speedup, 3),
                measured=_measured(r),
                measured_ci=_measured_ci(r),
                unstable=_unstable(r),
                step_time_s=round(r.method.step_time_s, 4),
                regularizer=r.method.regularizer,
                reg_time_s=r.method.reg_time_s,
                parity_ok=all(p.passed for p in r.parity) if r.parity else None,
                machine=envinfo.machine(r.stage_env("bench")),
                run_id=r.run_id,
                record=str(path),
                init=facts["init"],
                seed=seed_of(r),
                schedule=r.method.schedule,
                facts=facts,
                recipe_line=recipe_line(r),
                entry_key=json.dumps(entry, sort_keys=True, default=str),
            )
        )
    return out
