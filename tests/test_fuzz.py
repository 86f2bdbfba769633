"""The CLI fuzzed, property-based (Hypothesis): no input ends in a traceback, in exit code 1 or in
``error: internal error`` (exit 1 is pbkit's own bug); every input either works (0), is refused
in one ``error:`` line (2), fails a parity check (3) or fails study trials (4).

What is generated: YAML configs (sections and keys real and made up, wrong types, huge, negative
and non-finite numbers, control characters, YAML tags and anchors, broken syntax), ``--set``
overrides, records mutated from a real one (keys deleted, types changed, NaN and Infinity, deep
nesting, non-objects, bytes that are not UTF-8, huge strings, markup), checkpoint files (random
bytes, truncated zips, text, pickles) and ONNX files (random, truncated, another model's).

Bounded and reproducible: ``derandomize`` (the same examples every run), no example database,
a fixed number of examples per test; a config that passes validation stops where the run's work
would begin (``bases.obtain``), so nothing slow runs; every CLI call has a deadline."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import pickle
import shutil
import signal
import tempfile
import typing
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tests.conftest import Result
from tests.test_hostile import RUN_ID, shared_run, write_config

ALLOWED = (0, 2, 3, 4)


def fuzz(examples: int, shrink: bool = True) -> settings:
    """Reproducible (derandomized, no database), no per-example deadline, ``examples`` examples;
    the function-scoped fixtures (the CLI runner, tmp_path) are shared by the examples on purpose:
    each example works in a folder of its own. ``shrink=False`` where each example runs commands
    (shrinking a failure would take minutes): the failing example is reported as generated."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    return settings(
        max_examples=examples,
        phases=[*phases, Phase.shrink] if shrink else phases,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# ------------------------------------------------------------------------------ the property


class Timeout(BaseException):
    """A CLI call ran past its deadline (a BaseException: pbkit's handler does not turn it into
    an exit code)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise Timeout(f"the command ran past {seconds} s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


class Validated(Exception):
    """Raised where a run's work would begin: the configuration passed every check before it."""


VALIDATED = "Validated: passed validation"


@pytest.fixture
def stop_before_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from pbkit.stages import bases

    def stop(*a: Any, **k: Any) -> Any:
        raise Validated("passed validation")

    monkeypatch.setattr(bases, "obtain", stop)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PBKIT_DEBUG", raising=False)


def tally(what: str) -> None:
    """Count an outcome in Hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def check(r: Result, what: str, validated_ok: bool = False) -> None:
    """The contract: an allowed exit code, no traceback, no internal error; an error is exactly
    one ``error:`` line, the last on stderr."""
    if validated_ok and VALIDATED in r.err:
        tally("valid: stopped where the work begins")
        return  # a valid configuration, stopped where its work would begin
    tally(f"exit {r.code}")
    context = f"{what}\nexit {r.code}\nstderr: {r.err[-2000:]!r}"
    assert "Traceback" not in r.err, context
    assert "internal error" not in r.err, context
    assert r.code in ALLOWED, context
    assert "\x1b" not in r.err, context  # no escape sequence from an input reaches the terminal
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    if r.code == 2:
        assert len(errors) == 1, context
        assert r.err.rstrip("\n").splitlines()[-1] == errors[0], context


def cli(pbkit: Callable[..., Result], *args: Any, seconds: float = 60) -> Result:
    with deadline(seconds):
        return pbkit(*args)


def load_or_refuse(path: Path | None, overrides: list[str]) -> None:
    """``config.load``: a valid Config (that serialises as the record will hold it), or one
    PbkitError line; anything else is a bug."""
    from pbkit.core import config, record
    from pbkit.core.errors import PbkitError

    try:
        cfg = config.load(path, overrides)
    except PbkitError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg and "\r" not in msg, repr(msg)
        tally("refused")
        return
    tally("valid")
    assert isinstance(cfg, config.Config)
    json.dumps(record.finite(cfg.model_dump(mode="json")))  # what record.config will hold


# ----------------------------------------------------------------------------- values, YAML

WEIRD_TEXT = [
    "",
    " ",
    "~",
    "null",
    "yes",
    "no",
    "off",
    "0x1F",
    "0o17",
    "1e999",
    "-1e999",
    ".nan",
    ".inf",
    "-.inf",
    "2026-01-01",
    "12:30:00",
    "<script>alert(1)</script>",
    "[bold]x[/bold]",
    "[/]",
    "\x1b[31mred\x1b[0m",
    "../../etc/passwd",
    "/etc/passwd",
    "/dev/full",
    "a|b",
    "=1+1",
    "@SUM(1)",
    "+cmd",
    "-2+3",
    "x" * 5000,
    "\u202eevil",
    "\ufeffbom",
    "caf\u00e9",
    "\U0001f600",
    "line\nbreak",
    "tab\there",
    "nul\x00byte",
    "torch-cpu",
    "ort-cpu",
    "resnet20_cifar",
    "l1",
]

control_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=["Cs"]),
        st.sampled_from(["\x00", "\x07", "\x1b", "\r", "\n", "\t", "\x85", "\u2028", "\x7f"]),
    ),
    max_size=24,
)
ints = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([-(2**63) - 1, -(2**63), 2**31, 2**63, 2**64, 10**30, 10**400, -(10**30)]),
)
moderate_ints = st.one_of(  # for runs that execute: never an allocation of tens of GiB
    st.integers(-3, 64), st.sampled_from([-(2**63), 2**63, 2**64, 10**30])
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1.5, 1e-320, 1e308, -1e308]),
)
texts = st.one_of(st.sampled_from(WEIRD_TEXT), control_text)

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    texts,
    st.binary(max_size=12),
    st.dates(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.sets(st.integers(0, 5), max_size=3),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(texts, ints, st.booleans(), st.none()), inner, max_size=4),
    ),
    max_leaves=12,
)


def _schema() -> dict[str, Any]:
    """The config's sections and keys, each key with its type and default: {name: (annotation,
    default) | {sub...}}."""
    from pydantic import BaseModel

    from pbkit.core import config

    defaults = config.defaults()

    def walk(model: type[BaseModel], dflt: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out[name] = walk(ann, dflt.get(name) or {})
            else:
                out[name] = (ann, dflt.get(name))
        return out

    return walk(config.Config, defaults)


SCHEMA = _schema()


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _leaf_keys(v, prefix + k + ".")
    return out


KEYS = _leaf_keys(SCHEMA)


def plausible(ann: Any, default: Any) -> st.SearchStrategy[Any]:
    """A value of the key's own type (so some generated configs are valid)."""
    choices: list[st.SearchStrategy[Any]] = [st.just(default)]
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Literal:
        choices.append(st.sampled_from(args))
    for a in (ann, *args):
        if typing.get_origin(a) is typing.Literal:
            choices.append(st.sampled_from(typing.get_args(a)))
        elif a is bool:
            choices.append(st.booleans())
        elif a is int:
            choices.append(st.integers(0, 64))
        elif a is float:
            choices.append(st.floats(0.001, 64))
        elif a is type(None):
            choices.append(st.none())
    return st.one_of(*choices)


@st.composite
def sections(draw: st.DrawFn, tree: dict[str, Any]) -> dict[Any, Any]:
    """A mapping over ``tree``'s keys: mostly real keys with values of their type, some made-up
    keys, some values of any type."""
    out: dict[Any, Any] = {}
    names = draw(st.lists(st.sampled_from(sorted(tree)), max_size=min(6, len(tree)), unique=True))
    for name in names:
        node = tree[name]
        roll = draw(st.integers(0, 9))
        if roll >= 8:
            out[name] = draw(yaml_values)
        elif isinstance(node, dict):
            out[name] = draw(sections(node))
        else:
            out[name] = draw(plausible(*node))
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        out[draw(st.one_of(texts, ints))] = draw(yaml_values)  # a key the schema does not have
    return out


YAML_SNIPPETS = [
    "!!python/object/apply:os.system ['true'] ",
    "!!python/name:os.system ",
    "!!binary ",
    "!!timestamp ",
    "!!set ",
    "!!omap ",
    "!custom ",
    "&a ",
    "*a ",
    "*nope ",
    "<<: *a\n",
    "? ",
    "%YAML 1.1\n---\n",
    "\n---\n",
    "\n...\n",
    "\t",
    "\x00",
    "\ufeff",
    "{",
    "[",
    "]",
    ": ",
    "'",
    '"',
    "|",
    ">-",
    "# ",
    "\\",
    "\x1b[31m",
]


@st.composite
def yaml_documents(draw: st.DrawFn) -> str:
    """A config document: a generated mapping dumped as YAML (tags for bytes, sets, dates;
    anchors for shared values), then sometimes broken by hand."""
    doc: Any = draw(sections(SCHEMA)) if draw(st.integers(0, 9)) else draw(yaml_values)
    if isinstance(doc, dict) and draw(st.booleans()):
        shared = draw(yaml_values)  # the same object twice: an anchor and an alias
        target = doc["model"] if isinstance(doc.get("model"), dict) else doc
        target["kwargs"] = {"a": shared, "b": shared}
    text = yaml.dump(
        doc,
        default_flow_style=draw(st.sampled_from([None, True, False])),
        allow_unicode=draw(st.booleans()),
        sort_keys=False,
    )
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 2))
        at = draw(st.integers(0, len(text)))
        if op == 0:
            text = text[:at] + draw(st.sampled_from(YAML_SNIPPETS)) + text[at:]
        elif op == 1:
            text = text[:at]
        else:
            text = text[:at] + draw(control_text) + text[at:]
    return text


HOSTILE_YAML = {
    "self-containing-mapping": "model: &m\n  kwargs: &k {self: *k}\n",
    "self-containing-list": "model:\n  kwargs: &l [*l]\n",
    "deep-nesting": "model:\n  kwargs:\n    x: " + "[" * 3000 + "]" * 3000 + "\n",
    "billion-laughs": "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: &d [*c, *c]\n"
    "e: &e [*d, *d]\nf: &f [*e, *e]\ng: &g [*f, *f]\nmodel:\n  kwargs: {bomb: *g}\n",
    "python-tag": "model: !!python/object/apply:os.system ['echo pwned']\n",
    "speedup-nan": "prune:\n  speedup: .nan\n",
    "speedup-inf": "prune:\n  speedup: .inf\n",
    "steps-1e999": "prune:\n  iterative_steps: 1e999\n",
    "huge-input-size": "model:\n  input_size: 100000000000000000000000000000000000\n",
    "batches-as-set": "bench:\n  batches: !!set {1: null, 2: null}\n",
    "binary-name": "model: {name: !!binary aGVsbG8=}\n",
    "timestamp-out": "out: !!timestamp 2026-01-01\n",
    "date-run-id": "run_id: 2026-01-01\n",
    "bom": "\ufeffmodel: {name: resnet20_cifar}\n",
    "duplicate-section": "model: {name: resnet20_cifar}\nmodel: {name: resnet18_cifar}\n",
    "two-documents": "--- 1\n--- 2\n",
    "nul": "\x00",
    "not-utf8": "\udcff\udcfe",
    "complex-key": "? [a, b]\n: c\n",
    "flow-complex-key": "{[1, 2]: x}\n",
    "int-top-key": "1: 2\n",
    "int-key-in-section": "model: {1: 2}\n",
    "int-key-in-kwargs": "model: {kwargs: {1: 2}}\n",
    "nested-batches": "bench: {batches: [1, [2]]}\n",
    "section-as-int": "distributed: 3\n",
    "seed-1e400": "seed: 1e400\n",
    "kwargs-bytes": "model: {kwargs: {w: !!binary /w==}}\n",
    "kwargs-nan": "model: {kwargs: {w: .nan}}\n",
    "kwargs-set": "model: {kwargs: {w: !!set {1: null}}}\n",
    "kwargs-date": "model: {kwargs: {w: 2026-01-01}}\n",
}


# ------------------------------------------------------------------------------ configs


@fuzz(300)
@given(text=yaml_documents())
def test_fuzz_config_files_validate_or_are_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with deadline(20):
        load_or_refuse(path, [])


@fuzz(60, shrink=False)
@given(text=yaml_documents())
def test_fuzz_pbkit_run_with_generated_configs(
    pbkit, tmp_path: Path, stop_before_work: None, text: str
) -> None:  # type: ignore[no-untyped-def]
    """``pbkit run CONFIG`` (its out= in a fresh folder): refused in one line, or valid and
    stopped where its work would begin."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    r = cli(pbkit, "run", path, "--set", f"out={folder / 'runs'}", seconds=30)
    check(r, f"pbkit run with:\n{text[:3000]}", validated_ok=True)


@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_hostile_config_files(pbkit, tmp_path: Path, stop_before_work: None, name: str) -> None:  # type: ignore[no-untyped-def]
    """Documents that break YAML loaders and validators (one test each): ``pbkit run`` refuses
    them in one line or takes them; what it takes serialises as the record will hold it."""
    path = tmp_path / "c.yaml"
    path.write_bytes(HOSTILE_YAML[name].encode("utf-8", "surrogateescape"))
    r = cli(pbkit, "run", path, "--set", f"out={tmp_path / 'runs'}", seconds=30)
    check(r, f"pbkit run with the {name!r} config", validated_ok=True)
    with deadline(20):
        load_or_refuse(path, [])


# ----------------------------------------------------------------------------- overrides

override_keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS).map(lambda k: k + "." + "x"),  # under a value
    st.sampled_from(KEYS).map(lambda k: " " + k.upper() + " "),
    st.sampled_from(["", ".", "..", "a..b", "model.", ".model", "model.kwargs.x.y.z", "=", "nope"]),
    control_text,
    st.lists(control_text, min_size=1, max_size=4).map(".".join),
)


def _as_yaml_text(v: Any) -> str:
    try:
        text = yaml.dump(v, default_flow_style=True, allow_unicode=True)
    except Exception:
        return repr(v)
    return text.removesuffix("\n...\n").strip()


override_values = st.one_of(
    yaml_values.map(_as_yaml_text),
    texts,
    st.sampled_from(
        [
            "[",
            "{a: [}",
            "!!python/object/apply:os.system ['true']",
            "&a [*a]",
            "*a",
            "a=b=c",
            "[100000]",
            "1e999",
            ".nan",
            "-.inf",
            "100000",
            "10000000000000000000000000",
        ]
    ),
)


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


LEAVES = _leaves(SCHEMA)


@st.composite
def typed_override(draw: st.DrawFn) -> str:
    """A real key with a value of its own type, written as YAML (most of these validate)."""
    key = draw(st.sampled_from(sorted(LEAVES)))
    return f"{key}={_as_yaml_text(draw(plausible(*LEAVES[key])))}"


overrides = st.one_of(
    typed_override(),
    st.tuples(override_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
    texts,  # no '=' at all, sometimes
)


HOSTILE_SETS = {
    "deep-kwargs": ["model.kwargs=" + "[" * 3000 + "]" * 3000],
    "self-containing-list": ["model.kwargs=&a [*a]"],
    "self-containing-in-mapping": ["model.kwargs={a: &a [*a]}"],
    "speedup-nan": ["prune.speedup=.nan"],
    "binary-tag-on-a-name": ["model.name=!!binary aGVsbG8="],
    "key-under-a-value": ["out.x=1"],
    "section-then-value": ["model.kwargs.a.b=1", "model.kwargs.a=1"],
    "value-then-section": ["model.kwargs.a=1", "model.kwargs.a.b=1"],
    "unknown-backend": ["bench.backends=[tensorrt-x]"],
    "absent-gpu": ["device=cuda:7"],
    "user-model-outside": ["model.name=../../etc/passwd:build"],
    "python-tag": ["bench.batches=!!python/object/apply:os.system ['true']"],
    "empty-key": ["=1"],
    "no-equals": ["prune.speedup"],
    "section-as-value": ["prune=3"],
    "section-as-value-then-key": ["prune=3", "prune.speedup=2"],
    "kwargs-bytes": ["model.kwargs.w=!!binary /w=="],
    "kwargs-date": ["model.kwargs.w=2026-01-01"],
    "kwargs-set": ["model.kwargs.w=!!set {1: null}"],
    "kwargs-nan": ["model.kwargs.w=.nan"],
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SETS))
def test_hostile_overrides(pbkit, tmp_path: Path, stop_before_work: None, name: str) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "runs")
    sets = [a for item in HOSTILE_SETS[name] for a in ("--set", item)]
    r = cli(pbkit, "run", cfg, *sets, seconds=30)
    check(r, f"pbkit run c.yaml with the {name!r} overrides", validated_ok=True)
    with deadline(20):
        load_or_refuse(None, HOSTILE_SETS[name])


@fuzz(300)
@given(items=st.lists(overrides, min_size=1, max_size=4))
def test_fuzz_set_overrides_validate_or_are_refused_in_one_line(items: list[str]) -> None:
    with deadline(20):
        load_or_refuse(None, items)


@fuzz(60, shrink=False)
@given(items=st.lists(overrides, min_size=1, max_size=3))
def test_fuzz_pbkit_run_with_generated_overrides(
    pbkit, tmp_path: Path, stop_before_work: None, items: list[str]
) -> None:  # type: ignore[no-untyped-def]
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    cfg = write_config(folder / "c.yaml", folder / "runs")
    sets = [a for item in items for a in ("--set", item)]
    r = cli(pbkit, "run", cfg, *sets, seconds=30)
    check(r, f"pbkit run c.yaml {' '.join(sets)!r}", validated_ok=True)


# ------------------------------------------------------------------------------- records

HOT_PATHS: list[tuple[Any, ...]] = [
    ("schema_version",),
    ("run_id",),
    ("model",),
    ("model", "name"),
    ("model", "family"),
    ("model", "input_size"),
    ("model", "task"),
    ("method",),
    ("method", "key"),
    ("method", "scope"),
    ("method", "target_speedup"),
    ("method", "achieved_speedup"),
    ("counts", "macs_base"),
    ("counts", "macs_pruned"),
    ("counts", "params_pruned"),
    ("accuracy",),
    ("accuracy", "base"),
    ("dataset",),
    ("stages",),
    ("stages", "prune"),
    ("identity",),
    ("artifacts",),
    ("artifacts", "pruned"),
    ("artifacts", "pruned", "path"),
    ("artifacts", "onnx"),
    ("artifacts", "onnx", "pruned", "path"),
    ("artifacts", "onnx", "pruned", "sha256"),
    ("latency",),
    ("latency", 0),
    ("latency", 0, "median_ms"),
    ("latency", 1, "median_ms"),
    ("latency", 1, "speedup_vs_dense"),
    ("latency", 1, "speedup_ci"),
    ("latency", 0, "backend"),
    ("latency", 0, "variant"),
    ("latency", 0, "batch"),
    ("latency", 1, "ci"),
    ("parity",),
    ("parity", 0, "passed"),
    ("parity", 0, "max_abs"),
    ("bench",),
    ("env",),
    ("env", "host"),
    ("config",),
    ("config", "model"),
    ("config", "model", "name"),
    ("config", "prune", "speedup"),
    ("config", "bench", "backends"),
    ("config", "export", "opset"),
]

MARKUP = [
    "<script>alert(1)</script>",
    "[bold]x[/bold]",
    "[link=http://evil]x[/link]",
    "\x1b[31mred\x1b[0m",
    '=HYPERLINK("http://evil")',
    "+cmd",
    "@SUM(1)",
    "a|b",
    "x" * 200_000,
    "\u202e",
]


def _paths(x: Any, p: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield p
    if len(p) > 20:  # (not into the deep nesting an earlier mutation made)
        return
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*p, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, (*p, i))


def _get(x: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        x = x[k]
    return x


def _has(x: Any, path: tuple[Any, ...]) -> bool:
    try:
        _get(x, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def json_values(int_strategy: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        int_strategy,
        floats,
        texts,
        st.sampled_from(MARKUP),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)
        ),
        max_leaves=8,
    )


@st.composite
def record_bytes(draw: st.DrawFn, original: dict[str, Any], int_strategy: Any) -> bytes:
    """The real record, mutated: keys deleted, values replaced (other types, non-finite numbers,
    markup, huge strings, deep nesting), or the whole file replaced or broken."""
    # (a rare branch is a middle value: Hypothesis favours the ends of a range)
    if draw(st.integers(0, 11)) == 5:
        return draw(
            st.sampled_from(
                [b"[]", b"3", b'"x"', b"null", b"", b"{", b"\xff\xfe{}", b"[" * 100_000, b"NaN"]
            )
        )
    rec = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            candidates = [p for p in HOT_PATHS if _has(rec, p)]
        else:
            candidates = [p for p in _paths(rec) if p]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = _get(rec, path[:-1])
        action = draw(
            st.sampled_from(["tweak", "replace", "delete", "markup", "replace", "nan", "deep"])
        )
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(json_values(int_strategy))
        elif action == "nan":
            parent[path[-1]] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        elif action == "markup":
            parent[path[-1]] = draw(st.sampled_from(MARKUP))
        elif action == "deep":
            deep: Any = 1
            for _ in range(draw(st.sampled_from([50, 500, 5000]))):
                deep = [deep]
            parent[path[-1]] = deep
        else:
            value = parent[path[-1]]
            if isinstance(value, str):
                parent[path[-1]] = value + draw(st.sampled_from(MARKUP))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                parent[path[-1]] = -value if draw(st.booleans()) else value * 10**6
            elif isinstance(value, list | dict):  # (str() of an earlier "deep" would recurse)
                parent[path[-1]] = type(value).__name__
            else:
                parent[path[-1]] = str(value)[:50]
    try:
        data = json.dumps(rec, indent=draw(st.sampled_from([None, 2]))).encode()
    except RecursionError:
        data = b"[" * 10_000
    if draw(st.integers(0, 9)) == 4:  # bytes that are not UTF-8, somewhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xff\xc3(" + data[at:]
    return data


@pytest.fixture(scope="session")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small run tests/test_hostile.py makes (once per session, whichever module asks first)."""
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def real_record(made_run: Path) -> dict[str, Any]:
    return json.loads((made_run / "record.json").read_text())


def leftovers(folder: Path) -> list[str]:
    """What a command left half-written: pbkit's temporary files and folders."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith(".tmp-") or (p.name.startswith(".") and p.name.endswith(".tmp"))
    )


def _copy_run(made_run: Path, tmp_path: Path) -> Path:
    dst = Path(tempfile.mkdtemp(dir=tmp_path)) / "runs" / RUN_ID
    shutil.copytree(made_run, dst)
    return dst


@fuzz(40, shrink=False)
@given(data=st.data())
def test_fuzz_report_of_mutated_records(
    pbkit, made_run: Path, real_record: dict[str, Any], tmp_path: Path, data: st.DataObject
) -> None:  # type: ignore[no-untyped-def]
    blob = data.draw(record_bytes(real_record, ints), label="record.json")
    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / RUN_ID
    folder.mkdir()
    (folder / "record.json").write_bytes(blob)
    for fmt in ("table", "md", "csv", "json", "html"):
        r = cli(pbkit, "report", folder.parent, "--format", fmt, seconds=30)
        check(r, f"pbkit report --format {fmt} of a record of {len(blob)} bytes: {blob[:600]!r}")
        if fmt == "table":
            assert "\x1b" not in r.out, f"an escape sequence in the table: {blob[:600]!r}"
        if r.code == 0 and fmt == "json":

            def refuse(name: str) -> Any:
                raise AssertionError(f"bare {name} in `pbkit report --format json`")

            json.loads(r.out, parse_constant=refuse)
    assert (folder / "record.json").read_bytes() == blob  # reports only read


@fuzz(16, shrink=False)
@given(data=st.data())
def test_fuzz_bench_and_export_of_mutated_records(
    pbkit, made_run: Path, real_record: dict[str, Any], tmp_path: Path, data: st.DataObject
) -> None:  # type: ignore[no-untyped-def]
    blob = data.draw(record_bytes(real_record, moderate_ints), label="record.json")
    run = _copy_run(made_run, tmp_path)
    (run / "record.json").write_bytes(blob)
    for args in (["bench", run, "--quick", "--backend", "torch-cpu"], ["export", run]):
        r = cli(pbkit, *args, seconds=60)
        check(r, f"pbkit {args[0]} of a record of {len(blob)} bytes: {blob[:600]!r}")
        if r.code == 2:  # refused: the record left as it was
            assert (run / "record.json").read_bytes() == blob, args[0]
        assert leftovers(run.parent) == [], args[0]


# --------------------------------------------------------------------------- checkpoints

plain_objects = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, floats, texts, st.binary(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(texts, inner, max_size=3),
        st.tuples(inner, inner),
    ),
    max_leaves=6,
)


def _state_dict_bytes() -> bytes:
    import torch

    from pbkit import models

    buf = io.BytesIO()
    torch.save(models.build(models.resolve("resnet20_cifar"), seed=0).state_dict(), buf)
    return buf.getvalue()


STATE_DICT = None


def state_dict() -> bytes:
    global STATE_DICT
    if STATE_DICT is None:
        STATE_DICT = _state_dict_bytes()
    return STATE_DICT


@st.composite
def checkpoint_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.binary(max_size=4096))
    if kind == 1:  # a real checkpoint, truncated
        real = state_dict()
        return real[: draw(st.integers(0, len(real) - 1))]
    if kind == 2:
        return draw(control_text).encode("utf-8", "surrogatepass")
    if kind == 3:  # a pickle of plain objects
        return pickle.dumps(draw(plain_objects), protocol=draw(st.integers(0, 5)))
    if kind == 4:  # a zip that is not torch's
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name in draw(st.lists(control_text.filter(bool), max_size=3)):
                z.writestr(name, draw(st.binary(max_size=64)))
        return buf.getvalue()
    if kind == 5:  # torch.save of tensors that are not the model's
        import torch

        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        obj = draw(
            st.sampled_from(
                [
                    {"conv1.weight": torch.zeros(shape)},
                    {"state_dict": {"x": torch.zeros(shape)}},
                    [torch.zeros(shape)],
                    torch.zeros(shape),
                    {"model": None},
                ]
            )
        )
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    real = bytearray(state_dict())  # bytes flipped inside a real checkpoint
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(real) - 1))
        real[i] ^= draw(st.integers(1, 255))
    return bytes(real)


@fuzz(30, shrink=False)
@given(blob=checkpoint_bytes(), trust=st.booleans())
@example(blob=b"these are not weights\n", trust=False)
@example(blob=pickle.dumps({"a": 1}), trust=True)
@example(blob=pickle.dumps([1, 2, 3]), trust=True)
@example(blob=b"", trust=False)
def test_fuzz_checkpoint_files(pbkit, tmp_path: Path, blob: bytes, trust: bool) -> None:  # type: ignore[no-untyped-def]
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    ck = folder / "weights.pt"
    ck.write_bytes(blob)
    args: list[Any] = [
        "prune",
        "--model",
        "resnet20_cifar",
        "--method",
        "l1",
        "--speedup",
        "1.5",
        "--checkpoint",
        ck,
        "--out",
        folder / "runs",
        "--set",
        "prune.iterative_steps=5",
        "--set",
        "model.input_size=8",
    ]
    if trust:
        args += ["--set", "model.trust_checkpoint=true"]
    r = cli(pbkit, *args, seconds=60)
    check(r, f"pbkit prune --checkpoint <{len(blob)} bytes: {blob[:300]!r}> trust={trust}")
    assert ck.read_bytes() == blob


# ---------------------------------------------------------------------------------- ONNX


def _other_onnx(kind: int) -> bytes:
    """A valid ONNX file of another model: the identity, a different input name, rank or type,
    two outputs."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if kind != 2 else TensorProto.INT64
    shape: list[Any] = ["N", 3, 8, 8] if kind != 1 else ["N", 7]
    name = "input" if kind != 3 else "other"
    x = helper.make_tensor_value_info(name, elem, shape)
    y = helper.make_tensor_value_info("output", elem, shape)
    nodes = [helper.make_node("Identity", [name], ["output"])]
    outputs = [y]
    if kind == 4:
        nodes.append(helper.make_node("Identity", [name], ["output2"]))
        outputs.append(helper.make_tensor_value_info("output2", elem, shape))
    graph = helper.make_graph(nodes, "other", [x], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString()


@st.composite
def onnx_bytes(draw: st.DrawFn, real: bytes) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=4096))
    if kind == 1:
        return real[: draw(st.integers(0, len(real) - 1))]
    if kind == 2:
        return _other_onnx(draw(st.integers(0, 4)))
    data = bytearray(real)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@fuzz(16, shrink=False)
@given(data=st.data(), vouch=st.booleans())
def test_fuzz_onnx_files(
    pbkit, made_run: Path, tmp_path: Path, data: st.DataObject, vouch: bool
) -> None:  # type: ignore[no-untyped-def]
    """A run's pruned.onnx replaced; with ``vouch`` the record's sha256 edited to match (the file
    then reaches ONNX Runtime)."""
    import hashlib

    run = _copy_run(made_run, tmp_path)
    blob = data.draw(onnx_bytes((made_run / "pruned.onnx").read_bytes()), label="pruned.onnx")
    (run / "pruned.onnx").write_bytes(blob)
    if vouch:
        digest = hashlib.sha256(blob).hexdigest()
        rec = json.loads((run / "record.json").read_text())
        rec["artifacts"]["onnx"]["pruned"]["sha256"] = digest
        rec["artifacts"]["onnx_sha256"] = digest
        (run / "record.json").write_text(json.dumps(rec, indent=2))
    before = (run / "record.json").read_bytes()
    r = cli(pbkit, "bench", run, "--quick", "--backend", "ort-cpu", seconds=60)
    check(
        r,
        f"pbkit bench --backend ort-cpu with a pruned.onnx of {len(blob)} bytes "
        f"(vouched: {vouch}): {blob[:200]!r}",
    )
    if r.code == 2:
        assert (run / "record.json").read_bytes() == before
    assert leftovers(run.parent) == []


OTHER_ONNX = {
    "identity": 0,
    "another-rank": 1,
    "int64-input": 2,
    "another-input-name": 3,
    "two-outputs": 4,
}


@pytest.mark.parametrize("kind", sorted(OTHER_ONNX))
def test_another_models_onnx_that_the_record_vouches_for(
    pbkit, made_run: Path, tmp_path: Path, kind: str
) -> None:  # type: ignore[no-untyped-def]
    """A valid ONNX file of another model as pruned.onnx, the record's sha256 edited to match:
    measured (its parity fails: exit 3) or refused in one line, never an internal error."""
    import hashlib

    run = _copy_run(made_run, tmp_path)
    blob = _other_onnx(OTHER_ONNX[kind])
    (run / "pruned.onnx").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    rec = json.loads((run / "record.json").read_text())
    rec["artifacts"]["onnx"]["pruned"]["sha256"] = digest
    rec["artifacts"]["onnx_sha256"] = digest
    (run / "record.json").write_text(json.dumps(rec, indent=2))
    before = (run / "record.json").read_bytes()
    r = cli(pbkit, "bench", run, "--quick", "--backend", "ort-cpu", seconds=60)
    check(r, f"pbkit bench --backend ort-cpu with the {kind!r} ONNX as pruned.onnx")
    assert r.code != 0, "another model's ONNX measured as if it were the pruned model"
    if r.code == 2:
        assert (run / "record.json").read_bytes() == before
    assert leftovers(run.parent) == []
