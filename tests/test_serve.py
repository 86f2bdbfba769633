"""``pbkit serve``: the store, the API and its tokens, what a push may hold, the CLI verbs, load and
kill tests on localhost, PostgreSQL where Debian's package is installed, and a study submitted to
a local Ray (slow).

Records are cheap: the committed reference record with its run id, identity and machine changed
(:func:`make_record`), never a pruning run."""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pbkit.serve import client, ingest, jobs
from pbkit.serve.app import Settings, create_app
from pbkit.serve.store import Store
from tests.conftest import REPO

BASE = REPO / "results" / "reference" / "bench-example-cpu-2core" / "record.json"
PAYLOAD = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&{{7*7}}"
ARTIFACTS = Path(os.environ.get("PBKIT_ARTIFACTS", REPO / "test-artifacts"))


def make_record(
    run_id: str,
    machine: str = "NVIDIA A100",
    speedup: float = 1.5,
    updated: str | None = None,
    **text: str,
) -> dict[str, Any]:
    """The reference record as run ``run_id`` measured on ``machine`` (a GPU name), its pruned
    torch-cpu point at ``speedup``; ``text`` sets model, method, dataset, cpu, os, kit."""
    r = json.loads(BASE.read_text())
    r["run_id"] = run_id
    r["identity"]["hash"] = hashlib.sha256(run_id.encode()).hexdigest()
    envs = [r["env"], *[s["env"] for s in r["stages"].values() if s.get("env")]]
    for env in envs:
        env["gpus"] = [{"name": machine, "driver_version": text.get("driver", "550.1")}]
        if "cpu" in text:
            env["host"]["cpu"] = text["cpu"]
        if "os" in text:
            env["host"]["os"] = text["os"]
    if "model" in text:
        r["model"]["name"] = text["model"]
    if "method" in text:
        r["method"]["key"] = r["method"]["name"] = text["method"]
    if "dataset" in text:
        r["dataset"] = {"name": text["dataset"], "image_size": 32, "num_classes": 10}
    if "kit" in text:
        r["kit_version"] = r["git_revision"] = text["kit"]
    if "metric" in text:
        r["accuracy"] = {"metric": text["metric"], "base": 90.0, "pruned": 50.0}
    for p in r["latency"]:
        if p["variant"] == "pruned" and p["backend"] == "torch-cpu":
            p["speedup_vs_dense"], p["speedup_ci"] = speedup, [speedup - 0.02, speedup + 0.02]
    if updated:
        r["updated_utc"] = updated
    return r


def raw(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, indent=2).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pbkit.db'}"


@pytest.fixture
def tokens(store_url: str) -> dict[str, str]:
    s = Store(store_url)
    try:
        return {role: s.create_token(f"{role}-box", role) for role in ("read", "push", "submit")}
    finally:
        s.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def api(store_url: str, tmp_path: Path, **kw: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    settings = Settings(store=store_url, work=str(tmp_path / "work"), **kw)
    with TestClient(create_app(settings)) as c:
        yield c


@contextlib.contextmanager
def live_server(settings: Settings, prepare: Callable[[Any], None] | None = None) -> Iterator[str]:
    """The service on a real uvicorn in this process (a thread), on ``settings.port``;
    ``prepare(app)`` before it starts (a test's fake runner)."""
    import uvicorn

    app = create_app(settings)
    if prepare is not None:
        prepare(app)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning")
    server = uvicorn.Server(config)
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and th.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield settings.url
    finally:
        server.should_exit = True
        th.join(timeout=30)


def start_service(
    store_url: str, port: int, work: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``pbkit serve`` as its own process (killed with SIGKILL by the kill test)."""
    log = open(work.parent / f"serve-{port}-{time.time_ns()}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "pbkit.cli", "serve", "--store", store_url, "--port", str(port)]
        + ["--work", str(work), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work.parent,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})},
    )
    import httpx

    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, f"pbkit serve exited: {Path(log.name).read_text()[-2000:]}"
        assert time.time() < deadline, "pbkit serve did not answer in 60 s"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------ tokens


def test_tokens_are_stored_hashed_and_roles_give_401_or_403(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    db = Path(store_url.removeprefix("sqlite:///")).read_bytes()
    for secret in tokens.values():
        assert secret.startswith("pbk_") and len(secret) > 40
        assert secret.encode() not in db  # only its sha256
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in db
    body = raw(make_record("r1"))
    with api(store_url, tmp_path) as c:
        assert c.get("/api/records").status_code == 401
        assert c.get("/api/records").headers["www-authenticate"] == "Bearer"
        assert c.get("/api/records", headers=bearer("pbk_wrong")).status_code == 401
        assert c.get("/api/records", headers={"Authorization": "Basic eA=="}).status_code == 401
        assert c.get("/", headers={}).status_code == 401  # the page: its sign-in form
        assert c.post("/api/records", content=body).status_code == 401
        r = c.post("/api/records", content=body, headers=bearer(tokens["read"]))
        assert r.status_code == 403 and "read-box" in r.json()["error"]
        r = c.post("/api/studies", content=b"name: x", headers=bearer(tokens["push"]))
        assert r.status_code == 403
        for role in ("read", "push", "submit"):  # every role reads
            assert c.get("/api/records", headers=bearer(tokens[role])).status_code == 200
        assert (
            c.post("/api/records", content=body, headers=bearer(tokens["push"])).status_code == 201
        )
        s = Store(store_url)
        assert s.revoke_token("push-box")
        s.close()
        assert (
            c.post("/api/records", content=body, headers=bearer(tokens["push"])).status_code == 401
        )
    with api(store_url, tmp_path, anonymous_read=True) as c:  # reading only
        assert c.get("/api/records").status_code == 200
        assert c.post("/api/records", content=body).status_code == 401


def test_the_sign_in_cookie_reads_but_never_pushes(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with api(store_url, tmp_path) as c:
        r = c.post("/login", content=b"token=pbk_wrong", follow_redirects=False)
        assert r.status_code == 401
        r = c.post(
            "/login",
            content=f"token={tokens['push']}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
        assert "samesite=strict" in r.headers["set-cookie"].lower()
        assert c.get("/api/records").status_code == 200  # the cookie reads
        assert c.post("/api/records", content=raw(make_record("x"))).status_code == 401


# ------------------------------------------------------------------------------------- records


def test_a_record_is_stored_once_per_identity_and_two_machines_are_two(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    h = bearer(tokens["push"])
    with api(store_url, tmp_path) as c:
        first = c.post("/api/records", content=raw(make_record("r1")), headers=h)
        assert first.status_code == 201 and first.json()["outcome"] == "created"
        again = c.post("/api/records", content=raw(make_record("r1")), headers=h)
        assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
        # the same content laid out otherwise is the same record
        compact = json.dumps(make_record("r1")).encode()
        assert c.post("/api/records", content=compact, headers=h).json()["outcome"] == "unchanged"
        newer = make_record("r1", speedup=1.7, updated="2030-01-01T00:00:00Z")
        assert c.post("/api/records", content=raw(newer), headers=h).json()["outcome"] == "updated"
        older = make_record("r1", speedup=1.1, updated="2020-01-01T00:00:00Z")
        assert c.post("/api/records", content=raw(older), headers=h).json()["outcome"] == "older"
        other = c.post("/api/records", content=raw(make_record("r1", "NVIDIA L4")), headers=h)
        assert other.status_code == 201
        listed = c.get("/api/records", headers=h).json()["records"]
        assert sorted((r["run_id"], r["machine"]) for r in listed) == [
            ("r1", "NVIDIA A100"),
            ("r1", "NVIDIA L4"),
        ]
        assert all(r["pushed_by"] == "push-box" and r["identity_hash"] for r in listed)
        assert c.get("/api/records/r1", headers=h).status_code == 409  # two machines
        got = c.get("/api/records/r1", params={"machine": "NVIDIA A100"}, headers=h)
        assert got.status_code == 200 and got.json() == newer  # the newest, as pushed
        assert c.get("/api/records/nope", headers=h).status_code == 404
        by_machine = c.get("/api/records", params={"machine": "NVIDIA L4"}, headers=h).json()
        assert len(by_machine["records"]) == 1
        events = c.get("/api/events", headers=h).json()["events"]
        pushes = [e for e in events if e["action"] == "push"]
        assert len(pushes) == 6 and {e["token"] for e in pushes} == {"push-box"}
        assert [e["outcome"] for e in reversed(pushes)] == [
            "created",
            "unchanged",
            "unchanged",
            "updated",
            "older",
            "created",
        ]


def _bad(kind: str) -> bytes:
    rec = make_record("bad")
    if kind == "not json":
        return b"{not json"
    if kind == "nan":
        return raw(rec).replace(b'"n": ', b'"n": NaN, "x": ', 1)
    if kind == "array":
        return b"[1, 2]"
    if kind in ("version 2.0", "version 0.9", "no version"):
        if kind == "no version":
            rec.pop("schema_version")
        else:
            rec["schema_version"] = kind.split()[1]
        return raw(rec)
    if kind == "missing field":
        rec.pop("model")
        return raw(rec)
    if kind == "wrong type":
        rec["counts"]["macs_base"] = "many"
        return raw(rec)
    if kind == "deep":
        deep: Any = 1
        for _ in range(200):
            deep = {"a": deep}
        rec["config"]["x"] = deep
        return raw(rec)
    if kind == "nul":
        rec["model"]["name"] = "a\u0000b"
        return raw(rec)
    if kind == "too large":
        rec["config"]["padding"] = "x" * (300 << 10)
        return raw(rec)
    if kind == "empty":
        return b""
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("not json", 422),
        ("nan", 422),
        ("array", 422),
        ("version 2.0", 422),
        ("version 0.9", 422),
        ("no version", 422),
        ("missing field", 422),
        ("wrong type", 422),
        ("deep", 422),
        ("nul", 422),
        ("too large", 413),
        ("empty", 422),
    ],
)
def test_a_bad_record_is_refused_with_a_clear_4xx_and_nothing_is_stored(
    store_url: str, tokens: dict[str, str], tmp_path: Path, kind: str, status: int
) -> None:
    with api(store_url, tmp_path, max_record_bytes=256 << 10) as c:
        r = c.post("/api/records", content=_bad(kind), headers=bearer(tokens["push"]))
        assert r.status_code == status, r.text
        message = r.json()["error"]
        assert message and "\n" not in message
        if kind.startswith("version"):
            from pbkit.core.record import SCHEMA_VERSION

            assert "schema" in message and SCHEMA_VERSION in message
        listed = c.get("/api/records", headers=bearer(tokens["read"])).json()["records"]
        assert listed == []
        events = c.get("/api/events", headers=bearer(tokens["read"])).json()["events"]
        assert [(e["token"], e["outcome"]) for e in events if e["action"] == "push"] == [
            ("push-box", "refused")
        ]


def test_the_size_limit_is_told_before_the_body_is_read(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(ingest.Refused) as e:
        ingest.incoming(b"x" * 101, limit=100)
    assert e.value.status == 413
    with api(store_url, tmp_path, max_record_bytes=1000) as c:
        r = c.post(
            "/api/records",
            content=b"x" * 5000,
            headers={**bearer(tokens["push"]), "Content-Length": "5000"},
        )
        assert r.status_code == 413 and "1000" in r.json()["error"]


# ---------------------------------------------------------------------------------- injection

TEXT_FIELDS = ("model", "method", "dataset", "cpu", "os", "kit", "metric", "driver")


def _injected(c: Any, tokens: dict[str, str]) -> None:
    for i, machine in enumerate((PAYLOAD, '=HYPERLINK("http://x")')):
        rec = make_record(
            f"run-{i}-{PAYLOAD}", machine, 1.3 + i / 10, **dict.fromkeys(TEXT_FIELDS, PAYLOAD)
        )
        r = c.post("/api/records", content=raw(rec), headers=bearer(tokens["push"]))
        assert r.status_code == 201, r.text
    r = c.post(
        "/api/studies/inj/progress",
        json={
            "counts": {"done": 1, "failed": 1},
            "failures": [{"run_id": PAYLOAD, "error": PAYLOAD}],
        },
        headers=bearer(tokens["push"]),
    )
    assert r.status_code == 200


def test_text_from_a_record_is_never_rendered_unescaped(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with api(store_url, tmp_path) as c:
        _injected(c, tokens)
        h = bearer(tokens["read"])
        pages = {}
        for path in ("/", "/studies"):
            r = c.get(path, headers=h)
            assert r.status_code == 200
            pages[path] = r.text
        # the run pages and full records ride along packed: unpacked as the browser would
        blob = re.search(r'id="pb-records"[^>]*>([^<]+)</script>', pages["/"])
        assert blob is not None
        packed = json.loads(gzip.decompress(base64.b64decode(blob.group(1))))
        assert len(packed["pages"]) == 2
        pages.update({f"run {k}": v for k, v in packed["pages"].items()})
        for where, text in pages.items():
            assert "<script>alert" not in text, where
            assert "<img src=x" not in text, where
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["/"]  # shown, as text
        assert "&amp;{{7*7}}" in pages["/"]  # (a template in a record is text, never evaluated)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["/studies"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in c.get("/", headers=h).headers["content-security-policy"]


def test_csv_exports_are_safe_from_formula_injection(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    formula = ("=1+1", "+SUM(A1)", "-2+3", "@cmd", "\t=x", '=HYPERLINK("http://x")')
    with api(store_url, tmp_path) as c:
        for i, f in enumerate(formula):
            rec = make_record(f"run-{i}", f, model=f, method=f, dataset=f, metric=f)
            assert c.post(
                "/api/records", content=raw(rec), headers=bearer(tokens["push"])
            ).is_success
        h = bearer(tokens["read"])
        for path in ("/export/leaderboard.csv", "/export/machines.csv", "/api/records?format=csv"):
            r = c.get(path, headers=h)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            cells = [cell for row in csv.reader(io.StringIO(r.text)) for cell in row]
            assert any(cell.startswith("'=") for cell in cells), path  # there, neutralised
            for cell in cells:
                if cell.startswith(("=", "+", "-", "@", "\t", "\r")):
                    float(cell)  # only a number may start so (a negative one)


# ---------------------------------------------------------------------------------- studies


def test_a_study_reports_its_progress_and_the_log_names_the_token(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with api(store_url, tmp_path) as c:
        p = {
            "counts": {"done": 3, "failed": 1, "pending": 2, "skipped": 0},
            "running": 2,
            "eta_s": 42.0,
            "failures": [{"run_id": "r9", "error": "PbkitError: out of memory"}],
        }
        assert c.post("/api/studies/s1/progress", json=p, headers=bearer(tokens["push"])).is_success
        bad = c.post("/api/studies/s1/progress", content=b"[]", headers=bearer(tokens["push"]))
        assert bad.status_code == 422
        got = c.get("/api/studies/s1", headers=bearer(tokens["read"])).json()["progress"]
        assert got["counts"]["done"] == 3 and got["running"] == 2 and got["eta_s"] == 42.0
        assert got["pushed_by"] == "push-box"
        page_ = c.get("/studies", headers=bearer(tokens["read"])).text
        assert "out of memory" in page_ and "42 s" in page_
        assert c.get("/api/studies/none", headers=bearer(tokens["read"])).status_code == 404


SMALL_STUDY = {
    "name": "tiny",
    "config": {
        "model": {"name": "resnet20_cifar", "input_size": 16},
        "prune": {"iterative_steps": 10},
        "bench": {"quick": True, "backends": ["torch-cpu"], "rounds": 1},
        "export": {"exporter": "torchscript"},
    },
    "grid": {"prune.method": ["l1"]},
    "resources": {"cpu": 1},
}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"config.model.name": "net.py:build"}, "file model"),
        ({"config.model.name": "my_pkg.models:build"}, "import model"),
        ({"config.model.name": "weights.pt"}, "pickle model"),
        ({"grid": {"model.name": ["resnet20_cifar", "evil.py:build"]}}, "file model"),
        ({"config.model.trust_checkpoint": True}, "unpickles"),
        ({"config.dataset": {"root": "/etc"}}, "dataset.root"),
        ({"config.dataset": {"name": "data.yaml"}}, "not one of pbkit's datasets"),
        ({"extends": "../bench/x.yaml"}, "extends"),
        ({"address": "ray://elsewhere:10001"}, "address"),
        ({"config.limits": {"epochs": 10**9}}, "limits"),
        ({"grid": {"distributed.nnodes": [2]}}, "distributed"),
        ({"grid": {}}, "at least one axis"),
        ({"name": "../../etc"}, "name"),
    ],
)
def test_a_submitted_study_runs_no_user_code_and_sets_only_study_settings(
    tmp_path: Path, change: dict[str, Any], needle: str
) -> None:
    doc = copy.deepcopy(SMALL_STUDY)
    for key, value in change.items():
        if key.startswith("config."):
            node = doc["config"]
            *parts, last = key.split(".")[1:]
            for p in parts:
                node = node.setdefault(p, {})
            node[last] = value
        else:
            doc[key] = value
    with pytest.raises(ingest.Refused) as e:
        jobs.check(doc, allow_code=False, folder=tmp_path)
    assert e.value.status == 422 and needle in str(e.value), str(e.value)


def test_the_operator_may_allow_user_code(tmp_path: Path) -> None:
    net = tmp_path / "net.py"
    net.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(8, 4))\n"
    )
    doc = copy.deepcopy(SMALL_STUDY)
    doc["config"]["model"] = {"name": f"{net}:build", "input_size": 16, "num_classes": 4}
    with pytest.raises(ingest.Refused):
        jobs.check(doc, allow_code=False, folder=tmp_path)
    checked = jobs.check(doc, allow_code=True, folder=tmp_path)
    assert checked.name == "tiny" and checked.trials == 1


def test_submissions_need_the_submit_role_and_a_runner(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    body = json.dumps(SMALL_STUDY).encode()
    with api(store_url, tmp_path, jobs="none") as c:
        assert (
            c.post("/api/studies", content=body, headers=bearer(tokens["push"])).status_code == 403
        )
        r = c.post("/api/studies", content=body, headers=bearer(tokens["submit"]))
        assert r.status_code == 503 and "takes no studies" in r.json()["error"]
    with api(store_url, tmp_path, jobs="ray") as c:
        r = c.post("/api/studies", content=body, headers=bearer(tokens["submit"]))
        assert r.status_code == 503 and "--ray-address" in r.json()["error"]
    with api(store_url, tmp_path) as c:
        bad = {**SMALL_STUDY, "config": {"model": {"name": "evil.py:build"}}}
        r = c.post("/api/studies", json=bad, headers=bearer(tokens["submit"]))
        assert r.status_code == 422 and "no user code" in r.json()["error"]
        events = c.get("/api/events", headers=bearer(tokens["read"])).json()["events"]
        assert (events[0]["token"], events[0]["action"], events[0]["outcome"]) == (
            "submit-box",
            "submit",
            "refused",
        )
        assert c.get("/api/studies", headers=bearer(tokens["read"])).json()["submissions"] == []


# --------------------------------------------------------------------------- the CLI, for real


def _write_runs(root: Path, machine: str, n: int, prefix: str = "run") -> list[Path]:
    out = []
    for i in range(n):
        folder = root / f"{prefix}-{i}"
        folder.mkdir(parents=True)
        (folder / "record.json").write_bytes(raw(make_record(f"{prefix}-{i}", machine)))
        out.append(folder)
    return out


def test_cli_token_create_push_again_and_a_refused_record(
    pbkit: Callable[..., Any], store_url: str, tmp_path: Path
) -> None:
    made = pbkit("serve", "token", "create", "h100-box", "--role", "push", "--store", store_url)
    assert made.code == 0 and made.out.strip().startswith("pbk_") and "shown this once" in made.err
    token = made.out.strip()
    assert (
        pbkit("serve", "token", "create", "h100-box", "--role", "push", "--store", store_url).code
        == 2
    )
    assert pbkit("serve", "token", "create", "x", "--role", "admin", "--store", store_url).code == 2
    listed = pbkit("serve", "token", "list", "--store", store_url, "--json").json()
    assert listed["tokens"][0]["name"] == "h100-box" and token not in json.dumps(listed)
    runs = tmp_path / "h100"
    _write_runs(runs, "NVIDIA H100", 3)
    settings = Settings(store=store_url, port=free_port(), work=str(tmp_path / "w"), jobs="none")
    with live_server(settings) as url:
        first = pbkit("push", str(runs), "--to", url, "--token", token, "--json")
        assert first.code == 0, first.err
        assert first.json()["created"] == 3
        os.environ[client.TOKEN_ENV] = token
        try:
            again = pbkit("push", str(runs / "run-0"), str(runs), "--to", url)
        finally:
            os.environ.pop(client.TOKEN_ENV)
        assert again.code == 0 and "4 unchanged" in again.err
        (runs / "broken").mkdir()
        (runs / "broken" / "record.json").write_text('{"schema_version": "9.0"}')
        bad = pbkit("push", str(runs), "--to", url, "--token", token)
        assert bad.code == 2 and "1 of 4 record(s) refused" in bad.err
        assert "schema '9.0'" in bad.out
        nope = pbkit("push", str(runs), "--to", url, "--token", "pbk_wrong")
        assert nope.code == 2 and "401" in nope.err
        gone = pbkit("push", str(runs), "--to", f"http://127.0.0.1:{free_port()}", "--retries", "1")
        assert gone.code == 2 and "after 2 attempts" in gone.err
    assert Store(store_url).count() == 3


def test_the_study_runner_pushes_each_trial_through_its_hook(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    from pbkit.study.runner import TrialEvent

    runs = _write_runs(tmp_path / "study" / "runs", "NVIDIA L4", 2)
    settings = Settings(store=store_url, port=free_port(), work=str(tmp_path / "w"), jobs="none")
    notes: list[str] = []
    with live_server(settings) as url, client.Client(url, tokens["push"]) as c:
        hook = client.StudyPusher(c, notes.append)
        for i, run in enumerate(runs):
            hook(
                TrialEvent(
                    "s2", run.name, "done", None, 1.0, run / "record.json",
                    {"done": i + 1, "failed": 0, "pending": 1 - i, "skipped": 0}, 1 - i, 3.0,
                )
            )  # fmt: skip
        hook(TrialEvent("s2", "r-x", "failed", "boom", 1.0, None, {"failed": 1}, 0, None))
    assert notes == []
    s = Store(store_url)
    assert [r.study for r in s.records()] == ["s2", "s2"]
    (p,) = s.progress("s2")
    assert p.counts == {"failed": 1} and p.failures == [{"run_id": "r-x", "error": "boom"}]


# ------------------------------------------------------------------------- load and kill tests


def _pusher(url: str, token: str, recs: list[bytes], out: list[str], **kw: Any) -> None:
    with client.Client(url, token, **kw) as c:
        for body in recs:
            out.append(c.push_bytes(body, "-").outcome)


def test_load_concurrent_pushers_store_every_record_once(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    pushers, per = 8, 40
    port = free_port()
    proc = start_service(store_url, port, tmp_path / "w", "--jobs", "none")
    url = f"http://127.0.0.1:{port}"
    try:
        bodies = [
            [raw(make_record(f"p{p}-r{i}", f"GPU {p % 3}")) for i in range(per)]
            for p in range(pushers)
        ]
        outcomes: list[list[str]] = [[] for _ in range(pushers)]
        threads = [
            threading.Thread(target=_pusher, args=(url, tokens["push"], bodies[p], outcomes[p]))
            for p in range(pushers)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        wall = time.perf_counter() - t0
        # the same records again, concurrently: nothing new
        again: list[list[str]] = [[] for _ in range(pushers)]
        threads = [
            threading.Thread(target=_pusher, args=(url, tokens["push"], bodies[p], again[p]))
            for p in range(pushers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        stop(proc)
    n = pushers * per
    assert [o for out in outcomes for o in out] == ["created"] * n
    assert [o for out in again for o in out] == ["unchanged"] * n
    s = Store(store_url)
    assert s.count() == n and s.check() == []
    assert len({r.run_id for r in s.records()}) == n
    figures = {
        "records": n,
        "pushers": pushers,
        "wall_s": round(wall, 3),
        "records_per_s": round(n / wall, 1),
        "store": "sqlite",
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "serve-load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"load: {figures}")


def test_kill_the_service_midway_nothing_lost_nothing_duplicated(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    pushers, per = 4, 60
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = tmp_path / "w"
    proc = start_service(store_url, port, work, "--jobs", "none")
    bodies = [
        [raw(make_record(f"k{p}-r{i}", "NVIDIA A100")) for i in range(per)] for p in range(pushers)
    ]
    outcomes: list[list[str]] = [[] for _ in range(pushers)]
    retries: list[str] = []
    threads = [
        threading.Thread(
            target=_pusher,
            args=(url, tokens["push"], bodies[p], outcomes[p]),
            kwargs={
                "retries": 40,
                "backoff_s": 0.1,
                "max_backoff_s": 1.0,
                "timeout_s": 10.0,
                "on_retry": retries.append,
            },
        )
        for p in range(pushers)
    ]
    for t in threads:
        t.start()
    try:
        s = Store(store_url)
        deadline = time.time() + 120
        while s.count() < pushers * per // 3:
            assert time.time() < deadline
            time.sleep(0.02)
        s.close()
        proc.send_signal(signal.SIGKILL)  # midway, with pushes in flight
        proc.wait()
        time.sleep(1.0)
        proc = start_service(store_url, port, work, "--jobs", "none")
        for t in threads:
            t.join(timeout=300)
    finally:
        stop(proc)
    n = pushers * per
    got = [o for out in outcomes for o in out]
    assert len(got) == n and set(got) <= {"created", "unchanged"}  # unchanged: a lost answer
    assert retries, "the kill did not interrupt any push"
    s = Store(store_url)
    assert s.count() == n and s.check() == []
    stored = {info.run_id: body for info, body in s.bodies()}
    sent = {json.loads(b)["run_id"]: b.decode() for bs in bodies for b in bs}
    assert stored == sent  # every record, whole, once


# ---------------------------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path | str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        return "Debian's postgresql is not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root"
    return found[-1].parent


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A throwaway PostgreSQL from Debian's package (as the postgres user where run as root)."""
    found = _postgres_bin()
    if isinstance(found, str):
        pytest.skip(f"PostgreSQL test: {found}")
    import tempfile

    # its own folder under /tmp: the postgres user cannot enter pytest's (0700, root's)
    data = Path(tempfile.mkdtemp(prefix="pbkit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    for cmd in (
        [str(found / "initdb"), "-D", str(data), "--auth=trust", "-U", "pbkit"],
        [str(found / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log")]
        + ["-o", f"-p {port} -k {data} -h 127.0.0.1", "start"],
    ):
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            pytest.fail(f"{cmd[0]}: {done.stderr or done.stdout}")
    try:
        yield f"postgresql://pbkit@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(found / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


def test_postgresql_store_concurrent_pushes_of_one_identity_store_it_once(
    postgres: str, tmp_path: Path
) -> None:
    s = Store(postgres)
    assert s.shown.startswith("postgresql+psycopg://pbkit@")
    token = s.create_token("pg-box", "push")
    assert s.token(token) is not None and s.token("pbk_x") is None
    inc = ingest.incoming(raw(make_record("same")))
    outcomes: list[str] = []

    def push() -> None:
        outcomes.append(Store(postgres).push(inc, "pg-box", None).outcome)

    threads = [threading.Thread(target=push) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] + ["unchanged"] * 7
    assert s.count() == 1 and s.check() == []
    with api(postgres, tmp_path) as c:
        r = c.post(
            "/api/records", content=raw(make_record("other", "NVIDIA L4")), headers=bearer(token)
        )
        assert r.status_code == 201
        assert len(c.get("/api/records", headers=bearer(token)).json()["records"]) == 2
        assert "Across machines" in c.get("/", headers=bearer(token)).text


# ---------------------------------------------------------------------- a study on a local Ray


@pytest.mark.slow
def test_a_submitted_study_runs_on_a_local_ray_and_fills_the_page(
    pbkit: Callable[..., Any], store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    import httpx

    study = tmp_path / "tiny.study.yaml"
    import yaml

    study.write_text(yaml.safe_dump(SMALL_STUDY))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(store_url, port, tmp_path / "w", "--jobs", "local")
    try:
        sent = pbkit("submit", str(study), "--to", url, "--token", tokens["submit"], "--json")
        assert sent.code == 0, sent.err
        assert sent.json()["trials"] == 1
        h = bearer(tokens["read"])
        deadline = time.time() + 400
        while True:
            subs = httpx.get(f"{url}/api/studies", headers=h).json()
            state = subs["submissions"][0]["state"]
            if state not in ("queued", "running"):
                break
            assert time.time() < deadline, "the study did not finish in 400 s"
            time.sleep(2)
        log = next((tmp_path / "w" / "studies").glob("*-tiny/driver.log")).read_text()
        assert state == "succeeded", log[-3000:]
        (progress,) = subs["progress"]
        assert progress["name"] == "tiny" and progress["counts"]["done"] == 1
        assert progress["pushed_by"] == "submission-1"
        records = httpx.get(f"{url}/api/records", headers=h).json()["records"]
        assert len(records) == 1 and records[0]["study"] == "tiny"
        assert records[0]["pushed_by"] == "submission-1"
        assert records[0]["run_id"] in httpx.get(f"{url}/", headers=h).text
        tokens_now = Store(store_url).tokens()
        assert next(t for t in tokens_now if t.name == "submission-1").revoked_utc
    finally:
        stop(proc)


@pytest.mark.parametrize(
    "cmd",
    [
        ["serve"],
        ["serve", "start"],
        ["serve", "token", "create"],
        ["serve", "token", "list"],
        ["serve", "token", "revoke"],
        ["push"],
        ["submit"],
    ],
)
def test_every_new_command_has_help_with_an_example(
    pbkit: Callable[..., Any], cmd: list[str]
) -> None:
    r = pbkit(*cmd, "--help")
    assert r.code == 0 and "Example" in r.out
    if cmd == ["serve", "start"]:
        assert "127.0.0.1" in r.out and "--anonymous-read" in r.out


def test_a_study_folder_is_pushed_under_its_study_with_its_progress(
    pbkit: Callable[..., Any], store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    from pbkit.study import state

    folder = tmp_path / "study"
    _write_runs(folder / "runs", "NVIDIA H100", 2)
    trials = [
        {"hash": "a", "run_id": "run-0", "status": "done", "params": {}, "error": None},
        {"hash": "b", "run_id": "run-1", "status": "done", "params": {}, "error": None},
        {"hash": "c", "run_id": "run-2", "status": "failed", "params": {}, "error": "boom"},
    ]
    state.write(folder, {"format": state.FORMAT, "name": "s3", "trials": trials})
    settings = Settings(store=store_url, port=free_port(), work=str(tmp_path / "w"), jobs="none")
    with live_server(settings) as url:
        r = pbkit("push", str(folder), "--to", url, "--token", tokens["push"], "--json")
        assert r.code == 0 and r.json()["created"] == 2
    s = Store(store_url)
    assert {r.study for r in s.records()} == {"s3"}
    (p,) = s.progress("s3")
    assert p.counts["done"] == 2 and p.failures == [{"run_id": "run-2", "error": "boom"}]


# ------------------------------------------------------------------ refusals in the event log


def test_every_refusal_is_logged_with_the_tokens_name(
    store_url: str, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbkit.serve import app as app_module

    body = raw(make_record("r1"))
    s = Store(store_url)
    revoked = s.create_token("old-box", "push")
    assert s.revoke_token("old-box")
    s.close()
    with api(store_url, tmp_path) as c:
        assert c.post("/api/records", content=body).status_code == 401
        assert c.post("/api/records", content=body).status_code == 401  # (counted, not logged)
        assert c.get("/api/records", headers=bearer("pbk_wrong")).status_code == 401
        assert c.get("/api/records", headers={"Authorization": "Basic eA=="}).status_code == 401
        assert c.post("/api/records", content=body, headers=bearer(revoked)).status_code == 401
        assert (
            c.post("/api/records", content=body, headers=bearer(tokens["read"])).status_code == 403
        )
        r = c.post("/api/studies", content=b"name: x", headers=bearer(tokens["push"]))
        assert r.status_code == 403
        assert c.get("/").status_code == 401  # the page: its sign-in form
        assert c.post("/login", content=b"token=pbk_wrong").status_code == 401
        monkeypatch.setattr(app_module, "REFUSALS_EVERY_S", 0.0)
        assert c.post("/api/records", content=body).status_code == 401
        events = c.get("/api/events", headers=bearer(tokens["read"])).json()["events"]
    got = [(e["token"], e["action"], e["outcome"]) for e in reversed(events)]
    assert [g for g in got if g[2] in ("401", "403")] == [
        ("anonymous", "push", "401"),
        ("unknown", "read", "401"),
        ("old-box", "push", "401"),
        ("read-box", "push", "403"),
        ("push-box", "submit", "403"),
        ("anonymous", "read", "401"),
        ("unknown", "login", "401"),
        ("anonymous", "push", "401"),
    ]
    by = {(e["token"], e["action"]): e["detail"] for e in reversed(events) if e["outcome"] == "401"}
    assert "POST /api/records from testclient" in by[("anonymous", "push")]
    assert "and 1 more like it" in by[("anonymous", "push")]  # the one not logged, counted
    assert "revoked" in by[("old-box", "push")]
    assert "Basic" not in json.dumps(events) and "pbk_wrong" not in json.dumps(events)


def test_the_submit_form_page_and_its_script_are_served_with_a_strict_policy(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with api(store_url, tmp_path) as c:
        assert c.get("/submit").status_code == 401  # the sign-in form
        r = c.get("/submit", headers=bearer(tokens["read"]))
        assert r.status_code == 200 and 'id="submit-form"' in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
        assert "<script>" not in r.text  # no inline script: only /assets/submit.js
        js = c.get("/assets/submit.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "sessionStorage" in js.text and "Authorization" in js.text
        assert "innerHTML" not in js.text and 'credentials: "omit"' in js.text
        # the sign-in cookie never submits, and no other origin is let in (no CORS)
        c.cookies.set("pbkit_token", tokens["submit"])
        assert c.post("/api/studies", content=b"name: x").status_code == 401
        pre = c.options(
            "/api/studies",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in pre.headers


# ------------------------------------------------------------------------ submitted studies


class FakeRunner(jobs.Runner):
    """Starts nothing: a job runs until the test says how it ended."""

    name = "fake"

    def __init__(self, outlives: bool = False) -> None:
        self.outlives_service = outlives
        self.name = "ray" if outlives else "fake"
        self.states: dict[str, jobs.JobState] = {}
        self.started: list[tuple[str, str]] = []  # (the study file, its push token)

    def start(self, sid: int, study_file: Path, out: Path, push_url: str, token: str) -> str:
        self.started.append((study_file.read_text(), token))
        self.states[f"fake-{sid}"] = jobs.JobState("queued")
        return f"fake-{sid}"

    def state(self, job_id: str) -> jobs.JobState:
        return self.states[job_id]


def test_the_studies_page_shows_each_submissions_progress_and_how_it_ended(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with api(store_url, tmp_path) as c:
        runner = FakeRunner()
        c.app.state.jobs._runner = runner
        h = bearer(tokens["submit"])
        for _ in range(2):
            assert c.post("/api/studies", json=SMALL_STUDY, headers=h).status_code == 201
        (_, token1), (_, token2) = runner.started
        runner.states["fake-1"] = jobs.JobState("running")
        c.app.state.jobs.poll()
        p = {
            "counts": {"done": 3, "failed": 1, "pending": 2},
            "running": 1,
            "eta_s": 300.0,
            "failures": [{"run_id": "tiny-x", "error": "PbkitError: <b>out of memory</b>"}],
        }
        r = c.post("/api/studies/tiny/progress", json=p, headers=bearer(token1))
        assert r.status_code == 200
        page_ = c.get("/studies", headers=h).text
        row1 = page_.split('data-id="1"')[1].split("</tr>")[0]
        assert '<td class="state">running</td>' in row1
        assert '<td class="done">3</td>' in row1 and '<td class="failed">1</td>' in row1
        assert '<td class="running">1</td>' in row1 and '<td class="eta">5 min</td>' in row1
        assert "&lt;b&gt;out of memory&lt;/b&gt;" in page_ and "<b>out" not in page_
        row2 = page_.split('data-id="2"')[1].split("</tr>")[0]
        assert '<td class="state">queued</td>' in row2 and '<td class="done">-</td>' in row2
        runner.states["fake-1"] = jobs.JobState("failed", "error: trial tiny-x: out of memory")
        runner.states["fake-2"] = jobs.JobState("succeeded")
        c.app.state.jobs.poll()
        subs = {s["id"]: s for s in c.get("/api/studies", headers=h).json()["submissions"]}
        assert subs[1]["state"] == "failed" and "out of memory" in subs[1]["error"]
        assert subs[2]["state"] == "succeeded"
        page_ = c.get("/studies", headers=h).text
        assert "error: trial tiny-x: out of memory" in page_.split('data-id="1"')[1]
        # each job's push token ends with it
        assert (
            c.post("/api/studies/tiny/progress", json=p, headers=bearer(token2)).status_code == 401
        )
    listed = {t.name: t for t in Store(store_url).tokens()}
    assert listed["submission-1"].revoked_utc and listed["submission-2"].revoked_utc


def test_a_ray_job_outlives_the_service_and_is_followed_again(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    with api(store_url, tmp_path, jobs="ray", ray_address="http://127.0.0.1:9") as c:
        c.app.state.jobs._runner = FakeRunner(outlives=True)
        r = c.post("/api/studies", json=SMALL_STUDY, headers=bearer(tokens["submit"]))
        assert r.status_code == 201
    (sub,) = Store(store_url).submissions()
    assert sub.state in ("queued", "running") and sub.job_id == "fake-1"  # left to the cluster
    assert not next(t for t in Store(store_url).tokens() if t.name == "submission-1").revoked_utc
    s = Store(store_url)
    again = jobs.Jobs(s, "ray", tmp_path / "w", "http://x", ray_address="http://127.0.0.1:9")
    fake = FakeRunner(outlives=True)
    fake.states["fake-1"] = jobs.JobState("succeeded")
    again._runner = fake
    again.poll()
    assert s.submissions()[0].state == "succeeded"
    assert next(t for t in s.tokens() if t.name == "submission-1").revoked_utc


def test_which_runner_takes_studies(pbkit: Callable[..., Any], tmp_path: Path) -> None:
    assert jobs.default_runner(None) == "local"
    assert jobs.default_runner("http://head:8265") == "ray"
    assert jobs.unavailable("ray", "http://head:8265") is None
    assert "dashboard" in (jobs.unavailable("ray", "ray://head:10001") or "")
    assert "--ray-address" in (jobs.unavailable("ray", None) or "")
    store = f"sqlite:///{tmp_path / 'x.db'}"
    r = pbkit("serve", "--store", store, "--ray-address", "head:6379")
    assert r.code == 2 and "dashboard, http://HEAD:8265" in r.err
    r = pbkit("serve", "--store", store, "--jobs", "local", "--ray-address", "http://h:8265")
    assert r.code == 2 and "--jobs ray" in r.err
    assert pbkit("serve", "--store", store, "--max-artifact-mib", "-1").code == 2
    assert jobs._last_error(["Running entrypoint", "error: study tiny: boom", "bye"]) == (
        "error: study tiny: boom"
    )
    assert jobs._last_error([]) is None


def test_ray_is_given_the_clusters_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert jobs.ray_auth_headers() == {}
    (tmp_path / "t").write_text("abc123\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert jobs.ray_auth_headers() == {"Authorization": "Bearer abc123"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "fromenv")
    assert jobs.ray_auth_headers() == {"Authorization": "Bearer fromenv"}
    # a cluster that does not answer: the submission says why, in one line (502)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    store = f"sqlite:///{tmp_path / 's.db'}"
    s = Store(store)
    submit = s.create_token("alice", "submit")
    s.close()
    dead = f"http://127.0.0.1:{free_port()}"
    with api(store, tmp_path, jobs="ray", ray_address=dead) as c:
        r = c.post("/api/studies", json=SMALL_STUDY, headers=bearer(submit))
        assert r.status_code == 502 and "could not be started" in r.json()["error"]
        assert "\n" not in r.json()["error"]
        (sub,) = c.get("/api/studies", headers=bearer(submit)).json()["submissions"]
        assert sub["state"] == "failed" and sub["error"]


# ------------------------------------------------------------------------------- artifacts


def _run_with_onnx(root: Path, run_id: str, sizes: dict[str, int]) -> tuple[Path, dict[str, bytes]]:
    """A run folder whose record lists ONNX files of these sizes (their bytes beside it)."""
    folder = root / run_id
    folder.mkdir(parents=True)
    rec = make_record(run_id)
    data = {}
    for variant, size in sizes.items():
        name = f"{variant}.onnx"
        data[name] = (variant.encode() * (size // len(variant) + 1))[:size]
        (folder / name).write_bytes(data[name])
        rec["artifacts"]["onnx"][variant].update(
            path=name, sha256=hashlib.sha256(data[name]).hexdigest(), bytes=size
        )
    (folder / "record.json").write_bytes(raw(rec))
    return folder, data


def test_artifacts_only_those_a_record_lists_within_the_limit(
    store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    folder, data = _run_with_onnx(tmp_path / "runs", "onnx-run", {"dense": 3000, "pruned": 2000})
    push, read = bearer(tokens["push"]), bearer(tokens["read"])
    work = tmp_path / "work"
    with api(store_url, tmp_path, max_artifact_bytes=2500) as c:
        key = c.post(
            "/api/records", content=(folder / "record.json").read_bytes(), headers=push
        ).json()["key"]
        listing = c.get(f"/api/artifacts/{key}", headers=read).json()
        assert [x["name"] for x in listing["listed"]] == ["dense.onnx", "pruned.onnx"]
        assert listing["stored"] == [] and listing["max_bytes"] == 2500
        url = f"/api/artifacts/{key}"
        assert (
            c.put(f"{url}/pruned.onnx", content=data["pruned.onnx"], headers=read).status_code
            == 403
        )
        assert c.put(f"{url}/pruned.onnx", content=data["pruned.onnx"]).status_code == 401
        r = c.put(f"{url}/pruned.onnx", content=b"x" * 2000, headers=push)  # not its bytes
        assert r.status_code == 422 and "sha256" in r.json()["error"]
        r = c.put(f"{url}/other.onnx", content=b"x", headers=push)
        assert r.status_code == 422 and "lists no ONNX file" in r.json()["error"]
        r = c.put(f"{url}/dense.onnx", content=data["dense.onnx"], headers=push)
        assert r.status_code == 413 and "2500" in r.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: cut off as it streams
            for i in range(0, 3000, 500):
                yield data["dense.onnx"][i : i + 500]

        assert c.put(f"{url}/dense.onnx", content=chunks(), headers=push).status_code == 413
        nokey = "/api/artifacts/" + "0" * 64 + "/pruned.onnx"
        assert c.put(nokey, content=b"x", headers=push).status_code == 404  # no such record
        left = [p for p in (work / "artifacts").rglob("*") if p.is_file()]
        assert left == []  # nothing kept of what was refused
        r = c.put(f"{url}/pruned.onnx", content=data["pruned.onnx"], headers=push)
        assert r.status_code == 201 and r.json()["outcome"] == "created"
        r = c.put(f"{url}/pruned.onnx", content=data["pruned.onnx"], headers=push)
        assert r.status_code == 200 and r.json()["outcome"] == "unchanged"
        got = c.get(f"{url}/pruned.onnx", headers=read)
        assert got.status_code == 200 and got.content == data["pruned.onnx"]
        assert got.headers["content-disposition"].startswith("attachment")
        assert got.headers["content-type"] == "application/octet-stream"
        assert c.get(f"{url}/dense.onnx", headers=read).status_code == 404
        assert c.get(f"{url}/pruned.onnx").status_code == 401
        page_ = c.get("/", headers=read).text
        assert f'href="/api/artifacts/{key}/pruned.onnx"' in page_  # on the run's page
        assert 'href="/api/artifacts/' + key + '/dense.onnx"' not in page_
        events = c.get("/api/events", headers=read).json()["events"]
        arts = [(e["token"], e["outcome"]) for e in reversed(events) if e["action"] == "artifact"]
        assert arts == [("push-box", "refused")] * 4 + [
            ("push-box", "created"),
            ("push-box", "unchanged"),
        ]
    stored = [p for p in (work / "artifacts").rglob("*") if p.is_file()]
    assert [p.name for p in stored] == [hashlib.sha256(data["pruned.onnx"]).hexdigest()]


def test_cli_push_artifacts_sends_each_once_and_refuses_past_the_limit(
    pbkit: Callable[..., Any], store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    folder, data = _run_with_onnx(tmp_path / "runs", "cli-run", {"dense": 3000, "pruned": 2000})
    settings = Settings(
        store=store_url,
        port=free_port(),
        work=str(tmp_path / "w"),
        jobs="none",
        max_artifact_bytes=2500,
    )
    with live_server(settings) as url:
        plain = pbkit("push", str(folder), "--to", url, "--token", tokens["push"], "--json")
        assert plain.code == 0 and "artifacts" not in plain.json()  # only when asked
        first = pbkit(
            "push", str(folder), "--to", url, "--token", tokens["push"], "--artifacts", "--json"
        )
        assert first.code == 2 and "1 of 2 ONNX file(s) refused" in first.err
        arts = {a["name"]: a for a in first.json()["artifacts"]}
        assert arts["pruned.onnx"]["outcome"] == "created"
        assert arts["dense.onnx"]["outcome"] == "refused"
        assert "413" in arts["dense.onnx"]["message"] and "2500" in arts["dense.onnx"]["message"]
        (folder / "dense.onnx").unlink()
        again = pbkit("push", str(folder), "--to", url, "--token", tokens["push"], "--artifacts")
        assert again.code == 0, again.err
        assert "unchanged pruned.onnx" in again.out and "missing   dense.onnx" in again.out
        assert "ONNX files: 1 missing, 1 unchanged" in again.err
        with client.Client(url, tokens["read"]) as c:
            r = c.request("GET", "/api/records/cli-run")
            key = r.headers["x-pbkit-record-key"]
            got = c.request("GET", f"/api/artifacts/{key}/pruned.onnx")
            assert got.content == data["pruned.onnx"]
    events = Store(store_url).events()
    assert [e.outcome for e in events if e.action == "artifact"] == ["created"]  # sent once
