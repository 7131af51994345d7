"""End to end: a real headless Chromium opens the coupler page while a coupling runs.

Bokeh draws the page in the browser, inside shadow roots, from a websocket:
``chromium --dump-dom`` shows only the empty root element. So the test drives
Chromium through its DevTools protocol (a websocket, spoken here with
tornado's client, which distributed already needs): it loads the page, reads
the tables' cells out of the shadow roots, checks the channel and actor names
and that their numbers are non-zero and grow (the page is live), and saves a
screenshot under ``artifacts/browser/``.

Chromium comes from ``.ci/browser-up.sh`` (Debian's package); without it the
test skips with the reason, or fails under ``CI=true`` (``tests/services.py``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from tornado.websocket import WebSocketClientConnection, websocket_connect

import inspection_actors
from coupler.runtime import Coupling, Queue
from inspection_actors import Fitter, Ticker
from services import require_executable

cloudpickle.register_pickle_by_value(inspection_actors)

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"

# The cells of every table row on the page: Bokeh draws its models in shadow
# roots, which querySelectorAll on the document does not enter.
ROWS_JS = r"""
(() => {
  const rows = [];
  const walk = (node) => {
    if (node.nodeType === Node.ELEMENT_NODE) {
      if (node.tagName === 'TR' && node.querySelector('td')) {
        rows.push(Array.from(node.querySelectorAll('td')).map(c => c.textContent.trim()));
      }
      if (node.shadowRoot) walk(node.shadowRoot);
    }
    for (const child of node.childNodes) walk(child);
  };
  if (document.body) walk(document.body);
  return rows;
})()
"""


class Chromium:
    """A headless Chromium driven through the DevTools protocol on one page.

    Args:
        exe: the chromium executable.
        workdir: for its profile and log.
    """

    def __init__(self, exe: str, workdir: Path) -> None:
        self.log_path = workdir / "chromium.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={workdir / 'profile'}", "--window-size=1400,1200", "about:blank"],
            stdout=self.log, stderr=self.log,
        )  # fmt: skip
        self.ws: WebSocketClientConnection | None = None
        self._ids = itertools.count(1)

    def port(self, timeout: float = 30.0) -> int:
        """The DevTools port Chromium prints once it listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", self.log_path.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"chromium did not open its DevTools port within {timeout} s; its log:\n{self.log_path.read_text()[-3000:]}")

    async def connect(self) -> None:
        """Attach to the page Chromium opened."""
        port = self.port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=64 << 20)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        assert self.ws is not None
        ident = next(self._ids)
        await self.ws.write_message(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), 30)
            assert raw is not None, "chromium closed the DevTools connection"
            msg = json.loads(raw)
            if msg.get("id") == ident:
                assert "error" not in msg, f"{method} failed: {msg['error']}"
                return msg["result"]

    async def rows(self) -> list[list[str]]:
        """The cells of every table row on the page now."""
        result = await self.call("Runtime.evaluate", expression=ROWS_JS, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def chromium() -> str:
    """Chromium's path; skip (outside CI) or fail (``CI=true``) when it is not installed."""
    return require_executable("chromium", "run .ci/browser-up.sh (as root) to install Debian's chromium")


@pytest.fixture
def ticking(coupling: Coupling, unique: str) -> Iterator[tuple[str, str, str]]:
    """A Ticker sending ~50 messages/s to a Fitter that records a loss; yields (channel, producer, consumer)."""
    channel, tick, fit = f"browser-{unique}", f"tick-{unique}", f"fit-{unique}"
    coupling.channel(channel, Queue(64))
    consumer = coupling.spawn(Fitter, name=fit, inputs={"inp": channel})
    producer = coupling.spawn(Ticker, period=0.02, name=tick, outputs={"out": channel})
    consumer.start()
    producer.start()
    try:
        yield channel, tick, fit
    finally:
        producer.stop()
        consumer.stop()


def number(cell: str) -> float:
    """A number cell as the page writes it (``1,234.5``)."""
    return float(cell.replace(",", ""))


def find(rows: list[list[str]], first: str, width: int) -> list[str] | None:
    """The row of a table ``width`` columns wide whose first cell is ``first``."""
    return next((r for r in rows if len(r) == width and r[0] == first), None)


async def watch_page(
    exe: str, url: str, channel: str, tick: str, fit: str, shot: Path, workdir: Path
) -> dict[str, list[str]]:
    """Open ``url`` in Chromium ``exe``; wait until its tables show the coupling live; screenshot; return the rows seen."""
    browser = Chromium(exe, workdir)
    try:
        await browser.connect()
        await browser.call("Page.navigate", url=url)
        seen: dict[str, list[str]] = {}
        deadline = time.monotonic() + 60
        while True:
            rows = await browser.rows()
            # channel table: 12 columns (channel ... closed); actor table: 11 (actor ... weights in use, waits for, last error)
            ch, producer, consumer = find(rows, channel, 12), find(rows, tick, 11), find(rows, fit, 11)
            if ch and producer and consumer and number(ch[4]) > 0 and number(producer[6]) > 0:
                if "first" not in seen:
                    seen.update(first=ch)
                elif number(ch[6]) > number(seen["first"][6]):  # the page updated itself: it is live
                    seen.update(channel=ch, producer=producer, consumer=consumer)
                    break
            assert time.monotonic() < deadline, f"the page did not show {channel}, {tick}, {fit} live within 60 s; rows: {rows}"
            await asyncio.sleep(0.5)
        png = base64.b64decode((await browser.call("Page.captureScreenshot", format="png"))["data"])
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.write_bytes(png)
        return seen
    finally:
        browser.close()


@pytest.mark.system
def test_coupler_page_in_a_real_browser_shows_the_running_coupling(
    chromium: str, coupling: Coupling, ticking: tuple[str, str, str], tmp_path: Path
) -> None:
    channel, tick, fit = ticking
    shot = ARTIFACTS / "coupler-page.png"
    shot.unlink(missing_ok=True)
    seen = asyncio.run(watch_page(chromium, coupling.page_link, channel, tick, fit, shot, tmp_path))

    ch = seen["channel"]
    assert ch[1] == "queue maxsize=64" and ch[2] == tick and ch[3] == f"{fit}/inp" and ch[11] == "open"
    assert number(ch[4]) > 0 and number(ch[6]) > 0 and number(ch[7]) > 0  # messages/s, sent, received
    for row, cls in ((seen["producer"], "Ticker"), (seen["consumer"], "Fitter")):
        assert row[1:3] == [cls, "running"], row
        assert row[3].startswith("tcp://") and row[4] in ("cpu", "cpu:0") and number(row[5]) > 0, row
        assert row[8] == "", row  # no learned weights in use
        assert row[9] == "" or row[9].startswith("waits "), row  # what its loop waits for, if anything
    assert seen["consumer"][7].startswith("loss="), seen["consumer"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
