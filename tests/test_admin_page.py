"""The admin page end to end in a real headless Chromium, against a running demo.

Chromium is driven over its DevTools protocol (a websocket, spoken here with trio-websocket):
the page loads, authenticates with the demo's admin token, shows a message sent during the
test with its status and masked number, finds it by id with its full history, and a
screenshot is saved to ``test-artifacts/admin-page.png``.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url

from gateway.demo import DemoOptions, serve_demo

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1100", "--remote-debugging-port=0"]
CDP_MESSAGE_MAX = 64 * 1024 * 1024  # screenshots come back base64-encoded in one message


class DevTools:
    """A minimal DevTools protocol client: one browser connection, commands to one page."""

    def __init__(self, ws) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.session: str | None = None

    async def call(self, method: str, params: dict | None = None, *, page: bool = True) -> dict:
        ident = next(self._ids)
        message = {"id": ident, "method": method, "params": params or {}}
        if page and self.session is not None:
            message["sessionId"] = self.session
        await self._ws.send_message(json.dumps(message))
        while True:
            reply = json.loads(await self._ws.get_message())
            if reply.get("id") == ident:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20):
        """Poll ``expression`` in the page until it is truthy; returns its value."""
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        with trio.fail_after(timeout):
            while not (value := await self.evaluate(guarded)):
                await trio.sleep(0.1)
        return value


async def start_chromium(nursery: trio.Nursery, profile: Path) -> tuple[trio.Process, str]:
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: apt-get install chromium chromium-driver (see .ci/run)"
    proc = await trio.lowlevel.open_process([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    active = profile / "DevToolsActivePort"
    with trio.fail_after(30):
        while not active.exists() or len(active.read_text().splitlines()) < 2:
            assert proc.returncode is None, f"chromium exited with {proc.returncode}"
            await trio.sleep(0.1)
    port, path = active.read_text().splitlines()[:2]
    return proc, f"ws://127.0.0.1:{port}{path}"


async def test_admin_page_shows_live_traffic_and_history_in_a_real_browser(nursery, tmp_path):
    info = await nursery.start(serve_demo, DemoOptions(data_dir=str(tmp_path / "demo"), http="127.0.0.1:0",
                                                       admin_ws="127.0.0.1:0", ismg="127.0.0.1:0"))
    assert info["admin_ws"].startswith("ws://127.0.0.1:") and info["admin_token"] and info["admin_privileged_token"]
    profile = tmp_path / "chromium"
    profile.mkdir()
    proc, browser_url = await start_chromium(nursery, profile)
    try:
        async with open_websocket_url(browser_url, max_message_size=CDP_MESSAGE_MAX) as ws:
            cdp = DevTools(ws)
            target = await cdp.call("Target.createTarget",
                                    {"url": f"{info['http']}/admin#token={info['admin_token']}"}, page=False)
            attached = await cdp.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                      page=False)
            cdp.session = attached["sessionId"]
            await cdp.call("Runtime.enable")

            # the page loads, takes the token from the fragment, and the stream goes live
            assert await cdp.wait_for("document.querySelector('#conn').textContent === 'live'")
            assert await cdp.evaluate("location.hash") == "", "the token is taken out of the address bar"
            # the snapshot frame follows the open; it says what this token may see
            assert "numbers masked" in await cdp.wait_for("document.querySelector('#privilege').textContent")
            board = await cdp.wait_for(
                "document.querySelector('#board').innerText.includes('cmcc-demo') &&"
                " document.querySelector('#board').innerText")
            assert "m1" in board and "16" in board  # the modems and the CMPP window are on the board

            # a message sent now shows up live, masked, and reaches delivered
            async with httpx.AsyncClient(base_url=info["http"], timeout=30) as c:
                r = await c.post("/v1/messages", json={"to": "13800138000", "text": "浏览器测试"},
                                 headers={"Authorization": f"Bearer {info['api_key']}"})
            assert r.status_code == 202
            mid = r.json()["messages"][0]["id"]
            rows = f"document.querySelectorAll('#traffic tr[data-id=\"{mid}\"]')"
            statuses = await cdp.wait_for(
                f"(() => {{ const t = Array.from({rows}).map(r => r.cells[4].textContent);"
                f" return t.some(s => s.startsWith('delivered')) && t; }})()")
            assert {"accepted", "queued", "submitted", "delivered"} <= {s.split()[0] for s in statuses}
            assert await cdp.evaluate(f"{rows}[0].cells[3].textContent") == "138****8000"
            assert "浏览器测试" not in await cdp.evaluate("document.body.innerText")
            await cdp.wait_for("Number(document.querySelector('[data-series=\"delivered\"] .value').textContent) >= 1",
                               timeout=10)

            # look-up by id: its full history
            await cdp.evaluate(f"document.querySelector('#lookup-q').value = '{mid}';"
                               " document.querySelector('#lookup button').click()")
            found = await cdp.wait_for(f"document.querySelector('#lookup-result .msg[data-id=\"{mid}\"]')?.innerText")
            assert "138****8000" in found and "(text hidden)" in found
            for status in ("accepted", "queued", "submitted", "delivered"):
                assert status in found

            shot = await cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            ARTIFACTS.mkdir(exist_ok=True)
            png = base64.b64decode(shot["data"])
            assert png.startswith(b"\x89PNG")
            (ARTIFACTS / "admin-page.png").write_bytes(png)
            await cdp.call("Browser.close", page=False)
    finally:
        with trio.move_on_after(10) as scope:
            scope.shield = True
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
