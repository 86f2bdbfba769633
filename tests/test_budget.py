"""Budgets for work that may never end: a memory or time budget stops it with one line, exit 2,
and nothing half-written."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import pytest

from pbkit.core import budget
from pbkit.core.errors import PbkitError

KEYS = ("prune.max_memory_gib", "prune.max_graph_s")  # the settings a budget names


def _rss_gib() -> float:
    return psutil.Process().memory_info().rss / budget.GIB


def _hog(step_mb: int = 8) -> None:
    """Python that keeps allocating, as a dependency graph recursing without end does."""
    held = []
    while True:
        held.append(bytearray(step_mb * 2**20))
        time.sleep(0.002)


def test_a_memory_budget_stops_runaway_python_with_one_line() -> None:
    limit = round(_rss_gib() + 0.25, 2)
    with pytest.raises(PbkitError) as e:
        with budget.guarded("dependency graph of stub", limit, None, hint="a hint", keys=KEYS):
            warnings.warn("Maximum recursive depth reached!", stacklevel=1)
            _hog()
    text = str(e.value)
    assert text.startswith("dependency graph of stub: stopped: its memory reached")
    assert f"over the budget of {limit:g} GiB (prune.max_memory_gib)" in text
    assert "it warned: 'Maximum recursive depth reached!'" in text and text.endswith("; a hint")
    assert "\n" not in text
    assert _rss_gib() < limit + 0.5  # the hog's memory went with it


def _libc() -> Any:
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc's)
    except (OSError, AttributeError):
        pytest.skip("glibc's allocator only")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return libc


def test_memory_freed_but_kept_by_the_allocator_is_handed_back_not_counted_against_the_budget() -> (
    None
):
    libc = _libc()
    libc.malloc_trim(0)  # (what earlier tests freed would serve these mallocs without more memory)
    base = _rss_gib()
    chunks = [
        libc.malloc(64 * 1024) for _ in range(8000)
    ]  # 500 MiB in the heap (below the mmap threshold)
    for c in chunks:
        libc.memset(c, 1, 64 * 1024)
    try:
        for c in chunks[
            ::2
        ]:  # every other one: freed between two in use, they cannot merge and shrink the heap
            libc.free(c)
        assert _rss_gib() > base + 0.45  # freed, but still resident
        with budget.guarded("pruning stub", round(base + 0.35, 3), None) as watch:
            time.sleep(0.3)
        assert watch.reason is None and _rss_gib() < base + 0.35
    finally:
        for c in chunks[1::2]:
            libc.free(c)


def test_a_time_budget_stops_work_that_never_ends() -> None:
    t0 = time.monotonic()
    with pytest.raises(
        PbkitError, match=r"stopped: it ran past the time budget of 0.3 s \(prune.max_graph_s\)"
    ):
        with budget.guarded("dependency graph of stub", None, 0.3, keys=KEYS):
            while True:
                time.sleep(0.01)
    assert time.monotonic() - t0 < 3.0


def test_work_within_budget_runs_and_keeps_its_warnings() -> None:
    with pytest.warns(UserWarning, match="keep me"):
        with budget.guarded("work", 1000.0, 60.0) as watch:
            warnings.warn("keep me", UserWarning, stacklevel=1)
            total = sum(range(1000))
    assert total == 499500 and watch.reason is None and watch.peak_bytes > 0
    time.sleep(0.1)  # no stop arrives later, in other code
    assert budget.default_memory_gib() == pytest.approx(
        0.75 * budget.total_memory_bytes() / budget.GIB, abs=0.1
    )


def test_a_prune_past_its_memory_budget_exits_2_and_leaves_no_run_folder(
    pbkit: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.pruning import loop

    monkeypatch.setattr(loop, "_graph", lambda *a, **k: _hog())
    limit = round(_rss_gib() + 0.3, 2)
    r = pbkit(
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "2",
        "--out",
        tmp_path / "runs",
        "--set",
        f"prune.max_memory_gib={limit}",
    )
    assert r.code == 2
    errors = [line for line in r.err.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.err
    assert errors[0].startswith("error: dependency graph of resnet20_cifar: stopped: its memory")
    assert "window attention" in errors[0]
    assert not any((tmp_path / "runs").glob("resnet20*")) and not any(
        (tmp_path / "runs").glob(".tmp-*")
    )


def test_past_the_graph_budget_a_model_too_large_for_it_is_told_so_not_blamed_on_structure() -> (
    None
):
    from torch import nn

    from pbkit.pruning import loop

    big = nn.Linear(1024, 1024)  # 4 MiB of weights
    assert (
        loop._graph_hint(big, 1.0) == loop.GRAPH_HINT
    )  # a small share of the budget: hard to trace
    hint = loop._graph_hint(big, 0.01)  # 10 MiB: the weights alone take over a third
    assert (
        hint.startswith("the model's weights alone take 0.0 GiB")
        and "raise prune.max_memory_gib" in hint
    )


@pytest.mark.slow
def test_the_zoo_script_writes_its_table_with_passes_and_one_line_reasons(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    # a small model of pbkit's own registry keeps this quick; the zoo itself runs tv: and timm:
    # names
    r = subprocess.run(
        [
            sys.executable,
            str(repo / "benchmarks" / "zoo.py"),
            "--names",
            "resnet20_cifar",
            "tv:no_such_net",
            "--out",
            str(tmp_path),
            "--tag",
            "t",
            "--timeout-s",
            "300",
            "--iterative-steps",
            "50",
            "--max-graph-s",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "zoo-t.json").read_text())
    ok, bad = data["rows"]
    assert (
        ok["status"] == "pass"
        and ok["speedup"] >= 1.5
        and ok["peak_rss_gib"] > 0
        and ok["params_pruned"] > 0
    )
    assert bad["status"] == "fail" and bad["stage"] == "prune" and "no_such_net" in bad["reason"]
    assert "\n" not in bad["reason"]
    assert data["summary"] == {"pbkit": {"tried": 1, "passed": 1}, "tv": {"tried": 1, "passed": 0}}
    md = (tmp_path / "zoo-t.md").read_text()
    assert "| resnet20_cifar | pass | 1.5" in md and "| tv:no_such_net | fail (prune) |" in md
    assert data["settings"]["iterative_steps"] == 50 and ok["iterative_steps"] == 50
    assert "prune.max_graph_s=120, prune.iterative_steps=50)" in md
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo
    ).stdout
    assert ok["code"].startswith(head.strip()[:7])  # the code each row was made with


def test_the_zoo_samples_every_timm_family_by_its_smallest_variant() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "zoo", Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py"
    )
    assert spec is not None and spec.loader is not None
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    sample = zoo.timm_sample(1000)
    assert len(sample) >= 100 and len(set(sample)) == len(sample)
    assert {
        "timm:vit_tiny_patch16_224",
        "timm:resnet10t",
        "timm:convnext_atto",
        "timm:efficientnet_b0",
        "timm:mobilevit_xxs",
    } <= set(sample)  # the smallest, not the family's first name
    assert not any(n.startswith("timm:test_") for n in sample) and zoo.timm_sample(5) == sample[:5]
    tv = zoo.torchvision_names()
    assert (
        len(tv) == 80 and tv[0] == "tv:squeezenet1_1" and tv[-1] == "tv:regnet_y_128gf"
    )  # smallest first
