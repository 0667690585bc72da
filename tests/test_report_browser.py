"""The HTML reports in a real browser (headless Chromium through selenium): no console errors,
every figure decodes, the run's name shows; full-page screenshots go to tests/artifacts/.

Skipped when Chromium, chromedriver or selenium is missing, except under CI (``CI`` set true),
where that is a failure: CI installs them."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from murmura.report import build_comparison_report, build_report

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")
# Markup characters in the name: the page must show them as text, title included.
RUN_NAME = "ring & <dsgd>"
PAGE_LOAD_SECONDS = 30


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, where the browser tests must run)")
    pytest.skip(reason)


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    browser, chromedriver = _find(CHROMIUM), _find(CHROMEDRIVER)
    if browser is None or chromedriver is None:
        _unavailable("Chromium or chromedriver not found (Debian: apt install chromium "
                     "chromium-driver)")
    options = webdriver.ChromeOptions()
    # Both paths given: selenium never runs Selenium Manager, so it never downloads a driver.
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(chromedriver), options=options)
    except WebDriverException as err:
        _unavailable(f"Chromium did not start through {chromedriver}: {err.msg}")
    try:
        drv.set_page_load_timeout(PAGE_LOAD_SECONDS)
        drv.set_script_timeout(PAGE_LOAD_SECONDS)
        yield drv
    finally:
        drv.quit()


def _test_report() -> Any:
    """tests/test_report.py, whose helper writes real run directories (importable by name
    under pytest's default import mode, by path otherwise)."""
    try:
        import test_report
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "test_report", Path(__file__).with_name("test_report.py")
        )
        test_report = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(test_report)
    return test_report


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    write_run = _test_report().write_run
    root = tmp_path_factory.mktemp("browser")
    return [
        write_run(root / "ring", name=RUN_NAME, rounds=8, every=1),
        write_run(root / "fedavg", name="fedavg", algorithm="fedavg", topology=None),
    ]


def open_page(driver: Any, page: Path) -> list[dict[str, Any]]:
    """Load ``page`` and return the console messages it logged."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    return driver.get_log("browser")


def check_page(driver: Any, logs: list[dict[str, Any]]) -> None:
    bad = [entry for entry in logs if entry.get("level") in ("SEVERE", "WARNING")]
    assert not bad, f"console messages: {bad}"
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
        "i.naturalHeight, i.getBoundingClientRect().width]);"
    )
    assert images, "no figures on the page"
    for complete, width, height, shown in images:
        assert complete and width > 0 and height > 0, images
        assert shown > 200, f"a figure is displayed {shown}px wide"
    # Nothing runs and nothing wider than the window: no horizontal page scroll.
    assert driver.execute_script("return document.scripts.length") == 0
    assert driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )


def screenshot(driver: Any, name: str, tmp_path: Path) -> Path:
    """A full-page PNG, in tmp_path and in tests/artifacts/."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 16000))
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    driver.set_window_size(1280, 900)
    assert shot.stat().st_size > 50_000
    return shot


def test_report_in_browser(driver, run_dirs, tmp_path):
    page = build_report(run_dirs[0])
    logs = open_page(driver, page)
    check_page(driver, logs)
    assert driver.title.startswith(RUN_NAME)
    heading = driver.execute_script("return document.querySelector('h1').firstChild.textContent")
    assert heading == RUN_NAME
    figures = driver.execute_script("return document.images.length")
    assert figures == len(list((run_dirs[0] / "plots").glob("*.png"))) == 5
    screenshot(driver, "report.png", tmp_path)


def test_comparison_in_browser(driver, run_dirs, tmp_path):
    page = build_comparison_report(run_dirs, tmp_path / "cmp")
    logs = open_page(driver, page)
    check_page(driver, logs)
    assert driver.title.startswith("Comparison of 2 runs")
    text = driver.execute_script("return document.body.innerText")
    assert RUN_NAME in text and "fedavg" in text
    assert driver.execute_script("return document.images.length") == 3
    screenshot(driver, "comparison.png", tmp_path)
