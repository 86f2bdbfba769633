"""``pbkit explain``: per-layer time mapped back to the model's modules (ONNX Runtime's profiler on
a real exported model, the PyTorch profiler), the comparison against MACs on profiles whose layer
costs are known (a stub profiler), the record's section, the views, and bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from pbkit.core import record
from pbkit.measure import explain as ex
from tests.conftest import Result

NET = """
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block = Block(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def build(num_classes=10):
    return Net(num_classes)
"""


def test_module_paths_from_both_exporters() -> None:
    # dynamo: full paths or child names, the last entry is the operator
    assert ex.module_path(["", "model.0", "conv", "conv2d"]) == "model.0.conv"
    assert ex.module_path(["", "model.23", "model.23.cv3.2", "conv"]) == "model.23.cv3.2"
    assert ex.module_path(["", "1", "_native_batch_norm_legit_no_training"]) == "1"
    # TorchScript: /layer1/layer1.0/conv1/Conv
    assert ex.module_path("/layer1/layer1.0/conv1/Conv".split("/")) == "layer1.0.conv1"
    assert ex.module_path(["", "Conv"]) == ""


def test_a_conv_fused_into_its_batch_norm_counts_for_the_conv() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Linear(8, 2))
    mods = dict(m.named_modules())
    order = list(mods)
    # the exporter put the fused Conv's metadata on the batch norm "1": the conv "0" owns it
    assert ex.owner(mods, order, "1", "Conv") == "0"
    assert ex.owner(mods, order, "1", "BatchNormalization") == "1"
    assert ex.owner(mods, order, "3.linear", "Gemm") == "3"  # a path below a leaf: the leaf


def test_trt_layer_names_split_into_onnx_nodes() -> None:
    name = "/model.0/conv/Conv + PWN(PWN(/model.0/act/Sigmoid), /model.0/act/Mul)"
    assert ex.trt_sources(name) == [
        "/model.0/conv/Conv",
        "/model.0/act/Sigmoid",
        "/model.0/act/Mul",
    ]


def _profile(ms: dict[str, float]) -> ex.Profile:
    return ex.Profile("stub", 10, ms, {k: {"Stub"} for k in ms})


def test_compare_on_known_layer_costs() -> None:
    """Layer a halves its MACs and its time; b halves its MACs but keeps its time (pruning bought
    nothing there); the layout row grows. The lost time ranks b first, then the layout."""
    macs_d = {"": 400, "a": 200, "b": 200}
    macs_p = {"": 200, "a": 100, "b": 100}
    dense = _profile({"a": 2.0, "b": 2.0, ex.LAYOUT: 0.1})
    pruned = _profile({"a": 1.0, "b": 2.0, ex.LAYOUT: 0.3})
    e = ex.compare(dense, pruned, macs_d, macs_p, ("stub", "fp32", 1))
    by = {r.layer: r for r in e.layers}
    assert [r.layer for r in e.layers] == ["b", ex.LAYOUT, "a"]
    assert by["a"].macs_ratio == 2.0 and by["a"].measured_ratio == 2.0
    assert by["a"].realisation == 1.0 and by["a"].lost_ms == 0.0
    assert by["b"].realisation == 0.5 and by["b"].lost_ms == pytest.approx(1.0)
    # a row without MACs is held to the whole model's MACs ratio (2x): 0.3 - 0.1 / 2
    assert by[ex.LAYOUT].macs_ratio is None and by[ex.LAYOUT].lost_ms == pytest.approx(0.25)
    assert e.macs_ratio == 2.0 and e.measured_ratio == pytest.approx(4.1 / 3.3, abs=1e-4)


def test_layer_macs_are_each_modules_own() -> None:
    mod = _load_net()
    macs = ex.layer_macs(mod, 16)
    assert macs[""] == sum(v for k, v in macs.items() if k)  # the parts add up to the whole
    assert macs["block.conv1"] == 32 * 32 * 9 * 16 * 16
    assert macs["block"] == 0  # the residual add has no MACs of its own


def _load_net() -> nn.Module:
    ns: dict[str, object] = {}
    exec(compile(NET, "net.py", "exec"), ns)  # noqa: S102 - the test's own model
    return ns["build"]()  # type: ignore[operator]


def test_onnx_runtime_kernels_map_back_to_modules(tmp_path: Path) -> None:
    """ONNX Runtime's profiler on the real exported model: every convolution and linear layer gets
    a row, and nothing a weighted kernel ran is left unattributed."""
    from pbkit.export.onnx import to_onnx

    model = _load_net().eval()
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "m.onnx"
    to_onnx(model, 16, path)
    prof = ex.profile_ort(model, path, x, 1, 5)
    weighted = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert weighted <= set(prof.ms), set(prof.ms)
    assert set(prof.ms) <= weighted | {"block", ex.LAYOUT, ex.OTHER}
    assert prof.profiler == "onnxruntime" and prof.runs == 5
    assert all(v >= 0 for v in prof.ms.values())


def test_the_pytorch_profiler_times_every_leaf(tmp_path: Path) -> None:
    model = _load_net().eval()
    prof = ex.profile_torch(model, None, torch.randn(1, 3, 16, 16), 1, 4)
    leaves = {n for n, m in model.named_modules() if n and not list(m.children())}
    assert leaves <= set(prof.ms) and ex.OTHER in prof.ms
    assert prof.kinds["block.conv1"] == {"Conv2d"}


@pytest.fixture
def small_run(tmp_path: Path, pbkit) -> Path:  # type: ignore[no-untyped-def]
    (tmp_path / "net.py").write_text(textwrap.dedent(NET))
    r = pbkit(
        "prune", "--model", f"{tmp_path / 'net.py'}:build", "--method", "l1", "--speedup", "2",
        "--imgsz", "16", "--out", tmp_path / "runs",
    )  # fmt: skip
    assert r.code == 0, r.err
    return next((tmp_path / "runs").iterdir())


def test_explain_through_the_cli_with_a_stub_profiler(
    small_run: Path, pbkit, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A stub profiler whose layer costs are known: time follows MACs except in block.conv2,
    which costs the same pruned as dense; explain ranks it first and records it."""

    def stub(model, onnx_path, x, threads, runs):  # type: ignore[no-untyped-def]
        macs = ex.layer_macs(model, x.shape[-1])
        ms = {k: v / 1e6 for k, v in macs.items() if k and v}
        ms["block.conv2"] = 1.0
        return ex.Profile("stub", runs, ms, {k: {"Stub"} for k in ms})

    monkeypatch.setitem(ex.PROFILERS, "torch-cpu", stub)
    r: Result = pbkit("explain", small_run, "--backend", "torch-cpu", "--runs", "3", "--json")
    assert r.code == 0, r.err
    e = record.Explained.model_validate(r.json())
    assert e.layers[0].layer == "block.conv2" and e.layers[0].measured_ratio == 1.0
    assert e.layers[0].lost_ms > 0 and e.runs == 3 and e.profiler == "stub"
    rest = [x for x in e.layers[1:] if x.macs_ratio]
    assert rest and all(x.realisation == pytest.approx(1.0, abs=1e-3) for x in rest)
    rec = record.read(small_run)
    assert rec.explain["torch-cpu/fp32/b1"].layers[0].layer == "block.conv2"
    assert (small_run / "explain-torch-cpu-b1.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_on_onnx_runtime_exports_first(small_run: Path, pbkit) -> None:  # type: ignore[no-untyped-def]
    r = pbkit("explain", small_run, "--runs", "3", "--top", "3")
    assert r.code == 0, r.err
    assert "exporting first" in r.err and "realisation" in r.out
    rec = record.read(small_run)
    e = rec.explain["ort-cpu/fp32/b1"]
    assert e.profiler == "onnxruntime" and e.macs_ratio > 1.5
    assert {"stem.0", "block.conv1", "block.conv2", "head"} <= {x.layer for x in e.layers}
    assert rec.artifacts["onnx"]["pruned"]["sha256"]  # exported by explain, recorded


def test_explain_on_openvino_maps_its_counters_back(small_run: Path, pbkit) -> None:  # type: ignore[no-untyped-def]
    r = pbkit("explain", small_run, "--backend", "ov-cpu", "--runs", "3", "--top", "3")
    assert r.code == 0, r.err
    e = record.read(small_run).explain["ov-cpu/fp32/b1"]
    assert e.profiler.startswith("openvino") and e.macs_ratio > 1.5
    # every weighted layer found among OpenVINO's executed nodes, fused or not
    assert {"stem.0", "block.conv1", "block.conv2", "head"} <= {x.layer for x in e.layers}
    assert all(x.dense_ms >= 0 and x.pruned_ms >= 0 for x in e.layers)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--backend", "nope"], "backend"),
        (["--backend", "torch-compile-cpu"], "profiles"),
        (["--runs", "0"], "--runs 0"),
        (["--batch", "0"], "--batch 0"),
        (["--top", "0"], "--top"),
    ],
)
def test_bad_options_are_one_line(small_run: Path, pbkit, args: list[str], says: str) -> None:  # type: ignore[no-untyped-def]
    before = (small_run / "record.json").read_bytes()
    r = pbkit("explain", small_run, *args)
    assert r.code == 2 and says in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert (small_run / "record.json").read_bytes() == before


def test_not_a_run_folder(tmp_path: Path, pbkit) -> None:  # type: ignore[no-untyped-def]
    r = pbkit("explain", tmp_path)
    assert r.code == 2 and "not a run folder" in r.err


def test_views_from_the_record(tmp_path: Path) -> None:
    from pbkit.report import explain as views

    e = ex.compare(
        _profile({"a|<b>": 2.0, "c": 1.0}),
        _profile({"a|<b>": 1.5, "c": 0.5}),
        {"": 4, "a|<b>": 2, "c": 2},
        {"": 2, "a|<b>": 1, "c": 1},
        ("stub", "fp32", 1),
    )
    text = views.markdown(e)
    assert "| a\\|&lt;b&gt; |" in text and "realisation" in text
    assert views.plot(e, tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_records_without_explain_still_read(small_run: Path) -> None:
    data = json.loads((small_run / "record.json").read_text())
    data.pop("explain", None)
    data["schema_version"] = "1.6"
    assert record.validate(data).explain == {}


# ------------------------------------------------------------------------- the alignment advisor


def _layers(*couts: int) -> list:  # type: ignore[type-arg]
    from pbkit.pruning.latency import Layer

    return [Layer(f"l{i}", "conv", 64, c, (1, 64, 8, 8), (3, 3)) for i, c in enumerate(couts)]


def test_nearest_multiples() -> None:
    from pbkit.measure.align import nearest

    assert [nearest(37, a) for a in (8, 16, 32, 64)] == [40, 32, 32, 64]
    assert nearest(3, 8) == 8 and nearest(12, 8) == 16 and nearest(64, 64) == 64


def test_a_backend_whose_latency_steps_at_multiples_of_8_gets_round_to_8() -> None:
    """The stub's layer costs as much at 37 channels as at 40 (its kernel works in blocks of 8)."""
    from pbkit.measure import align

    def steps_of_8(layer, cin, cout):  # type: ignore[no-untyped-def]
        return 0.01 * -(-cout // 8) * 8

    a = align.advise(steps_of_8, _layers(37, 45, 100), ("stub", "fp32", 1))
    assert a.recommended == 8
    # per layer (time per channel at its width over that at the multiple): 40/37, 48/45, 104/100
    assert a.gain["8"] == pytest.approx(48 / 45, rel=1e-3)  # their median
    assert a.ms_pruned == pytest.approx(0.4 + 0.48 + 1.04) == a.ms_aligned["8"]
    assert {x.layer: x.cout for x in a.layers} == {"l0": 37, "l1": 45, "l2": 100}
    assert set(a.layers[0].widths_ms) == {"37", "40", "32", "64"}


def test_a_backend_without_steps_gets_no_recommendation() -> None:
    from pbkit.measure import align

    a = align.advise(lambda L, cin, w: 0.01 * w, _layers(37, 45), ("stub", "fp32", 1))
    assert a.recommended is None and all(g == pytest.approx(1.0) for g in a.gain.values())


def test_explain_align_through_the_cli(
    small_run: Path, pbkit, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from pbkit.measure.layers import Timings

    monkeypatch.setattr(Timings, "time_layer", lambda self, L, cin, w: 0.01 * -(-w // 8) * 8)
    r = pbkit(
        "explain", small_run, "--backend", "torch-cpu", "--runs", "2", "--align", "2", "--json"
    )
    assert r.code == 0, r.err
    advice = record.Alignment.model_validate(r.json()["alignment"])
    assert len(advice.layers) == 2 and advice.backend == "torch-cpu"
    assert record.read(small_run).alignment["torch-cpu/fp32/b1"].layers == advice.layers
    assert pbkit("explain", small_run, "--align", "65").code == 2


def test_the_run_page_shows_the_explanation(
    small_run: Path, pbkit, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from tests.test_report_html import _unpack

    def stub(model, onnx_path, x, threads, runs):  # type: ignore[no-untyped-def]
        return ex.Profile("stub", runs, {"block.conv2": 1.0, "<script>": 0.5}, {})

    monkeypatch.setitem(ex.PROFILERS, "torch-cpu", stub)
    assert pbkit("explain", small_run, "--backend", "torch-cpu", "--runs", "2").code == 0
    out = small_run.parent / "page.html"
    assert pbkit("report", small_run, "--format", "html", "-o", out).code == 0
    page = _unpack(out.read_text())["pages"][record.read(small_run).run_id]
    assert "Per layer: torch-cpu fp32 b1, stub over 2 runs" in page
    assert "block.conv2" in page and "&lt;script&gt;" in page and "<script>" not in page


# ----------------------------------------------------------------------------- interval coverage


def test_pair_coverage_on_constructed_runs() -> None:
    from pbkit.core.intervals import pair_coverage

    # three runs; run 0's interval holds runs 1 and 2, run 1's holds 0 only, run 2's none
    points = [1.50, 1.52, 1.60]
    cis = [[1.45, 1.61], [1.49, 1.51], [1.59, 1.61]]
    assert pair_coverage(points, cis) == pytest.approx(3 / 6)
    assert pair_coverage([1.0], [[0.9, 1.1]]) is None


def test_pair_coverage_falls_with_between_run_variance() -> None:
    """Synthetic benches: each interval is ±1.96 sigma_within around its point; the points spread
    by sigma_between. Without between-run spread the intervals cover their repeats; with a spread
    twice the within-run noise, far less often (the case the coverage benchmark looks for)."""
    import random

    from pbkit.core.intervals import pair_coverage

    def coverage(between: float, within: float = 0.01, n: int = 200) -> float:
        rng = random.Random(0)
        pts = [1.5 + rng.gauss(0, between) for _ in range(n)]
        cis = [[p - 1.96 * within, p + 1.96 * within] for p in pts]
        return pair_coverage(pts, cis) or 0.0

    assert coverage(0.0) == 1.0
    # a repeat's point lies within 1.96 sigma_w of another's: P(|N(0, 2 sb^2)| < 1.96 sw)
    assert coverage(0.01) == pytest.approx(0.83, abs=0.05)
    assert coverage(0.02) == pytest.approx(0.52, abs=0.05)


def test_drift_split_recovers_a_known_round_effect() -> None:
    """Synthetic rounds of 3 protocols: every protocol in round i shares the machine's state
    (a log offset with SD 3%), each bench adds its own noise (SD 1%): the split finds both, and
    intervals of the within-round width cover a bench of their own round far more often than one
    of another round."""
    import math
    import random

    from pbkit.core.intervals import drift_split, round_coverage

    rng = random.Random(1)
    states = [rng.gauss(0, 0.03) for _ in range(400)]
    rounds = [[1.8 * math.exp(s + rng.gauss(0, 0.01)) for _ in range(3)] for s in states]
    between, within = drift_split(rounds) or (0.0, 0.0)
    assert between == pytest.approx(0.03, abs=0.004)
    assert within == pytest.approx(0.01, abs=0.001)
    # no shared state: nothing between rounds (clamped at 0, never negative)
    flat = [[1.8 * math.exp(rng.gauss(0, 0.01)) for _ in range(3)] for _ in range(400)]
    assert drift_split(flat) == pytest.approx((0.0, 0.01), abs=0.002)
    assert drift_split([[1.8, 1.9]]) is None and drift_split([[1.8], [1.9]]) is None

    few = rounds[:40]
    cells = [[(x, (x * math.exp(-0.0196), x * math.exp(0.0196))) for x in row] for row in few]
    same, other = round_coverage(cells)
    assert same is not None and other is not None
    # (a correct 95% interval of one bench: 83% of a same-state repeat, ~34% across states here)
    assert same == pytest.approx(0.83, abs=0.08) and other == pytest.approx(0.34, abs=0.08)


@pytest.mark.parametrize("steps_at_16", [True, False])
def test_round_to_auto_prunes_again_with_what_the_advisor_recommends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps_at_16: bool
) -> None:
    """prune.round_to: auto on a backend whose layers cost as much at 37 channels as at 48: the
    advisor recommends a multiple of 16 and the run is pruned again with it (every pruned width a
    multiple of 8 then); on one without steps nothing is recommended and the unaligned pruning
    stays."""
    from pbkit import stages
    from pbkit.core import config
    from pbkit.measure import layers

    def stub(self, layer, cin, cout):  # type: ignore[no-untyped-def]
        return 0.01 * (-(-cout // 16) * 16 if steps_at_16 else cout)

    monkeypatch.setattr(layers.Timings, "time_layer", stub)
    cfg = config.load(
        None,
        [
            f"out={tmp_path}",
            "model.name=resnet20_cifar",
            "prune.round_to=auto",
            "prune.speedup=1.5",
            "bench.quick=true",
        ],
    )
    rec = stages.run(cfg, until="prune", quiet=True).record
    auto = rec.method.round_to_auto
    assert auto is not None and auto.backend == "ort-cpu" and len(auto.layers) > 0
    assert rec.config["prune"]["round_to"] == "auto"
    al = rec.counts.channel_alignment or {}
    assert all(x.cout < 64 for x in auto.layers)  # only layers pruning narrowed are timed
    if steps_at_16:
        assert auto.recommended in (16, 32, 64) and rec.method.round_to == auto.recommended
        assert al["pruned_layers"] > 0 and al["share"] == 1.0
    else:
        assert auto.recommended is None and rec.method.round_to is None
        assert al["share"] < 1.0  # the first, unaligned pruning is the run's
    assert rec.method.achieved_speedup >= 1.5


def test_round_to_that_is_neither_a_multiple_nor_auto_is_one_line(pbkit) -> None:  # type: ignore[no-untyped-def]
    r = pbkit(
        "prune", "--model", "resnet20_cifar", "--method", "l1", "--speedup", "2", "--round-to", "x"
    )
    assert r.code == 2 and "prune.round_to: a channel multiple >= 1, auto or null" in r.err


def test_coverage_benchmark_renders_where_the_spread_comes_from() -> None:
    """benchmarks/coverage.py's page from a doc of two protocols over three rounds, the machine's
    state moving the second round: the drift table shows the rounds and both coverages."""
    from benchmarks import coverage

    def bench(x: float) -> dict[str, object]:
        return {"speedup": x, "ci": [x * 0.99, x * 1.01], "wall_s": 20.0, "stable": True}

    runs = {
        "ort-cpu/quiet/a": [bench(1.80), bench(1.90), bench(1.80)],
        "ort-cpu/quiet/b": [bench(1.801), bench(1.901), bench(1.801)],
    }
    doc = {
        "model": "m", "prune": "l1", "utc": "now", "machine": "vm", "commit": "abc",
        "spacing_s": 10, "sets": [], "protocols": {"a": [], "b": ["bench.processes=2"]},
        "runs": runs, "summary": {k: coverage.summary(v) for k, v in runs.items()},
    }  # fmt: skip
    d = coverage.drift(doc)["ort-cpu/quiet"]
    assert (d["rounds"], d["protocols"]) == (3, 2)
    assert d["same_round_coverage"] == 1.0 and d["other_rounds_coverage"] == pytest.approx(4 / 12)
    assert d["between_rounds_sd"] > 10 * d["within_round_sd"]
    page = coverage.markdown(doc)
    assert "| ort-cpu | quiet | 3 x 2 |" in page and "| 1.00 | 0.33 |" in page
