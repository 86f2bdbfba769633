"""Does a bench's 95% interval mean what it says? (issue #37) One pruned run, benched again and
again by ``pbkit bench`` (each bench its own fresh process, spaced in time), on a quiet machine and
with a known competing load: the share of ordered pairs of benches where one bench's interval
covers the other's speed-up (:func:`pbkit.core.intervals.pair_coverage`). About 83% is what
correct 95% intervals of two independent estimates give (their difference has sqrt(2) times one
estimate's spread: P(|Z| < 1.96 / sqrt 2)); an interval that describes only the noise inside one
bench gives less.

    .venv/bin/python benchmarks/coverage.py --model resnet18_cifar --backend ort-cpu torch-cpu \
        --repeats 6 --load quiet load [--set bench.sessions=7] \
        [--protocol one-session=bench.sessions=1 --protocol default=] [--calibrate 6]

Writes ``results/perf/coverage-<model>-<tag>.json`` (every bench's point, interval, wall time and
the machine's state) and ``.md`` (the table, rendered from the JSON). ``--load load`` runs one
busy-looping process per ``--load-procs`` beside the benches (a known competing load).
``--protocol NAME=KEY=VALUE,...`` (repeatable) compares bench protocols in one invocation: each
round benches every protocol in turn (in a shuffled order), so they see the same machine over the
same hours; ``--set`` applies to all of them.

``--calibrate N`` first benches the run N times, ``--calibrate-spacing`` seconds apart
(``bench.repeats``), which keeps this machine's drift between benches in a cache of the
benchmark's own; every bench after it then also has its repeat interval (``repeat_ci``: its
interval widened by that drift), and the tables show that interval's coverage beside the bench
interval's: calibrated once, tested on benches that did not calibrate it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pbkit.core.clock import utc_now  # noqa: E402
from pbkit.core.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from pbkit.core.intervals import (  # noqa: E402
    drift_from_repeats,
    drift_split,
    pair_coverage,
    round_coverage,
    with_drift,
)
from pbkit.machine import cpustate  # noqa: E402

PBKIT = str(Path(sys.executable).with_name("pbkit"))
ENV = dict(os.environ)  # PBKIT_CACHE: the benchmark's own (the drift it calibrates, nothing older)


def _spin(stop: Any) -> None:  # a competing process: busy until told to stop
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _pbkit(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [PBKIT, *args, "--json"], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=ENV
    )
    if done.returncode != 0:
        raise SystemExit(f"pbkit {args[0]} exited with {done.returncode}")
    return json.loads(done.stdout)


def bench_once(run_dir: str, backend: str, sets: list[str]) -> dict[str, Any]:
    before = cpustate.snapshot()
    t0 = time.perf_counter()
    args = ["bench", run_dir, "--backend", backend]
    for s in sets:
        args += ["--set", s]
    rec = _pbkit(*args)["record"]
    wall = time.perf_counter() - t0
    state = cpustate.between(before, cpustate.snapshot())
    p = next(x for x in rec["latency"] if x["backend"] == backend and x["variant"] == "pruned")
    return {
        "speedup": p["speedup_vs_dense"],
        "ci": p.get("speedup_ci"),
        "repeat_ci": p.get("repeat_ci"),
        "sessions": (p.get("ci") or {}).get("sessions"),
        "wall_s": round(wall, 1),
        "stable": p["stable"],
        "cpu_state": state,
        "utc": utc_now(),
    }


def calibrate(
    run_dir: str, backends: list[str], repeats: int, spacing: float, sets: list[str]
) -> dict[str, Any]:
    """``bench.repeats``: the drift between benches, kept in the benchmark's cache."""
    t0 = time.perf_counter()
    args = ["bench", run_dir, *[x for b in backends for x in ("--backend", b)]]
    for item in [*sets, f"bench.repeats={repeats}", f"bench.repeat_spacing_s={spacing}"]:
        args += ["--set", item]
    rec = _pbkit(*args)["record"]
    drifts = {
        p["backend"]: p["repeat"]["drift_sd"]
        for p in rec["latency"]
        if p["variant"] == "pruned" and p["backend"] in backends and p.get("repeat")
    }
    print(f"calibrated: {drifts}", file=sys.stderr)
    return {
        "repeats": repeats,
        "spacing_s": spacing,
        "wall_s": round(time.perf_counter() - t0, 1),
        "drift_sd": drifts,
    }


def leave_one_out(points: list[float], cis: list[list[float]]) -> list[list[float]]:
    """Each bench's repeat interval with the drift the OTHER benches of its series measured
    (:func:`drift_from_repeats` over them, its degrees of freedom theirs): what a calibration on
    the other benches would have given it, scored on benches that did not calibrate it. Empty
    with fewer than three benches."""
    if len(points) < 3:
        return []
    out = []
    for i, (x, ci) in enumerate(zip(points, cis, strict=True)):
        others, their = points[:i] + points[i + 1 :], cis[:i] + cis[i + 1 :]
        sd = drift_from_repeats(others, their) or 0.0
        out.append(with_drift(x, ci, sd, len(others) - 1))
    return out


def summary(benches: list[dict[str, Any]]) -> dict[str, Any]:
    with_ci = [b for b in benches if b["ci"]]
    points = [b["speedup"] for b in with_ci]
    cis = [b["ci"] for b in with_ci]
    widths = [(c[1] - c[0]) / 2 / p for c, p in zip(cis, points, strict=True)]
    repeat = [b["repeat_ci"] for b in with_ci if b.get("repeat_ci")]
    calibrated = len(repeat) == len(with_ci) and len(repeat) > 1
    loo = leave_one_out(points, cis)
    return {
        "benches": len(benches),
        "coverage": pair_coverage(points, cis),
        "loo_repeat_coverage": pair_coverage(points, loo) if loo else None,
        "mean_loo_repeat_half_width": round(
            statistics.fmean((c[1] - c[0]) / 2 / p for c, p in zip(loo, points, strict=True)), 4
        )
        if loo
        else None,
        "repeat_coverage": pair_coverage(points, repeat) if calibrated else None,
        "mean_repeat_half_width": round(
            statistics.fmean((c[1] - c[0]) / 2 / p for c, p in zip(repeat, points, strict=True)),
            4,
        )
        if calibrated
        else None,
        "mean_speedup": round(statistics.fmean(points), 4) if points else None,
        "between_bench_cov": round(statistics.stdev(points) / statistics.fmean(points), 4)
        if len(points) > 1
        else None,
        "mean_relative_half_width": round(statistics.fmean(widths), 4) if widths else None,
        "mean_wall_s": round(statistics.fmean(b["wall_s"] for b in benches), 1),
    }


def drift(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per backend and load, with two protocols or more taking turns each round: the spread
    every protocol shared in a round (the machine drifting between rounds) against the spread
    within a round, and how often an interval covers a bench of the same round against one of
    another round (:func:`drift_split`, :func:`round_coverage`)."""
    series: dict[str, list[list[dict[str, Any]]]] = {}
    for key, benches in doc["runs"].items():
        backend, load, *rest = key.split("/")
        if rest:
            series.setdefault(f"{backend}/{load}", []).append(benches)
    out = {}
    for key, protocols in series.items():
        n = min(len(b) for b in protocols)
        rounds = [[b[i] for b in protocols] for i in range(n)]
        if any(not x["ci"] for row in rounds for x in row):
            continue
        split = drift_split([[x["speedup"] for x in row] for row in rounds])
        same, other = round_coverage([[(x["speedup"], x["ci"]) for x in row] for row in rounds])
        if split is None:
            continue
        out[key] = {
            "rounds": n,
            "protocols": len(protocols),
            "between_rounds_sd": round(split[0], 4),
            "within_round_sd": round(split[1], 4),
            "same_round_coverage": same,
            "other_rounds_coverage": other,
        }
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# Interval coverage: {doc['model']} ({doc['prune']})",
        "",
        f"Measured {doc['utc']} on {doc['machine']} at commit {doc['commit']}, by"
        " `benchmarks/coverage.py`: each bench a fresh `pbkit bench` process, "
        f"{doc['spacing_s']} s apart; bench settings {doc['sets'] or 'default'}.",
        "",
        "| backend | load | protocol | benches | coverage (correct intervals: ~0.83)"
        " | mean speed-up | between-bench CoV | mean CI half-width | mean wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    protocols = doc.get("protocols") or {}
    repeat = any(s.get("repeat_coverage") is not None for s in doc["summary"].values())
    lines[-2] = lines[-2].replace(
        " | mean speed-up",
        (" | repeat interval's coverage | mean repeat half-width" if repeat else "")
        + " | repeat interval's coverage, drift from the other benches | its mean half-width"
        " | mean speed-up",
    )
    lines[-1] += "---|---|---|---|" if repeat else "---|---|"
    for key, s in doc["summary"].items():
        backend, load, *rest = key.split("/")
        name = rest[0] if rest else "default"
        how = f"{name} ({', '.join(protocols[name]) or 'defaults'})" if name in protocols else name
        cov = f"{s['coverage']:.2f}" if s["coverage"] is not None else "-"
        for rc, rw in [
            *([(s.get("repeat_coverage"), s.get("mean_repeat_half_width"))] if repeat else []),
            (s.get("loo_repeat_coverage"), s.get("mean_loo_repeat_half_width")),
        ]:
            cov += f" | {rc:.2f}" if rc is not None else " | -"
            cov += f" | {rw:.2%}" if rw is not None else " | -"
        lines.append(
            f"| {backend} | {load} | {how} | {s['benches']} | {cov} | {s['mean_speedup']} |"
            f" {s['between_bench_cov']:.2%} | {s['mean_relative_half_width']:.2%} |"
            f" {s['mean_wall_s']} |"
            if s["between_bench_cov"] is not None and s["mean_relative_half_width"] is not None
            else f"| {backend} | {load} | {how} | {s['benches']} | {cov} | - | - | - | - |"
        )
    cal = doc.get("calibration")
    if cal:
        lines += [
            "",
            f"Calibrated before the benches above by `pbkit bench --set bench.repeats="
            f"{cal['repeats']} --set bench.repeat_spacing_s={cal['spacing_s']:g}` (once, in"
            f" {cal['wall_s']:.0f} s): the drift between those benches beyond their own noise,"
            " which every later bench's repeat interval adds (`bench.drift: auto`):"
            + "".join(f" {b} {d:.2%};" for b, d in cal["drift_sd"].items()).rstrip(";")
            + ".",
        ]
    split = doc.get("drift") or drift(doc)
    if split:
        lines += [
            "",
            "Where the spread comes from: each round benches every protocol in turn, within a"
            " few minutes; what the protocols share in a round is the machine's state, which"
            " drifts from one round to the next.",
            "",
            "| backend | load | rounds x protocols | SD between rounds | SD within a round"
            " | coverage, same round | coverage, other rounds |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, d in split.items():
            backend, load = key.split("/")
            lines.append(
                f"| {backend} | {load} | {d['rounds']} x {d['protocols']}"
                f" | {d['between_rounds_sd']:.2%} | {d['within_round_sd']:.2%}"
                f" | {d['same_round_coverage']:.2f} | {d['other_rounds_coverage']:.2f} |"
            )
    lines += [
        "",
        "Coverage: the share of ordered pairs of benches where one bench's 95% interval holds the"
        " other's speed-up. What an interval covers is this machine in its state while measuring;"
        " under load, benches are marked busy in their records.",
        "",
    ]
    return "\n".join(lines)


def _protocol(text: str) -> tuple[str, list[str]]:
    """``one-session=bench.sessions=1,bench.max_time_s=9`` -> its name and --set values."""
    name, _, sets = text.partition("=")
    if not name:
        raise SystemExit(f"--protocol {text!r}: NAME=KEY=VALUE,... (NAME= for the defaults)")
    return name, [x for x in sets.split(",") if x]


def _explicit(protocols: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each protocol with every key any of them sets, the defaults' value where it sets none:
    ``pbkit bench --set`` is kept in the run's configuration, so a protocol that left a key out
    would measure with the previous bench's value."""
    from pbkit.core import config

    defaults = config.load(None, []).model_dump(mode="json")
    keys = list(dict.fromkeys(s.partition("=")[0] for sets in protocols.values() for s in sets))
    out = {}
    for name, sets in protocols.items():
        given = {s.partition("=")[0] for s in sets}
        extra = []
        for k in keys:
            if k not in given:
                value: Any = defaults
                for part in k.split("."):
                    value = value[part]
                extra.append(f"{k}={json.dumps(value)}")
        out[name] = [*sets, *extra]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--method", default="l1")
    ap.add_argument("--backend", nargs="+", default=["ort-cpu", "torch-cpu"])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--spacing", type=float, default=10.0, help="seconds between benches")
    ap.add_argument("--load", nargs="+", default=["quiet"], choices=["quiet", "load"])
    ap.add_argument("--load-procs", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument(
        "--protocol",
        dest="protocols",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE,...",
        help="a bench protocol to compare (repeatable); NAME= alone: the defaults",
    )
    ap.add_argument("--calibrate", type=int, default=0, metavar="N", help="repeats, first")
    ap.add_argument("--calibrate-spacing", type=float, default=60.0, metavar="S")
    ap.add_argument("--imgsz", type=int, default=None, help="the model's input size")
    ap.add_argument("--seed", type=int, default=0, help="the protocols' order per round")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--render", nargs="+", metavar="JSON", help="only render .md from these JSON")
    ap.add_argument("--out", default=str(ROOT / "results" / "perf"))
    a = ap.parse_args()
    if a.render:
        for path in map(Path, a.render):  # (the drift table added to older JSON)
            doc = json.loads(path.read_text())
            doc["summary"] = {k: summary(v) for k, v in doc["runs"].items()}
            doc["drift"] = drift(doc)
            atomic_write_json(path, doc)
            atomic_write_text(path.with_suffix(".md"), markdown(doc))
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    protocols = _explicit(dict(_protocol(p) for p in a.protocols) or {"": []})
    rng = random.Random(a.seed)
    size = ["--imgsz", str(a.imgsz)] if a.imgsz else []
    calibration: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="pbkit-coverage-") as tmp:
        ENV["PBKIT_CACHE"] = f"{tmp}/cache"
        run = _pbkit(
            "prune", "--model", a.model, "--method", a.method, "--speedup", "2",
            "--out", f"{tmp}/runs", *size,
        )  # fmt: skip
        run_dir = run["run_dir"]
        _pbkit("export", run_dir)
        if a.calibrate > 1:
            calibration = calibrate(run_dir, a.backend, a.calibrate, a.calibrate_spacing, a.sets)
        protocols = {k: [*v, "bench.repeats=1"] for k, v in protocols.items()}
        results: dict[str, list[dict[str, Any]]] = {}
        for load in a.load:
            stop = multiprocessing.Event()
            procs = [
                multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                for _ in range(a.load_procs if load == "load" else 0)
            ]
            for p in procs:
                p.start()
            try:
                for i in range(a.repeats):
                    order = list(protocols)
                    rng.shuffle(order)
                    for name in order:
                        for backend in a.backend:
                            b = bench_once(run_dir, backend, [*a.sets, *protocols[name]])
                            key = f"{backend}/{load}" + (f"/{name}" if name else "")
                            results.setdefault(key, []).append(b)
                            print(f"{key} #{i + 1}: {b['speedup']:.3f} {b['ci']}"
                                  f" ({b['wall_s']} s)", file=sys.stderr)  # fmt: skip
                    time.sleep(a.spacing)
            finally:
                stop.set()
                for p in procs:
                    p.join(5)
    host = os.uname().nodename if hasattr(os, "uname") else "?"
    doc = {
        "model": a.model,
        "imgsz": a.imgsz,
        "protocols": {k: v for k, v in protocols.items() if k},
        "prune": f"{a.method}, protected, 2x",
        "utc": utc_now(),
        "commit": commit,
        "machine": f"{host}, {os.cpu_count()} CPUs",
        "spacing_s": a.spacing,
        "sets": a.sets,
        "calibration": calibration,
        "runs": results,
        "summary": {k: summary(v) for k, v in results.items()},
    }
    doc["drift"] = drift(doc)
    tag = a.tag or f"cpu-{os.cpu_count()}core"
    out = Path(a.out)
    atomic_write_json(out / f"coverage-{a.model}-{tag}.json", doc)
    atomic_write_text(out / f"coverage-{a.model}-{tag}.md", markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
