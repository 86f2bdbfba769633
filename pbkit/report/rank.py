"""Ranking, fair by construction (../shared/reference/fairness.md): entries are grouped by
everything the setup S3.2 holds equal (dataset, network, scope, target, the base models, finetuning
epochs, LR schedule and the rest of its recipe, KD included) and ranked only within their group;
neighbours whose mean ± std intervals overlap share a rank (``=k``). Each group states the
strictest setup its rows share (:mod:`pbkit.report.setups`), which field split one comparison in
several groups, and its recipe's name among the comparison's recipes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pbkit.report import columns, setups
from pbkit.report.rows import Row
from pbkit.report.stats import Entry, aggregate, score, separable, speed_separable


@dataclass(kw_only=True)
class GroupInfo:
    """What a ranked group holds equal, and how it reads."""

    model: str
    dataset: str  # "-": data-free
    scope: str
    target: float
    base_sha256: str
    recipe: str
    init: str  # pruned | scratch
    setup: str | None  # the strictest setup its rows share (SX-A: scratch rows)
    next_level: str | None  # what breaks the next level
    split_by: list[str]  # the fields that split its comparison in several groups
    recipe_line: str
    recipe_label: str  # what differs from the comparison's other recipes (``lr=0.01``)
    seeds: list[str]


Board = list[tuple[GroupInfo, list[Entry]]]


def rank(entries: list[Entry]) -> list[Entry]:
    """Order by the mean (ties by measured speed-up); ``rank`` is the position. ``rank_label`` is
    1 + the number of rows above that are separably better, with ``=`` where some row above is not
    separable from this one (they share a rank): ``1, =1, =1, 4, =4``. A group where no row has a
    metric (data-free runs) is ranked by its measured speed-up instead (:func:`rank_by_speed`)."""
    if entries and all(score(e) is None for e in entries):
        label = speed_label(entries)
        if label is not None:
            return rank_by_speed(entries, label)

    def key(e: Entry) -> tuple[float, float]:
        s = score(e)
        speed = max(
            (columns.measured_value(e, b) or 0.0 for b in e.measured),
            default=e.macs_speedup or 0.0,
        )
        return (s if s is not None else float("-inf"), speed)

    entries.sort(key=key, reverse=True)
    for i, e in enumerate(entries, 1):
        if score(e) is None:
            e.rank, e.rank_label, e.separable_from_above = None, "-", None
            continue
        above = [o for o in entries[: i - 1] if score(o) is not None]
        better = sum(1 for o in above if separable(o, e))
        e.rank = i
        e.separable_from_above = not above or separable(above[-1], e)
        e.rank_label = str(better + 1) if better == len(above) else f"={better + 1}"
    return entries


def speed_label(entries: list[Entry]) -> str | None:
    """The point label a data-free group is ranked at: the first, in sorted order, that every row
    of the group was measured at (None: they share none)."""
    shared = set.intersection(*(set(e.measured) for e in entries)) if entries else set()
    return min(shared) if shared else None


def rank_by_speed(entries: list[Entry], label: str) -> list[Entry]:
    """Rank by the measured speed-up at ``label`` (:func:`columns.measured_value`: 1.0 where the
    interval holds 1.0; ties by MACs speed-up); rows whose 95% intervals overlap (several seeds:
    mean ± std) are not separable, and an unstable point is never separable from the others."""
    entries.sort(
        key=lambda e: (columns.measured_value(e, label) or 0.0, e.macs_speedup or 0.0),
        reverse=True,
    )
    for i, e in enumerate(entries, 1):
        above = entries[: i - 1]
        better = sum(1 for o in above if speed_separable(o, e, label))
        e.rank = i
        e.separable_from_above = not above or speed_separable(above[-1], e, label)
        e.rank_label = str(better + 1) if better == len(above) else f"={better + 1}"
    return entries


def s1(e: Entry) -> tuple[str, str, str, float]:
    """Dataset, network, scope and target: what every comparison holds equal."""
    return (e.model, e.dataset or "-", e.scope, e.target)


def leaderboard(rs: list[Row]) -> Board:
    """Ranked groups: (what the group holds, its rows). Pruned rows are grouped by everything S3.2
    holds equal; scratch rows by their own recipe next to them."""
    entries = aggregate(rs)
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault(
            (json.dumps(s1(e), default=str), setups.split_key(e.facts, "S3.2")), []
        ).append(e)
    result = []
    for key in sorted(groups, key=lambda k: (k[0], groups[k][0].init != "pruned", k[1])):
        g = rank(groups[key])
        setup, next_level = setups.infer([e.facts for e in g])
        comparison = [
            o[0].facts for k, o in groups.items() if k[0] == key[0] and o[0].init == g[0].init
        ]
        split = [
            setups.differs_line(comparison, [f])
            for f in ("base", "ft_epochs", "ft_schedule", "ft_recipe")
            if len({json.dumps(c.get(f), sort_keys=True, default=str) for c in comparison}) > 1
        ]
        model, dataset, scope, target = s1(g[0])
        info = GroupInfo(
            model=model,
            dataset=dataset,
            scope=scope,
            target=target,
            base_sha256=g[0].base_sha256,
            recipe=g[0].recipe,
            init=g[0].init,
            setup="SX-A" if g[0].init == "scratch" else setup,
            next_level=next_level,
            split_by=split,
            recipe_line=g[0].recipe_line,
            recipe_label="",
            seeds=sorted({str(s) for e in g for s in e.seeds}),
        )
        result.append((info, g))
    _label_recipes(result)
    return result


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one, by dotted key (``ft_recipe.kd.enabled``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def recipe_facts(e: Entry) -> dict[str, Any]:
    """An entry's finetuning recipe, flat (what the recipe labels and effects compare)."""
    f = e.facts
    return flat(
        {"ft_epochs": f["ft_epochs"], "ft_schedule": f["ft_schedule"], "ft_recipe": f["ft_recipe"]}
    )


def _label_recipes(board: Board) -> None:
    """Name each group's recipe by what differs from the other recipes of its comparison:
    ``lr=0.01``, ``lr=0.001, kd on``."""
    by_s1: dict[tuple[str, str, str, float], list[tuple[GroupInfo, dict[str, Any]]]] = {}
    for info, g in board:
        if info.init == "pruned":
            by_s1.setdefault((info.model, info.dataset, info.scope, info.target), []).append(
                (info, recipe_facts(g[0]))
            )
        else:
            info.recipe_label = "scratch"
    order = ("ft_epochs", "ft_schedule", "ft_recipe")
    for items in by_s1.values():
        keys = sorted(
            {k for _, fl in items for k in fl}, key=lambda k: (order.index(k.split(".")[0]), k)
        )
        kd_on = [it for it in items if it[1].get("ft_recipe.kd.enabled")]

        def differs(k: str, among: list[tuple[GroupInfo, dict[str, Any]]]) -> bool:
            return len({json.dumps(fl.get(k), default=str) for _, fl in among}) > 1

        for info, fl in items:
            parts = []
            for k in keys:
                v = fl.get(k)
                if k == "ft_recipe.kd.enabled":
                    if differs(k, items):
                        parts.append(f"kd {'on' if v else 'off'}")
                elif k.startswith(
                    "ft_recipe.kd."
                ):  # KD's settings, where they differ among the KD recipes
                    if v is not None and differs(k, kd_on):
                        parts.append(f"kd {k.rsplit('.', 1)[1]}={v}")
                elif differs(k, items):
                    parts.append(f"{k.split('.', 1)[-1]}={v}")
            info.recipe_label = " & ".join(parts) or "one recipe"
