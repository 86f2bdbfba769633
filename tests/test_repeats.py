"""The repeat interval (issue #37): a bench's interval widened by this machine's drift between
benches minutes apart. Its arithmetic on synthetic benches of known drift, the drift estimated
from repeats, the machine's drift file, the merge of repeat benches, and ``pbkit bench
--repeats`` end to end with the views that show it."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from pbkit.core import intervals, record
from pbkit.core.errors import PbkitError
from pbkit.machine import drift
from pbkit.measure import repeats


def _benches(drift_sd: float, within: float, n: int, seed: int = 0) -> list[float]:
    """Speed-ups of ``n`` benches: the machine's state moves each by ``drift_sd`` (log), the
    bench's own noise by ``within``."""
    rng = random.Random(seed)
    return [1.8 * math.exp(rng.gauss(0, drift_sd) + rng.gauss(0, within)) for _ in range(n)]


def _own(x: float, within: float) -> list[float]:
    """A bench's own 95% interval: its noise only."""
    return [x * math.exp(-1.96 * within), x * math.exp(1.96 * within)]


def test_the_repeat_interval_covers_repeats_that_the_bench_interval_misses() -> None:
    """Benches drifting by 2.5% with 1% noise of their own: their own intervals cover another
    bench's speed-up in about a third of pairs; widened by the (known) drift, in about 83%, what
    correct intervals of two estimates give."""
    xs = _benches(0.025, 0.01, 300)
    own = [_own(x, 0.01) for x in xs]
    wide = [intervals.with_drift(x, c, 0.025) for x, c in zip(xs, own, strict=True)]
    assert (intervals.pair_coverage(xs, own) or 0) < 0.45
    assert intervals.pair_coverage(xs, wide) == pytest.approx(0.83, abs=0.04)
    # no drift: the bench's own interval; a drift estimated from 6 benches widens it further
    assert intervals.with_drift(1.8, own[0], 0.0) == pytest.approx(own[0])
    known, estimated = (intervals.with_drift(1.8, [1.76, 1.84], 0.02, df) for df in (None, 5))
    assert estimated[0] < known[0] < 1.76 and estimated[1] > known[1] > 1.84


def test_drift_from_repeats_recovers_a_known_drift() -> None:
    xs = _benches(0.03, 0.01, 2000, seed=1)
    sd = intervals.drift_from_repeats(xs, [_own(x, 0.01) for x in xs])
    assert sd == pytest.approx(0.03, abs=0.003)
    # benches that agree within their own noise: no drift (clamped at 0, never negative)
    flat = _benches(0.0, 0.01, 2000, seed=2)
    assert (intervals.drift_from_repeats(flat, [_own(x, 0.01) for x in flat]) or 0) < 0.003
    assert intervals.drift_from_repeats([1.8], [[1.7, 1.9]]) is None


def _drift(model: str, sd: float) -> drift.Drift:
    return drift.Drift(
        sd=sd, repeats=6, spacing_s=60, model=model, run_id="r", utc="2026-12-06T00:00:00Z"
    )


def test_the_drift_file_keeps_each_models_drift_per_machine_and_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBKIT_CACHE", str(tmp_path))
    assert drift.lookup("cpu x2", "ort-cpu", "fp32", "resnet18_cifar") is None
    drift.save("cpu x2", "ort-cpu", "fp32", _drift("resnet18_cifar", 0.023))
    drift.save("cpu x2", "ort-cpu", "fp32", _drift("yolov8n", 0.002))
    drift.save("cpu x2", "ort-cpu", "fp32", _drift("yolov8n", 0.004))  # replaces its own
    mine = drift.lookup("cpu x2", "ort-cpu", "fp32", "yolov8n")
    assert mine is not None and mine.sd == 0.004 and mine.df == 5
    other = drift.lookup("cpu x2", "ort-cpu", "fp32", "resnet50")  # the largest this machine showed
    assert other is not None and other.model == "resnet18_cifar"
    assert "largest here; of resnet18_cifar" in other.source("resnet50")
    assert drift.lookup("cpu x4", "ort-cpu", "fp32", "yolov8n") is None
    assert drift.lookup("cpu x2", "torch-cpu", "fp32", "yolov8n") is None


def test_a_drift_file_that_does_not_read_is_one_line_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBKIT_CACHE", str(tmp_path))
    bad = tmp_path / "drift.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(PbkitError, match="drift.json' does not read"):
        drift.check()
    with pytest.raises(PbkitError, match="does not read"):
        drift.save("cpu x2", "ort-cpu", "fp32", _drift("m", 0.01))
    assert bad.read_text(encoding="utf-8") == "{not json"  # never overwritten
    bad.write_text(json.dumps({"machines": {"cpu x2": {"ort-cpu/fp32": {"m": {"x": 1}}}}}))
    with pytest.raises(PbkitError, match="an entry pbkit does not read"):
        drift.lookup("cpu x2", "ort-cpu", "fp32", "m")


def _point(variant: str, median: float, speedup: float | None = None) -> record.LatencyPoint:
    data = {
        "backend": "ort-cpu", "device": "cpu", "variant": variant, "batch": 1,
        "precision": "fp32", "median_ms": median, "mean_ms": median, "min_ms": median * 0.9,
        "p90_ms": median * 1.1, "p95_ms": median * 1.2, "p99_ms": median * 1.3,
        "max_ms": median * 2, "std_ms": 0.1, "cov": 0.01, "n": 100, "first_call_ms": 5.0,
        "warmup_n": 3, "duration_s": 1.0, "throughput_ips": 100.0, "stable": True, "quick": False,
    }  # fmt: skip
    if speedup is not None:
        data["speedup_vs_dense"] = speedup
        data["speedup_ci"] = _own(speedup, 0.005)
    return record.LatencyPoint.model_validate(data)


def test_repeat_benches_merge_into_one_point_with_the_t_interval_over_them() -> None:
    """Three benches, each sure of itself within ±1%, that disagree by 4%: the merged point's
    repeat interval holds all three, and the drift measured is the spread beyond their noise."""
    runs = [[_point("dense", 10.0), _point("pruned", 10.0 / s, s)] for s in (1.80, 1.87, 1.94)]
    utc = ["2026-12-06T00:00:00Z", "2026-12-06T00:01:00Z", "2026-12-06T00:02:00Z"]
    host = record.BenchInfo(host={"cpu": "Some CPU", "cores_logical": 2})
    merged, measured = repeats.combine(
        runs, utc, host, confidence=0.95, target=None, spacing_s=60, model="m", run_id="r"
    )
    p = next(q for q in merged if q.variant == "pruned")
    lo, hi = p.repeat_ci or [0.0, 0.0]
    assert lo < 1.80 and hi > 1.94
    assert p.repeat is not None and p.repeat.speedups == pytest.approx([1.80, 1.87, 1.94])
    assert p.repeat.method == "t-interval over repeat benches" and p.repeat.utc == utc
    [m] = measured
    assert (m.machine, m.backend, m.precision) == ("Some CPU x2", "ort-cpu", "fp32")
    assert m.drift.sd == pytest.approx(0.037, abs=0.005) and m.drift.repeats == 3
    # the record writes what it read
    again = record.LatencyPoint.model_validate(json.loads(p.model_dump_json()))
    assert again.repeat_ci == p.repeat_ci and again.repeat == p.repeat


def test_a_single_bench_adds_the_drift_this_machine_showed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PBKIT_CACHE", str(tmp_path))
    host = record.BenchInfo(host={"cpu": "Some CPU", "cores_logical": 2})
    points = [_point("dense", 10.0), _point("pruned", 5.0, 2.0)]
    repeats.attach(points, host, "auto", 0.95, "m")
    assert points[1].repeat_ci is None  # nothing measured here yet: no repeat interval
    assert "repeat_ci" not in json.loads(points[1].model_dump_json())  # (written as before 1.9)
    drift.save("Some CPU x2", "ort-cpu", "fp32", _drift("m", 0.02))
    repeats.attach(points, host, "auto", 0.95, "m")
    p = points[1]
    assert p.repeat is not None and p.repeat.method == "calibrated drift" and p.repeat.drift_df == 5
    assert p.repeat_ci == pytest.approx(intervals.with_drift(2.0, p.speedup_ci or [], 0.02, 5))
    assert "measured on this machine by 6 benches 60 s apart" in (p.repeat.source or "")
    repeats.attach(points, host, 0.05, 0.95, "m")  # a configured drift wins over the file's
    assert p.repeat.source == "bench.drift (configured)" and (p.repeat_ci or [9])[0] < 1.85
    assert points[0].repeat_ci is None  # (dense points have no speed-up)


def test_bench_repeats_through_the_cli(
    pruned_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pbkit,  # type: ignore[no-untyped-def]
) -> None:
    """``pbkit bench --repeats 2 --spacing 0 --quick``: two benches merged into one point per
    variant with the repeat interval over them, shown in the run table and on the run's page; a
    quick bench's spread is no machine's drift, so nothing is kept for later benches."""
    monkeypatch.setenv("PBKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    r = pbkit("bench", run, "--backend", "ort-cpu", "--quick", "--repeats", "2", "--spacing", "0")
    assert r.code == 0, r.err
    assert "bench 2/2 in 0 s" in r.err
    rec = record.read(run)
    p = next(q for q in rec.latency if q.backend == "ort-cpu" and q.variant == "pruned")
    assert p.repeat is not None and len(p.repeat.speedups or []) == 2 and p.repeat_ci
    assert rec.bench is not None and rec.bench.repeats == 2
    # repeating is an act, not a setting: the run's configuration benches once next time
    assert rec.config["bench"]["repeats"] == 1 and rec.stages["bench"].config is not None
    assert rec.stages["bench"].config["bench"]["repeats"] == 2
    assert rec.schema_version == record.SCHEMA_VERSION
    assert "repeat interval" in r.out and "where a later bench on this machine lands" in r.out
    assert not (tmp_path / "cache" / "drift.json").exists()
    from tests.test_report_html import _unpack

    out = tmp_path / "page.html"
    assert pbkit("report", run, "--format", "html", "-o", out).code == 0
    page = _unpack(out.read_text())["pages"][rec.run_id]
    assert "repeat [" in page and "where a later bench on this machine lands" in page


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "bench.drift=x"], "bench.drift: auto or a relative standard deviation"),
        (["--repeats", "0"], "Invalid value for '--repeats'"),
        (["--spacing", "-1"], "Invalid value for '--spacing'"),
        (["--set", "bench.repeats=5000"], "bench.repeats: 5000 is over the limit"),
    ],
)
def test_bad_repeat_settings_are_one_line(
    pruned_run: Path,
    args: list[str],
    says: str,
    pbkit,  # type: ignore[no-untyped-def]
) -> None:
    r = pbkit("bench", pruned_run, "--backend", "ort-cpu", "--quick", *args)
    assert r.code == 2 and says in r.err and "Traceback" not in r.err


@pytest.mark.slow
def test_measured_repeats_keep_the_drift_and_a_later_bench_adds_it(
    pruned_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pbkit,  # type: ignore[no-untyped-def]
) -> None:
    """A measuring bench on a machine whose drift is not known says how to measure it; two
    measuring benches (fresh processes) keep this machine's drift on ort-cpu; the next single
    bench's pruned point has the repeat interval made from it, at least as wide as its own."""
    monkeypatch.setenv("PBKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    short = [
        "--set", "bench.quick=false", "--set", "bench.sessions=2", "--set", "bench.min_time_s=0.3",
        "--set", "bench.max_time_s=0.6", "--set", "bench.warmup_s=0.05",
        "--set", "bench.min_iters=20",
    ]  # fmt: skip
    r = pbkit("bench", run, "--backend", "ort-cpu", *short)
    assert r.code == 0, r.err
    assert "`pbkit bench RUN --repeats 6` measures how far this machine drifts" in r.err
    r = pbkit("bench", run, "--backend", "ort-cpu", "--repeats", "2", "--spacing", "1")
    assert r.code == 0, r.err
    assert "this machine drifted" in r.err
    kept = json.loads((tmp_path / "cache" / "drift.json").read_text(encoding="utf-8"))
    [entries] = kept["machines"].values()
    assert entries["ort-cpu/fp32"]["resnet20_cifar"]["repeats"] == 2
    r = pbkit("bench", run, "--backend", "ort-cpu")  # (once: repeats are not kept)
    assert r.code == 0, r.err
    p = next(
        q for q in record.read(run).latency if q.backend == "ort-cpu" and q.variant == "pruned"
    )
    assert p.repeat is not None and p.repeat.method == "calibrated drift"
    lo, hi = p.repeat_ci or [0.0, 0.0]
    assert p.speedup_ci is not None and lo <= p.speedup_ci[0] and hi >= p.speedup_ci[1]


def test_coverage_benchmark_scores_the_repeat_interval_beside_the_bench_interval() -> None:
    """benchmarks/coverage.py with a calibration: each bench's repeat interval is scored beside
    its own interval, and the page says what the calibration measured and cost."""
    from benchmarks import coverage

    def bench(x: float) -> dict[str, object]:
        return {
            "speedup": x,
            "ci": [x * 0.99, x * 1.01],
            "repeat_ci": [x * 0.94, x * 1.06],
            "wall_s": 20.0,
            "stable": True,
        }

    runs = {"ort-cpu/quiet": [bench(1.80), bench(1.90), bench(1.80)]}
    s = coverage.summary(runs["ort-cpu/quiet"])
    assert s["coverage"] == pytest.approx(2 / 6) and s["repeat_coverage"] == 1.0
    assert s["mean_repeat_half_width"] == pytest.approx(0.06, abs=1e-3)
    doc = {
        "model": "m", "prune": "l1", "utc": "now", "machine": "vm", "commit": "abc",
        "spacing_s": 60, "sets": [], "protocols": {}, "runs": runs,
        "summary": {"ort-cpu/quiet": s},
        "calibration": {"repeats": 6, "spacing_s": 60, "wall_s": 700.0,
                        "drift_sd": {"ort-cpu": 0.023}},
    }  # fmt: skip
    page = coverage.markdown(doc)
    assert "repeat interval's coverage" in page and "| 0.33 | 1.00 | 6.00% |" in page
    assert "bench.repeats=6" in page and "ort-cpu 2.30%" in page
    # without a calibration, only the leave-one-out repeat interval: each bench's with the drift
    # the other two measured (one degree of freedom: wide)
    del doc["calibration"]
    for b in runs["ort-cpu/quiet"]:
        del b["repeat_ci"]
    doc["summary"] = {"ort-cpu/quiet": coverage.summary(runs["ort-cpu/quiet"])}
    page = coverage.markdown(doc)
    assert "mean repeat half-width" not in page and "drift from the other benches" in page
    assert doc["summary"]["ort-cpu/quiet"]["mean_loo_repeat_half_width"] > 0.1
