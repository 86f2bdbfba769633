"""Unstable latency points in the leaderboards and plots, and data-free groups ranked by their
measured speed-up (issue #37): a speed-up measured on an unstable point (pruned or dense) carries
a mark wherever it is shown, and is never separable from its neighbours."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pbkit.core import record
from pbkit.report import columns, html, leaderboard, plots, rank, rows, stats
from tests.conftest import REPO

# a data-free resnet18 run on two CPU backends (torch-cpu, ort-cpu), measured before intervals
SOURCE = REPO / "results/reference/cpu-2core/runs/resnet18_cifar-l2-protected-2x/record.json"


def _record(
    method: str,
    speedup: float,
    ci: list[float] | None = None,
    unstable: dict[str, list[str]] | None = None,
    seed: int = 0,
    accuracy: float | None = None,
) -> record.Record:
    """The reference record as ``method``: every point stable but those in ``unstable``
    ("dense"/"pruned" -> reasons, on ort-cpu), the ort-cpu speed-up ``speedup`` (95% interval
    ``ci``), the torch-cpu one 1.5 with no interval."""
    data: dict[str, Any] = json.loads(SOURCE.read_text())
    data["method"]["key"] = method
    data["run_id"] = f"{method}-{seed}"
    data["config"]["seed"] = seed
    # (what repeats of one grid point share: their seeds apart)
    data["identity"] = {"hash": f"{method}{seed}", "fields": {"method": method, "seed": seed}}
    if accuracy is not None:
        data["dataset"] = {
            "name": "digits",
            "image_size": 16,
            "num_classes": 10,
            "train_size": 1347,
            "test_size": 450,
        }
        data["accuracy"] = {"metric": "top1", "base": 97.0, "pruned": 10.0, "finetuned": accuracy}
    for p in data["latency"]:
        reasons = (unstable or {}).get(p["variant"]) if p["backend"] == "ort-cpu" else None
        p.update(stable=not reasons, unstable_reasons=list(reasons or []))
        if p["variant"] == "pruned":
            p["speedup_vs_dense"] = speedup if p["backend"] == "ort-cpu" else 1.5
            p["speedup_ci"] = ci if p["backend"] == "ort-cpu" else None
    return record.validate(data)


def _rows(*recs: record.Record) -> list[rows.Row]:
    return rows.rows([(Path(f"/runs/{r.run_id}/record.json"), r) for r in recs])


def _ranks(*recs: record.Record) -> list[tuple[str, str]]:
    board = rank.leaderboard(_rows(*recs))
    assert len(board) == 1
    return [(e.method, e.rank_label) for e in board[0][1]]


BUSY = "machine busy: other processes used 40% of the CPU time while measuring"


def test_a_row_names_each_unstable_point_with_its_reasons_once() -> None:
    r = _record(
        "l1",
        1.8,
        unstable={"dense": ["cov 12% > 5%", BUSY], "pruned": [BUSY, "cov 9% > 5%"]},
    )
    (row,) = _rows(r)
    # the reason both points share once, plain; each other one names its point
    assert row.unstable == {"ort-cpu@b1": ["dense: cov 12% > 5%", BUSY, "pruned: cov 9% > 5%"]}
    (stable,) = _rows(_record("l1", 1.8))
    assert stable.unstable == {}
    # seeds: the union of their reasons, each once
    seeds = stats.aggregate(
        _rows(
            _record("l1", 1.8, unstable={"pruned": ["cov 9% > 5%"]}, seed=0),
            _record("l1", 1.7, unstable={"pruned": ["cov 9% > 5%", BUSY]}, seed=1),
            _record("l1", 1.9, seed=2),
        )
    )
    assert [(e.n, e.unstable) for e in seeds] == [
        (3, {"ort-cpu@b1": ["pruned: cov 9% > 5%", f"pruned: {BUSY}"]})
    ]


def test_json_writes_unstable_only_where_a_point_is() -> None:
    (stable,) = stats.aggregate(_rows(_record("l1", 1.8)))
    assert "unstable" not in stable.public()
    (shaky,) = stats.aggregate(_rows(_record("l1", 1.8, unstable={"dense": ["cov 12% > 5%"]})))
    assert shaky.public()["unstable"] == {"ort-cpu@b1": ["dense: cov 12% > 5%"]}
    out = json.loads(
        str(leaderboard.render(_rows(_record("l1", 1.8, unstable={"pruned": [BUSY]})), "json"))
    )
    assert out[0]["rows"][0]["unstable"] == {"ort-cpu@b1": [f"pruned: {BUSY}"]}


def test_csv_has_the_reasons_in_columns_after_the_older_ones() -> None:
    import csv
    import io

    text = str(leaderboard.render(_rows(_record("l1", 1.8, unstable={"pruned": [BUSY]})), "csv"))
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["unstable:ort-cpu@b1"] == f"pruned: {BUSY}" and row["unstable:torch-cpu@b1"] == ""
    head = text.splitlines()[0].split(",")
    assert head.index("record") < head.index("unstable:ort-cpu@b1")  # older columns keep places


def test_markdown_and_terminal_cells_carry_the_mark_and_the_table_says_what_it_means() -> None:
    rs = _rows(
        _record("l1", 1.8, ci=[1.75, 1.85], unstable={"pruned": [BUSY]}),
        _record("fpgm", 1.02, ci=[0.98, 1.06]),
    )
    md = leaderboard.markdown(rs)
    assert "| 1.80 [1.75, 1.85] (unstable) |" in md
    assert "| 1.02 [0.98, 1.06] ~1 |" in md  # the ~1 mark stays, and a stable cell has none
    assert "1.50 (unstable)" not in md  # torch-cpu was stable
    assert "(unstable): the pruned or the dense latency point was measured unstable" in md
    assert "ranked by its measured speed-up" in md
    from rich.console import Console

    console = Console(record=True, width=400)
    for t in leaderboard.render(rs, "table"):
        console.print(t)
    text = console.export_text()
    assert "1.80 [1.75, 1.85] (unstable)" in text and "(unstable): the pruned" in text
    # no unstable point: no footnote
    assert "(unstable)" not in leaderboard.markdown(_rows(_record("l1", 1.8)))
    # the ~1 and the unstable marks together
    (e,) = stats.aggregate(_rows(_record("l1", 1.01, [0.97, 1.05], {"dense": ["cov 12% > 5%"]})))
    assert columns.measured_cell(e, "ort-cpu@b1") == "1.01 [0.97, 1.05] ~1 (unstable)"
    assert columns.measured_cell(e, "torch-cpu@b1") == "1.50"


def test_the_html_cell_is_marked_with_the_reasons_and_the_plot_draws_it_hollow(
    tmp_path: Path,
) -> None:
    recs = [
        _record("l1", 1.8, ci=[1.75, 1.85], unstable={"pruned": [BUSY]}),
        _record("fpgm", 1.3, ci=[1.25, 1.35]),
    ]
    found = []
    for r in recs:
        path = tmp_path / r.run_id / "record.json"
        path.parent.mkdir()
        path.write_text(r.model_dump_json())
        found.append((path, r))
    page = html.page(found, [str(tmp_path)])
    cells = re.findall(r'<td data-col="measured:ort-cpu@b1"[^>]*>[^<]*</td>', page)
    assert len(cells) == 2
    shaky = next(c for c in cells if "1.80" in c)
    steady = next(c for c in cells if "1.30" in c)
    assert 'class="right unstable"' in shaky and 'data-unstable="1"' in shaky
    assert (
        f'title="unstable: pruned: {BUSY}"' in shaky and ">1.80 [1.75, 1.85] (unstable)<" in shaky
    )
    assert "unstable" not in steady and "title=" not in steady
    assert "<code>(unstable)</code>" in page  # the legend above the tables
    # the SVG plot: the unstable point hollow (white inside, its colour as the stroke), named in
    # the legend and its hover text
    circles = re.findall(r'<circle class="pt measured"[^>]*>', page)
    hollow = [c for c in circles if 'data-unstable="1"' in c]
    assert len(hollow) == 1 and 'data-method="l1"' in hollow[0]
    assert 'data-backend="ort-cpu@b1"' in hollow[0] and 'fill="#fff"' in hollow[0]
    assert all('fill="#fff"' not in c for c in circles if c not in hollow)
    assert "hollow: unstable (reasons in the record)" in page
    assert f"unstable: pruned: {BUSY}" in page.split("<svg", 1)[1]


def test_matplotlib_plots_draw_unstable_points_hollow() -> None:
    import matplotlib.pyplot as plt

    rs = _rows(
        _record("l1", 1.8, ci=[1.75, 1.85], unstable={"dense": ["cov 12% > 5%"]}),
        _record("fpgm", 1.3, ci=[1.25, 1.35]),
    )
    fig = plots.figure(rs)
    try:
        ax = fig.axes[0]
        marks: dict[tuple[float, str], list[Any]] = {}
        for line in ax.lines:
            if line.get_marker() == "o":
                for y in line.get_ydata():
                    key = (round(float(y), 3), str(line.get_color()))
                    marks.setdefault(key, []).append(line.get_markerfacecolor())
        ort, torch = "C0", "C1"  # backends sorted: ort-cpu@b1, torch-cpu@b1
        assert marks[(1.8, ort)] == ["none"]  # unstable: hollow
        assert marks[(1.3, ort)] == [ort]
        assert marks[(1.5, torch)] == [torch, torch]  # torch-cpu: stable
        assert "hollow: unstable (reasons in the record)" in [
            t.get_text() for t in ax.get_legend().get_texts()
        ]
    finally:
        plt.close(fig)
    stable = plots.figure(_rows(_record("fpgm", 1.3)))
    try:
        legend = [t.get_text() for t in stable.axes[0].get_legend().get_texts()]
        assert not any("unstable" in t for t in legend)
    finally:
        plt.close(stable)


def test_across_machines_plot_draws_unstable_bars_hollow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.axes import Axes

    from pbkit.report import machines

    recs = [
        _record("l1", 1.8, unstable={"pruned": [BUSY]}),
        _record("fpgm", 1.3),
    ]
    mrows = machines.machine_rows([(Path(f"/r/{r.run_id}"), r) for r in recs])
    drawn: list[Any] = []
    original = Axes.bar

    def spy(self: Axes, *args: Any, **kwargs: Any) -> Any:
        drawn.append(kwargs.get("color"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", spy)
    plots.plot_machines(mrows, tmp_path / "m.png")
    # points sorted: fpgm ort-cpu, fpgm torch-cpu, l1 ort-cpu (unstable), l1 torch-cpu
    assert drawn == [["C0", "C0", "none", "C0"]]
    assert (tmp_path / "m.png").stat().st_size > 0


def test_a_data_free_group_is_ranked_by_speedup_with_overlapping_intervals_not_separable() -> None:
    # intervals apart: 1, 2
    assert _ranks(_record("l1", 1.8, ci=[1.75, 1.85]), _record("fpgm", 1.3, ci=[1.25, 1.35])) == [
        ("l1", "1"),
        ("fpgm", "2"),
    ]
    # overlapping: =1
    assert _ranks(_record("fpgm", 1.3, ci=[1.2, 1.5]), _record("l1", 1.4, ci=[1.35, 1.45])) == [
        ("l1", "1"),
        ("fpgm", "=1"),
    ]
    # an unstable point is never separable, even with its interval apart; the rows beyond it are
    assert _ranks(
        _record("l1", 1.8, ci=[1.75, 1.85]),
        _record("fpgm", 1.3, ci=[1.25, 1.35], unstable={"dense": ["cov 12% > 5%"]}),
        _record("lamp", 1.1, ci=[1.08, 1.12]),
    ) == [("l1", "1"), ("fpgm", "=1"), ("lamp", "=2")]
    board = rank.leaderboard(
        _rows(
            _record("l1", 1.8, ci=[1.75, 1.85], unstable={"pruned": [BUSY]}),
            _record("fpgm", 1.3, ci=[1.25, 1.35]),
        )
    )
    top, second = board[0][1]
    assert (top.rank, second.rank, second.separable_from_above) == (1, 2, False)
    assert second.rank_label == "=1"
    # an interval that holds 1.0 ranks as 1.0: below a 1.05 one whose interval is apart from it
    assert _ranks(_record("fpgm", 1.06, ci=[0.99, 1.12]), _record("l1", 1.05, ci=[1.04, 1.06])) == [
        ("l1", "1"),
        ("fpgm", "=1"),
    ]


def test_seeds_of_a_data_free_group_rank_by_mean_plus_minus_std() -> None:
    def seeds(method: str, *ups: float) -> list[record.Record]:
        return [_record(method, u, seed=i) for i, u in enumerate(ups)]

    apart = rank.leaderboard(_rows(*seeds("l1", 1.8, 1.82, 1.78), *seeds("fpgm", 1.3, 1.32)))
    assert [(e.method, e.n, e.rank_label) for e in apart[0][1]] == [
        ("l1", 3, "1"),
        ("fpgm", 2, "2"),
    ]
    close = rank.leaderboard(_rows(*seeds("l1", 1.8, 1.6), *seeds("fpgm", 1.65, 1.6)))
    assert [(e.method, e.rank_label) for e in close[0][1]] == [("l1", "1"), ("fpgm", "=1")]


def test_groups_with_accuracy_are_ranked_by_it_as_before() -> None:
    # the faster, apart, stable row is below: accuracy ranks, whatever the speed-ups
    ranks = _ranks(
        _record("l1", 1.8, ci=[1.75, 1.85], accuracy=95.0),
        _record("fpgm", 1.3, ci=[1.25, 1.35], accuracy=96.0, unstable={"pruned": [BUSY]}),
    )
    assert ranks == [("fpgm", "1"), ("l1", "2")]
