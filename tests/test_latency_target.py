"""Latency-targeted pruning (prune.target: latency): the table, the knapsack, the closed loop, and
the errors a user sees. The closed loop runs on a stub backend whose latency is a known function
of the layers' widths; one CLI case runs the real ONNX Runtime backend in quick mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pbkit.core import record
from pbkit.models import build, resolve
from pbkit.pruning import PruneHooks, PruneSettings, latency, prune_to_target
from pbkit.pruning.knapsack import Tools
from pbkit.pruning.latency import Cost, LatencySettings, Layer, Measured, Table
from pbkit.pruning.methods import get as get_method
from pbkit.tasks import get as get_task


def staircase(cin: int, cout: int) -> float:
    """A synthetic layer latency: work in whole 8-lane tiles, plus a fixed launch cost."""
    return 0.01 + 0.002 * math.ceil(cin / 8) * math.ceil(cout / 8)


def model_ms(widths: dict[str, tuple[int, int]]) -> float:
    return sum(staircase(*w) for w in widths.values()) + 0.05  # + what no table covers


# --- the table ---


def test_grid_samples_aligned_widths_and_the_unaligned_one_above_each() -> None:
    aligned, unaligned = latency.grid(64, anchors=6)
    assert aligned[-1] == 64 and all(w % 8 == 0 for w in aligned)
    assert set(unaligned) == {w + 1 for w in aligned if w + 1 < 64}
    plain, none = latency.grid(
        10, anchors=4
    )  # narrower than two steps: plain anchors, the full width included
    assert none == [] and plain[-1] == 10 and plain == sorted(set(plain))


def test_the_table_interpolates_a_synthetic_latency_function() -> None:
    layer = Layer("conv", "conv", 64, 128, (1, 64, 16, 16), (3, 3), (1, 1), (1, 1), (1, 1), False)
    calls: list[tuple[int, int]] = []

    def timer(_l: Layer, cin: int, cout: int) -> float:
        calls.append((cin, cout))
        return staircase(cin, cout)

    cost = latency.time_cost(layer, timer, anchors=6)
    half = len(calls) // 2  # a separable grid, timed twice: widest first, then narrowest first
    assert (
        len(set(calls)) == half < 40
        and calls[:half] == calls[half:][::-1]
        and calls[0] == (64, 128)
    )
    # timed points come back exactly; aligned widths in between are interpolated closely
    for cin, cout in [(64, 128), (64, 64), (32, 128)]:
        assert float(cost(cin, cout)) == pytest.approx(staircase(cin, cout), rel=1e-9)
    for cin, cout in [(40, 96), (56, 72), (24, 112)]:
        assert float(cost(cin, cout)) == pytest.approx(staircase(cin, cout), rel=0.12)
    # an unaligned width costs like the next aligned one up, more than the aligned one below
    assert float(cost(64, 97)) > float(cost(64, 96)) * 1.03
    assert float(cost(64, 97)) == pytest.approx(staircase(64, 104), rel=0.05)
    assert cost.out.penalty() > latency.PENALTY
    again = Cost.from_json(json.loads(json.dumps(cost.to_json())))  # what the cache keeps
    assert float(again(40, 97)) == pytest.approx(float(cost(40, 97)))


def test_depthwise_layers_are_tabled_along_their_channels() -> None:
    layer = Layer("dw", "depthwise", 32, 32, (1, 32, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1), False)
    cost = latency.time_cost(layer, lambda _l, c, _o: 0.001 * math.ceil(c / 8), anchors=4)
    assert cost.inp is None
    assert float(cost(16, 16)) == pytest.approx(0.002)


def test_noise_that_makes_a_wider_layer_faster_is_smoothed_away() -> None:
    assert latency.monotone([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    layer = Layer("fc", "linear", 64, 64, (1, 64))
    first = [True]

    def cold_first(
        _l: Layer, cin: int, cout: int
    ) -> float:  # the first run of all is slow (cold caches)
        ms = staircase(cin, cout) * (3.0 if first[0] else 1.0)
        first[0] = False
        return ms

    cost = latency.time_cost(layer, cold_first, anchors=4)
    assert cost.full_ms == pytest.approx(
        staircase(64, 64)
    )  # timed again at the end, the lower kept
    assert float(cost(64, 56)) <= float(cost(64, 64))


def test_the_per_call_overhead_is_taken_off_so_small_layers_are_not_priced_as_fixed_cost() -> None:
    # a layer alone pays a launch cost (0.01 ms) that it does not pay inside a model: taken off,
    # the table prices its compute, and the model's own launch cost is the one fixed part
    layer = Layer("conv", "conv", 64, 64, (1, 64, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1), False)
    cost = latency.time_cost(layer, lambda _l, ci, co: staircase(ci, co), anchors=6, overhead=0.01)
    assert cost.overhead_ms == 0.01
    assert float(cost(64, 64)) == pytest.approx(staircase(64, 64) - 0.01)
    assert float(cost(32, 32)) == pytest.approx(
        staircase(32, 32) - 0.01, rel=1e-6
    )  # a quarter of the compute
    assert Cost.from_json(json.loads(json.dumps(cost.to_json()))).overhead_ms == 0.01
    # noise can make a timing come out below the overhead: a share of it is kept, never zero or less
    floor = latency.time_cost(layer, lambda _l, ci, co: 0.005, anchors=4, overhead=0.01)
    assert float(floor(64, 64)) == pytest.approx(0.005 * latency.MIN_COMPUTE)
    table = Table({"conv": layer}, {layer.signature: cost})
    table.calibrate(
        dense_ms=0.02 + float(cost(64, 64)), widths={"conv": (64, 64)}, overhead_ms=0.02
    )
    assert table.fixed_ms == 0.02 and table.scale == pytest.approx(1.0)
    assert table.predict({"conv": (32, 32)}) == pytest.approx(0.02 + float(cost(32, 32)))
    table.calibrate(
        dense_ms=0.01, widths={"conv": (64, 64)}, overhead_ms=0.02
    )  # an overhead above the model's
    assert table.fixed_ms == 0.0 and table.predict({"conv": (64, 64)}) == pytest.approx(0.01)


# --- the knapsack ---


def test_the_knapsack_picks_the_least_importance_per_millisecond_saved() -> None:
    # group a: cheap to remove but saves little; group b: costs more, saves much more; c saves
    # nothing
    a = latency.best_option(
        "a", np.array([0.1, 0.2, 0.3]), np.array([0.01, 0.02, 0.03]), np.array([1, 2, 3])
    )
    b = latency.best_option(
        "b", np.array([0.3, 0.3, 5.0]), np.array([0.0, 1.0, 1.1]), np.array([1, 2, 3])
    )
    c = latency.best_option("c", np.array([0.0, 0.0]), np.array([0.0, 0.0]), np.array([1, 2]))
    assert c is None
    assert (
        b is not None and b.k == 2
    )  # one unit saves nothing (an unaligned width); two cross the step
    assert a is not None and a.ratio == pytest.approx(10.0)
    best = latency.pick([a, b, c])
    assert best is not None and best.key == "b" and best.ratio == pytest.approx(0.6)
    # one choice never saves more than the goal still needs (the smallest saving one is always
    # allowed)
    flat = np.array([0.1, 0.1, 0.1, 0.1])
    big = latency.best_option("d", flat, np.array([0.5, 2.0, 3.0, 4.5]), np.array([1, 2, 3, 4]))
    capped = latency.best_option(
        "d", flat, np.array([0.5, 2.0, 3.0, 4.5]), np.array([1, 2, 3, 4]), need=2.5
    )
    tiny = latency.best_option(
        "d", flat, np.array([0.5, 2.0, 3.0, 4.5]), np.array([1, 2, 3, 4]), need=0.1
    )
    assert (
        big is not None
        and big.k == 4
        and capped is not None
        and capped.k == 2
        and tiny is not None
        and tiny.k == 1
    )


# --- the closed loop ---


def _stub_tools(size: int = 32) -> tuple[Tools, list[Measured]]:
    """A backend whose latency is ``model_ms`` of the widths; the interval is +-1%."""
    seen: list[Measured] = []

    def table(model: torch.nn.Module) -> Table:
        layers = latency.probe(model, torch.randn(1, 3, size, size))
        t, _ = latency.build_table(layers, lambda _l, ci, co: staircase(ci, co), anchors=6)
        dense = model_ms(latency.widths_of(model, layers))
        t.scale = dense / t.raw(latency.widths_of(model, layers))
        return t

    def measure(dense: torch.nn.Module, pruned: torch.nn.Module) -> Measured:
        names = latency.probe(dense, torch.randn(1, 3, size, size))
        d, p = model_ms(latency.widths_of(dense, names)), model_ms(latency.widths_of(pruned, names))
        sp = d / p
        m = Measured(
            speedup=sp, ci=(sp * 0.99, sp * 1.01), dense_ms=d, pruned_ms=p, cov=0.01, seconds=0.0
        )
        seen.append(m)
        return m

    return Tools(table=table, measure=measure), seen


def _prune(
    speedup: float,
    scope: str = "global",
    name: str = "resnet20_cifar",
    size: int = 32,
    **lat: object,
) -> tuple[object, list[Measured], torch.nn.Module]:
    spec = resolve(name, num_classes=10, input_size=size)
    model = build(spec, pretrained=False, seed=0)
    tools, seen = _stub_tools(size)
    settings = PruneSettings(
        speedup=speedup, scope=scope, latency=LatencySettings(backend="stub", **lat)
    )  # type: ignore[arg-type]
    res = prune_to_target(
        model,
        get_method("l1"),
        settings,
        input_size=size,
        num_classes=10,
        protected=get_task(spec.task).protected(model, spec),
        hooks=PruneHooks(latency_tools=tools),
    )
    return res, seen, model


@pytest.mark.parametrize("scope", ["global", "local"])
def test_the_closed_loop_stops_at_the_first_measured_step_that_meets_the_target(scope: str) -> None:
    res, seen, _ = _prune(1.6, scope)
    run = res.latency_run
    assert run is not None
    info = run.to_json()  # the record's JSON of the typed run
    assert run.met is seen[-1] and run.checks == seen
    assert info["measured_speedup"] == pytest.approx(seen[-1].speedup)
    assert seen[-1].ci[0] >= 1.6  # met beyond the noise
    assert all(m.ci[0] < 1.6 for m in seen[:-1])  # and no earlier measured step did
    assert info["measured_speedup"] <= 1.6 * 1.1  # small steps: at most 10% above
    measured = [t for t in info["trajectory"] if "measured_speedup" in t]
    assert len(measured) == len(seen) == info["checks"]
    assert info["prediction_error"]["max_abs"] < 0.1  # the table models the stub's latency well
    assert res.macs_pruned < res.macs_base  # type: ignore[attr-defined]


def test_widths_snap_to_the_steps_the_table_shows_are_faster() -> None:
    _, _, model = _prune(1.5)
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), (
        widths
    )  # the stub penalises unaligned widths: none is left


def test_a_vit_prunes_to_a_latency_target_with_whole_aligned_head_dims() -> None:
    res, seen, model = _prune(1.4, name="timm:vit_tiny_patch16_224", size=64)
    assert seen[-1].ci[0] >= 1.4 and res.macs_pruned < res.macs_base  # type: ignore[attr-defined]
    heads = [b.attn for b in model.blocks]  # type: ignore[union-attr]
    assert all(
        a.qkv.out_features == 3 * a.num_heads * a.head_dim and a.head_dim % 8 == 0 for a in heads
    )
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_an_unreachable_latency_target_is_one_clear_error() -> None:
    from pbkit.core.errors import PbkitError

    with pytest.raises(PbkitError, match="unreachable|not met"):
        _prune(40.0, max_checks=3)


# --- the real backend, from the CLI ---


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pbkit.cli",
            "prune",
            "--model",
            "resnet20_cifar",
            "--method",
            "l2",
            "--out",
            str(tmp_path / "runs"),
            "--set",
            "bench.quick=true",
            "--set",
            f"prune.latency.cache={tmp_path / 'cache'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_backend_that_is_not_here_or_a_bad_target_is_one_line(tmp_path: Path) -> None:
    for args, words in [
        (("--speedup", "2", "--target", "latency", "--backend", "ort-cuda"), "not available here"),
        (("--speedup", "2", "--target", "flops"), "prune.target"),
        (("--speedup", "2", "--target", "latency", "--backend", "nope"), "backend"),
        (("--speedup", "2", "--target", "latency", "--precision", "fp16"), "fp16"),
    ]:
        out = _cli(tmp_path, *args)
        assert out.returncode != 0, args
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in out.stderr, (
            args,
            out.stderr,
        )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("resnet20*"))


def test_prune_to_a_measured_speedup_on_onnx_runtime(tmp_path: Path) -> None:
    args = (
        "--speedup",
        "1.3",
        "--target",
        "latency",
        "--backend",
        "ort-cpu",
        "--json",
        "--set",
        "prune.latency.anchors=2",
        "--set",
        "prune.latency.rounds=2",
        "--set",
        "export.exporter=torchscript",
    )
    out = _cli(tmp_path, *args)
    assert out.returncode == 0, out.stderr
    run = next((tmp_path / "runs").glob("resnet20-cifar-l2-protected-1.3x-ort-cpu-*"))
    rec = json.loads((run / "record.json").read_text())
    m = rec["method"]
    assert m["target"] == "latency" and m["latency"]["backend"] == "ort-cpu"
    lt = m["latency"]
    assert lt["measured_ci"][0] >= 1.3 and lt["measured_speedup"] >= 1.3
    assert lt["realisation"] == pytest.approx(lt["measured_speedup"] / m["achieved_speedup"])
    assert lt["table"]["timed"] > 0 and (run / lt["table"]["file"]).is_file()
    table = json.loads((run / "latency-table.json").read_text())
    assert set(table["costs"]) == {v["signature"] for v in table["layers"].values()}
    assert rec["schema_version"] == record.SCHEMA_VERSION
    # a second run with the same machine, backend, precision and batch reuses the cached table
    again = _cli(tmp_path, *args, "--run-id", "again")
    assert again.returncode == 0, again.stderr
    lt2 = json.loads((tmp_path / "runs" / "again" / "record.json").read_text())["method"]["latency"]
    assert lt2["table"]["timed"] == 0 and lt2["table"]["cached"] == lt["table"]["entries"]
    # the target is judged on the bench's re-measurement, in a fresh process; the loop's is kept
    bench = subprocess.run(
        [sys.executable, "-m", "pbkit.cli", "bench", str(run), "--backend", "ort-cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bench.returncode == 0, bench.stderr
    lt3 = json.loads((run / "record.json").read_text())["method"]["latency"]
    jb = lt3["bench"]
    assert lt3["judged_on"] == "bench" and lt3["measured_speedup"] == lt["measured_speedup"]
    assert jb["met"] == (jb["speedup"] >= 1.3) and jb["ci"][0] <= jb["speedup"] <= jb["ci"][1]
    assert jb["vs_loop"] == pytest.approx(jb["speedup"] / lt["measured_speedup"], rel=1e-3)
    assert "judged on pbkit bench" in bench.stdout
    assert "latency target 1.3x on ort-cpu" in bench.stderr


def test_reports_rank_latency_targets_apart_from_macs_targets() -> None:
    from types import SimpleNamespace

    from pbkit.report import setups

    def rec(target: str) -> object:
        lat = {"backend": "ort-cpu"} if target == "latency" else None
        return SimpleNamespace(
            method=SimpleNamespace(scope="protected", target=target, latency=lat)
        )

    assert setups.scope_of(rec("macs")) == "protected"  # MACs-targeted runs group as before
    assert setups.scope_of(rec("latency")) == "protected, ort-cpu latency"


def test_the_record_keeps_a_latency_run_as_records_always_held_it() -> None:
    # the typed run's JSON is the record's method.latency: the same keys, in the same order
    from pbkit.pruning import knapsack

    s = LatencySettings(backend="stub", rounds=2)
    first = Measured(1.3, (1.28, 1.32), 2.0, 1.54, 0.01, seconds=0.51234)
    met = Measured(1.45, (1.43, 1.47), 2.0, 1.38, 0.02, seconds=0.25, extra={"blocks": 3})
    run = knapsack.LatencyRun(
        settings=s,
        table=knapsack.TableFacts({"backend": "stub", "timed": 4}, 10, 5, 1.1, 0.123456),
        trajectory=[
            knapsack.Step(1, "round", 900, 1.1, 1.8, 1.11),
            knapsack.Step(2, "round", 800, 1.25, 1.6, 1.25, measured=first),
            knapsack.Step(3, "closed loop", 700, 1.4, 1.4, 1.43, measured=met),
        ],
        checks=[first, met],
        step_times=[0.1, 0.2, 0.3],
        trained_s=1.5,
    )
    errors = [1.25 / 1.3 - 1, 1.43 / 1.45 - 1]
    step = ["step", "kind", "macs", "macs_speedup", "predicted_ms", "predicted_speedup"]
    measured = ["measured_speedup", "measured_ci", "dense_ms", "measured_ms", "cov", "measure_s"]
    doc = run.to_json()
    assert list(doc) == [
        "target",
        "backend",
        "precision",
        "batch",
        "settings",
        "table",
        "trajectory",
        "prediction_error",
        "measured_speedup",
        "measured_ci",
        "dense_ms",
        "pruned_ms",
        "cov",
        "checks",
        "measure_s",
        "macs_speedup",
        "realisation",
        "measurement",
    ]
    assert doc["settings"] == {
        "rounds": 2,
        "step": 0.04,
        "min_step": 0.01,
        "max_checks": 12,
        "anchors": 6,
    }
    assert doc["table"] == {
        "backend": "stub",
        "timed": 4,
        "entries": 10,
        "layers": 5,
        "scale": 1.1,
        "time_s": 0.123,
    }
    assert [list(t) for t in doc["trajectory"]] == [step, step + measured, step + measured]
    assert doc["trajectory"][1]["measure_s"] == 0.512 and doc["trajectory"][1]["measured_ci"] == [
        1.28,
        1.32,
    ]
    assert doc["prediction_error"] == {
        "mean_abs": pytest.approx(float(np.mean(np.abs(errors)))),
        "max_abs": pytest.approx(float(np.max(np.abs(errors)))),
        "per_check": pytest.approx(errors),
    }
    assert (doc["measured_speedup"], doc["measured_ci"], doc["pruned_ms"]) == (
        1.45,
        [1.43, 1.47],
        1.38,
    )
    assert doc["checks"] == 2 and doc["measure_s"] == 0.762 and doc["measurement"] == {"blocks": 3}
    assert doc["realisation"] == pytest.approx(1.45 / 1.4) and doc["macs_speedup"] == 1.4
    assert json.loads(json.dumps(doc)) == doc  # (plain JSON)
    assert (
        run.steps == 3 and run.measured_speedup == 1.45 and run.measure_s == pytest.approx(0.76234)
    )
