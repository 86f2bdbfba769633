"""The manual (README.md, docs/): generated parts are current, every example runs, the site builds.

- docs/cli.md is what docs/gen_cli.py renders from the click commands now;
- every figure and table docs/generate.py renders from committed records is what is committed;
- every fenced example in README.md and docs/*.md is exercised: ```python blocks run; `pbkit ...`
  lines run for real (in a temporary folder) unless the block is marked, right above its fence,
  with ``<!-- docs-test: parse-only (why) -->``: then click parses them (command and options
  resolved, nothing invoked) and the repository files they name must exist; `make ...` lines name
  targets the Makefile has; ```yaml blocks that name a committed file hold its content. A block
  marked ``<!-- docs-test: slow (why) -->`` runs under the slow marker; ``skip (why)`` runs nothing.
  Anything else in a shell block (docker, pipes into other tools) must be marked;
- the site builds with `mkdocs build --strict`, fetching nothing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SHELL = ("bash", "sh", "console", "shell")
MARKER = re.compile(r"<!--\s*docs-test:\s*(parse-only|slow|skip)\s*(\((?P<why>[^)]*)\))?\s*-->")
REPO_PATH = re.compile(
    r"^(configs|benchmarks|docker|requirements|results/reference|results/perf|tests|docs|pbkit)/"
)
IMAGE = re.compile(r"^ghcr\.io/[^/]+/pbkit(-cpu)?:")
CUT = {"|", ">", ">>", "<", "&&", "||", ";", "2>", "&>"}


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    mode: str  # run | parse-only | slow | skip
    why: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found: list[Block] = []
    for page in pages():
        lines = page.read_text(encoding="utf-8").split("\n")
        i = 0
        while i < len(lines):
            m = re.match(r"^\s*```(\w*)\s*$", lines[i])
            if not m:
                i += 1
                continue
            j = i + 1
            while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            mark = MARKER.search(prev)
            found.append(
                Block(
                    page,
                    i + 1,
                    m.group(1).lower(),
                    "\n".join(lines[i + 1 : j]),
                    mark.group(1) if mark else "run",
                    (mark.group("why") or "") if mark else "",
                )
            )
            i = j + 1
    return found


def commands(block: Block) -> list[list[str]]:
    """The command lines of a shell block, as tokens (comments dropped, `\\` lines joined; in a
    console block only the `$ ` lines), cut at the first pipe or redirection."""
    raw = block.body.split("\n")
    if block.lang == "console":
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    joined: list[str] = []
    for line in raw:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line.strip())
    out = []
    for line in joined:
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        cut = next((k for k, t in enumerate(tokens) if t in CUT), len(tokens))
        out.append(tokens[:cut])
    return out


ALL = blocks()
EXAMPLES = [b for b in ALL if b.lang in SHELL + ("python", "py", "yaml")]


def _param(b: Block) -> Any:
    marks = [pytest.mark.slow] if b.mode == "slow" else []
    return pytest.param(b, id=b.id, marks=marks)


# ------------------------------------------------------------------------------------ checks


def parse_pbkit(args: list[str]) -> None:
    """Resolve the command and its options as `pbkit` would, without invoking anything."""
    from pbkit.cli import cli, expand_greedy

    args = expand_greedy(list(args))
    try:
        ctx = cli.make_context("pbkit", args, resilient_parsing=False)
        cmd: click.Command = cli
        while isinstance(cmd, click.Group):
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            name, sub, rest = cmd.resolve_command(ctx, rest)
            assert sub is not None, f"no command {name!r}"
            ctx = sub.make_context(name or "", rest, parent=ctx, resilient_parsing=False)
            cmd = sub
    except click.exceptions.Exit as e:  # --help, --version
        assert e.exit_code == 0


def check_paths(tokens: list[str]) -> None:
    for tok in tokens:
        value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
        value = value.replace("/opt/pbkit/share/configs/", "configs/")
        if REPO_PATH.match(value) and not re.search(r"[<>*{}$]", value):
            assert (ROOT / value).exists(), f"{value} is named but not in the repository"


def make_target(args: list[str]) -> None:
    done = subprocess.run(
        ["make", "-n", "-f", "Makefile", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"make -n {' '.join(args)}: {done.stderr.strip()[-500:]}"


def run_pbkit(args: list[str]) -> None:
    from pbkit.cli import cli, expand_greedy

    rv = cli.main(args=expand_greedy(list(args)), prog_name="pbkit", standalone_mode=False)
    assert rv in (None, 0), f"pbkit {' '.join(args)} returned {rv}"


def run_python(body: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", body],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"the example failed:\n{done.stderr[-2000:]}"


def check_yaml(body: str) -> None:
    first = body.split("\n", 1)[0].strip()
    name = first[1:].strip() if first.startswith("#") else ""
    if not REPO_PATH.match(name):
        yaml.safe_load(body)
        return
    assert (ROOT / name).is_file(), f"{name} is named but not in the repository"

    def strip(d: Any) -> Any:  # keys a doc shows at their empty defaults
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if v not in (None, [], {})}
        return d

    shown = strip(yaml.safe_load(body))
    committed = strip(yaml.safe_load((ROOT / name).read_text(encoding="utf-8")))
    assert shown == committed, f"the block differs from {name}"


@pytest.mark.parametrize("block", [_param(b) for b in EXAMPLES])
def test_example(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.mode in ("parse-only", "skip"):
        assert block.why.strip(), f"{block.id}: say why it is {block.mode} (docs-test: ... (why))"
    if block.mode == "skip":
        pytest.skip(f"marked skip: {block.why}")
    if block.lang == "yaml":
        check_yaml(block.body)
        return
    if block.lang in ("python", "py"):
        assert block.mode != "parse-only", f"{block.id}: Python examples run (or are skipped)"
        run_python(block.body, tmp_path)
        return
    cmds = commands(block)
    assert cmds, f"{block.id}: no command in this block"
    monkeypatch.chdir(tmp_path)
    for tokens in cmds:
        head, args = tokens[0], tokens[1:]
        if head == "make":
            make_target(args)
        elif head == "pbkit":
            check_paths(args)
            if block.mode == "parse-only":
                parse_pbkit(args)
            else:
                run_pbkit(args)
        elif head == "docker" and block.mode == "parse-only":
            image = next((k for k, t in enumerate(args) if IMAGE.match(t)), None)
            assert image is not None, f"{block.id}: no pbkit image in {' '.join(tokens)}"
            check_paths(args[image + 1 :])
            parse_pbkit(args[image + 1 :])
        else:
            pytest.fail(f"{block.id}: {' '.join(tokens)!r} is neither run nor checked; mark it")


# ------------------------------------------------------------------------- generated content


def test_cli_reference_is_current() -> None:
    text = _module("gen_cli").render()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == text, (
        "docs/cli.md is stale: python docs/gen_cli.py"
    )


def test_generated_figures_and_tables_are_current() -> None:
    gen = _module("generate")
    stale = [
        path
        for path, text in gen.expected().items()
        if not (ROOT / path).is_file() or (ROOT / path).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"stale: {stale}; python docs/generate.py renders them"
    used = {
        m.group(1)
        for page in pages()
        for m in re.finditer(r'--8<-- "docs/generated/([\w-]+)\.md"', page.read_text())
    }
    assert used == set(gen.RENDERERS), "every generated fragment is included, and only those"


def test_every_page_is_in_the_nav() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1])

    def files(items: Any) -> set[str]:
        out: set[str] = set()
        for item in items:
            for v in item.values() if isinstance(item, dict) else [item]:
                out |= files(v) if isinstance(v, list) else {v}
        return out

    assert files(nav) == {p.name for p in DOCS.glob("*.md")}


def test_readme_is_a_landing_page() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.split("\n")) <= 260
    for link in re.findall(r"\]\((docs/[^)#\s]+)", text):
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist"


def test_record_fields_are_documented() -> None:
    from pbkit.core import record

    page = (DOCS / "record.md").read_text(encoding="utf-8")
    for name in [*record.Record.model_fields, *record.ModelInfo.model_fields]:
        assert re.search(rf"\b{name}\b", page), f"docs/record.md does not mention {name}"


# ------------------------------------------------------------------------------------- site


def test_site_builds_strict_and_offline(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--site-dir",
            str(tmp_path),
        ],
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fetched = set()
    for page in tmp_path.rglob("*.html"):
        fetched |= set(
            re.findall(r'(?:src|href)="(https?://[^"]+\.(?:css|js|woff2?))"', page.read_text())
        )
    assert not fetched, f"the site loads from the network: {sorted(fetched)[:5]}"
