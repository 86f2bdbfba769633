"""The per-run table ``pbkit prune``, ``run``, ``export`` and ``bench`` print: dense against pruned,
counted (MACs) against measured speed-up, accuracy, alignment, latency, memory and parity."""

from __future__ import annotations

from rich.table import Table

from pbkit.core import intervals, record
from pbkit.report import deployed, safe
from pbkit.report.cells import acc, delta, si

x = safe.markup  # a record's text, as rich markup shows it: literally


def run_table(rec: record.Record) -> Table:
    """What ``pbkit run`` / ``bench`` print: dense vs pruned, achieved vs measured speed-up."""
    m, c = rec.method, rec.counts
    lt = m.latency if m.target == "latency" else None
    what = f"target {m.target_speedup:g}x" + (
        f" measured on {x(lt['backend'])} {x(lt['precision'])} b{lt['batch']}" if lt else ""
    )
    title = f"{x(rec.model.name)} · {x(m.key)} · {x(m.scope)} · {what}"
    t = Table(title=title, title_justify="left")
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
    t.add_column("speed-up / change", justify="right")
    t.add_row(
        "params",
        si(c.params_base),
        si(c.params_pruned),
        f"{c.params_base / max(c.params_pruned, 1):.2f}x fewer",
    )
    t.add_row(
        f"MACs @{c.input_size}px",
        si(c.macs_base),
        si(c.macs_pruned),
        f"{m.achieved_speedup:.3f}x achieved ({m.steps} steps)",
    )
    if lt:
        lo, hi = lt["measured_ci"]
        t.add_row(
            f"latency target on {x(lt['backend'])}",
            f"{lt['dense_ms']:.3f} ms",
            f"{lt['pruned_ms']:.3f} ms",
            f"{lt['measured_speedup']:.3f}x [{lo:.3f}, {hi:.3f}]"
            f" ({lt['checks']} checks by the pruning loop)",
        )
        t.add_row(
            "  table prediction error", "", "", f"{lt['prediction_error']['mean_abs']:.1%} mean abs"
        )
        if jb := lt.get("bench"):  # 1.8: the target is judged on the bench's re-measurement
            verdict = ("met" if jb["met"] else "not met") + ("" if jb["stable"] else ", unstable")
            t.add_row(
                "  judged on pbkit bench",
                "",
                "",
                f"{intervals.fmt(jb['speedup'], jb['ci'], 3)}: target {verdict}",
            )
    a = rec.accuracy
    if a.metric is not None and rec.dataset is not None:
        name = f"{x(a.metric)} ({x(rec.dataset.name)})"
        t.add_row(f"{name} after pruning", acc(a.base), acc(a.pruned), delta(a.base, a.pruned))
        if a.finetuned is not None:
            ft = rec.finetune or {}
            how = (
                "from scratch"
                if ft.get("init") == "scratch"
                else "finetuned" + (" with KD" if (ft.get("kd") or {}).get("enabled") else "")
            )
            t.add_row(
                f"{name} {how} {ft.get('epochs', '?')} ep",
                acc(a.base),
                acc(a.finetuned),
                delta(a.base, a.finetuned),
            )
        for (
            other,
            values,
        ) in a.others.items():  # the task's other metrics (segmentation: pixel accuracy)
            after = values.get("finetuned", values.get("pruned"))
            t.add_row(
                f"{x(other)} ({x(rec.dataset.name)})"
                f" {'finetuned' if 'finetuned' in values else 'pruned'}",
                acc(values.get("base")),
                acc(after),
                delta(values.get("base"), after),
            )
    al = c.channel_alignment
    if al and al.get("pruned_layers"):
        t.add_row(
            f"pruned widths multiple of {al['multiple']}",
            "",
            f"{al['aligned_layers']}/{al['pruned_layers']} layers",
            f"{al['share']:.0%} aligned"
            + (" (GPU targets: prune.round_to=8)" if al["share"] < 1 else ""),
        )
    if (ra := m.round_to_auto) is not None:  # prune.round_to: auto (1.8)
        best = ra.recommended
        t.add_row(
            f"prune.round_to auto on {x(ra.backend)}",
            "",
            "none" if best is None else str(best),
            f"{ra.gain[str(best)]:.2f}x the output channels per ms, {len(ra.layers)} layers timed"
            if best is not None
            else f"aligning buys under 5% here ({len(ra.layers)} layers timed)",
        )
    pts = {(p.backend, p.precision, p.batch, p.variant): p for p in rec.latency}
    deployed_points = deployed.points(rec)
    deployed_of = {(dp.backend, dp.precision, dp.batch): dp for dp in deployed_points}
    for key in dict.fromkeys((p.backend, p.precision, p.batch) for p in rec.latency):
        d, p = pts.get((*key, "dense")), pts.get((*key, "pruned"))
        if d is None or p is None:
            continue
        backend, precision, batch = key
        t.add_row(
            f"latency {x(backend)} {x(precision)} b{batch}{' quick' if p.quick else ''}",
            _ms(d),
            _ms(p),
            speedup_cell(d, p),
        )
        t.add_row(
            "  p90 / p99",
            f"{d.p90_ms:.3f} / {d.p99_ms:.3f} ms",
            f"{p.p90_ms:.3f} / {p.p99_ms:.3f} ms",
            f"{d.p90_ms / p.p90_ms:.2f}x at p90" if p.p90_ms > 0 else "-",
        )
        if p.repeat_ci:
            t.add_row("  repeat interval", "", "", intervals.repeat_text(p.repeat_ci, p.repeat))
        if d.gpu_compute and p.gpu_compute:
            t.add_row(
                "  GPU compute (CUDA events)",
                f"{d.gpu_compute.median_ms:.3f} ms",
                f"{p.gpu_compute.median_ms:.3f} ms",
                f"{p.gpu_speedup_vs_dense or 0:.2f}x",
            )
        if d.memory and p.memory and d.device == "cuda":
            t.add_row("  GPU memory (NVML peak - before)", _mem(d.memory), _mem(p.memory), "")
        dp = deployed_of.get(key)
        if dp is not None and precision != "fp32" and dp.vs_dense_fp32 is not None:
            t.add_row(
                f"  vs dense fp32 on {x(backend)}",
                f"{dp.dense_vs_fp32:.2f}x" if dp.dense_vs_fp32 else "",
                f"{dp.vs_dense_fp32:.2f}x",
                f"pruned {x(precision)} over dense fp32: "
                + intervals.fmt(dp.vs_dense_fp32, dp.vs_dense_fp32_ci)
                + (" (bounds of the two medians' intervals)" if dp.vs_dense_fp32_ci else ""),
            )
    for dp in deployed_points:
        if dp.dense_acc is None and dp.pruned_acc is None:
            if dp.accuracy_failed:
                t.add_row(
                    f"accuracy on {x(dp.backend)} {x(dp.precision)}",
                    "-",
                    "-",
                    f"not evaluated: {x(dp.accuracy_failed)}",
                )
            continue
        agree = "/".join(
            "-" if v is None else f"{v:.1f}%" for v in (dp.dense_agreement, dp.pruned_agreement)
        )
        t.add_row(
            f"{x(dp.metric or '')} on {x(dp.backend)} {x(dp.precision)} (test)",
            acc(dp.dense_acc),
            acc(dp.pruned_acc),
            f"{delta(dp.dense_acc, dp.pruned_acc)}; PyTorch {acc(dp.dense_torch)} /"
            f" {acc(dp.pruned_torch)}, top-1 agreement {agree}",
        )
    cal = deployed.calibration_line(rec)
    if cal is not None:
        bad = deployed.failures(rec)
        t.add_row(
            "INT8 calibration",
            "",
            "",
            x(cal) + (f"; [bold red]FAILED[/] {x(bad[0])}" if bad else ""),
        )
    for backend, precision in sorted({(p.backend, p.precision) for p in rec.parity}):
        mine = [p for p in rec.parity if (p.backend, p.precision) == (backend, precision)]
        cells = {
            v: max((p for p in mine if p.variant == v), key=lambda p: p.error, default=None)
            for v in ("dense", "pruned")
        }
        gate = (
            f"{x(precision)} gate (cosine >= {mine[0].cosine_min:g})"
            if precision in ("fp16", "int8") and mine[0].cosine_min
            else "fp32 gate"
        )
        if precision == "int8":
            gate += ", accuracy judged on the engine"
        t.add_row(
            f"parity {x(backend)} {x(precision)} (max abs)",
            _parity_cell(cells["dense"]),
            _parity_cell(cells["pruned"]),
            gate if all(p.passed for p in mine) else "[bold red]parity FAILED[/]",
        )
    return t


def _mem(m: record.Memory) -> str:
    before, peak = m.nvml_used_before_bytes, m.nvml_used_peak_bytes
    if before is None or peak is None:
        torch_peak = m.torch_peak_allocated_bytes
        return f"{torch_peak / 2**20:.0f} MiB torch" if torch_peak is not None else "-"
    return f"{(peak - before) / 2**20:.0f} MiB"


def _parity_cell(p: record.Parity | None) -> str:
    if p is None:
        return "-"
    return f"ok {p.error_text}" if p.passed else f"[bold red]FAILED {p.error_text}[/]"


def _ms(p: record.LatencyPoint) -> str:
    return f"{p.median_ms:.3f} ms" + (
        f" [{p.median_ci[0]:.3f}, {p.median_ci[1]:.3f}]" if p.median_ci else ""
    )


def speedup_cell(d: record.LatencyPoint, p: record.LatencyPoint) -> str:
    """``1.75x [1.71, 1.79] measured (CI ±1.1%, 5 sessions, 24 block pairs)``; a speed-up whose
    interval holds 1.0 says so; an interval wider than the target is flagged with how wide it stayed
    (records made before intervals: the CoV gate's words)."""
    tries = max(d.attempts, p.attempts)
    again = f", {tries} tries" if tries > 1 else ""
    throttle = sorted(set(d.throttle_reasons) | set(p.throttle_reasons))
    text = intervals.fmt(p.speedup_vs_dense or 0.0, p.speedup_ci) + " measured"
    if intervals.covers_one(p.speedup_ci):
        text += " [yellow](not distinguishable from 1.0)[/]"
    ci = p.ci
    if ci:  # (a record's ci with no keys reads as none)
        sessions = f", {ci.sessions} sessions" if ci.sessions else ""
        why = f"CI ±{ci.relative_half_width:.1%}{sessions}, {ci.blocks} block pairs"
        if ci.met is False:
            why = (
                f"CI ±{ci.relative_half_width:.1%} > {ci.target:.1%} within the time"
                f" budget{sessions}"
            )
    else:
        why = f"cov {max(d.cov, p.cov):.1%}"
    outliers = sum((d.outliers or {}).values()) + sum((p.outliers or {}).values())
    if outliers:
        why += f", {outliers} outliers kept"
    if throttle:
        why += f", GPU throttle: {x(', '.join(throttle))}"
    return text + (
        f" ({why}{again})" if d.stable and p.stable else f" [yellow](unstable: {why}{again})[/]"
    )
