"""The leaderboard's columns, defined once: the terminal table, the markdown and the HTML page all
render these (their header, cell text, sort value and alignment), in the PruningBench order:
rank, method, regularizer, n, machine, base, pruned, finetuned, delta, TA, params left, MACs x,
measured x per backend / precision / batch, step time, regularization time, parity."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from pbkit.core.intervals import covers_one
from pbkit.report.stats import Entry


@dataclass(frozen=True)
class Column:
    key: str  # stable name (the HTML's data-col)
    head: str
    text: Callable[[Entry], str]
    value: Callable[[Entry], float | str | None]  # what sorting orders by (None: last)
    align: str = "right"
    alert: Callable[[Entry], bool] = lambda e: False  # emphasised (a failed parity check)
    about: str = ""  # what the column means (the HTML header's tooltip)
    backend: str | None = None  # measured columns: the point label (backend[/precision]@bN)
    # why a cell is marked (an unstable point's reasons: the HTML cell's tooltip); "": not marked
    flag: Callable[[Entry], str] = lambda e: ""


def pm(e: Entry, k: str, digits: int = 2) -> str:
    """``98.22 ± 0.31`` (mean ± sample std over seeds), ``98.22`` for one run, ``-`` for none."""
    v, sd = e.metric_value(k), e.std.get(k)
    if v is None:
        return "-"
    return f"{v:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def ta(e: Entry) -> str:
    if e.ta is None:
        return "-"
    flag = f" ({e.rising_at_first_decay}/{e.n} rising)" if e.rising_at_first_decay else ""
    return pm(e, "ta") + flag


UNSTABLE = " (unstable)"  # the mark of a speed-up measured on an unstable point
UNSTABLE_NOTE = (
    "(unstable): the pruned or the dense latency point was measured unstable (a noisy or busy"
    " machine, a throttled GPU; the reasons are in the record and the HTML cell's tooltip): read"
    " that speed-up with care"
)


def measured_cell(e: Entry, b: str) -> str:
    """``1.75 [1.71, 1.79]`` (one run and its interval), ``1.74 ± 0.03`` (over seeds); ``~1``
    where the interval holds 1.0 (not distinguishable from no speed-up); `` (unstable)`` where the
    pruned or the dense point there was measured unstable (:attr:`Entry.unstable`)."""
    if b not in e.measured:
        return "-"
    mark = UNSTABLE if b in e.unstable else ""
    ci = e.measured_ci.get(b)
    if ci:
        return (
            f"{e.measured[b]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            + (" ~1" if covers_one(ci) else "")
            + mark
        )
    sd = e.measured_std.get(b)
    return f"{e.measured[b]:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + mark


def unstable_reasons(e: Entry, b: str) -> str:
    """Why the speed-up at ``b`` is marked unstable ("" where it is not)."""
    return "unstable: " + "; ".join(e.unstable[b]) if b in e.unstable else ""


def marked(entries: list[Entry]) -> bool:
    """Whether some measured cell of these rows carries the unstable mark."""
    return any(b in e.measured for e in entries for b in e.unstable)


def measured_value(e: Entry, b: str) -> float | None:
    """What a measured column sorts and ranks by: the speed-up, or exactly 1.0 where its interval
    holds 1.0 (it is not distinguishable from no speed-up)."""
    if b not in e.measured:
        return None
    return 1.0 if covers_one(e.measured_ci.get(b)) else e.measured[b]


def _measured_text(b: str, e: Entry) -> str:
    return measured_cell(e, b)


def _measured_sort(b: str, e: Entry) -> float | None:
    return measured_value(e, b)


def _measured_flag(b: str, e: Entry) -> str:
    return unstable_reasons(e, b)


def _vs_fp32_text(b: str, e: Entry) -> str:
    return f"{e.vs_dense_fp32[b]:.2f}" if b in e.vs_dense_fp32 else "-"


def _vs_fp32_value(b: str, e: Entry) -> float | None:
    return e.vs_dense_fp32.get(b)


def _engine_text(b: str, e: Entry) -> str:
    return f"{e.engine_acc[b]:.2f}" if b in e.engine_acc else "-"


def _engine_value(b: str, e: Entry) -> float | None:
    return e.engine_acc.get(b)


def _num(k: str) -> Callable[[Entry], float | None]:
    return lambda e: e.metric_value(k)


def _parity(e: Entry) -> str:
    return {True: "ok", False: "FAILED", None: "-"}[e.parity_ok]


def _reg_time(e: Entry) -> str:
    return "-" if e.reg_time_s is None else f"{e.reg_time_s:.1f}"


def _regularizer(e: Entry) -> str:
    return str(e.regularizer or "-")


def _method(e: Entry) -> str:
    return str(e.method) + ("" if e.schedule == "oneshot" else f" ({e.schedule})")


def leaderboard_columns(entries: list[Entry], backends: list[str]) -> list[Column]:
    """The columns of a leaderboard over ``entries`` (every group of one report, so that all its
    tables agree); regularizer and regularization time appear when some row has them."""
    cols = [
        Column(
            "rank",
            "rank",
            lambda e: e.rank_label,
            lambda e: e.rank,
            about=(
                "1 + the rows above that are separably better; =k: not separable from a row above"
            ),
        ),
        Column("method", "method", _method, _method, align="left"),
    ]
    if any(e.regularizer for e in entries):
        cols.append(
            Column(
                "regularizer",
                "regularizer",
                _regularizer,
                _regularizer,
                align="left",
                about="the sparse-training regularizer of the sparsify step",
            )
        )
    cols += [
        Column("n", "n", lambda e: str(e.n), lambda e: e.n, about="runs (seeds) in the row"),
        Column("machine", "machine", lambda e: e.machine, lambda e: e.machine, align="left"),
        Column(
            "base", "base", lambda e: pm(e, "base"), _num("base"), about="the dense model's metric"
        ),
        Column(
            "pruned",
            "pruned",
            lambda e: pm(e, "pruned"),
            _num("pruned"),
            about="right after pruning",
        ),
        Column(
            "finetuned",
            "finetuned",
            lambda e: pm(e, "finetuned"),
            _num("finetuned"),
            about="after finetuning",
        ),
        Column(
            "delta",
            "delta",
            lambda e: "-" if e.delta is None else f"{round(e.delta, 2) + 0.0:+.2f}",
            _num("delta"),
            about="final minus base, in points",
        ),
        Column(
            "ta",
            "TA",
            ta,
            _num("ta"),
            about="trainability: the mean metric over the first LR stage",
        ),
        Column("params_left", "params left", lambda e: f"{e.params_left:.1%}", _num("params_left")),
        Column(
            "macs_speedup",
            "MACs x",
            lambda e: f"{e.macs_speedup:.2f}",
            _num("macs_speedup"),
            about="counted: dense MACs / pruned MACs",
        ),
    ]
    for b in backends:
        int8 = "/int8@" in b
        cols.append(
            Column(
                f"measured:{b}",
                f"pruned-int8 vs dense-int8 {b.replace('/int8', '')}"
                if int8
                else f"measured x {b}",
                functools.partial(_measured_text, b),
                functools.partial(_measured_sort, b),
                backend=b,
                about=(
                    "dense / pruned median latency with its 95% interval; ~1: the interval"
                    " holds 1.0; (unstable): a point measured unstable (hover for why)"
                ),
                flag=functools.partial(_measured_flag, b),
            )
        )
    for b in sorted({b for e in entries for b in e.vs_dense_fp32}):
        cols.append(
            Column(
                f"vs_dense_fp32:{b}",
                f"pruned-{b.split('/')[1].split('@')[0]} vs dense-fp32 {b.split('/')[0]}",
                functools.partial(_vs_fp32_text, b),
                functools.partial(_vs_fp32_value, b),
                backend=b,
                about=(
                    "dense fp32 median latency / pruned median latency at this precision, on the"
                    " same backend and batch: the whole gain of the deployed model"
                ),
            )
        )
    for b in sorted({b for e in entries for b in e.engine_acc if "/" in b}):
        cols.append(
            Column(
                f"engine_acc:{b}",
                f"on engine {b.split('@')[0]}",
                functools.partial(_engine_text, b),
                functools.partial(_engine_value, b),
                backend=b,
                about=(
                    "the pruned model's metric on the test split evaluated through this backend"
                    " at this precision"
                ),
            )
        )
    cols.append(
        Column(
            "step_time_s",
            "step s",
            lambda e: f"{e.step_time_s:.3f}",
            _num("step_time_s"),
            about="wall time of the pruning steps",
        )
    )
    if any(e.reg_time_s for e in entries):
        cols.append(
            Column(
                "reg_time_s",
                "reg s",
                _reg_time,
                _num("reg_time_s"),
                about="sparse-training wall time",
            )
        )
    cols.append(
        Column(
            "parity",
            "parity",
            _parity,
            _parity,
            alert=lambda e: e.parity_ok is False,
            about="the exported models agree with torch",
        )
    )
    return cols
