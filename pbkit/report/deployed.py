"""The model as deployed, read from a record: each (backend, precision) point's speed-up of pruned
over dense at the same precision and over dense fp32 on the same backend, and its accuracy on the
engine (the task's metric through that backend's runner), dense and pruned.

Pruned at INT8 against dense at fp32 compares two points measured apart (each alternated with its
own dense or pruned partner, not with each other), so its interval is the conservative one the two
medians' intervals give: [dense low / pruned high, dense high / pruned low]."""

from __future__ import annotations

from dataclasses import dataclass

from pbkit.core import record


@dataclass(frozen=True)
class DeployedPoint:
    """One (backend, precision, batch) point of a run, as the deployed-model tables show it."""

    backend: str
    precision: str
    batch: int
    dense_ms: float
    pruned_ms: float
    speedup: float  # pruned over dense at this precision (alternated: the paired measurement)
    speedup_ci: tuple[float, float] | None
    vs_dense_fp32: float | None  # pruned here over dense fp32 on the same backend and batch
    vs_dense_fp32_ci: tuple[float, float] | None
    dense_vs_fp32: float | None  # dense here over dense fp32 (what the precision alone gives)
    metric: str | None
    dense_acc: float | None  # the metric on the engine
    pruned_acc: float | None
    dense_torch: float | None  # PyTorch's on the same images
    pruned_torch: float | None
    dense_agreement: float | None  # top-1 agreement with PyTorch, %
    pruned_agreement: float | None
    accuracy_failed: str | None  # why it was not evaluated, if it was asked and failed

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


def _ratio_ci(d: record.LatencyPoint, p: record.LatencyPoint) -> tuple[float, float] | None:
    if not d.median_ci or not p.median_ci or min(p.median_ci) <= 0:
        return None
    return (d.median_ci[0] / p.median_ci[1], d.median_ci[1] / p.median_ci[0])


def points(rec: record.Record) -> list[DeployedPoint]:
    """Every measured point of ``rec`` with both variants, in the record's order."""
    lat = {(p.backend, p.precision, p.batch, p.variant): p for p in rec.latency}
    acc = {(a.backend, a.precision, a.variant): a for a in rec.engine_accuracy}
    out = []
    for be, prec, batch in dict.fromkeys((p.backend, p.precision, p.batch) for p in rec.latency):
        d, p = lat.get((be, prec, batch, "dense")), lat.get((be, prec, batch, "pruned"))
        if d is None or p is None or p.median_ms <= 0:
            continue
        d32 = lat.get((be, "fp32", batch, "dense"))
        ad, ap = acc.get((be, prec, "dense")), acc.get((be, prec, "pruned"))
        ok_d = ad if ad is not None and ad.status == "ok" else None
        ok_p = ap if ap is not None and ap.status == "ok" else None
        failed = next((a.reason for a in (ad, ap) if a is not None and a.status == "failed"), None)
        speedup_ci = tuple(p.speedup_ci) if p.speedup_ci else None
        out.append(
            DeployedPoint(
                backend=be,
                precision=prec,
                batch=batch,
                dense_ms=d.median_ms,
                pruned_ms=p.median_ms,
                speedup=p.speedup_vs_dense or d.median_ms / p.median_ms,
                speedup_ci=speedup_ci,  # type: ignore[arg-type]
                vs_dense_fp32=(d32.median_ms / p.median_ms) if d32 is not None else None,
                vs_dense_fp32_ci=(
                    speedup_ci  # type: ignore[arg-type]
                    if prec == "fp32"
                    else (_ratio_ci(d32, p) if d32 is not None else None)
                ),
                dense_vs_fp32=(
                    (d32.median_ms / d.median_ms) if d32 is not None and d.median_ms > 0 else None
                ),
                metric=next((a.metric for a in (ok_d, ok_p) if a is not None), None),
                dense_acc=ok_d.value if ok_d else None,
                pruned_acc=ok_p.value if ok_p else None,
                dense_torch=ok_d.torch_value if ok_d else None,
                pruned_torch=ok_p.torch_value if ok_p else None,
                dense_agreement=ok_d.agreement if ok_d else None,
                pruned_agreement=ok_p.agreement if ok_p else None,
                accuracy_failed=failed,
            )
        )
    return out


def calibration_line(rec: record.Record) -> str | None:
    """``INT8: 128 train images of digits, minmax, per-channel weights, seed 0`` (None: no INT8)."""
    q = rec.quantization
    if q is None or q.calibration is None:
        return None
    c = q.calibration
    where = (
        "synthetic N(0,1) images" if c.source == "synthetic" else f"{c.split} images of {c.source}"
    )
    return (
        f"INT8 calibrated on {c.images} {where}, {c.method}"
        f"{', per-channel weights' if c.per_channel else ', per-tensor weights'}, seed {c.seed}"
    )


def failures(rec: record.Record) -> list[str]:
    """``ort pruned: <reason>`` for each INT8 model that could not be made."""
    q = rec.quantization
    return [
        f"{a.family} {a.variant}: {a.reason}"
        for a in (q.artifacts or [] if q else [])
        if a.status == "failed"
    ]


def calibration_key(rec: record.Record) -> dict[str, object] | None:
    """What two rows must share to be ranked together once INT8 is part of them: the calibration
    (source, split, images, method, per-channel weights, seed); None without INT8."""
    q = rec.quantization
    if q is None or q.calibration is None:
        return None
    c = q.calibration
    return {
        "source": c.source,
        "split": c.split,
        "images": c.images,
        "method": c.method,
        "per_channel": c.per_channel,
        "seed": c.seed,
    }
