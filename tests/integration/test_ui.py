"""The dashboard at /ui/ in a real headless browser (Debian's chromium, through selenium).

zns-gate runs on a loopback socket with simulated traffic for a few OAs; the browser
opens the page like an operator and reads what it shows: the list of OAs, an OA's tier,
forecast, chart and decisions, a penalty after a burst of negatives, and the token
prompt when API tokens are configured. Screenshots at a laptop's and a phone's width go
to the test's folder, and to `$ZNS_GATE_UI_SCREENSHOTS` when that is set.

Selenium's calls block: each runs in a thread (`_in_thread`) so that the service,
on this test's event loop, keeps answering the page.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from service.simulate import Plan, simulate
from tests import feed, zalo
from tests.conftest import RunningService, ServiceFactory
from tests.integration.test_api import eventually, get, post_webhook, ready

LAPTOP = (1366, 900)
PHONE = (390, 844)
TOKEN = "dashboard-reader-token"

T = TypeVar("T")


async def _in_thread(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(call, *args)


def _executables() -> tuple[str, str]:
    """chromium and chromedriver; missing, a failure in CI and a skip elsewhere."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "the dashboard test needs Debian's chromium and chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


class Browser:
    """A headless chromium at a window size, reading one zns-gate's pages."""

    def __init__(self, base_url: str, shots: list[Path]) -> None:
        chromium, driver = _executables()
        options = Options()
        options.binary_location = chromium
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
            options.add_argument(argument)
        options.add_argument(f"--window-size={LAPTOP[0]},{LAPTOP[1]}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=ChromeService(driver))
        self.base_url = base_url
        self.shots = shots

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def wait_for(self, css: str, timeout_s: float = 20) -> WebElement:
        """The first visible element matching `css`, once there is one."""

        def found(driver: Any) -> WebElement | Literal[False]:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed():
                    return element  # type: ignore[no-any-return]
            return False

        try:
            element: WebElement = WebDriverWait(self.driver, timeout_s).until(found)
        except TimeoutException:
            status = self.driver.find_element(By.ID, "status").text
            console = self.console()
            shown = (self.driver.find_element(By.ID, "view").get_attribute("innerHTML") or "")[
                :1500
            ]
            raise AssertionError(f"no {css}; status {status!r}; {console}; {shown}") from None
        return element

    def texts(self, css: str) -> list[str]:
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css)]

    def count(self, css: str) -> int:
        return len(self.driver.find_elements(By.CSS_SELECTOR, css))

    def screenshot(self, folder: Path, name: str, size: tuple[int, int]) -> Path:
        """The whole page at `size`'s width, as tall as the page is."""
        width, height = size
        self.driver.set_window_size(width, height)
        tall = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, max(height, int(tall) + 120))
        path = folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(*LAPTOP)
        self.shots.append(path)
        return path

    def console(self) -> list[str]:
        """What the page logged to the console since the last call (errors included)."""
        entries = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [str(entry["message"]) for entry in entries]

    def page_errors(self) -> list[str]:
        """Script errors and Content-Security-Policy refusals the page logged."""
        wrong = ("Uncaught", "Content Security Policy")
        return [line for line in self.console() if any(word in line for word in wrong)]

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[list[Path]]:
    """The screenshots a test took; copied to `$ZNS_GATE_UI_SCREENSHOTS` afterwards."""
    taken: list[Path] = []
    yield taken
    wanted = os.environ.get("ZNS_GATE_UI_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copy(path, Path(wanted) / path.name)


async def _browser(service: RunningService, shots: list[Path]) -> Browser:
    _executables()  # fail or skip before anything starts
    url = str(service.client.make_url("")).rstrip("/")
    return await _in_thread(Browser, url, shots)


async def _traffic(service: RunningService) -> list[str]:
    """`zns-gate simulate` for 3 OAs, 4 seconds; the OAs, once every one is folded."""
    await ready(service)
    plan = Plan(11, 3, 0.2, zalo.APP_ID, zalo.SECRET)
    target = str(service.client.make_url("")).rstrip("/")
    summary = await simulate(target, plan, rate=40, duration_s=4)
    assert summary.as_json()["refused_by_status"] == {}

    async def folded() -> bool:
        """Every OA listed, with deliveries counted and decisions in the log."""
        _, listing = await get(service, "/v1/oas")
        if {oa["oa_id"] for oa in listing["oas"]} != set(plan.oa_ids):
            return False
        for oa_id in plan.oa_ids:
            _, quality = await get(service, f"/v1/oas/{oa_id}/quality")
            _, decisions = await get(service, f"/v1/oas/{oa_id}/decisions")
            if not quality["proxy"]["delivered_48h"] or not decisions["decisions"]:
                return False
        return True

    await eventually(folded)
    return plan.oa_ids


async def _negatives(service: RunningService, oa_id: str, count: int) -> None:
    """A burst of one-star ratings of messages the OA has not seen: each one delivered and
    negative."""
    now = datetime.now(UTC).replace(microsecond=0)
    for n in range(count):
        await post_webhook(service, feed.rating(f"burst{n}", 1, now, oa_id=oa_id))


@pytest.mark.parametrize("backend", ["embedded"])
async def test_the_dashboard_shows_the_oas_their_pages_and_a_penalty(
    service: RunningService, shots: list[Path], tmp_path: Path
) -> None:
    oa_ids = await _traffic(service)
    browser = await _browser(service, shots)
    try:
        await _in_thread(browser.open, "/ui/")
        await _in_thread(browser.wait_for, "table.oa-list")
        assert await _in_thread(browser.texts, "a.oa-link") == sorted(oa_ids)
        await _in_thread(browser.screenshot, tmp_path, "list-laptop", LAPTOP)
        await _in_thread(browser.screenshot, tmp_path, "list-phone", PHONE)

        first = sorted(oa_ids)[0]
        _, quota = await get(service, f"/v1/oas/{first}/quota")
        await _in_thread(browser.open, f"/ui/#/oa/{first}")
        shown = await _in_thread(browser.wait_for, "#tier .daily-quota")
        assert shown.text == f"{quota['daily_quota']:,}"
        assert (await _in_thread(browser.wait_for, "#forecast .projected")).text
        assert await _in_thread(browser.count, "svg.chart rect.delivered") > 0
        assert await _in_thread(browser.count, "table.decision-list tbody tr") > 0
        await _in_thread(browser.screenshot, tmp_path, "oa-laptop", LAPTOP)
        await _in_thread(browser.screenshot, tmp_path, "oa-phone", PHONE)

        # More negatives today than T (2 % of the day's starting quota): one step down.
        _, quality = await get(service, f"/v1/oas/{first}/quality")
        threshold = quality["thresholds"]["penalty_threshold_today"]
        await _negatives(service, first, threshold + 1 - quality["forecast"]["negatives_today"])

        async def penalised() -> bool:
            _, quota = await get(service, f"/v1/oas/{first}/quota")
            return any(p["kind"] == "penalty" for p in quota["penalties"])

        await eventually(penalised)
        _, after = await get(service, f"/v1/oas/{first}/quota")
        await _in_thread(browser.open, f"/ui/#/oa/{first}")
        await _in_thread(browser.driver.refresh)
        penalties = await _in_thread(browser.wait_for, "table.penalties")
        assert "negatives_beyond_threshold_today" in penalties.text
        shown = await _in_thread(browser.wait_for, "#tier .daily-quota")
        assert shown.text == f"{after['daily_quota']:,}"
        assert after["daily_quota"] < quota["daily_quota"]

        def explained() -> bool:
            """The decisions reach the log at the processor's next checkpoint: reload."""
            browser.driver.refresh()
            browser.wait_for("#decisions")
            found = browser.texts("#decisions, #tier")
            return any("went beyond the threshold" in text for text in found)

        await eventually(functools.partial(_in_thread, explained))
        await _in_thread(browser.screenshot, tmp_path, "oa-penalty-laptop", LAPTOP)
        assert await _in_thread(browser.page_errors) == []
    finally:
        await _in_thread(browser.quit)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_with_tokens_the_dashboard_asks_for_one_and_keeps_it_for_the_tab(
    service_factory: ServiceFactory, shots: list[Path], tmp_path: Path
) -> None:
    service = await service_factory(api={"tokens": [{"token": TOKEN, "scopes": ["read"]}]})
    await ready(service)
    browser = await _browser(service, shots)
    try:
        await _in_thread(browser.open, "/ui/")
        field = await _in_thread(browser.wait_for, "#login input#token")
        await _in_thread(browser.screenshot, tmp_path, "token-prompt-phone", PHONE)
        await _in_thread(field.send_keys, "not-the-token-at-all")
        await _in_thread(browser.driver.find_element(By.CSS_SELECTOR, "#login button").click)
        error = await _in_thread(browser.wait_for, "#login-error")
        assert "refused" in error.text

        field = await _in_thread(browser.wait_for, "#login input#token")
        await _in_thread(field.send_keys, TOKEN)
        await _in_thread(browser.driver.find_element(By.CSS_SELECTOR, "#login button").click)
        await _in_thread(browser.wait_for, "#oas")
        kept = await _in_thread(
            browser.driver.execute_script, "return sessionStorage.getItem('zns-gate-token')"
        )
        assert kept == TOKEN
        # A reload keeps the tab's token: no prompt again.
        await _in_thread(browser.driver.refresh)
        await _in_thread(browser.wait_for, "#oas")
        assert not await _in_thread(browser.driver.find_element(By.ID, "login").is_displayed)
        assert await _in_thread(browser.page_errors) == []
    finally:
        await _in_thread(browser.quit)
