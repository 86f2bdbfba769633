"""``pbkit serve``'s page in a real browser (the system's chromium through selenium, as
tests/test_report_browser.py): sign in with a token, the report with no console error and no
request but to the service, a record pushed from a second machine appearing by itself in the
across-machines view (the chosen filter kept), the run page, a record's markup never run, and the
study submission form (its token asked once, kept in the tab, sent as a header, never a cookie).

Where no browser is installed these tests skip and say why."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import browser as browser_tools
from pbkit.serve import client
from pbkit.serve.app import Settings
from pbkit.serve.store import Store
from tests.test_serve import (
    ARTIFACTS,
    PAYLOAD,
    SMALL_STUDY,
    FakeRunner,
    free_port,
    live_server,
    make_record,
    raw,
)

FOUND = browser_tools.find()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=f"browser tests: {FOUND}")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("serve")
    url = f"sqlite:///{tmp / 'pbkit.db'}"
    s = Store(url)
    tokens = {"read": s.create_token("reader", "read"), "push": s.create_token("a100", "push")}
    s.close()
    settings = Settings(store=url, port=free_port(), work=str(tmp / "w"), jobs="none", poll_s=0.5)
    with live_server(settings) as base, client.Client(base, tokens["push"]) as c:
        c.push_bytes(raw(make_record("shared-run", "NVIDIA A100", 1.50)), "-")
        c.push_bytes(raw(make_record("a100-only", "NVIDIA A100", 1.40, model="resnet56_x")), "-")
        yield base, tokens


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    driver = browser_tools.start()
    yield driver
    driver.quit()


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _sign_in(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/login")
    driver.delete_all_cookies()  # (signed out: the sign-in of an earlier test forgotten)
    driver.get(base + "/")
    assert "sign in" in driver.page_source
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    _until(lambda: _css(driver, "#pb-live"), "the report after signing in")


def _until(cond: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def test_a_pushed_record_appears_live_in_the_across_machines_view(
    chromium: Any, service: tuple[str, dict[str, str]]
) -> None:
    from selenium.webdriver.support.ui import Select

    base, tokens = service
    _sign_in(chromium, base, tokens["read"])  # (the page before it is a 401: logged)
    chromium.get_log("browser")
    chromium.get_log("performance")
    heads = [th.text for th in _css(chromium, "#machines thead th")]
    assert "NVIDIA A100" in heads and "NVIDIA L4" not in heads
    Select(_css(chromium, 'select[data-filter="model"]')[0]).select_by_value("resnet18_cifar")
    shown = [r for r in _css(chromium, "tr.entry") if r.is_displayed()]
    assert shown and all(r.get_attribute("data-model") == "resnet18_cifar" for r in shown)
    # a second machine pushes the same run: the page reloads itself, the filter kept
    with client.Client(base, tokens["push"]) as c:
        assert c.push_bytes(raw(make_record("shared-run", "NVIDIA L4", 2.10)), "-").outcome == (
            "created"
        )
    _until(
        lambda: "NVIDIA L4" in [th.text for th in _css(chromium, "#machines thead th")],
        "the L4 column",
    )
    model = Select(_css(chromium, 'select[data-filter="model"]')[0])
    assert model.first_selected_option.get_attribute("value") == "resnet18_cifar"
    row = next(
        tr
        for tr in _css(chromium, "#machines tbody tr")
        if tr.get_attribute("data-backend") == "torch-cpu"
    )
    text = row.text
    assert "1.50" in text and "2.10" in text  # both machines' measured speed-ups, side by side
    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    requests = [json.loads(e["message"])["message"] for e in chromium.get_log("performance")]
    urls = {
        m["params"]["request"]["url"]
        for m in requests
        if m["method"] == "Network.requestWillBeSent"
    }
    assert urls and all(u.startswith(base + "/") for u in urls), urls  # the service, nothing else
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chromium.save_screenshot(str(ARTIFACTS / "serve-page.png"))


def test_the_run_page_opens_from_its_url(
    chromium: Any, service: tuple[str, dict[str, str]]
) -> None:
    base, tokens = service
    _sign_in(chromium, base, tokens["read"])
    chromium.get(base + "/runs/a100-only")
    opened = _until(
        lambda: [d for d in _css(chromium, "details.run[open]") if "a100-only" in d.text],
        "the run page",
    )
    body = opened[0].find_element("css selector", ".body")
    _until(lambda: "resnet56_x" in body.text, "the run's facts")
    assert "opening" not in body.text


def test_markup_in_a_record_is_shown_as_text_and_never_runs(
    chromium: Any, service: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    base, tokens = service
    rec = make_record(
        "inj", PAYLOAD, 1.2, model=PAYLOAD, method=PAYLOAD, dataset=PAYLOAD, cpu=PAYLOAD
    )
    with client.Client(base, tokens["push"]) as c:
        assert c.push_bytes(raw(rec), "-").outcome == "created"
    _sign_in(chromium, base, tokens["read"])
    chromium.get(base + "/runs/inj")
    _until(lambda: PAYLOAD[:20] in chromium.find_element("tag name", "body").text, "the payload")
    alerts = chromium.execute_script("return document.querySelectorAll('img[src=\"x\"]').length")
    assert alerts == 0
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        chromium.switch_to.alert.text  # noqa: B018  (no script of the record ran)


@pytest.fixture
def submitting(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], FakeRunner]]:
    """A service whose studies go to a runner that starts nothing (what the form sends is the
    point here; tests/test_serve_ray.py runs one for real)."""
    url = f"sqlite:///{tmp_path / 'pbkit.db'}"
    s = Store(url)
    tokens = {"read": s.create_token("reader", "read"), "submit": s.create_token("alice", "submit")}
    s.close()
    runner = FakeRunner()
    settings = Settings(store=url, port=free_port(), work=str(tmp_path / "w"), poll_s=0.5)

    def prepare(app: Any) -> None:
        app.state.jobs._runner = runner

    with live_server(settings, prepare) as base:
        yield base, tokens, runner


def test_the_form_submits_a_study_with_a_token_kept_in_the_tab_only(
    chromium: Any, submitting: tuple[str, dict[str, str], FakeRunner], tmp_path: Path
) -> None:
    import yaml
    from selenium.webdriver.common.by import By

    base, tokens, runner = submitting
    _sign_in(chromium, base, tokens["read"])  # the page reads with the sign-in cookie
    chromium.get(base + "/submit")
    chromium.execute_script("sessionStorage.clear()")
    chromium.get(base + "/submit")
    chromium.get_log("browser")
    result = chromium.find_element(By.ID, "submit-result")
    token = chromium.find_element(By.ID, "submit-token")
    assert token.is_displayed()
    # a file chosen in the browser, read into the form
    study = tmp_path / "tiny.study.yaml"
    study.write_text(yaml.safe_dump(SMALL_STUDY))
    chromium.find_element(By.ID, "study-file").send_keys(str(study))
    text = chromium.find_element(By.ID, "study-text")
    _until(lambda: "resnet20_cifar" in (text.get_attribute("value") or ""), "the file read")
    token.send_keys(tokens["submit"])
    chromium.find_element(By.ID, "submit-study").click()
    _until(lambda: "submitted as #1" in result.text, "the first submission")
    assert "1 trial(s)" in result.text
    kept = chromium.execute_script("return sessionStorage.getItem('pbkit-submit-token')")
    assert kept == tokens["submit"]  # in the tab: asked once
    assert all(c["value"] != tokens["submit"] for c in chromium.get_cookies())  # never a cookie
    assert not token.is_displayed() and chromium.find_element(By.ID, "token-kept").is_displayed()
    # a second study, pasted: the kept token goes with it
    second = {**SMALL_STUDY, "name": "pasted"}
    text.clear()
    text.send_keys(yaml.safe_dump(second))
    chromium.find_element(By.ID, "submit-study").click()
    _until(lambda: "study pasted submitted as #2" in result.text, "the second submission")
    assert [yaml.safe_load(f)["name"] for f, _ in runner.started] == ["tiny", "pasted"]
    # a refusal is told as text (the service's message, markup and all, never run)
    bad = {**SMALL_STUDY, "name": PAYLOAD}
    text.clear()
    text.send_keys(yaml.safe_dump(bad))
    chromium.find_element(By.ID, "submit-study").click()
    _until(lambda: "refused (422)" in result.text, "the refusal")
    assert chromium.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    # a wrong token: refused, forgotten, asked for again
    chromium.find_element(By.ID, "forget-token").click()
    assert token.is_displayed()
    token.send_keys("pbk_wrong")
    text.clear()
    text.send_keys(yaml.safe_dump(SMALL_STUDY))
    chromium.find_element(By.ID, "submit-study").click()
    _until(lambda: "refused (401)" in result.text, "the wrong token refused")
    assert chromium.execute_script("return sessionStorage.getItem('pbkit-submit-token')") is None
    assert token.is_displayed()
    errors = [
        e
        for e in chromium.get_log("browser")
        if e["level"] == "SEVERE" and "/api/studies" not in e["message"]  # (the 4xx asked for)
    ]
    assert errors == []
    # the studies page: both, submitted by the token's name
    chromium.get(base + "/studies")
    rows = _css(chromium, "#submissions tbody tr[data-state]")
    assert sorted(r.get_attribute("data-id") for r in rows) == ["1", "2"]
    assert all("alice" in r.text for r in rows)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chromium.save_screenshot(str(ARTIFACTS / "serve-studies.png"))
