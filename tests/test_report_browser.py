"""The HTML report in a real browser (the system's chromium, driven through the system's
chromedriver by selenium; nothing is downloaded): it loads with no console error and no network
request, sorts, filters, plots one point per row with its coordinates, and opens a run. A
screenshot of the page is kept as a test artifact (``$PBKIT_ARTIFACTS``, default test-artifacts/).

Where no browser is installed (``make test`` installs Debian's chromium + chromium-driver where it
can), these tests skip and say why."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import browser as browser_tools
from tests.conftest import REPO
from tests.report_data import RUNS, make_study

FOUND = browser_tools.find()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=f"browser tests: {FOUND}")


@pytest.fixture(scope="module")
def report(pruned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pbkit.report import html
    from pbkit.report import leaderboard as lb

    dst = tmp_path_factory.mktemp("study")
    make_study(pruned_run, dst)
    out = dst / "report.html"
    out.write_text(html.page(lb.find_records(dst), [str(dst)]), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    driver = browser_tools.start()
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium: Any, report: Path) -> Any:
    """The page, freshly loaded (the logs read so far dropped)."""
    chromium.get_log("browser")
    chromium.get_log("performance")
    chromium.get(report.as_uri())
    return chromium


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _visible_rows(driver: Any) -> list[Any]:
    return [r for r in _css(driver, "tr.entry") if r.is_displayed()]


def test_loads_without_console_errors_or_network(browser: Any, report: Path) -> None:
    assert browser.title.startswith("pbkit report")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = {
        m["params"]["request"]["url"]
        for m in requests
        if m["method"] == "Network.requestWillBeSent"
    }
    assert urls == {report.as_uri()}  # the file itself, nothing else


def test_every_record_is_in_its_group_once(browser: Any) -> None:
    links = [a.get_attribute("title") for a in _css(browser, "section.group a.run-link")]
    assert sorted(links) == sorted(name for name, *_ in RUNS)  # 'waiting' (unfinished) is left out
    groups = _css(browser, "section.group")
    assert len(groups) == 3  # lr=0.01 at 2x, lr=0.001 at 2x, 3x
    main = next(g for g in groups if len(g.find_elements("css selector", "tr.entry")) == 3)
    methods = [
        r.get_attribute("data-method") for r in main.find_elements("css selector", "tr.entry")
    ]
    assert methods == ["fpgm", "l1", "lamp"]  # ranked by the final metric: 97, 95.5 (2 seeds), 93


def test_clicking_a_header_sorts(browser: Any) -> None:
    table = next(
        t
        for t in _css(browser, "table.board")
        if len(t.find_elements("css selector", "tr.entry")) == 3
    )

    def column(key: str) -> list[str]:
        return [
            td.get_attribute("data-sort")
            for td in table.find_elements("css selector", f'td[data-col="{key}"]')
        ]

    head = table.find_element("css selector", 'th[data-col="measured:torch-cpu@b1"]')
    head.click()
    assert head.get_attribute("aria-sort") == "ascending"
    assert [float(v) for v in column("measured:torch-cpu@b1")] == [
        1.0,
        1.4,
        1.65,
    ]  # lamp's ~1 sorts as 1
    head.click()
    assert head.get_attribute("aria-sort") == "descending"
    assert [
        r.get_attribute("data-method") for r in table.find_elements("css selector", "tr.entry")
    ] == ["l1", "fpgm", "lamp"]
    table.find_element("css selector", 'th[data-col="method"]').click()
    assert column("method") == ["fpgm", "l1", "lamp"]


def test_a_filter_hides_rows_and_points(browser: Any) -> None:
    from selenium.webdriver.support.ui import Select

    assert len(_visible_rows(browser)) == 5
    target = Select(_css(browser, 'select[data-filter="target"]')[0])
    target.select_by_value("3x")
    shown = _visible_rows(browser)
    assert [r.get_attribute("data-target") for r in shown] == ["3x"]
    assert browser.find_element("id", "shown").text == "1 of 5 rows shown"
    assert (
        len([p for p in _css(browser, "svg.scatter circle.measured") if p.is_displayed()]) == 2
    )  # 2 backends
    backend = Select(_css(browser, 'select[data-filter="backend"]')[0])
    backend.select_by_value("torch-cpu@b1")
    assert [c.is_displayed() for c in _css(browser, 'th[data-backend="ort-cpu@b1"]')] == [False] * 3
    assert len([p for p in _css(browser, "svg.scatter circle.measured") if p.is_displayed()]) == 1
    target.select_by_value("")
    backend.select_by_value("")
    assert len(_visible_rows(browser)) == 5


def test_the_plot_has_one_point_per_row_at_its_coordinates(browser: Any) -> None:
    svg = _css(browser, "svg.scatter")[0]
    frame = {
        k: float(svg.get_attribute(f"data-{k}"))
        for k in (
            "x-min",
            "x-max",
            "y-min",
            "y-max",
            "plot-left",
            "plot-right",
            "plot-top",
            "plot-bottom",
        )
    }
    points = [
        p
        for p in svg.find_elements("css selector", "circle.measured")
        if p.get_attribute("data-backend") == "torch-cpu@b1"
    ]
    assert len(points) == 5  # one per leaderboard row
    expected = {
        ("l1", "2x", "l1-s0,l1-s1"): (1.65, 95.5),
        ("fpgm", "2x", "fpgm-s0"): (1.4, 97.0),
        ("lamp", "2x", "lamp-s0"): (1.02, 93.0),
        ("l1", "2x", "l1-lr001-s0"): (1.62, 91.0),
        ("l1", "3x", "l1-3x-s0"): (2.1, 89.0),
    }
    for p in points:
        key = (
            p.get_attribute("data-method"),
            p.get_attribute("data-target"),
            p.get_attribute("data-run"),
        )
        x, y = float(p.get_attribute("data-x")), float(p.get_attribute("data-y"))
        assert (x, y) == pytest.approx(expected[key])
        # and the mark sits where the axes put that value
        px = frame["plot-left"] + (x - frame["x-min"]) / (frame["x-max"] - frame["x-min"]) * (
            frame["plot-right"] - frame["plot-left"]
        )
        py = frame["plot-bottom"] - (y - frame["y-min"]) / (frame["y-max"] - frame["y-min"]) * (
            frame["plot-bottom"] - frame["plot-top"]
        )
        assert float(p.get_attribute("cx")) == pytest.approx(px, abs=0.05)
        assert float(p.get_attribute("cy")) == pytest.approx(py, abs=0.05)


def test_hovering_a_point_shows_its_run(browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    point = next(
        p
        for p in _css(browser, "svg.scatter circle.measured")
        if p.get_attribute("data-run") == "fpgm-s0"
    )
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", point)
    ActionChains(browser).move_to_element(point).perform()
    tip = browser.find_element("id", "tooltip")
    assert tip.is_displayed() and "fpgm" in tip.text and "runs: fpgm-s0" in tip.text


def test_a_run_opens_with_its_record(browser: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    link = next(a for a in _css(browser, "a.run-link") if a.get_attribute("title") == "fpgm-s0")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    run = browser.find_element("id", "run-fpgm-s0")
    assert run.get_attribute("open") is not None
    body = run.find_element("css selector", "div.body")
    WebDriverWait(browser, 10).until(lambda _: body.get_attribute("data-loaded") == "1")
    assert "Latency" in body.text and "ort-cpu" in body.text
    assert (
        len(body.find_elements("css selector", "svg.curve")) == 2
    )  # finetuning top1 and loss per epoch
    full = body.find_element("css selector", "details.full")
    full.find_element("css selector", "summary").click()
    WebDriverWait(browser, 10).until(
        lambda _: full.find_element("css selector", "pre").text.startswith("{")
    )
    shown = json.loads(full.find_element("css selector", "pre").text)
    assert shown["run_id"] == "fpgm-s0" and shown["accuracy"]["finetuned"] == 97.0
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_screenshot_is_kept(browser: Any) -> None:
    out = Path(os.environ.get("PBKIT_ARTIFACTS") or REPO / "test-artifacts") / "report-browser.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
