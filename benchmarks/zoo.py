"""The model zoo: does every torchvision and timm classifier prune, or say why in one line?

Each model runs in its own process, as a user would run it (random weights, the model's own input
size): ``pbkit prune --method l2 --scope protected --speedup 1.5`` under the kit's memory and
graph-time budgets, then ``pbkit export`` (ONNX with parity). A wall-clock limit per model kills
what hangs anyway. Per model: pass / fail with the one-line reason, wall time, peak resident
memory of the process, MACs and params before and after.

    python benchmarks/zoo.py [--source tv timm] [--names tv:resnet18 ...] [--limit N]
                             [--timm-sample 120] [--max-memory-gib 8] [--timeout-s 600]
                             [--max-graph-s S] [--iterative-steps N]
                             [--out results/perf] [--tag TAG]

Writes zoo-<tag>.json and .md under --out (tag: cpu-<cores>core unless given), rewriting them
after every model, so a zoo stopped halfway keeps what it measured. Each row records the settings
it ran with and the commit of the code it was measured with (rows of one table may come from
several: ``--update`` re-tries some names and keeps the rest). The markdown is written from the json
alone (:func:`render`), nothing in it by hand;

    python benchmarks/zoo.py --backfill-commits [results/perf/zoo-<tag>.json ...]

runs no model: it gives the rows from before rows recorded their commit the commit that first
recorded them (from git history) and writes each table's markdown again from its json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbkit.core.fileio import atomic_write_json, atomic_write_text


def torchvision_names() -> list[str]:
    """Every torchvision classifier, smallest first (by parameter count on its weights' card), so a
    zoo cut short has tried the most models."""
    import torchvision
    from torchvision.models import get_model_weights

    def size(name: str) -> int:
        return int(next(iter(get_model_weights(name))).meta.get("num_params") or 0)

    return [
        f"tv:{n}"
        for n in sorted(torchvision.models.list_models(module=torchvision.models), key=size)
    ]


_SIZE_WORDS = {
    "atto": 0,
    "femto": 1,
    "pico": 2,
    "nano": 3,
    "micro": 4,
    "xxs": 4,
    "xxsmall": 4,
    "tiny": 5,
    "xs": 5,
    "xsmall": 5,
    "t": 5,
    "small": 6,
    "s": 6,
    "medium": 7,
    "m": 7,
    "base": 8,
    "b": 8,
    "large": 9,
    "l": 9,
    "xlarge": 10,
    "huge": 11,
    "h": 11,
    "giant": 12,
    "g": 12,
}


def _smallness(name: str) -> tuple[int, int, int]:
    """A sort key that puts a family's smallest variant first, from the name alone (building every
    timm model to count its parameters would take an hour): its size word (atto ... giant), then its
    first number after the family word (resnet10t before resnet50), then its length."""
    tokens = re.split(r"[_.]", name)
    words = [_SIZE_WORDS[t] for t in tokens if t in _SIZE_WORDS]
    numbers = [int(x) for x in re.findall(r"\d+", name)]
    return (min(words) if words else 7, numbers[0] if numbers else 0, len(name))


def timm_sample(n: int) -> list[str]:
    """One name per timm family (the name's leading letters: resnet50d is a resnet), its smallest
    variant (:func:`_smallness`), families in alphabetical order, up to ``n``: CNNs, ViTs,
    hierarchical transformers, hybrids and mobile nets alike (timm's ``test_*`` toys left out)."""
    import timm

    families: dict[str, list[str]] = {}
    for name in timm.list_models():
        family = re.match(r"[a-z]+", name)
        if family and family.group(0) != "test":
            families.setdefault(family.group(0), []).append(name)
    return [f"timm:{min(names, key=_smallness)}" for _, names in sorted(families.items())][:n]


def _peak_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        return int(
            p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        )
    except psutil.Error:
        return 0


def _run(cmd: list[str], timeout_s: float) -> tuple[int, str, str, int, float]:
    """Run a command; (exit code, stdout, stderr, peak RSS bytes, seconds). Killed past the
    limit."""
    t0 = time.perf_counter()
    peak = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:
            peak = max(peak, _peak_rss(proc.pid))
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                out, err = proc.communicate()
                return (
                    -9,
                    out,
                    err + f"\nerror: killed past the zoo's wall-clock limit of {timeout_s:g} s",
                    peak,
                    time.perf_counter() - t0,
                )
            time.sleep(0.2)
        out, err = proc.communicate()
    return proc.returncode, out, err, peak, time.perf_counter() - t0


def _reason(err: str) -> str:
    lines = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error:")]
    return lines[-1] if lines else (err.strip().splitlines() or ["no output"])[-1][:300]


def code_version() -> str | None:
    """The commit of the pbkit the zoo's processes import (``-dirty`` with uncommitted changes);
    None outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def try_model(
    name: str,
    work: Path,
    max_memory_gib: float,
    timeout_s: float,
    max_graph_s: float | None = None,
    iterative_steps: int | None = None,
) -> dict[str, Any]:
    pbkit = str(Path(sys.executable).with_name("pbkit"))
    row: dict[str, Any] = {
        "model": name,
        "code": code_version(),
    }  # (rows of one table may come from several)
    code, out, err, peak, seconds = _run(
        [
            pbkit,
            "prune",
            "--model",
            name,
            "--method",
            "l2",
            "--scope",
            "protected",
            "--speedup",
            "1.5",
            "--out",
            str(work),
            "--json",
            "--set",
            f"prune.max_memory_gib={max_memory_gib}",
            *(["--set", f"prune.max_graph_s={max_graph_s:g}"] if max_graph_s else []),
            *(["--set", f"prune.iterative_steps={iterative_steps}"] if iterative_steps else []),
        ],
        timeout_s,
    )
    row.update(
        prune_s=round(seconds, 1),
        peak_rss_gib=round(peak / 2**30, 2),
        iterative_steps=iterative_steps,
        max_graph_s=max_graph_s,
        max_memory_gib=max_memory_gib,
        timeout_s=timeout_s,
    )
    if code != 0:
        return {**row, "status": "fail", "stage": "prune", "reason": _reason(err)}
    result = json.loads(out)
    rec = result.get("record", result)
    counts = rec.get("counts", {})
    row.update(
        macs_base=counts.get("macs_base"),
        macs_pruned=counts.get("macs_pruned"),
        params_base=counts.get("params_base"),
        params_pruned=counts.get("params_pruned"),
        speedup=(rec.get("method") or {}).get("achieved_speedup"),
        held_fixed=len((rec.get("method") or {}).get("held_fixed") or []),
    )
    run_dir = result.get("run_dir") or str(work / rec["run_id"])
    code, out, err, peak2, seconds = _run([pbkit, "export", run_dir], timeout_s)
    row.update(export_s=round(seconds, 1), peak_rss_gib=round(max(peak, peak2) / 2**30, 2))
    if code != 0:
        return {**row, "status": "fail", "stage": "export", "reason": _reason(err)}
    return {**row, "status": "pass", "stage": None, "reason": None}


def _or_default(value: float | None) -> str:
    return f"{value:g}" if value else "default"


# What a table's json holds: the settings the zoo ran with (``not_tried``: the names a stopped zoo
# had not reached), and per row the result, the settings it ran with, and the code it was measured
# with: ``code`` (the commit, ``-dirty`` with uncommitted changes), or for a row from before rows
# recorded it, ``recorded_in`` (the commit that first recorded its result; --backfill-commits).
SETTINGS = (
    "method",
    "scope",
    "speedup",
    "max_memory_gib",
    "timeout_s",
    "max_graph_s",
    "iterative_steps",
    "not_tried",
)
ROW_SETTINGS = ("max_memory_gib", "max_graph_s", "iterative_steps", "timeout_s")
MEASURED = (  # what a row's result is: a row whose fields all match is the same measurement
    "status",
    "stage",
    "prune_s",
    "export_s",
    "peak_rss_gib",
    "speedup",
    "macs_base",
    "macs_pruned",
    "params_base",
    "params_pruned",
)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_source.setdefault(r["model"].split(":")[0] if ":" in r["model"] else "pbkit", []).append(
            r
        )
    return {
        src: {"tried": len(rs), "passed": sum(r["status"] == "pass" for r in rs)}
        for src, rs in by_source.items()
    }


def _commit(r: dict[str, Any]) -> str:
    """The code a row was measured with, as its table shows it."""
    if r.get("code"):
        return str(r["code"])
    if r.get("recorded_in"):
        return f"before {r['recorded_in'][:7]}"
    return "unknown"


def _setting(key: str, value: Any) -> str:
    if key == "timeout_s":
        return f"a wall-clock limit of {value:g} s"
    return f"prune.{key}={_or_default(value)}"


def _notes(r: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """What a row's last column says besides its reason: the settings it ran with where they are
    not the table's, and a stage that ran past the table's limit without being stopped (a row
    from before rows recorded their limit: it ran under a larger one)."""
    notes = [_setting(k, r[k]) for k in ROW_SETTINGS if k in r and r[k] != settings.get(k)]
    limit = settings.get("timeout_s")
    if "timeout_s" not in r and limit and "wall-clock limit" not in (r.get("reason") or ""):
        for stage in ("prune", "export"):
            took = r.get(f"{stage}_s")
            if took is not None and took > limit:
                notes.append(
                    f"{stage} ran {took:g} s, past this table's {limit:g} s limit: it ran under a"
                    " larger limit, not recorded"
                )
    return notes


def render(doc: dict[str, Any], tag: str) -> str:
    """The markdown table of a zoo json (``settings``, ``rows``): every word of it from the json."""
    settings, rows = doc["settings"], doc["rows"]
    summary = summarize(rows)
    passed = sum(r["status"] == "pass" for r in rows)
    lines = [
        f"# Model zoo: {settings['method']}, {settings['scope']}, {settings['speedup']:g}x, ONNX"
        f" export with parity ({tag})",
        "",
        (
            "Each model in its own process with random weights at its own input size, under the"
            f" kit's budgets (prune.max_memory_gib={settings['max_memory_gib']},"
            f" prune.max_graph_s={_or_default(settings.get('max_graph_s'))},"
            f" prune.iterative_steps={_or_default(settings.get('iterative_steps'))}) and a"
            f" wall-clock limit of {settings['timeout_s']:g} s."
        ),
        "",
        "| source | tried | passed |",
        "|---|---|---|",
    ]
    lines += [
        f"| {src} | {s['tried']} | {s['passed']} ({s['passed'] / max(s['tried'], 1):.0%}) |"
        for src, s in summary.items()
    ]
    lines += ["", f"{passed}/{len(rows)} pass."]
    if settings.get("not_tried"):
        lines += [
            "",
            f"Not tried (the zoo was stopped before them): {', '.join(settings['not_tried'])}.",
        ]
    coded = [r for r in rows if r.get("code")]
    backfilled = [r for r in rows if not r.get("code") and r.get("recorded_in")]
    unknown = len(rows) - len(coded) - len(backfilled)
    versions = len({_commit(r) for r in rows})
    said = [
        f"{len(coded)} name the commit (`-dirty`: with changes not yet committed on top of it)"
        if coded
        else "",
        f"{len(backfilled)} are from before the zoo recorded it: they name the commit that first"
        " recorded their result, found in git history (`before <commit>`: measured with the code"
        " as it stood before that commit)"
        if backfilled
        else "",
        f"{unknown} do not say" if unknown else "",
    ]
    lines += [
        "",
        (
            f"Column `commit`: the code each row was measured with ({versions} version"
            f"{'s' if versions != 1 else ''} in this table). Of the {len(rows)} rows,"
            f" {'; '.join(s for s in said if s)}. A row measured under other settings than the"
            " table's says so in its last column. Wall times are of one run per model, and the zoo"
            " does not keep the machine to itself: work beside it lengthens them."
        ),
        "",
        "| model | result | MACs x | params left | prune s | export s | peak GiB | commit"
        " | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = f"{r['speedup']:.2f}" if r.get("speedup") else "-"
        left = f"{r['params_pruned'] / r['params_base']:.0%}" if r.get("params_base") else "-"
        why = r["reason"] or (
            f"{r['held_fixed']} attention blocks held fixed" if r.get("held_fixed") else ""
        )
        why = "; ".join(s for s in [why, *_notes(r, settings)] if s).replace("|", "/")
        lines.append(
            f"| {r['model']} | {r['status']}{' (' + r['stage'] + ')' if r['stage'] else ''} | {sp}"
            f" | {left} | {r.get('prune_s', '-')} | {r.get('export_s', '-')} |"
            f" {r.get('peak_rss_gib', '-')} | {_commit(r)} | {why} |"
        )
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], out: Path, tag: str, settings: dict[str, Any]) -> None:
    doc = {"settings": settings, "summary": summarize(rows), "rows": rows}
    atomic_write_json(out / f"zoo-{tag}.json", doc)
    atomic_write_text(out / f"zoo-{tag}.md", render(doc, tag))


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=cwd
    ).stdout


def _measured(r: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(r.get(k) for k in MEASURED)


def first_recorded(path: Path) -> dict[str, str]:
    """For each row of the zoo json ``path`` (as it is on disk), the commit that first recorded its
    result: walking the file's git history back from the newest commit, the oldest commit of the
    unbroken run of commits in which the row has the same measured fields (:data:`MEASURED`).
    Rows not in the newest commit's file, or measured differently there, have none."""
    path = path.resolve()
    top = Path(_git(path.parent, "rev-parse", "--show-toplevel").strip())
    rel = path.relative_to(top).as_posix()
    current = {r["model"]: _measured(r) for r in json.loads(path.read_text())["rows"]}
    first: dict[str, str] = {}
    open_ = set(current)  # rows whose run of equal commits has not ended
    for commit in _git(top, "log", "--format=%H", "--", rel).split():
        try:
            rows = {r["model"]: r for r in json.loads(_git(top, "show", f"{commit}:{rel}"))["rows"]}
        except (subprocess.CalledProcessError, ValueError, KeyError):
            rows = {}
        for m in list(open_):
            r = rows.get(m)
            if r is None or _measured(r) != current[m]:
                open_.discard(m)
            else:
                first[m] = commit
        if not open_:
            break
    return first


def backfill_commits(path: Path) -> tuple[int, int, list[str]]:
    """Rows of the zoo json ``path`` without their commit get ``recorded_in`` from git history
    (:func:`first_recorded`); settings no code writes are dropped; the json and its markdown table
    are written again. Returns (rows filled, rows left without, the settings dropped)."""
    doc = json.loads(path.read_text())
    first = first_recorded(path)
    filled = left = 0
    for r in doc["rows"]:
        if r.get("code") or r.get("recorded_in"):
            continue
        if r["model"] in first:
            r["recorded_in"] = first[r["model"]]
            filled += 1
        else:
            left += 1
    dropped = [k for k in doc["settings"] if k not in SETTINGS]
    settings = {k: v for k, v in doc["settings"].items() if k in SETTINGS}
    write(doc["rows"], path.parent, path.name.removeprefix("zoo-").removesuffix(".json"), settings)
    return filled, left, dropped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", nargs="+", default=["tv", "timm"], choices=["tv", "timm"])
    ap.add_argument("--names", nargs="+", default=None, help="these models only")
    ap.add_argument("--limit", type=int, default=None, help="the first N names only")
    ap.add_argument(
        "--timm-sample",
        type=int,
        default=200,
        help="at most this many timm families (all 160 by default)",
    )
    ap.add_argument("--max-memory-gib", type=float, default=8.0)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument(
        "--iterative-steps",
        type=int,
        default=None,
        help=(
            "prune.iterative_steps for each model (the kit's default unless given): fewer, larger"
            " steps reach the target sooner where most of a model is held fixed"
        ),
    )
    ap.add_argument(
        "--max-graph-s",
        type=float,
        default=None,
        help=(
            "prune.max_graph_s for each model (the kit's default unless given): under a third of "
            "--timeout-s leaves room for the retry with attention blocks held fixed"
        ),
    )
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    ap.add_argument("--tag", default=f"cpu-{os.cpu_count()}core")
    ap.add_argument(
        "--update",
        action="store_true",
        help=(
            "keep the rows of zoo-<tag>.json for models not tried this time (re-try a few, keep the"
            " rest)"
        ),
    )
    ap.add_argument(
        "--skip-done",
        action="store_true",
        help="with --update: do not re-try the models zoo-<tag>.json already has",
    )
    ap.add_argument(
        "--backfill-commits",
        nargs="*",
        type=Path,
        default=None,
        metavar="JSON",
        help=(
            "run no model: give the rows of these zoo tables (default: every zoo-*.json under"
            " --out) that do not name their commit the commit that first recorded them (from git"
            " history), and write each table's markdown again from its json"
        ),
    )
    args = ap.parse_args()
    if args.backfill_commits is not None:
        for path in args.backfill_commits or sorted(args.out.glob("zoo-*.json")):
            filled, left, dropped = backfill_commits(path)
            print(
                f"{path}: {filled} row(s) given the commit that first recorded them"
                + (f", {left} left without (not in git history as they are)" if left else "")
                + (f"; dropped settings no code writes: {', '.join(dropped)}" if dropped else ""),
                file=sys.stderr,
            )
        return 0
    names = args.names or [
        *(torchvision_names() if "tv" in args.source else []),
        *(timm_sample(args.timm_sample) if "timm" in args.source else []),
    ]
    names = names[: args.limit] if args.limit else names
    settings = {
        "method": "l2",
        "scope": "protected",
        "speedup": 1.5,
        "max_memory_gib": args.max_memory_gib,
        "timeout_s": args.timeout_s,
        "max_graph_s": args.max_graph_s,
        "iterative_steps": args.iterative_steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    kept: list[dict[str, Any]] = []
    if args.update and (args.out / f"zoo-{args.tag}.json").exists():
        kept = json.loads((args.out / f"zoo-{args.tag}.json").read_text())["rows"]
        if args.skip_done:
            names = [n for n in names if n not in {r["model"] for r in kept}]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pbkit-zoo-") as tmp:
        for i, name in enumerate(names, 1):
            settings["not_tried"] = names[i:]  # what a zoo stopped after this model did not reach
            row = try_model(
                name,
                Path(tmp) / "runs",
                args.max_memory_gib,
                args.timeout_s,
                args.max_graph_s,
                args.iterative_steps,
            )
            rows.append(row)
            tried = {r["model"] for r in rows}
            write([r for r in kept if r["model"] not in tried] + rows, args.out, args.tag, settings)
            print(
                f"[{i}/{len(names)}] {name}: {row['status']}"
                + (
                    f" ({row['stage']}: {row['reason']})"
                    if row["reason"]
                    else f" {row.get('speedup', 0):.2f}x"
                )
                + f" {row.get('prune_s', 0) + row.get('export_s', 0):.0f} s,"
                f" {row['peak_rss_gib']} GiB",
                file=sys.stderr,
                flush=True,
            )
            for run in (Path(tmp) / "runs").glob(
                "*"
            ):  # model files of a finished entry are not kept
                subprocess.run(["rm", "-rf", str(run)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
