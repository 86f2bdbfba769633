from __future__ import annotations

import json
import shutil
from pathlib import Path

from pbkit.core import record
from pbkit.report import leaderboard as report
from pbkit.report import machines, plots, tables


def _variant(src: Path, dst: Path, method: str, acc: float, recipe_lr: float = 0.01) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / "record.json").read_text())
    data["method"]["key"] = method
    data["run_id"] = dst.name
    data["dataset"] = {
        "name": "digits",
        "image_size": 32,
        "num_classes": 10,
        "train_size": 1,
        "test_size": 1,
    }
    data["accuracy"] = {"metric": "top1", "base": 90.0, "pruned": acc - 5, "finetuned": acc}
    data["finetune"]["lr"] = recipe_lr
    (dst / "record.json").write_text(json.dumps(data))
    return dst


def test_leaderboard_ranks_within_one_comparison_setup(pruned_run: Path, tmp_path: Path) -> None:
    _variant(pruned_run, tmp_path / "a", "l1", 88.0)
    _variant(pruned_run, tmp_path / "b", "fpgm", 89.5)
    _variant(pruned_run, tmp_path / "c", "lamp", 95.0, recipe_lr=0.1)  # another finetune recipe
    board = report.leaderboard(report.rows(report.find_records(tmp_path)))
    assert len(board) == 2  # the lr=0.1 row is never ranked against the others
    same = next(g for _, g in board if len(g) == 2)
    assert [(r.rank, r.method) for r in same] == [(1, "fpgm"), (2, "l1")]
    assert same[0].delta == 89.5 - 90.0


def test_formats(pruned_run: Path, tmp_path: Path) -> None:
    _variant(pruned_run, tmp_path / "a", "l1", 88.0)
    rs = report.rows(report.find_records(tmp_path))
    md = report.markdown(rs)
    assert "| rank | method |" in md and "| 1 | l1 |" in md
    csv_text = report.render(rs, "csv")
    assert csv_text.splitlines()[0].startswith("model,dataset,scope,target")
    assert "measured:torch-cpu@b1" in csv_text.splitlines()[0]
    assert json.loads(report.render(rs, "json"))[0]["rows"][0]["method"] == "l1"


def test_plot_writes_a_png(pruned_run: Path, tmp_path: Path) -> None:
    rs = report.rows(report.find_records(pruned_run))
    out = plots.plot(rs, tmp_path / "speedups.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_run_table_shows_counted_and_measured_speedups(pruned_run: Path) -> None:
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(tables.run_table(record.read(pruned_run)))
    text = console.export_text()
    for needle in (
        "params",
        "MACs @32px",
        "achieved",
        "latency torch-cpu fp32 b1",
        "latency ort-cpu fp32 b1",
        "measured",
        "parity ort-cpu",
    ):
        assert needle in text


def test_report_skips_unfinished_temp_folders(pruned_run: Path, tmp_path: Path) -> None:
    _variant(pruned_run, tmp_path / "a", "l1", 88.0)
    _variant(pruned_run, tmp_path / ".tmp-b", "l2", 80.0)
    assert [r.method for r in report.rows(report.find_records(tmp_path))] == ["l1"]


def _on_gpu(src: Path, dst: Path, gpu: str, factor: float, when: str) -> Path:
    """The same run as if measured on another machine: its GPU in the env, its pruned latency
    scaled."""
    shutil.copytree(src, dst)
    data = json.loads((dst / "record.json").read_text())
    data["env"]["gpus"] = [{"index": 0, "name": gpu}]
    data["stages"]["bench"]["env"]["gpus"] = [
        {"index": 0, "name": gpu}
    ]  # the machine that measured
    data["bench"]["measured_utc"] = when
    for p in data["latency"]:
        if p["variant"] == "pruned":
            p["median_ms"] *= factor
            dense = next(
                q
                for q in data["latency"]
                if q["variant"] == "dense"
                and (q["backend"], q["precision"], q["batch"])
                == (p["backend"], p["precision"], p["batch"])
            )
            p["speedup_vs_dense"] = dense["median_ms"] / p["median_ms"]
    (dst / "record.json").write_text(json.dumps(data))
    return dst


def test_across_machines_puts_each_gpu_in_its_own_column(
    pruned_run: Path, tmp_path: Path, pbkit
) -> None:  # type: ignore[no-untyped-def]
    _on_gpu(pruned_run, tmp_path / "h100", "NVIDIA H100 80GB HBM3", 0.5, "2026-11-20T10:00:00Z")
    _on_gpu(pruned_run, tmp_path / "l4-old", "NVIDIA L4", 2.0, "2026-11-19T10:00:00Z")
    _on_gpu(
        pruned_run, tmp_path / "l4", "NVIDIA L4", 0.8, "2026-11-21T10:00:00Z"
    )  # newest L4 run wins
    rows = machines.machine_rows(report.find_records(tmp_path))
    names, table = machines.across_machines(rows)
    assert names == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    base = record.read(pruned_run)
    for key, cells in table.items():
        backend, precision, batch = key[4:]
        dense = next(
            p
            for p in base.latency
            if (p.backend, p.precision, p.batch, p.variant) == (backend, precision, batch, "dense")
        )
        pruned = next(
            p
            for p in base.latency
            if (p.backend, p.precision, p.batch, p.variant) == (backend, precision, batch, "pruned")
        )
        h100, l4 = cells["NVIDIA H100 80GB HBM3"], cells["NVIDIA L4"]
        assert abs((h100.speedup or 0) - dense.median_ms / (pruned.median_ms * 0.5)) < 1e-9
        assert abs((l4.speedup or 0) - dense.median_ms / (pruned.median_ms * 0.8)) < 1e-9
    r = pbkit(
        "report", tmp_path, "--across-machines", "--format", "md", "--plot", tmp_path / "across.png"
    )
    assert r.code == 0, r.err
    assert "| NVIDIA H100 80GB HBM3 | NVIDIA L4 |" in r.out.splitlines()[2]
    assert (tmp_path / "across.png").stat().st_size > 10_000


def test_across_machines_without_measurements_is_an_error(
    pruned_run: Path, tmp_path: Path, pbkit
) -> None:  # type: ignore[no-untyped-def]
    shutil.copytree(pruned_run, tmp_path / "a")
    data = json.loads((tmp_path / "a" / "record.json").read_text())
    data["latency"] = []
    (tmp_path / "a" / "record.json").write_text(json.dumps(data))
    r = pbkit("report", tmp_path, "--across-machines")
    assert r.code == 2 and "no latency measurements" in r.err


def test_old_records_that_finetuned_inside_their_prune_stage_are_finished() -> None:
    from tests.conftest import REPO

    recs = report.find_records(REPO / "results/reference/cpu-2core/runs")
    assert len(recs) == 11 and not any(report.unfinished(r) for _, r in recs)
    assert sum(1 for r in report.rows(recs) if r.finetuned is not None) == 6
