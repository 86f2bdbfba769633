"""Leaderboards from records, fair by construction (../shared/reference/fairness.md).

- Records that differ only in their seeds are one row: mean +- std and n of every metric.
- Rows are ranked only within a group that holds the setup S3.2 equal (dataset, network, scope,
  target, the base models, finetuning epochs, LR schedule and the rest of its recipe, KD
  included); each group states the strictest setup its rows share (:mod:`pbkit.report.setups`)
  and, when one comparison was split in several groups, which field split it.
- Neighbours whose mean +- std intervals overlap are marked as not separable (rank ``=k``).
- Trainability accuracy (TA, the mean metric over the first LR stage) sits next to the final one.
- Scratch rows (``init: scratch``) sit next to the pruned rows of their architecture (SX-A).
- Across finetuning recipes: the method x recipe matrix, whether the top methods' order holds
  under every recipe, and what one recipe change (the LR, KD on/off) did to every method.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.table import Table

from pbkit.core import record
from pbkit.core.errors import PbkitError
from pbkit.machine import envinfo
from pbkit.report import columns, setups

METRICS = (
    "base",
    "pruned",
    "finetuned",
    "delta",
    "ta",
    "params_left",
    "macs_speedup",
    "step_time_s",
    "reg_time_s",
)


def recipe_hash(rec: record.Record) -> str:
    """A short name of the finetuning recipe (its setup facts: seeds apart, they are repeats)."""
    f = setups.from_record(rec)
    key = {k: f[k] for k in ("ft_epochs", "ft_schedule", "ft_recipe", "init")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def find_records(*roots: str | Path) -> list[tuple[Path, record.Record]]:
    """The records under each folder (or the record files given), each once."""
    paths: dict[Path, Path] = {}
    for given in roots:
        root = Path(given).expanduser()
        if not root.exists():
            raise PbkitError(f"folder {str(root)!r} not found")
        found = (
            [root]
            if root.is_file()
            else sorted(
                p
                for p in root.rglob(record.RECORD_NAME)
                if not any(part.startswith(".tmp-") for part in p.parts)
            )
        )
        for p in found:
            paths.setdefault(p.resolve(), p)
    return [(p, record.read(p)) for p in paths.values()]


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


def _measured(rec: record.Record) -> dict[str, float]:
    """Measured speed-up per backend and precision, at its smallest batch."""
    return {k: round(p.speedup_vs_dense or 0.0, 3) for k, p in _points(rec).items()}


def _measured_ci(rec: record.Record) -> dict[str, list[float]]:
    return {k: [round(x, 3) for x in p.speedup_ci] for k, p in _points(rec).items() if p.speedup_ci}


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


def unfinished(r: record.Record) -> bool:
    """A run whose configuration finetunes (or trains from scratch) but whose record has no
    finetune stage yet: still running, or stopped; left out of leaderboards."""
    cfg = r.config or {}
    wants = bool((cfg.get("dataset") or {}).get("name")) and (
        int((cfg.get("finetune") or {}).get("epochs") or 0) > 0 or cfg.get("init") == "scratch"
    )
    # 1.0 records finetuned inside their prune stage: their finetuned metric says it ran
    return wants and "finetune" not in r.stages and r.accuracy.finetuned is None


def rows(records: Iterable[tuple[Path, record.Record]]) -> list[dict[str, Any]]:
    """One row per record (runs whose finetuning has not run yet are left out:
    :func:`unfinished`)."""
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
        out.append(
            {
                "model": r.model.name,
                "dataset": r.dataset.name if r.dataset else None,
                "scope": setups.scope_of(r),
                "target": r.method.target_speedup,
                "base_sha256": r.model.weights_sha256[:12],
                "recipe": recipe_hash(r),
                "method": r.method.key,
                "metric": a.metric,
                "base": a.base,
                "pruned": a.pruned,
                "finetuned": a.finetuned,
                "delta": (after - a.base) if after is not None and a.base is not None else None,
                "ta": ta.get("ta"),
                "rising_at_first_decay": ta.get("rising_at_first_decay"),
                "params_left": r.counts.params_pruned / max(r.counts.params_base, 1),
                "macs_speedup": round(r.method.achieved_speedup, 3),
                "measured": _measured(r),
                "measured_ci": _measured_ci(r),
                "step_time_s": round(r.method.step_time_s, 4),
                "regularizer": r.method.regularizer,
                "reg_time_s": r.method.reg_time_s,
                "parity_ok": all(p.passed for p in r.parity) if r.parity else None,
                "machine": envinfo.machine(r.stage_env("bench")),
                "run_id": r.run_id,
                "record": str(path),
                "init": facts["init"],
                "seed": seed_of(r),
                "schedule": r.method.schedule,
                "facts": facts,
                "recipe_line": recipe_line(r),
                "entry_key": json.dumps(entry, sort_keys=True, default=str),
            }
        )
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that differ only in their seeds (and so in their seed's base) become one: the mean of
    every metric, its sample std (None for n = 1) and n."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rs:
        by.setdefault(r["entry_key"], []).append(r)
    out = []
    for members in by.values():
        members.sort(key=lambda r: str(r["seed"]))
        first = members[0]
        e = {
            k: first[k]
            for k in (
                "model",
                "dataset",
                "scope",
                "target",
                "method",
                "metric",
                "init",
                "schedule",
                "recipe",
                "recipe_line",
                "regularizer",
            )
        }
        e.update(
            n=len(members),
            seeds=[r["seed"] for r in members],
            runs=[r["run_id"] for r in members],
            records=[r["record"] for r in members],
            std={},
            base_sha256=",".join(sorted({r["base_sha256"] for r in members})),
            machine=", ".join(sorted({r["machine"] for r in members})),
            parity_ok=(
                None
                if all(r["parity_ok"] is None for r in members)
                else all(r["parity_ok"] is not False for r in members)
            ),
            rising_at_first_decay=sum(1 for r in members if r["rising_at_first_decay"]),
            facts={**first["facts"], "base": sorted({r["facts"]["base"] for r in members})},
        )
        for k in METRICS:
            e[k], e["std"][k] = _mean_std([float(r[k]) for r in members if r[k] is not None])
        labels = sorted({b for r in members for b in r["measured"]})
        e["measured"] = {
            b: round(
                _mean_std([r["measured"][b] for r in members if b in r["measured"]])[0] or 0, 3
            )
            for b in labels
        }
        # one run: its interval; several: the spread of their speed-ups (mean ± std) says more
        e["measured_ci"] = dict(first["measured_ci"]) if len(members) == 1 else {}
        e["std"]["measured"] = {
            b: _mean_std([r["measured"][b] for r in members if b in r["measured"]])[1]
            for b in labels
        }
        e["run_id"] = ",".join(e["runs"])
        e["record"] = e["records"][0]
        out.append(e)
    return out


def score(e: dict[str, Any]) -> float | None:
    """What ranks a row: the metric after finetuning, else after pruning."""
    return e["finetuned"] if e["finetuned"] is not None else e["pruned"]


def spread(e: dict[str, Any]) -> float:
    """The std over seeds of what ranks a row (0 for a single run)."""
    std = e["std"].get("finetuned" if e["finetuned"] is not None else "pruned")
    return std or 0.0


def separable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two rows' mean +- std intervals are apart (a single run has no spread: only equal
    values are inseparable then)."""
    sa, sb = score(a), score(b)
    if sa is None or sb is None:
        return True
    return abs(sa - sb) > spread(a) + spread(b) or (abs(sa - sb) > 0 and spread(a) + spread(b) == 0)


def rank(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order by the mean (ties by measured speed-up); ``rank`` is the position. ``rank_label`` is
    1 + the number of rows above that are separably better, with ``=`` where some row above is not
    separable from this one (they share a rank): ``1, =1, =1, 4, =4``."""

    def key(e: dict[str, Any]) -> tuple[float, float]:
        s = score(e)
        speed = max(
            (columns.measured_value(e, b) or 0.0 for b in e["measured"]),
            default=e["macs_speedup"] or 0.0,
        )
        return (s if s is not None else float("-inf"), speed)

    entries.sort(key=key, reverse=True)
    for i, e in enumerate(entries, 1):
        if score(e) is None:
            e["rank"], e["rank_label"], e["separable_from_above"] = None, "-", None
            continue
        above = [o for o in entries[: i - 1] if score(o) is not None]
        better = sum(1 for o in above if separable(o, e))
        e["rank"] = i
        e["separable_from_above"] = not above or separable(above[-1], e)
        e["rank_label"] = str(better + 1) if better == len(above) else f"={better + 1}"
    return entries


def _s1(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["model"], e["dataset"] or "-", e["scope"], e["target"])


def leaderboard(rs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Ranked groups: (what the group holds, its rows). Pruned rows are grouped by everything S3.2
    holds equal; scratch rows by their own recipe next to them."""
    entries = aggregate(rs)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(
            (json.dumps(_s1(e), default=str), setups.split_key(e["facts"], "S3.2")), []
        ).append(e)
    result = []
    for key in sorted(groups, key=lambda k: (k[0], groups[k][0]["init"] != "pruned", k[1])):
        g = rank(groups[key])
        setup, next_level = setups.infer([e["facts"] for e in g])
        comparison = [
            o[0]["facts"]
            for k, o in groups.items()
            if k[0] == key[0] and o[0]["init"] == g[0]["init"]
        ]
        split = [
            setups.differs_line(comparison, [f])
            for f in ("base", "ft_epochs", "ft_schedule", "ft_recipe")
            if len({json.dumps(c.get(f), sort_keys=True, default=str) for c in comparison}) > 1
        ]
        model, dataset, scope, target = _s1(g[0])
        info = {
            "model": model,
            "dataset": dataset,
            "scope": scope,
            "target": target,
            "base_sha256": g[0]["base_sha256"],
            "recipe": g[0]["recipe"],
            "init": g[0]["init"],
            "setup": "SX-A" if g[0]["init"] == "scratch" else setup,
            "next_level": next_level,
            "split_by": split,
            "recipe_line": g[0]["recipe_line"],
            "recipe_label": "",
            "seeds": sorted({str(s) for e in g for s in e["seeds"]}),
        }
        result.append((info, g))
    _label_recipes(result)
    return result


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _label_recipes(board: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    """Name each group's recipe by what differs from the other recipes of its comparison:
    ``lr=0.01``, ``lr=0.001, kd on``."""
    by_s1: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for info, g in board:
        if info["init"] == "pruned":
            by_s1.setdefault(
                (info["model"], info["dataset"], info["scope"], info["target"]), []
            ).append(
                {
                    "info": info,
                    "flat": _flat(
                        {k: g[0]["facts"][k] for k in ("ft_epochs", "ft_schedule", "ft_recipe")}
                    ),
                }
            )
        else:
            info["recipe_label"] = "scratch"
    order = ("ft_epochs", "ft_schedule", "ft_recipe")
    for items in by_s1.values():
        keys = sorted(
            {k for it in items for k in it["flat"]}, key=lambda k: (order.index(k.split(".")[0]), k)
        )
        kd_on = [it for it in items if it["flat"].get("ft_recipe.kd.enabled")]

        def differs(k: str, among: list[dict[str, Any]]) -> bool:
            return len({json.dumps(it["flat"].get(k), default=str) for it in among}) > 1

        for it in items:
            parts = []
            for k in keys:
                v = it["flat"].get(k)
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
            it["info"]["recipe_label"] = " & ".join(parts) or "one recipe"


# ------------------------------------------------------------------------------------------------
# across recipes: cross-finetuning, one change at a time, scratch


def cross_finetuning(
    board: list[tuple[dict[str, Any], list[dict[str, Any]]]], top: int = 3
) -> list[dict[str, Any]]:
    """Per comparison with more than one finetuning recipe (same S1 and bases): the method x recipe
    matrix of means, and for each pair of the top methods (by their mean over the recipes every
    one of them ran) whether one beats the other under every recipe, or the order flips, or they
    are not separable."""
    out = []
    comparisons: dict[tuple[Any, ...], list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
    for info, g in board:
        if info["init"] == "pruned":
            key = (
                info["model"],
                info["dataset"],
                info["scope"],
                info["target"],
                json.dumps(g[0]["facts"]["base"]),
            )
            comparisons.setdefault(key, []).append((info, g))
    for key, groups in comparisons.items():
        if len(groups) < 2:
            continue
        groups.sort(key=lambda ig: ig[0]["recipe_label"])
        recipes = [info["recipe_label"] for info, _ in groups]
        matrix: dict[str, dict[str, dict[str, Any]]] = {}
        for info, g in groups:
            for e in g:
                matrix.setdefault(e["method"], {})[info["recipe_label"]] = e
        # the leaders by their mean over the recipes every method ran (else over all it ran)
        common = [r for r in recipes if all(r in row for row in matrix.values())] or recipes
        means = {
            m: (
                sum(score(row[r]) or 0 for r in common if r in row)
                / max(sum(r in row for r in common), 1)
            )
            for m, row in matrix.items()
        }
        leaders = sorted(matrix, key=lambda m: -means[m])[:top]
        verdicts = []
        for i, a in enumerate(leaders):
            for b in leaders[i + 1 :]:
                shared = [r for r in recipes if r in matrix[a] and r in matrix[b]]
                if len(shared) < 2:
                    continue
                wins = {
                    r: (
                        "a"
                        if separable(matrix[a][r], matrix[b][r])
                        and (score(matrix[a][r]) or 0) > (score(matrix[b][r]) or 0)
                        else "b"
                        if separable(matrix[a][r], matrix[b][r])
                        else "tie"
                    )
                    for r in shared
                }
                if all(w == "a" for w in wins.values()):
                    text = f"{a} beats {b} under every recipe ({'; '.join(shared)})"
                elif all(w == "b" for w in wins.values()):
                    text = f"{b} beats {a} under every recipe ({'; '.join(shared)})"
                elif "a" in wins.values() and "b" in wins.values():
                    text = (
                        f"the order flips: {a} wins with"
                        f" {'; '.join(r for r, w in wins.items() if w == 'a')}, {b} with"
                        f" {'; '.join(r for r, w in wins.items() if w == 'b')}"
                    )
                elif all(w == "tie" for w in wins.values()):
                    ahead = {
                        r: sorted((a, b), key=lambda m, r=r: -(score(matrix[m][r]) or 0))[0]
                        for r in shared
                    }
                    means = (
                        "; by the means "
                        + ("the order flips: " if len(set(ahead.values())) > 1 else "")
                        + ", ".join(
                            f"{m} is ahead with {'; '.join(r for r in shared if ahead[r] == m)}"
                            for m in dict.fromkeys(ahead.values())
                        )
                    )
                    text = (
                        f"{a} and {b} are not separable under any recipe they share"
                        f" ({'; '.join(shared)}){means}"
                    )
                else:
                    lead = a if "a" in wins.values() else b
                    text = (
                        f"{lead} wins with {'; '.join(r for r, w in wins.items() if w != 'tie')};"
                        f" not separable with {'; '.join(r for r, w in wins.items() if w == 'tie')}"
                    )
                verdicts.append(
                    {
                        "a": a,
                        "b": b,
                        "per_recipe": wins,
                        "verdict": text,
                        "holds": len(set(wins.values())) == 1 and "tie" not in wins.values(),
                    }
                )
        out.append(
            {
                "model": key[0],
                "dataset": key[1],
                "scope": key[2],
                "target": key[3],
                "recipes": recipes,
                "matrix": {
                    m: {r: (score(e), spread(e), e["n"], e["ta"]) for r, e in row.items()}
                    for m, row in matrix.items()
                },
                "top": leaders,
                "verdicts": verdicts,
                "setup": "S3.1" if _same_epochs(groups) else "S2",
            }
        )
    return out


def _same_epochs(groups: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> bool:
    return len({g[0]["facts"]["ft_epochs"] for _, g in groups}) == 1


def recipe_effects(
    board: list[tuple[dict[str, Any], list[dict[str, Any]]]],
) -> list[dict[str, Any]]:
    """For every two recipes of one comparison that differ in one field only (the learning rate,
    KD on/off): per method, the change of the final metric and of TA from one to the other (read
    as KD off -> on, and smaller -> larger value)."""
    out = []
    pruned = [(info, g) for info, g in board if info["init"] == "pruned"]
    keys = ("base", "ft_epochs", "ft_schedule", "ft_recipe")
    for i, first in enumerate(pruned):
        for second in pruned[i + 1 :]:
            s1 = [
                (x[0]["model"], x[0]["dataset"], x[0]["scope"], x[0]["target"])
                for x in (first, second)
            ]
            if s1[0] != s1[1]:
                continue
            fa = _flat({k: first[1][0]["facts"][k] for k in keys})
            fb = _flat({k: second[1][0]["facts"][k] for k in keys})
            differ = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
            kd = bool(differ) and all(k.startswith("ft_recipe.kd.") for k in differ)
            if len(differ) != 1 and not kd:
                continue
            if kd:
                field = "kd"
                to, frm = (first, second) if fa.get("ft_recipe.kd.enabled") else (second, first)
            else:
                field = differ[0].split(".", 1)[-1]
                va, vb = fa.get(differ[0]), fb.get(differ[0])
                larger = isinstance(va, int | float) and isinstance(vb, int | float) and va > vb
                to, frm = (first, second) if larger else (second, first)
            before = {e["method"]: e for e in frm[1]}
            per = []
            for e in to[1]:
                o = before.get(e["method"])
                if o is None or score(e) is None or score(o) is None:
                    continue
                per.append(
                    {
                        "method": e["method"],
                        "from": score(o),
                        "to": score(e),
                        "change": score(e) - score(o),
                        "ta_change": (
                            (e["ta"] - o["ta"])
                            if e["ta"] is not None and o["ta"] is not None
                            else None
                        ),
                        "separable": separable(e, o),
                    }
                )
            if per:
                info = to[0]
                out.append(
                    {
                        "model": info["model"],
                        "dataset": info["dataset"],
                        "scope": info["scope"],
                        "target": info["target"],
                        "field": field,
                        "from": frm[0]["recipe_label"],
                        "to": to[0]["recipe_label"],
                        "per_method": per,
                        "mean_change": sum(p["change"] for p in per) / len(per),
                    }
                )
    return out


def scratch_rows(board: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Each scratch row next to the pruned rows of the same architecture (method, S1, bases): the
    setup between them (SX-A when the total epochs match) and the gap per recipe."""
    out = []
    pruned = [(info, e) for info, g in board if info["init"] == "pruned" for e in g]
    for info, g in board:
        if info["init"] != "scratch":
            continue
        for s in g:
            mates = [(i, e) for i, e in pruned if e["method"] == s["method"] and _s1(e) == _s1(s)]
            per = {}
            for i, e in mates:
                setup, why = setups.infer([s["facts"], e["facts"]])
                per[i["recipe_label"]] = {
                    "pruned": score(e),
                    "pruned_std": spread(e),
                    "gap": (score(e) or 0) - (score(s) or 0),
                    "setup": setup,
                    "why": why,
                    "separable": separable(e, s),
                }
            out.append(
                {
                    "model": s["model"],
                    "dataset": s["dataset"],
                    "scope": s["scope"],
                    "target": s["target"],
                    "method": s["method"],
                    "scratch": score(s),
                    "scratch_std": spread(s),
                    "n": s["n"],
                    "epochs": s["facts"]["total_epochs"],
                    "pruned": per,
                }
            )
    return out


# ------------------------------------------------------------------------------------------------
# rendering


def setup_line(info: dict[str, Any]) -> str:
    setup = info["setup"]
    if setup is None:
        return "no common setup"
    if setup == "SX-A":
        return (
            "**SX-A** (scratch baseline: the pruned architecture re-initialised, trained for base +"
            " pruning-stage + finetune epochs)"
        )
    held = "; ".join(setups.HOLDS[lv] for lv in setups.LEVELS[: setups.level_index(setup) + 1])
    line = f"Setup **{setup}** ({held})"
    if info["next_level"]:
        nxt = setups.LEVELS[setups.level_index(setup) + 1]
        line += f"; {nxt} not met: the rows differ in {info['next_level']}"
    return line + "."


def title(info: dict[str, Any]) -> str:
    recipe = (
        f" · {info['recipe_label']}"
        if info["recipe_label"] and info["recipe_label"] != "one recipe"
        else ""
    )
    return f"{info['model']} · {info['dataset']} · {info['scope']} · {info['target']:g}x{recipe}"


def board_columns(board: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[columns.Column]:
    """The columns every table of one report shares (:mod:`pbkit.report.columns`)."""
    entries = [e for _, g in board for e in g]
    return columns.leaderboard_columns(entries, sorted({b for e in entries for b in e["measured"]}))


def render(rs: list[dict[str, Any]], fmt: str) -> str | list[Table]:
    board = leaderboard(rs)
    if fmt == "json":
        return json.dumps(
            [{"group": info, "rows": [_public(e) for e in g]} for info, g in board],
            indent=2,
            default=str,
        )
    backends = sorted({b for r in rs for b in r["measured"]})
    if fmt == "csv":
        buf = io.StringIO()
        cols = [
            "model",
            "dataset",
            "scope",
            "target",
            "setup",
            "recipe_label",
            "base_sha256",
            "recipe",
            "init",
            "rank",
            "rank_label",
            "method",
            "n",
            "seeds",
            "metric",
            *[c for k in METRICS for c in (k, f"{k}_std")],
            *[f"measured:{b}" for b in backends],
            "parity_ok",
            "machine",
            "run_id",
            "record",
        ]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for info, g in board:
            for e in g:
                w.writerow(
                    {
                        **e,
                        "setup": info["setup"],
                        "recipe_label": info["recipe_label"],
                        "seeds": " ".join(str(s) for s in e["seeds"]),
                        **{f"{k}_std": e["std"].get(k) for k in METRICS},
                        **{f"measured:{b}": e["measured"].get(b) for b in backends},
                    }
                )
        return buf.getvalue()
    cols = board_columns(board)
    tables = []
    for info, g in board:
        caption = setup_line(info).replace("**", "") + (
            f" Split by: {'; '.join(info['split_by'])}." if info["split_by"] else ""
        )
        t = Table(
            title=f"{title(info)}   ({info['recipe_line']})",
            caption=caption,
            title_justify="left",
            caption_justify="left",
        )
        for c in cols:
            t.add_column(c.head, justify=c.align)  # type: ignore[arg-type]
        for e in g:
            t.add_row(*[f"[bold red]{c.text(e)}[/]" if c.alert(e) else c.text(e) for c in cols])
        tables.append(t)
    return tables


def _public(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in ("facts",)}


def markdown(rs: list[dict[str, Any]]) -> str:
    board = leaderboard(rs)
    cols = board_columns(board)
    lines = [
        (
            "Rows are means over seeds (± sample std, n runs). Rank: 1 + the number of rows above"
            " that are separably better (their mean ± std intervals apart); `=k` marks a row that"
            " some row above is not separable from (the intervals overlap). TA: trainability"
            " accuracy, the mean test metric over the first LR stage of finetuning (with how many"
            " runs were still rising when the LR first fell)."
        ),
        "",
    ]
    for info, g in board:
        lines += [f"### {title(info)}", "", setup_line(info)]
        if info["split_by"]:
            lines.append(
                "Kept apart from the other groups of this comparison by:"
                f" {'; '.join(info['split_by'])}."
            )
        shas = info["base_sha256"].split(",")
        bases = (
            f"one base for every seed (sha256 {shas[0]})"
            if len(shas) == 1
            else f"a base per seed (sha256 {', '.join(shas)})"
        )
        lines += [
            "",
            f"Recipe: {info['recipe_line']}; seeds {', '.join(info['seeds'])}; {bases}.",
            "",
        ]
        lines += ["| " + " | ".join(c.head for c in cols) + " |", "|" + "---|" * len(cols)]
        for e in g:
            lines.append(
                "| "
                + " | ".join(f"**{c.text(e)}**" if c.alert(e) else c.text(e) for c in cols)
                + " |"
            )
        lines.append("")
    lines += markdown_across(board)
    return "\n".join(lines)


def _matrix_cell(v: tuple[float | None, float, int, float | None] | None) -> str:
    if v is None or v[0] is None:
        return "-"
    return f"{v[0]:.2f} ± {v[1]:.2f}" + (f" (TA {v[3]:.2f})" if v[3] is not None else "")


def markdown_across(board: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[str]:
    lines: list[str] = []
    for c in cross_finetuning(board):
        lines += [
            (
                f"### Cross-finetuning: {c['model']} · {c['dataset']} · {c['scope']} ·"
                f" {c['target']:g}x"
            ),
            "",
            f"Setup **{c['setup']}** across the columns (same base models"
            + (", same finetuning epochs" if c["setup"] == "S3.1" else "")
            + "; the recipe differs by design).",
            "",
        ]
        lines += [
            "| method | " + " | ".join(c["recipes"]) + " |",
            "|" + "---|" * (len(c["recipes"]) + 1),
        ]
        for m, row in sorted(
            c["matrix"].items(), key=lambda kv: -max(v[0] or 0 for v in kv[1].values())
        ):
            cells = [_matrix_cell(row.get(r)) for r in c["recipes"]]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", f"Top methods by their mean over the recipes: {', '.join(c['top'])}."]
        lines += [f"- {v['verdict']}" for v in c["verdicts"]] + [""]
    effects = recipe_effects(board)
    if effects:
        lines += ["### What one recipe change did", ""]
        for x in effects:
            lines += [
                (
                    f"{x['model']} · {x['dataset']} · {x['target']:g}x, **{x['from']} ->"
                    f" {x['to']}**: mean change {x['mean_change']:+.2f} points over"
                    f" {len(x['per_method'])} methods."
                ),
                "",
                "| method | "
                + f"{x['from']} | {x['to']} | change | TA change | beyond the noise |",
                "|---|---|---|---|---|---|",
            ]
            for p in x["per_method"]:
                ta = "-" if p["ta_change"] is None else f"{p['ta_change']:+.2f}"
                lines.append(
                    f"| {p['method']} | {p['from']:.2f} | {p['to']:.2f} | {p['change']:+.2f} | {ta}"
                    f" | {'yes' if p['separable'] else 'no'} |"
                )
            lines.append("")
    scratch = scratch_rows(board)
    if scratch:
        labels = sorted({r for s in scratch for r in s["pruned"]})
        lines += [
            (
                "### Scratch baseline (the pruned architecture re-initialised, trained as long as"
                " base + pruning + finetuning)"
            ),
            "",
            "| architecture of | n | total epochs | scratch | "
            + " | ".join(f"pruned, {lb} (pruned - scratch)" for lb in labels)
            + " |",
            "|" + "---|" * (4 + len(labels)),
        ]
        for s in scratch:
            cells = []
            for lb in labels:
                p = s["pruned"].get(lb)
                cells.append(
                    "-"
                    if p is None
                    else (
                        f"{p['pruned']:.2f} ± {p['pruned_std']:.2f}"
                        f" ({p['gap']:+.2f}{'' if p['separable'] else ', not separable'};"
                        f" {p['setup'] or 'they differ in ' + str(p['why'])})"
                    )
                )
            lines.append(
                f"| {s['method']} | {s['n']} | {s['epochs']} | {s['scratch']:.2f} ±"
                f" {s['scratch_std']:.2f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return lines
