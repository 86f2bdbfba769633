"""``pbkit serve --jobs ray``: a study submitted to the service goes through Ray's own job
submission (``ray[default]``'s dashboard) to a Ray head started here, runs, and fills the page.

The head is this test's own: its ports are free ones, its dashboard binds 127.0.0.1, it has
token authentication with a token made here, and its temporary folder is its own. It is stopped
by its processes' ids (those whose command line names that folder, and their children), never
with ``ray stop``, which stops every Ray on the machine (another test's, another user's)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pbkit.serve.store import Store
from tests.test_serve import SMALL_STUDY, bearer, free_port, start_service, stop


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pbkit.db'}"


@pytest.fixture
def tokens(store_url: str) -> dict[str, str]:
    s = Store(store_url)
    try:
        return {role: s.create_token(f"{role}-box", role) for role in ("read", "submit")}
    finally:
        s.close()


def _ports(n: int) -> list[int]:
    got: list[int] = []
    while len(got) < n:
        p = free_port()
        if p not in got:
            got.append(p)
    return got


def stop_processes_naming(marker: str, grace_s: float = 15.0) -> int:
    """Stop the processes whose command line names ``marker`` (and their children), by id:
    SIGTERM, then SIGKILL after ``grace_s``. Never this process nor its parents."""
    import psutil

    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    found: dict[int, Any] = {}
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid not in spared and any(marker in a for a in p.info["cmdline"] or []):
                found[p.pid] = p
    for p in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                if c.pid not in spared:
                    found[c.pid] = c
    for p in found.values():
        with contextlib.suppress(psutil.Error):
            p.terminate()

    def gone(p: Any) -> bool:
        try:
            return bool(p.status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    deadline = time.time() + grace_s
    while time.time() < deadline and not all(gone(p) for p in found.values()):
        time.sleep(0.2)
    for p in found.values():
        if not gone(p):
            with contextlib.suppress(psutil.Error):
                p.kill()
    return len(found)


@contextlib.contextmanager
def ray_head() -> Iterator[tuple[str, str]]:
    """A Ray head with its dashboard on 127.0.0.1 (free ports, token authentication, its own
    temporary folder); yields the dashboard's URL and the cluster's token."""
    import httpx

    # its own folder, short: Ray's socket paths under it must stay within 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="pbkit-ray-"))
    dashboard, gcs, client_port, agent = _ports(4)
    token = secrets.token_hex(32)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        # the job's driver runs `pbkit`: the cluster's nodes have it on their PATH
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    cmd = [
        str(Path(venv_bin) / "ray"),
        "start",
        "--head",
        "--include-dashboard=true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--port",
        str(gcs),
        "--ray-client-server-port",
        str(client_port),
        "--dashboard-agent-listen-port",
        str(agent),
        "--num-cpus",
        "1",
        "--temp-dir",
        str(temp),
        "--disable-usage-stats",
    ]
    url = f"http://127.0.0.1:{dashboard}"
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if done.returncode != 0:
            pytest.fail(f"ray start: {(done.stderr or done.stdout)[-3000:]}")
        deadline = time.time() + 120
        while True:  # its job server answers once the dashboard's modules are up
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(f"{url}/api/jobs/", headers=bearer(token), timeout=5)
                if r.status_code == 200:
                    break
            assert time.time() < deadline, "Ray's dashboard did not answer in 120 s"
            time.sleep(0.5)
        yield url, token
    finally:
        stop_processes_naming(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_study_submitted_through_rays_job_submission_runs_and_fills_the_page(
    pbkit: Callable[..., Any], store_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    import httpx
    from ray.job_submission import JobSubmissionClient

    study = tmp_path / "tiny.study.yaml"
    study.write_text(yaml.safe_dump(SMALL_STUDY))
    with ray_head() as (dashboard, ray_token):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # the service is given the cluster's token the way Ray's own clients take it
        proc = start_service(
            store_url,
            port,
            tmp_path / "w",
            "--jobs",
            "ray",
            "--ray-address",
            dashboard,
            env={"RAY_AUTH_TOKEN": ray_token},
        )
        try:
            sent = pbkit("submit", str(study), "--to", url, "--token", tokens["submit"], "--json")
            assert sent.code == 0, sent.err
            assert sent.json()["trials"] == 1 and sent.json()["runner"] == "ray"
            h = bearer(tokens["read"])
            seen: set[str] = set()
            deadline = time.time() + 540
            while True:
                subs = httpx.get(f"{url}/api/studies", headers=h).json()
                (sub,) = subs["submissions"]
                seen.add(sub["state"])
                if sub["state"] not in ("queued", "running"):
                    break
                assert time.time() < deadline, f"the study did not finish in 540 s: {sub}"
                time.sleep(2)
            ray = JobSubmissionClient(dashboard, headers=bearer(ray_token))
            logs = ray.get_job_logs(sub["job_id"])
            assert sub["state"] == "succeeded", logs[-3000:]
            assert sub["runner"] == "ray" and sub["job_id"].startswith("pbkit-1-tiny-")
            assert str(ray.get_job_status(sub["job_id"])) == "SUCCEEDED"  # Ray's own view
            assert "running" in seen  # (followed while it ran, not only found finished)
            (progress,) = subs["progress"]
            assert progress["name"] == "tiny" and progress["counts"]["done"] == 1
            assert progress["pushed_by"] == "submission-1"
            records = httpx.get(f"{url}/api/records", headers=h).json()["records"]
            assert len(records) == 1 and records[0]["study"] == "tiny"
            assert records[0]["pushed_by"] == "submission-1"
            assert records[0]["run_id"] in httpx.get(f"{url}/", headers=h).text  # the page
            studies = httpx.get(f"{url}/studies", headers=h).text
            assert 'data-state="succeeded" data-id="1"' in studies
            assert '<td class="done">1</td>' in studies
            tokens_now = Store(store_url).tokens()
            assert next(t for t in tokens_now if t.name == "submission-1").revoked_utc
        finally:
            stop(proc)
