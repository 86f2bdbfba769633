"""Comparison setups (Wang et al. 2023, ../shared/reference/fairness.md), computed from the facts
of each row, never typed by hand.

A row's *facts* are what a setup may hold equal: the S1 key (dataset, network, scope, target),
the base model, the finetuning epochs, the finetuning LR schedule, the rest of the finetuning
recipe (weight decay, batch, augmentation, label smoothing, distillation), the pruning-stage
epochs and schedule, and the initialisation (pruned, or the scratch baseline). They come from a
record (:func:`from_record`) or, before anything runs, from a trial's configuration
(:func:`from_config`), so a study can be refused for a setup it cannot meet.

Levels, strictness increasing: S1 < S2 (+ base) < S3.1 (+ finetune epochs) < S3.2 (+ the
finetuning LR schedule and the rest of its recipe, KD included) < S4.1 (+ pruning-stage epochs) <
S4.2 (+ pruning-stage schedule). SX-A: a scratch row against pruned rows with the same total
epochs. INT8 quantization is part of the comparison from S1 up: rows calibrated differently
(another calibration source, split, image count, method, per-channel setting or seed) are not
ranked together (``quant``; rows without INT8 points have none).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypedDict

from pbkit.core import config, record
from pbkit.report import deployed

LEVELS = ("S1", "S2", "S3.1", "S3.2", "S4.1", "S4.2")
HOLDS = {  # what each level adds to the one before it
    "S1": "same dataset, network, scope and target",
    "S2": "same base model",
    "S3.1": "same finetuning epochs",
    "S3.2": "same finetuning LR schedule and recipe (KD included)",
    "S4.1": "same pruning-stage epochs",
    "S4.2": "same pruning-stage schedule",
}
# the facts each level holds equal (beyond the levels before it)
LEVEL_FACTS = {
    "S1": ("s1", "quant"),
    "S2": ("base",),
    "S3.1": ("ft_epochs",),
    "S3.2": ("ft_schedule", "ft_recipe"),
    "S4.1": ("prune_epochs",),
    "S4.2": ("prune_schedule",),
}
FACT_NAMES = {
    "s1": "dataset/network/scope/target",
    "base": "base model",
    "ft_epochs": "finetune epochs",
    "ft_schedule": "finetune LR schedule",
    "ft_recipe": "finetune recipe",
    "prune_epochs": "pruning-stage epochs",
    "prune_schedule": "pruning-stage schedule",
    "init": "initialisation",
    "total_epochs": "total epochs (base + pruning stage + finetune)",
    "quant": "INT8 calibration",
}
SCHEDULE_KEYS = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "schedule",
    "milestones_epochs",
    "step_size",
    "gamma",
)
RECIPE_KEYS = ("weight_decay", "batch_size", "label_smoothing", "augmentation", "kd", "amp")
PRUNE_SCHEDULE_KEYS = (
    "optimizer",
    "lr",
    "momentum",
    "schedule",
    "milestones",
    "step_size",
    "gamma",
    "batch_size",
    "reg",
    "delta_reg",
)


class Facts(TypedDict):
    """A row's facts: what the setup levels may hold equal (the recipes' own fields stay open:
    they are whatever the training stages recorded)."""

    s1: tuple[str, str | None, str, float]  # dataset, network, scope, target
    base: str | list[str]  # the base's sha256 (an aggregated row: its seeds' bases, sorted)
    ft_epochs: int
    ft_schedule: dict[str, Any]  # optimizer, lr, momentum, schedule, milestones, ...
    ft_recipe: dict[str, Any]  # weight decay, batch, label smoothing, amp, augmentation, kd, ...
    prune_epochs: int | str  # a planned interleaved schedule: epochs + iterations per step
    prune_schedule: dict[str, Any]  # oneshot | interleaved, and sparse training's recipe
    init: str  # pruned | scratch
    total_epochs: int | None  # base + pruning stage + finetune (scratch: as it trained)
    # INT8 calibration (source, split, images, method, per-channel, seed); None: no INT8 point
    quant: dict[str, Any] | None


class _Method(Protocol):
    @property
    def stage(self) -> str: ...


def level_index(level: str) -> int:
    if level not in LEVELS:
        raise ValueError(f"unknown comparison setup {level!r}; choose one of: {', '.join(LEVELS)}")
    return LEVELS.index(level)


def _milestones(recipe: dict[str, Any]) -> list[int]:
    if recipe.get("milestones_epochs") is not None:
        return list(recipe["milestones_epochs"])
    epochs = int(recipe.get("epochs") or 0)
    return [
        int(round(m * epochs)) if isinstance(m, float) and 0 < m < 1 else int(m)
        for m in recipe.get("milestones") or []
    ]


def _kd(value: Any) -> dict[str, Any]:
    kd = dict(value or {})
    if not kd.get("enabled"):
        return {"enabled": False}
    return {k: kd.get(k) for k in ("enabled", "alpha", "temperature", "teacher")}


def _finetune_facts(
    recipe: dict[str, Any], augmentation: str | None
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """The finetuning recipe as the setup levels see it (seeds apart: they are repeats)."""
    schedule = {k: recipe.get(k) for k in SCHEDULE_KEYS if k != "milestones_epochs"}
    schedule["milestones"] = _milestones(recipe) if recipe.get("schedule") in ("multistep",) else []
    if recipe.get("schedule") != "step":
        schedule.pop("step_size", None)
    if recipe.get("schedule") not in ("step", "multistep"):
        schedule.pop("gamma", None)
    rest = {k: recipe.get(k) for k in RECIPE_KEYS if k not in ("augmentation", "kd", "amp")}
    rest["amp"] = recipe.get("amp") or "off"  # records made before AMP trained without it
    # processes trained across (batch statistics per rank): 1 for records made before distributed
    # training
    rest["world_size"] = int((recipe.get("distributed") or {}).get("world_size") or 1)
    rest["augmentation"] = augmentation
    rest["kd"] = _kd(recipe.get("kd"))
    return int(recipe.get("epochs") or 0), schedule, rest


def scope_of(rec: record.Record) -> str:
    """The scope as reports group and show it: a latency-targeted run's names the backend its
    speed-up was measured on (its target is not a MACs ratio, so it is ranked apart)."""
    m = rec.method
    if m.target == "latency" and m.latency:
        return f"{m.scope}, {m.latency['backend']} latency"
    return m.scope


def from_record(rec: record.Record) -> Facts:
    """The facts of a record."""
    ft = dict(rec.finetune or {})
    m = rec.method
    sparsify = m.sparsify or {}
    interleave = m.interleave or {}
    prune_epochs = int(sparsify.get("epochs") or 0) if m.stage == "sparsify" else 0
    prune_schedule: dict[str, Any] = {"schedule": m.schedule}
    if m.stage == "sparsify":
        prune_schedule["sparsify"] = {k: sparsify.get(k) for k in PRUNE_SCHEDULE_KEYS}
    if interleave:
        prune_schedule["interleave"] = {
            "iters_per_step": interleave.get("iters_per_step"),
            "kd": _kd(interleave.get("kd")),
            **(interleave.get("recipe") or {}),
        }
    base_epochs = int((rec.base_training or {}).get("epochs") or 0)
    interleave_epochs = int(
        interleave.get("epochs") or 0
    )  # the training between pruning steps, in epochs
    init = ft.get("init") or "pruned"
    ft_epochs, ft_schedule, ft_recipe = _finetune_facts(ft, ft.get("augmentation"))
    if init == "scratch":  # what the scratch row trained with is the base recipe
        ft_epochs = int(ft.get("epochs_total") or ft.get("epochs") or 0)
    return Facts(
        s1=(
            rec.model.name,
            rec.dataset.name if rec.dataset else None,
            scope_of(rec),
            m.target_speedup,
        ),
        base=rec.model.weights_sha256,
        ft_epochs=ft_epochs,
        ft_schedule=ft_schedule,
        ft_recipe=ft_recipe,
        prune_epochs=prune_epochs + interleave_epochs,
        prune_schedule=prune_schedule,
        init=init,
        total_epochs=(
            ft.get("epochs_total")
            if init == "scratch"
            else base_epochs + prune_epochs + interleave_epochs + int(ft.get("epochs") or 0)
        ),
        quant=deployed.calibration_key(rec),
    )


def from_config(cfg: config.Config, method: _Method, base_id: str) -> Facts:
    """The facts a trial will have, from its configuration and its method (its ``stage``);
    ``base_id`` names its base (trials that train the same base share it)."""
    p = cfg.prune
    prune_schedule: dict[str, Any] = {"schedule": p.schedule}
    if method.stage == "sparsify":
        sp = cfg.sparsify.model_dump()
        prune_schedule["sparsify"] = {k: sp.get(k) for k in PRUNE_SCHEDULE_KEYS}
    if p.schedule == "interleaved":
        prune_schedule["interleave"] = {
            "iters_per_step": p.interleave_iters,
            "kd": _kd(cfg.finetune.kd.model_dump()),
        }
    ft_epochs, ft_schedule, ft_recipe = _finetune_facts(
        {**cfg.finetune.model_dump(), "kd": cfg.finetune.kd.model_dump()}, None
    )
    return Facts(
        s1=(cfg.model.name, cfg.dataset.name, p.scope, p.speedup),
        base=base_id,
        ft_epochs=ft_epochs,
        ft_schedule=ft_schedule,
        ft_recipe=ft_recipe,
        # (interleaved training is counted in iterations per pruning step until the steps are known)
        prune_epochs=(
            (cfg.sparsify.epochs if method.stage == "sparsify" else 0)
            if p.schedule == "oneshot"
            else (
                f"{cfg.sparsify.epochs if method.stage == 'sparsify' else 0} + {p.interleave_iters}"
                " iterations/step"
            )
        ),
        prune_schedule=prune_schedule,
        init=cfg.init,
        total_epochs=None,
        quant=_quant_of_config(cfg),
    )


def _quant_of_config(cfg: config.Config) -> dict[str, Any] | None:
    """The INT8 calibration a trial will record (as :func:`deployed.calibration_key` reads it)."""
    if "int8" not in cfg.bench.precisions:
        return None
    q = cfg.export.int8
    synthetic = q.calibration == "synthetic"
    return {
        "source": "synthetic" if synthetic else cfg.dataset.name,
        "split": "synthetic" if synthetic else "train",
        "images": q.images,
        "method": q.method,
        "per_channel": q.per_channel,
        "seed": q.seed,
    }


def _same(values: Iterable[Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1


def infer(facts: Sequence[Facts]) -> tuple[str | None, str | None]:
    """The strictest setup these rows share, and what breaks the next level (None when there is
    none: S4.2). A level is None when the rows differ in dataset, network, scope or target (no
    setup at all). Scratch rows are compared with pruned rows by total epochs (SX-A)."""
    if not facts:
        return None, None
    inits = {f["init"] for f in facts}
    if "scratch" in inits and "pruned" in inits:
        if not _same(f["s1"] for f in facts):
            return None, differs_line(facts, ["s1"])
        return (
            ("SX-A", None)
            if _same(f["total_epochs"] for f in facts)
            else (None, differs_line(facts, ["total_epochs"]))
        )
    reached = None
    for level in LEVELS:
        differs = [k for k in LEVEL_FACTS[level] if not _same(_get(f, k) for f in facts)]
        if differs:
            return reached, differs_line(facts, differs)
        reached = level
    return reached, None


def _get(f: Facts, key: str) -> Any:
    """A fact by a name held in a variable (the level tables name them)."""
    return f.get(key)


def differs_line(facts: Sequence[Facts], keys: list[str]) -> str:
    """``finetune LR schedule (lr: 0.01 | 0.001)``: what differs among ``keys``, and how."""
    parts = []
    for k in keys:
        values = [_get(f, k) for f in facts]
        detail = _detail(values)
        parts.append(FACT_NAMES.get(k, k) + (f" ({detail})" if detail else ""))
    return "; ".join(parts)


def _detail(values: list[Any]) -> str:
    """Which sub-field differs among dict values, and its distinct values."""
    if all(isinstance(v, dict) for v in values):
        keys = sorted(
            {k for v in values for k in v}, key=lambda k: (k != "enabled", k)
        )  # KD on/off says it all
        for k in keys:
            sub = [v.get(k) for v in values]
            if not _same(sub):
                inner = _detail(sub)
                nested = inner and all(isinstance(s, dict) for s in sub)
                return f"{k}{'.' + inner if nested else ': ' + inner}"
        return ""
    distinct: list[str] = []
    for v in values:
        text = _short(v)
        if text not in distinct:
            distinct.append(text)
    return " | ".join(distinct)


def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:
        return v[:12]
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_short(x)}" for k, x in v.items())
    return str(v)


def split_key(f: Facts, level: str) -> str:
    """What rows must share to be ranked together at ``level`` (and the initialisation)."""
    keys = [k for lv in LEVELS[: level_index(level) + 1] for k in LEVEL_FACTS[lv]]
    return json.dumps(
        {"init": f["init"], **{k: _get(f, k) for k in keys}}, sort_keys=True, default=str
    )


def unmet(trials: list[tuple[str, Facts]], level: str) -> str | None:
    """Why a grid cannot be compared at ``level``: two methods of one S1 group that never share
    everything the level holds equal (e.g. only ever finetuned with different recipes, or on
    different bases). ``trials`` are (method, facts) pairs; scratch rows are compared at SX-A and
    left out. None when every pair of methods meets somewhere."""
    level_index(level)
    groups: dict[str, list[tuple[str, Facts]]] = {}
    for method, f in trials:
        if f["init"] == "pruned":
            groups.setdefault(json.dumps(f["s1"], default=str), []).append((method, f))
    for members in groups.values():
        methods = sorted({m for m, _ in members})
        meets: dict[str, set[str]] = {}
        for m, f in members:
            meets.setdefault(split_key(f, level), set()).add(m)
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                if any(a in ms and b in ms for ms in meets.values()):
                    continue
                fa = [f for m, f in members if m == a]
                fb = [f for m, f in members if m == b]
                got, why = infer([fa[0], fb[0]])
                s1 = members[0][1]["s1"]
                return (
                    f"{a} and {b} ({s1[0]}, {s1[1]}, {s1[2]}, {s1[3]:g}x) are never compared at"
                    f" {level}: at best {got or 'no setup'}; they differ in {why}"
                )
    return None
