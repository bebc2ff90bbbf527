"""The dashboard in a real headless Chromium during a live CCI run.

The run (main thread: the RunEngine installs a SIGINT handler) is held twice at a
document gate while the browser (its own thread) checks the page: first until the FTH
preview image and some CCI state counts are shown, then, after more frames, until the
counts shown have changed. No sleeps: every wait is Playwright's, with a timeout.
"""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import pytest
from rich.console import Console

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
PAIRS = 150
GATES = (50, 110)  # pairs after which the run waits for the page


def _require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (Debian packages chromium + chromium-driver; .ci/run installs them)")
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extra)")


class _Browser(threading.Thread):
    """Dashboard server + Chromium; steps through the checks as the run reaches the gates."""

    def __init__(self, tiled_uri: str, api_key: str, screenshot: Path) -> None:
        super().__init__(name="dashboard-browser", daemon=True)
        self.tiled_uri, self.api_key, self.screenshot = tiled_uri, api_key, screenshot
        self.reached = [threading.Event() for _ in GATES]  # the run is held at gate i
        self.checked = [threading.Event() for _ in GATES]  # the page passed check i
        self.error: BaseException | None = None
        self.seen: dict[str, object] = {}

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 — reported by the test thread
            self.error = exc
        finally:
            for e in self.checked:
                e.set()  # never leave the run held

    def _run(self) -> None:
        from playwright.sync_api import expect, sync_playwright
        from speckleflow.services.dashboard import create_app, serve_in_thread
        from tiled.client import from_uri

        app = create_app(from_uri(self.tiled_uri, api_key=self.api_key), poll_interval_s=1.0)
        with serve_in_thread(app) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                console_errors: list[str] = []
                page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: console_errors.append(str(e)))
                assert self.reached[0].wait(120), "the run never reached the first gate"
                page.goto(url)
                # The page follows the newest run, which is live.
                expect(page.locator("#run-head .badge.live")).to_be_visible(timeout=30_000)
                preview = page.locator("#preview")
                expect(preview).to_be_visible(timeout=30_000)
                page.wait_for_function(
                    "() => { const i = document.getElementById('preview');"
                    " return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; }",
                    timeout=30_000,
                )
                self.seen["preview_size"] = preview.evaluate("i => [i.naturalWidth, i.naturalHeight]")
                page.wait_for_function(
                    "() => Number(document.getElementById('cci-counts').dataset.assigned || 0) > 0",
                    timeout=60_000,
                )
                first = int(page.locator("#cci-counts").get_attribute("data-assigned"))
                self.seen["first"] = first
                self.seen["first_text"] = page.locator("#cci-counts").inner_text()
                self.checked[0].set()

                assert self.reached[1].wait(120), "the run never reached the second gate"
                page.wait_for_function(
                    f"() => Number(document.getElementById('cci-counts').dataset.assigned || 0) > {first}",
                    timeout=60_000,
                )
                self.seen["second"] = int(page.locator("#cci-counts").get_attribute("data-assigned"))
                self.seen["second_text"] = page.locator("#cci-counts").inner_text()
                expect(page.locator("#run-head .badge.live")).to_be_visible()  # still during the run
                expect(page.locator("#workers")).to_be_visible(timeout=30_000)
                expect(page.locator("#g2-empty")).to_have_text("no g2 results for this run")
                page.screenshot(path=str(self.screenshot), full_page=True)
                self.seen["console_errors"] = console_errors
                self.checked[1].set()
            finally:
                browser.close()


class _Gates:
    """RunEngine subscriber (via run_cci's on_document): holds the run at the gates."""

    def __init__(self, data_dir: Path, screenshot: Path) -> None:
        self.data_dir, self.screenshot = data_dir, screenshot
        self.browser: _Browser | None = None
        self.primary: set[str] = set()
        self.frames = 0

    def __call__(self, session, name: str, doc: dict) -> None:
        if name == "start":
            self.browser = _Browser(session.tiled_uri, session.api_key, self.screenshot)
            self.browser.start()
        elif name == "descriptor" and doc.get("name") == "primary":
            self.primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self.primary:
            self.frames += 1
            for i, pairs in enumerate(GATES):
                if self.frames == 2 * pairs:
                    assert self.browser is not None
                    self.browser.reached[i].set()
                    self.browser.checked[i].wait(150)


def test_dashboard_shows_a_live_run_in_chromium(tmp_path, artifacts_dir):
    _require_browser()
    from speckleflow.services.run_cci import CCIRunOptions, run_cci

    screenshot = artifacts_dir / "dashboard_live_cci.png"
    screenshot.unlink(missing_ok=True)
    gates = _Gates(tmp_path / "data", screenshot)
    opts = CCIRunOptions(pairs=PAIRS, detector_size=128, temperature=280.0, exposure=0.5, seed=0,
                         data_dir=tmp_path / "data", process=False)
    result = run_cci(opts, Console(file=io.StringIO(), width=200), on_document=gates)
    browser = gates.browser
    assert browser is not None
    browser.join(60)
    if browser.error is not None:
        raise browser.error
    print("page saw:", browser.seen)
    assert result.exit_status == "success"
    assert all(e.is_set() for e in browser.checked)
    width, height = browser.seen["preview_size"]
    assert width > 0 and height > 0
    assert browser.seen["second"] > browser.seen["first"] > 0
    assert browser.seen["console_errors"] == []
    assert screenshot.stat().st_size > 10_000
    shutil.copy(screenshot, tmp_path / screenshot.name)  # also beside the run's logs
