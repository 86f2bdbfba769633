"""The canary (``make canary``): pbkit's YOLO and zoo smoke tests against the newest ultralytics and
torch-pruning on the registry (not the lock), saying which upstream release breaks what.

Nothing in ``.venv/`` or the lock files changes. Under ``build/canary/`` (thrown away and made again
on each run) it makes a venv whose interpreter sees ``.venv``'s packages (a ``.pth`` line, read
only), installs each newest release without dependencies into an overlay folder of its own, and
runs the smoke tests three ways: with the newest ultralytics alone, the newest torch-pruning alone,
and both. A test that fails with one package alone is that package's; one that fails only with
both is the pair's. A release equal to the lock's is not tried. Requirements the new releases
declare that the environment does not meet are listed too.

    .venv/bin/python benchmarks/canary.py [--tests EXPR ...] [--keep]

Exit status 0 whether or not something broke (the report says what); 2 if the canary itself could
not run (no registry, no venv)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "build" / "canary"
PACKAGES = ("ultralytics", "torch-pruning")
SMOKE = [
    "tests/test_yolo.py",
    "tests/test_yolo_families.py",
    "tests/test_repairs_needed.py",
    "tests/test_zoo.py",
]
# the smoke selection: fast cases (no 640 px, no training loops)
SMOKE_K = (
    "not slow and (listed or c2f_replacement or resolves or one_clear or split_blocks"
    " or raw_head_positions or (prunes_2x_protected and yolo11n) or ultralytics_runs_offline"
    " or test_repairs_needed or zoo)"
)


@dataclass(frozen=True)
class Trial:
    """One way the tests run: the packages taken at their newest release (the rest from the
    lock)."""

    name: str
    newest: tuple[str, ...]


@dataclass
class Outcome:
    """What one trial gave: the tests that passed, failed (with their first line), or did not
    run (the interpreter or collection failed: ``error``)."""

    passed: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def trials(locked: dict[str, str], newest: dict[str, str]) -> list[Trial]:
    """Each package newer than its lock alone, then all of those together (when more than one)."""
    new = tuple(p for p in PACKAGES if newest.get(p) and newest[p] != locked.get(p))
    out = [Trial(p, (p,)) for p in new]
    if len(new) > 1:
        out.append(Trial(" + ".join(new), new))
    return out


def attribute(outcomes: dict[Trial, Outcome]) -> dict[str, str]:
    """Each failing test and the upstream change that breaks it: a package whose trial alone fails
    it, else the combination that does."""
    blame: dict[str, str] = {}
    singles = [t for t in outcomes if len(t.newest) == 1]
    for t in singles:
        for test in outcomes[t].failed:
            blame[test] = t.name if test not in blame else f"{blame[test]} and {t.name}"
    for t, o in outcomes.items():
        if len(t.newest) > 1:
            for test in o.failed:
                blame.setdefault(test, f"only {t.name} together")
    return blame


def unmet(requires: Sequence[str], installed: Callable[[str], str | None]) -> list[str]:
    """Requirements (``Requires-Dist`` lines) that the environment does not meet: missing, or at a
    version outside the specifier. Extras' requirements are left out."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    out = []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = installed(req.name)
        if have is None:
            out.append(f"{req.name} (not installed)")
        elif req.specifier and Version(have) not in req.specifier:
            out.append(f"{req.name}{req.specifier} (have {have})")
    return out


def report(
    locked: dict[str, str],
    newest: dict[str, str],
    outcomes: dict[Trial, Outcome],
    missing: dict[str, list[str]],
) -> str:
    """The canary's findings in words."""
    lines = [
        "canary: "
        + ", ".join(f"{p} {newest.get(p, '?')} (lock {locked.get(p, '?')})" for p in PACKAGES)
    ]
    if not outcomes:
        lines.append("nothing newer than the lock on the registry: nothing to try")
        return "\n".join(lines)
    for p, reqs in missing.items():
        if reqs:
            lines.append(
                f"{p} {newest[p]} declares requirements the lock does not meet: " + ", ".join(reqs)
            )
    for t, o in outcomes.items():
        if o.error:
            lines.append(f"{t.name}: the tests did not run: {o.error}")
        else:
            lines.append(f"{t.name}: {len(o.passed)} passed, {len(o.failed)} failed")
    blame = attribute(outcomes)
    if blame:
        lines.append("breaks:")
        for test, who in sorted(blame.items()):
            why = next((o.failed[test] for o in outcomes.values() if test in o.failed), "")
            lines.append(f"  {test}: {who}: {why}")
    elif all(o.error is None for o in outcomes.values()):
        lines.append("nothing breaks")
    return "\n".join(lines)


# --- the real environment -------------------------------------------------------------------------


def _run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), text=True, capture_output=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def make_venv(root: Path) -> Path:
    """A venv under ``root`` whose interpreter also sees ``.venv``'s packages (read only)."""
    venv = root / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)])
    if r.returncode != 0:
        raise SystemExit(f"canary: could not make a venv: {r.stderr.strip()[-300:]}")
    py = venv / "bin" / "python"
    own = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    lock_site = sysconfig.get_paths()["purelib"]  # (this interpreter is .venv's)
    Path(own.stdout.strip(), "pbkit-canary-lock.pth").write_text(
        f"import site; site.addsitedir({lock_site!r})\n"
    )
    return py


def install_newest(py: Path, package: str, overlay: Path) -> tuple[str | None, list[str]]:
    """The newest release of ``package`` into ``overlay`` (no dependencies): its version and its
    declared requirements; (None, [why]) when the registry cannot be reached."""
    r = _run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--upgrade",
            "--target",
            str(overlay),
            package,
        ]
    )
    if r.returncode != 0:
        return None, [r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "pip failed"]
    import importlib.metadata as md

    dist = next(iter(md.distributions(path=[str(overlay)])), None)
    if dist is None:
        return None, ["installed nothing"]
    return dist.version, list(dist.requires or [])


def run_tests(
    py: Path, overlays: Sequence[Path], tests: Sequence[str], k: str, out: Path
) -> Outcome:
    env = {**os.environ, "PYTHONPATH": ":".join(str(o) for o in overlays)}
    cmd = [
        str(py),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rN",
        "-k",
        k,
        f"--junitxml={out}",
        *tests,
    ]
    r = _run(cmd, cwd=str(REPO), env=env)
    if not out.is_file():
        tail = (r.stdout + r.stderr).strip().splitlines()
        return Outcome(error=tail[-1] if tail else f"pytest exited {r.returncode}")
    return parse_junit(out.read_text())


def parse_junit(text: str) -> Outcome:
    o = Outcome()
    for case in ET.fromstring(text).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if case.find("skipped") is not None:
            continue
        if bad is not None:
            o.failed[name] = (
                (bad.get("message") or "").splitlines()[0][:200] if bad.get("message") else "failed"
            )
        else:
            o.passed.add(name)
    return o


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", nargs="*", default=SMOKE)
    ap.add_argument("-k", default=SMOKE_K)
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args(argv)
    import importlib.metadata as md

    locked = {p: md.version(p) for p in PACKAGES}
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    py = make_venv(args.root)
    newest: dict[str, str] = {}
    requires: dict[str, list[str]] = {}
    overlay = {p: args.root / f"overlay-{p}" for p in PACKAGES}
    for p in PACKAGES:
        v, reqs = install_newest(py, p, overlay[p])
        if v is None:
            print(f"canary: could not fetch {p} from the registry: {reqs[0]}")
            return 2
        newest[p], requires[p] = v, reqs

    def have(name: str) -> str | None:
        for p in overlay:  # (the overlays' own packages count as there)
            if name.replace("_", "-").lower() == p:
                return newest[p]
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    missing = {p: unmet(requires[p], have) for p in PACKAGES if newest[p] != locked[p]}
    outcomes: dict[Trial, Outcome] = {}
    for t in trials(locked, newest):
        print(f"canary: running the smoke tests with the newest {t.name}", flush=True)
        out = args.root / f"junit-{'-'.join(t.newest)}.xml"
        outcomes[t] = run_tests(py, [overlay[p] for p in t.newest], args.tests, args.k, out)
    text = report(locked, newest, outcomes, missing)
    print(text)
    (args.root / "report.json").write_text(
        json.dumps(
            {
                "locked": locked,
                "newest": newest,
                "missing": missing,
                "trials": {
                    t.name: {"passed": sorted(o.passed), "failed": o.failed, "error": o.error}
                    for t, o in outcomes.items()
                },
                "breaks": attribute(outcomes),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
