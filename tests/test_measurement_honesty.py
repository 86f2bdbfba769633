"""What a figure covers: a busy machine is seen (other processes' CPU share), machines of one kind
show their spread, and a stage is not redone for a key a later pbkit added at its default."""

from __future__ import annotations

import os

from pbkit.machine import cpustate

HZ = os.sysconf("SC_CLK_TCK")


def _times(user: float, idle: float, steal: float = 0.0) -> list[int]:
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    return [int(user * HZ), 0, 0, int(idle * HZ), 0, 0, 0, int(steal * HZ), 0, 0]


def test_others_share_is_the_busy_time_that_is_not_ours() -> None:
    a = {"_times": _times(0, 0), "_own": 0.0}
    # 10 s of machine time: 4 busy, of which 3 were ours; 6 idle -> others 1 s = 10%
    b = {"_times": _times(4, 6), "_own": 3.0}
    out = cpustate.between(a, b)
    assert out["others_share"] == 0.1 and out["busy"] is False
    c = {"_times": _times(8, 2), "_own": 3.0}  # others 5 s of 10
    out = cpustate.between(a, c)
    assert out["others_share"] == 0.5 and out["busy"] is True


def test_steal_is_not_counted_as_other_processes() -> None:
    a = {"_times": _times(0, 0), "_own": 0.0}
    b = {"_times": _times(3, 5, steal=2), "_own": 3.0}
    out = cpustate.between(a, b)
    assert out["others_share"] == 0.0 and out["steal_share"] == 0.2


def test_snapshots_without_own_times_say_nothing_of_others() -> None:
    out = cpustate.between({"_times": _times(0, 0)}, {"_times": _times(1, 1)})
    assert "others_share" not in out and "busy" not in out


def _row(host: str, speedup: float, utc: str = "2026-12-05T00:00:00Z"):  # type: ignore[no-untyped-def]
    from pbkit.report.machines import MachineRow

    return MachineRow(
        model="m", method="l1", scope="protected", target=2.0, macs_speedup=2.0,
        pruned_sha256="abc", backend="ort-cpu", precision="fp32", batch=1,
        machine="AMD EPYC x2", dense_ms=2.0, pruned_ms=2.0 / speedup, speedup=speedup,
        speedup_ci=[speedup - 0.02, speedup + 0.02], gpu_speedup=None, stable=True, quick=False,
        measured_utc=utc, run_id="r", record="r.json", host=host,
    )  # fmt: skip


def test_machines_of_one_kind_show_their_spread_as_a_finding() -> None:
    """Two VMs of one kind: each interval is narrow, the two speed-ups are 32% apart; the
    across-machines view says so instead of showing the newest as the kind's figure."""
    from pbkit.report import machines

    rows = [_row("vm-a", 1.49), _row("vm-b", 1.96, "2026-12-05T01:00:00Z")]
    text = machines.render_machines(rows, "md")
    assert isinstance(text, str)
    assert "2 machines of this kind: 1.49-1.96x (32% apart)" in text
    assert "not the spread between machines" in text
    one = machines.render_machines([_row("vm-a", 1.49)], "md")
    assert "machines of this kind" not in str(one)


def test_a_key_a_later_pbkit_added_at_its_default_does_not_redo_a_stage() -> None:
    from pbkit.stages.rundir import _same

    default = {"bench": {"backends": ["torch-cpu"], "engine_accuracy": "int8"}}
    old = {"bench": {"backends": ["torch-cpu"]}}
    assert _same(old, {"bench": {"backends": ["torch-cpu"], "engine_accuracy": "int8"}}, default)
    assert not _same(old, {"bench": {"backends": ["torch-cpu"], "engine_accuracy": "all"}}, default)
    assert not _same(old, {"bench": {"backends": ["ort-cpu"], "engine_accuracy": "int8"}}, default)
    assert not _same({"bench": {"backends": [], "gone": 1}}, {"bench": {"backends": []}}, default)


def test_points_measured_on_a_busy_machine_are_marked() -> None:
    from pbkit.core import record
    from pbkit.stages.bench import _mark_busy

    def point(device: str) -> record.LatencyPoint:
        return record.LatencyPoint.model_validate(
            dict(
                backend="b", device=device, variant="pruned", batch=1, precision="fp32",
                median_ms=1.0, mean_ms=1.0, min_ms=1.0, p90_ms=1.0, p95_ms=1.0, p99_ms=1.0,
                max_ms=1.0, std_ms=0.0, cov=0.0, n=10, first_call_ms=1.0, warmup_n=1,
                duration_s=1.0, throughput_ips=1.0, stable=True, quick=False,
            )
        )  # fmt: skip

    quiet = [point("cpu")]
    _mark_busy(quiet, {"others_share": 0.02, "busy": False})
    assert quiet[0].stable
    pts = [point("cpu"), point("cuda")]
    _mark_busy(pts, {"others_share": 0.45, "busy": True})
    assert not pts[0].stable and pts[1].stable
    assert pts[0].unstable_reasons == [
        "machine busy: other processes used 45% of the CPU time while measuring"
    ]


def test_one_pruning_measured_on_two_machines_is_two_leaderboard_rows(pruned_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same run benched on two hosts: two rows (one per machine), never two seeds of one."""
    import json

    from pbkit.core import record
    from pbkit.report.rows import rows

    data = json.loads((pruned_run / "record.json").read_text())
    found = []
    for host in ("vm-a", "vm-b"):
        d = json.loads(json.dumps(data))
        d["stages"]["bench"]["env"].setdefault("host", {})["hostname"] = host
        folder = tmp_path / host
        folder.mkdir()
        (folder / "record.json").write_text(json.dumps(d))
        found.append((folder / "record.json", record.read(folder)))
    got = rows(found)
    assert len(got) == 2 and got[0].entry_key != got[1].entry_key
    same = rows([found[0], (found[0][0], found[0][1])])
    assert same[0].entry_key == same[1].entry_key  # one machine: one entry, as before
