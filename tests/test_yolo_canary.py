"""The canary's own logic (benchmarks/canary.py) on a fake environment: which trials it plans,
how it blames a failing test on an upstream release, the requirements it finds unmet, the report,
and a whole run with the venv, the registry and pytest replaced (no network, nothing installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import canary

LOCK = {"ultralytics": "8.4.190", "torch-pruning": "1.6.1"}
NEW = {"ultralytics": "8.5.0", "torch-pruning": "1.7.0"}


def test_only_releases_newer_than_the_lock_are_tried() -> None:
    assert canary.trials(LOCK, LOCK) == []
    one = canary.trials(LOCK, {**LOCK, "ultralytics": "8.5.0"})
    assert [t.newest for t in one] == [("ultralytics",)]
    both = canary.trials(LOCK, NEW)
    assert [t.newest for t in both] == [
        ("ultralytics",),
        ("torch-pruning",),
        ("ultralytics", "torch-pruning"),
    ]


def test_a_failure_is_blamed_on_the_release_that_breaks_it_alone() -> None:
    ul, tp, pair = canary.trials(LOCK, NEW)
    outcomes = {
        ul: canary.Outcome(passed={"b", "c"}, failed={"a": "boom"}),
        tp: canary.Outcome(passed={"a", "c"}, failed={"b": "graph"}),
        pair: canary.Outcome(failed={"a": "boom", "b": "graph", "c": "both"}),
    }
    assert canary.attribute(outcomes) == {
        "a": "ultralytics",
        "b": "torch-pruning",
        "c": "only ultralytics + torch-pruning together",
    }
    text = canary.report(LOCK, NEW, outcomes, {"ultralytics": ["torch>=3 (have 2.13.0)"]})
    assert "ultralytics 8.5.0 (lock 8.4.190)" in text and "a: ultralytics: boom" in text
    assert "declares requirements the lock does not meet: torch>=3 (have 2.13.0)" in text


def test_unmet_requirements_are_listed_and_extras_left_out() -> None:
    have = {"numpy": "2.0.0", "torch": "2.13.0"}.get
    reqs = ["numpy>=1.23", "torch>=3.0", "polars>=1.0", 'pytest; extra == "dev"']
    assert canary.unmet(reqs, have) == ["torch>=3.0 (have 2.13.0)", "polars (not installed)"]


def test_junit_results_are_read_per_test() -> None:
    xml = (
        '<testsuites><testsuite><testcase classname="tests.test_yolo" name="test_a"/>'
        '<testcase classname="tests.test_yolo" name="test_b"><failure message="E  boom&#10;more"/>'
        '</testcase><testcase classname="tests.test_zoo" name="test_c"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    o = canary.parse_junit(xml)
    assert o.passed == {"test_yolo::test_a"} and o.failed == {"test_yolo::test_b": "E  boom"}


def test_a_whole_run_on_a_fake_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed: list[str] = []
    monkeypatch.setattr(canary, "make_venv", lambda root: root / "venv" / "bin" / "python")

    def fake_install(py: Path, package: str, overlay: Path) -> tuple[str | None, list[str]]:
        installed.append(package)
        return NEW[package], ["numpy>=1"]

    def fake_tests(py: Path, overlays: list[Path], tests: list[str], k: str, out: Path) -> object:
        names = {o.name for o in overlays}
        if "overlay-torch-pruning" in names:
            return canary.Outcome(passed={"x"}, failed={"test_yolo::test_prune": "IndexError"})
        return canary.Outcome(passed={"x", "test_yolo::test_prune"})

    monkeypatch.setattr(canary, "install_newest", fake_install)
    monkeypatch.setattr(canary, "run_tests", fake_tests)
    import importlib.metadata as md

    real = md.version
    monkeypatch.setattr(md, "version", lambda p: LOCK.get(p) or real(p))
    assert canary.main(["--root", str(tmp_path / "canary")]) == 0
    out = capsys.readouterr().out
    assert installed == ["ultralytics", "torch-pruning"]
    assert "test_yolo::test_prune: torch-pruning: IndexError" in out
    assert (tmp_path / "canary" / "report.json").is_file()
    assert not (Path(canary.REPO) / ".venv" / "pbkit-canary-lock.pth").exists()
