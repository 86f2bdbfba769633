"""Rows that differ only in their seeds become one entry: the mean of every metric, its sample std
and n; and what ranks an entry, with whether two entries are separable (their mean ± std intervals
apart)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pbkit.report import setups
from pbkit.report.rows import Row, merge

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


@dataclass(kw_only=True)
class Entry:
    """A leaderboard row: one run, or the mean over the seeds of one grid point. The metrics
    (:data:`METRICS`) are means (None where no run has one), ``std`` their sample std (None for
    one run); ``rank`` and the fields after it are set when its group is ranked."""

    model: str
    dataset: str | None
    scope: str
    target: float
    method: str
    metric: str | None
    init: str
    schedule: str
    recipe: str
    recipe_line: str
    regularizer: str | None
    n: int
    seeds: list[Any]
    runs: list[str]
    records: list[str]
    std: dict[str, float | None] = field(default_factory=dict)  # per metric
    base_sha256: str  # the seeds' bases, comma-separated
    machine: str  # the machines that measured them, comma-separated
    parity_ok: bool | None
    rising_at_first_decay: int  # runs still rising when the LR first fell
    facts: setups.Facts  # "base": the seeds' bases, sorted
    base: float | None = None
    pruned: float | None = None
    finetuned: float | None = None
    delta: float | None = None
    ta: float | None = None
    params_left: float | None = None
    macs_speedup: float | None = None
    step_time_s: float | None = None
    reg_time_s: float | None = None
    measured: dict[str, float] = field(default_factory=dict)  # point label -> mean speed-up
    measured_std: dict[str, float | None] = field(default_factory=dict)  # over seeds
    measured_ci: dict[str, list[float]] = field(default_factory=dict)  # one run: its intervals
    vs_dense_fp32: dict[str, float] = field(default_factory=dict)  # label -> mean over seeds
    engine_acc: dict[str, float] = field(default_factory=dict)  # label -> the pruned metric there
    # label -> why a seed's point there is unstable (pruned or dense; :attr:`Row.unstable`)
    unstable: dict[str, list[str]] = field(default_factory=dict)
    run_id: str = ""  # the runs, comma-separated
    record: str = ""  # the first run's record
    rank: int | None = None  # the position in its group (None: nothing to rank by)
    rank_label: str = ""  # 1 + the rows above that are separably better; =k: tied with one
    separable_from_above: bool | None = None

    def metric_value(self, name: str) -> float | None:
        """A metric by name (one of :data:`METRICS`)."""
        value: float | None = getattr(self, name)
        return value

    def public(self) -> dict[str, Any]:
        """The entry as ``pbkit report --format json`` writes it (its facts left out)."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "scope": self.scope,
            "target": self.target,
            "method": self.method,
            "metric": self.metric,
            "init": self.init,
            "schedule": self.schedule,
            "recipe": self.recipe,
            "recipe_line": self.recipe_line,
            "regularizer": self.regularizer,
            "n": self.n,
            "seeds": self.seeds,
            "runs": self.runs,
            "records": self.records,
            "std": {**self.std, "measured": self.measured_std},
            "base_sha256": self.base_sha256,
            "machine": self.machine,
            "parity_ok": self.parity_ok,
            "rising_at_first_decay": self.rising_at_first_decay,
            **{k: self.metric_value(k) for k in METRICS},
            "measured": self.measured,
            "measured_ci": self.measured_ci,
            # (INT8 and other precisions: only where there are such points)
            **({"vs_dense_fp32": self.vs_dense_fp32} if self.vs_dense_fp32 else {}),
            **({"engine_acc": self.engine_acc} if self.engine_acc else {}),
            # (only where a point is unstable: stable data reads as it always has)
            **({"unstable": self.unstable} if self.unstable else {}),
            "run_id": self.run_id,
            "record": self.record,
            # (in the order the ranking has always set them)
            **(
                {"rank": None, "rank_label": self.rank_label, "separable_from_above": None}
                if self.rank is None
                else {
                    "rank": self.rank,
                    "separable_from_above": self.separable_from_above,
                    "rank_label": self.rank_label,
                }
            ),
        }


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample std (None for fewer than 2 values; both None for none)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(rs: list[Row]) -> list[Entry]:
    """Rows that differ only in their seeds (and so in their seed's base) become one: the mean of
    every metric, its sample std (None for n = 1) and n."""
    by: dict[str, list[Row]] = {}
    for r in rs:
        by.setdefault(r.entry_key, []).append(r)
    out = []
    for members in by.values():
        members.sort(key=lambda r: str(r.seed))
        first = members[0]
        e = Entry(
            model=first.model,
            dataset=first.dataset,
            scope=first.scope,
            target=first.target,
            method=first.method,
            metric=first.metric,
            init=first.init,
            schedule=first.schedule,
            recipe=first.recipe,
            recipe_line=first.recipe_line,
            regularizer=first.regularizer,
            n=len(members),
            seeds=[r.seed for r in members],
            runs=[r.run_id for r in members],
            records=[r.record for r in members],
            base_sha256=",".join(sorted({r.base_sha256 for r in members})),
            machine=", ".join(sorted({r.machine for r in members})),
            parity_ok=(
                None
                if all(r.parity_ok is None for r in members)
                else all(r.parity_ok is not False for r in members)
            ),
            rising_at_first_decay=sum(1 for r in members if r.rising_at_first_decay),
            facts=first.facts.copy(),
        )
        e.facts["base"] = sorted({str(r.facts["base"]) for r in members})
        for k in METRICS:
            mean, e.std[k] = mean_std(
                [float(v) for r in members if (v := getattr(r, k)) is not None]
            )
            setattr(e, k, mean)
        labels = sorted({b for r in members for b in r.measured})
        per = {b: [r.measured[b] for r in members if b in r.measured] for b in labels}
        e.measured = {b: round(mean_std(per[b])[0] or 0, 3) for b in labels}
        # one run: its interval; several: the spread of their speed-ups (mean ± std) says more
        e.measured_ci = dict(first.measured_ci) if len(members) == 1 else {}
        e.measured_std = {b: mean_std(per[b])[1] for b in labels}
        for name in ("vs_dense_fp32", "engine_acc"):
            keys = sorted({b for r in members for b in getattr(r, name)})
            setattr(
                e,
                name,
                {
                    b: round(
                        mean_std([getattr(r, name)[b] for r in members if b in getattr(r, name)])[0]
                        or 0,
                        4,
                    )
                    for b in keys
                },
            )
        e.unstable = {
            b: merge(*(r.unstable[b] for r in members if b in r.unstable))
            for b in sorted({b for r in members for b in r.unstable})
        }
        e.run_id = ",".join(e.runs)
        e.record = e.records[0]
        out.append(e)
    return out


def score(e: Entry) -> float | None:
    """What ranks a row: the metric after finetuning, else after pruning."""
    return e.finetuned if e.finetuned is not None else e.pruned


def spread(e: Entry) -> float:
    """The std over seeds of what ranks a row (0 for a single run)."""
    std = e.std.get("finetuned" if e.finetuned is not None else "pruned")
    return std or 0.0


def separable(a: Entry, b: Entry) -> bool:
    """Whether two rows' mean +- std intervals are apart (a single run has no spread: only equal
    values are inseparable then)."""
    sa, sb = score(a), score(b)
    if sa is None or sb is None:
        return True
    return abs(sa - sb) > spread(a) + spread(b) or (abs(sa - sb) > 0 and spread(a) + spread(b) == 0)


def speed_interval(e: Entry, b: str) -> tuple[float, float] | None:
    """The measured speed-up at point label ``b`` as an interval: one run's 95% interval, the
    seeds' mean ± std, or the value alone (a run measured before intervals); None: not measured."""
    if b not in e.measured:
        return None
    ci = e.measured_ci.get(b)
    if ci:
        return ci[0], ci[1]
    v, sd = e.measured[b], e.measured_std.get(b) or 0.0
    return v - sd, v + sd


def speed_separable(a: Entry, b: Entry, label: str) -> bool:
    """Whether two rows' measured speed-ups at ``label`` are apart: their intervals do not overlap
    (two bare values: they differ), and neither point is unstable (an unstable point is never
    separable from another: its interval is not to be trusted)."""
    if label in a.unstable or label in b.unstable:
        return False
    ia, ib = speed_interval(a, label), speed_interval(b, label)
    if ia is None or ib is None:
        return True
    return ia[1] < ib[0] or ib[1] < ia[0]
