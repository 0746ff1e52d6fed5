"""A real browser opens the HTML reports from disk: headless Chromium (Debian's ``chromium``; `.ci/run`
installs it), driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages on
file descriptors 3 and 4, so no websocket client or other package is needed). Every image loads,
nothing is logged as an error, nothing is fetched but the file itself and its data: images, and at
1280 px the page does not scroll sideways. Each page's full-height screenshot is saved as a test
artifact: ``<pytest tmp>/test_*/<name>.png`` (pytest keeps the last three sessions' tmp folders,
under ``/tmp/pytest-of-$USER/``)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from automl.report.pages import write_comparison_report, write_run_report
from test_report_html import make_comparison, make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH = 1280


def _browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it for CI)")


class Chromium:
    """Headless Chromium, one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds():  # the browser reads commands on fd 3 and writes answers on fd 4 (copies first: either may be 3 or 4)
            reading, writing = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        self.proc = subprocess.Popen(
            [_browser(), "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--hide-scrollbars", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=900, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, *, session: bool = False, timeout: float = 60, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


def open_page(chrome: Chromium, page: Path, screenshot: Path) -> dict:
    """Load ``page`` from disk; return what the page shows, the requests it made and the errors it logged."""
    chrome.events.clear()
    chrome.call("Page.navigate", session=True, url=page.resolve().as_uri())
    chrome.wait_for("Page.loadEventFired")
    state = chrome.call("Runtime.evaluate", session=True, returnByValue=True, awaitPromise=True, expression="""
        Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => ({
          images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
          scrollWidth: document.documentElement.scrollWidth,
          bodyWidth: document.body.scrollWidth,
          innerWidth: window.innerWidth,
          height: document.documentElement.scrollHeight,
          sections: [...document.querySelectorAll('section')].map(s => s.id),
        }))""")["result"]["value"]
    shot = chrome.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                       clip={"x": 0, "y": 0, "width": WIDTH, "height": state["height"], "scale": 1})
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    errors = [e["params"] for e in chrome.events
              if e.get("method") == "Runtime.exceptionThrown"
              or e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert")
              or e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"]
    requests = [e["params"]["request"]["url"] for e in chrome.events if e.get("method") == "Network.requestWillBeSent"]
    return {**state, "errors": errors, "requests": requests}


def check(state: dict, page: Path) -> None:
    assert state["errors"] == []
    assert state["images"], "no images on the page"
    broken = [i["alt"][:80] for i in state["images"] if not i["complete"] or i["width"] <= 0]
    assert broken == []
    assert state["innerWidth"] == WIDTH
    assert state["scrollWidth"] <= WIDTH and state["bodyWidth"] <= WIDTH  # no horizontal scrolling at 1280 px
    # The page itself and its data: images, nothing else: no network, no other file.
    assert all(url == page.resolve().as_uri() or url.startswith("data:") for url in state["requests"]), \
        state["requests"]


def test_a_run_report_opens_in_chromium(browser, tmp_path):
    folder, dataset, study = make_run(tmp_path, {"benign": (8, 4), "malignant": (6, 3),
                                                 "a-class-with-a-rather-long-name-and-no-test-image": (5, 0)},
                                      augment=True)
    page = write_run_report(folder, dataset=dataset, study=study)
    state = open_page(browser, page, tmp_path / "run-report.png")
    check(state, page)
    assert state["sections"] == ["dataset", "split", "search", "best", "test", "mistakes", "augmentation",
                                 "reproduce"]
    assert len(state["images"]) > 20 and (tmp_path / "run-report.png").stat().st_size > 10_000


def test_a_comparison_report_opens_in_chromium(browser, tmp_path):
    page = write_comparison_report(make_comparison(tmp_path, repeats=6))
    state = open_page(browser, page, tmp_path / "comparison-report.png")
    check(state, page)
    assert state["sections"] == ["results", "seeds", "runs", "reproduce"] and len(state["images"]) == 2


def test_the_checks_catch_a_broken_image_an_error_and_a_wide_page(browser, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><img src='data:image/png;base64,AAAA' alt='broken'>"
                    "<div style='width:2000px'>wide</div><script>console.error('boom')</script></body></html>")
    state = open_page(browser, page, tmp_path / "bad.png")
    assert [i["alt"] for i in state["images"] if i["width"] == 0] == ["broken"]
    assert state["scrollWidth"] > WIDTH and any("boom" in json.dumps(e) for e in state["errors"])
    with pytest.raises(AssertionError):
        check(state, page)
