"""The HTML report without a browser: self-contained, built from records only, one column
definition for every renderer, and the CLI's one-line errors (tests/test_report_browser.py drives
it in a real browser)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from pbkit.report import columns, html, svg
from pbkit.report import leaderboard as lb
from tests.report_data import RUNS, make_study


@pytest.fixture(scope="module")
def study(pruned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    dst = tmp_path_factory.mktemp("study")
    return dst, make_study(pruned_run, dst)


@pytest.fixture(scope="module")
def page(study: tuple[Path, list[Path]]) -> str:
    return html.page(lb.find_records(study[0]), [str(study[0])])


def _unpack(text: str) -> dict:
    blob = re.search(
        r'<script type="application/octet-stream" id="pb-records"[^>]*>([^<]*)</script>', text
    )
    assert blob is not None
    return json.loads(gzip.decompress(base64.b64decode(blob.group(1))))


def test_the_page_fetches_nothing(page: str) -> None:
    # nothing that a browser would load from elsewhere: no src, no stylesheet link, no url(), no
    # import
    assert not re.search(r"<(script|img|iframe|link|source|video|audio)\b[^>]*\b(src|href)=", page)
    assert "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # and the page forbids it anyway
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


def test_leaderboard_rows_are_the_records_numbers(
    page: str, study: tuple[Path, list[Path]]
) -> None:
    rows = re.findall(r'<tr class="entry"[^>]*data-method="([^"]+)"[^>]*>(.*?)</tr>', page)
    # l1 seeds 0 and 1 are one row (mean of two); the lr=0.001 and the 3x runs are other groups
    assert sorted(m for m, _ in rows) == ["fpgm", "l1", "l1", "l1", "lamp"]
    l1 = next(cells for m, cells in rows if m == "l1" and "seed 1" in cells)
    assert 'data-col="finetuned" data-sort="95.5"' in l1 and "95.50 ± 0.71" in l1
    lamp = next(cells for m, cells in rows if m == "lamp")
    assert (
        'data-col="measured:torch-cpu@b1" data-sort="1"' in lamp
    )  # its interval holds 1.0: sorted as 1
    assert "1.02 [0.97, 1.07] ~1" in lamp


def test_the_page_names_every_record_with_its_sha256(
    page: str, study: tuple[Path, list[Path]]
) -> None:
    for path in study[1]:
        assert hashlib.sha256(path.read_bytes()).hexdigest() in page
        assert str(path) in page
    assert "1 record(s) whose finetuning had not run yet" in page
    packed = _unpack(page)
    assert sorted(packed["records"]) == sorted(
        name for name, *_ in RUNS
    )  # the finished ones, whole
    assert packed["records"]["fpgm-s0"] == json.loads(
        (study[0] / "runs/fpgm-s0/record.json").read_text()
    )
    assert (
        "<h4>Latency</h4>" in packed["pages"]["fpgm-s0"]
        and "finetuning: top1 per epoch" in packed["pages"]["fpgm-s0"]
    )


def test_plot_points_carry_their_coordinates(page: str) -> None:
    scatter = re.search(r'<svg class="plot scatter".*?</svg>', page, re.S)
    assert scatter is not None
    pts = re.findall(r'<circle class="pt measured"([^>]*)>', scatter.group(0))
    # one point per leaderboard row and backend: l1 (2 seeds), fpgm, lamp, l1 at lr=0.001, l1 at 3x;
    # 2 backends
    assert len(pts) == 10
    fpgm = [p for p in pts if 'data-method="fpgm"' in p and 'data-backend="torch-cpu@b1"' in p]
    assert len(fpgm) == 1 and 'data-x="1.4"' in fpgm[0] and 'data-y="97"' in fpgm[0]
    assert len(re.findall(r'class="pt macs"', scatter.group(0))) == 5
    assert scatter.group(0).count('class="pareto"') == 2


def test_one_column_definition_for_every_renderer(
    study: tuple[Path, list[Path]], page: str
) -> None:
    rs = lb.rows(lb.find_records(study[0]))
    board = lb.leaderboard(rs)
    heads = [c.head for c in lb.board_columns(board)]
    assert (
        heads[:3] == ["rank", "method", "n"]
        and "measured x torch-cpu@b1" in heads
        and heads[-1] == "parity"
    )
    md_head = next(line for line in lb.markdown(rs).splitlines() if line.startswith("| rank"))
    assert md_head == "| " + " | ".join(heads) + " |"
    assert [c.header for c in lb.render(rs, "table")[0].columns] == heads
    html_heads = re.findall(r'<th scope="col" data-col="[^"]+"[^>]*>([^<]+)</th>', page)
    assert html_heads[: len(heads)] == heads
    # a regularizer column appears once some row has one
    entries = [dataclasses.replace(e, regularizer="BNScale") for _, g in board for e in g]
    assert [c.head for c in columns.leaderboard_columns(entries, [])][2] == "regularizer"


def test_pareto_front_and_ticks() -> None:
    assert svg.pareto([(1.0, 90.0), (1.5, 92.0), (2.0, 91.0), (1.2, 89.0), (2.0, 85.0)]) == [
        (1.5, 92.0),
        (2.0, 91.0),
    ]
    assert svg.ticks(0.8, 2.1) == [1.0, 1.5, 2.0]
    assert svg.ticks(90, 100) == [90, 92, 94, 96, 98, 100]


def test_cli_writes_the_page_atomically_and_reads_several_folders(
    pbkit, study: tuple[Path, list[Path]], pruned_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site" / "report.html"
    r = pbkit("report", study[0], pruned_run, "--format", "html", "-o", out)
    assert r.code == 0, r.err
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert str(pruned_run / "record.json") in text  # the second folder's record is in too
    assert not list(out.parent.glob(".*.tmp"))
    md = tmp_path / "board.md"
    assert (
        pbkit("report", study[0], "--format", "md", "-o", md).code == 0
        and md.read_text().count("### ") >= 2
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "table", "-o", "x.txt"], "-o writes md, csv, json or html"),
        (["--format", "pdf"], "Invalid value for '--format'"),
        (["no/such/folder", "--format", "html"], "folder 'no/such/folder' not found"),
    ],
)
def test_cli_errors_are_one_line(
    pbkit, study: tuple[Path, list[Path]], args: list[str], message: str
) -> None:
    r = pbkit("report", *([] if args[0] == "no/such/folder" else [study[0]]), *args)
    assert r.code != 0 and message in r.err and "Traceback" not in r.err


def test_two_machines_side_by_side(study: tuple[Path, list[Path]], tmp_path: Path) -> None:
    src = study[0] / "runs" / "fpgm-s0" / "record.json"
    data = json.loads(src.read_text())
    gpu = {
        "name": "NVIDIA H100 80GB HBM3",
        "driver_version": "580.65",
        "max_sm_clock_mhz": 1980,
        "power_limit_w": 700.0,
    }
    data["stages"]["bench"]["env"] = {**data["stages"]["bench"]["env"], "gpus": [gpu]}
    for p in data["latency"]:
        if p["variant"] == "pruned" and p["backend"] == "torch-cpu":
            p["speedup_ci"] = [1.80, 1.90]  # apart from this CPU's [1.35, 1.45]
            p["speedup_vs_dense"] = 1.85
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "record.json").write_text(json.dumps(data))
    text = html.page(
        lb.find_records(study[0] / "runs" / "fpgm-s0", tmp_path / "gpu"), ["cpu", "gpu"]
    )
    machines = text[
        text.index('<section id="machines">') : (
            text.index('<section id="recipes">')
            if '<section id="recipes">' in text
            else text.index('<section id="runs">')
        )
    ]
    assert "<th>NVIDIA H100 80GB HBM3</th>" in machines and "machines differ?" in machines
    assert "yes (intervals apart)" in machines  # torch-cpu: [1.35, 1.45] against [1.80, 1.90]
    assert '<th scope="row">driver</th><td>-</td><td>580.65</td>' in machines.replace("\n", "")
    assert machines.count('class="pt"') == 4  # the dot plot: 2 backends x 2 machines
