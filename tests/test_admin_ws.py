"""The admin websocket against a real gateway: auth, snapshot, live events, privacy, filters,
losses told, and a stalled viewer (a real TCP client that stops reading) cut off."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from admin_ws.server import _batch_writer
from gateway.config import AdminConfig
from gateway.events import LinkEvent, MoEvent
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway

TOKEN = "plain-admin-token-123"
PRIVILEGED = "privileged-admin-token-456"


def admin_config(**kw) -> AdminConfig:
    return AdminConfig(listen="127.0.0.1:0", token=TOKEN, privileged_token=PRIVILEGED, **kw)


async def start(nursery, database_url, channels=(), **admin):
    return await start_gateway(nursery, database_url, channels=list(channels), admin=admin_config(**admin))


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode())]


async def next_frame(ws, *, types=None, timeout: float = 10) -> dict:
    with trio.fail_after(timeout):
        while True:
            frame = json.loads(await ws.get_message())
            if types is None or frame["type"] in types:
                return frame


async def test_handshake_without_a_valid_token_is_refused_and_logged(nursery, database_url, caplog):
    gw = await start(nursery, database_url)
    url = gw.running.admin_ws_url
    assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
    caplog.set_level(logging.WARNING, logger="admin_ws.server")
    for headers, path, reason in (([], "/", "missing_token"), (bearer("wrong-token"), "/", "invalid_token"),
                                  ([], "/?token=also-wrong", "invalid_token")):
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url + path, extra_headers=headers):
                pass
        assert info.value.status_code == 401
        assert json.loads(info.value.body)["error"]["code"] == "unauthorized"
        assert f"reason={reason}" in caplog.text
    assert "wrong-token" not in caplog.text and "also-wrong" not in caplog.text
    text = (await httpx.AsyncClient().get(gw.url + "/metrics")).text
    assert 'smsgw_admin_refused_total{reason="invalid_token"} 2.0' in text
    # the query parameter works, for browsers
    async with open_websocket_url(f"{url}/?token={TOKEN}") as ws:
        assert (await next_frame(ws))["type"] == "snapshot"


async def test_snapshot_then_every_transition_of_a_message_masked(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start(nursery, database_url, [ch])
    async with open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(TOKEN)) as ws:
        snap = await next_frame(ws)
        assert snap["type"] == "snapshot" and snap["seq"] == 1 and snap["privileged"] is False
        board = snap["board"]
        assert [(c["name"], c["up"]) for c in board["channels"]] == [("fake", True)]
        assert set(board["queue"]) == {"transactional", "marketing"}
        assert {"accepted", "mo"} <= set(board["rates"]) and board["viewers"] == 1
        async with gw.client() as c:
            r = await c.post("/v1/messages", json={"to": "13800138000", "text": "secret text"})
        mid = r.json()["messages"][0]["id"]
        seen, seqs = [], [1]
        while [f["status"] for f in seen][-1:] != ["submitted"]:
            f = await next_frame(ws)
            seqs.append(f["seq"])
            if f["type"] == "mt":
                seen.append(f)
        assert seqs == list(range(1, len(seqs) + 1)), "seq counts every frame of the connection"
        assert [f["status"] for f in seen] == ["accepted", "queued", "submitted"]
        assert {f["id"] for f in seen} == {mid} and {f["to"] for f in seen} == {"138****8000"}
        assert seen[2]["channel"] == "fake" and seen[0]["account"] == gw.account.id and "dropped" not in seen[0]
        assert "secret text" not in json.dumps(seen)
        await ch.report("fake-1")
        delivered = await next_frame(ws, types={"mt"})
        assert (delivered["id"], delivered["status"]) == (mid, "delivered")
        stats = await next_frame(ws, types={"stats"}, timeout=5)
        assert stats["board"]["totals"]["delivered"] == 1.0


async def test_privileged_token_sees_numbers_and_texts_plain_one_does_not(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start(nursery, database_url, [ch])
    async with open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(PRIVILEGED)) as full, \
            open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(TOKEN)) as masked:
        assert (await next_frame(full))["privileged"] is True
        await next_frame(masked)
        await ch.mo("13912345678", "我要积分")
        f = await next_frame(full, types={"mo"})
        m = await next_frame(masked, types={"mo"})
        assert (f["from"], f["text"], f["length"]) == ("13912345678", "我要积分", 4)
        assert (m["from"], m["text"], m["length"]) == ("139****5678", None, 4)
        assert f["channel"] == m["channel"] == "fake" and f["service_number"] == "10658888"


async def test_filters_change_mid_stream_and_bad_frames_get_errors(nursery, database_url):
    ch = ScriptedChannel(auto_ack=False)
    gw = await start(nursery, database_url, [ch])
    async with open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(TOKEN)) as ws, gw.client() as c:
        await next_frame(ws)
        await ws.send_message(json.dumps({"type": "filter", "status": "submitted", "prefix": "139"}))
        ack = await next_frame(ws)
        assert ack["type"] == "filter" and ack["filter"] == {"status": "submitted", "prefix": "139"}
        await c.post("/v1/messages", json={"to": ["13800138000", "13900139000"], "text": "hi"})
        with trio.fail_after(10):
            while len(ch.submitted) < 2:
                await trio.sleep(0.01)
        for m in sorted(ch.submitted, key=lambda m: m.id):
            await ch.ack(m, 1)
        # (queued, then submitted, for both: the last event of the batch is 139's submitted)
        f = await next_frame(ws, types={"mt"})
        assert (f["status"], f["to"]) == ("submitted", "139****9000")
        # changed mid-stream: only this account's events now, any status
        await ws.send_message(json.dumps({"type": "filter", "account": "acme", "types": ["mt"]}))
        assert (await next_frame(ws, types={"filter"}))["filter"] == {"account": "acme", "types": ["mt"]}
        await c.post("/v1/messages", json={"to": "13700137000", "text": "again"})
        f = await next_frame(ws, types={"mt"})
        assert (f["status"], f["to"]) == ("accepted", "137****7000")
        for bad, code in (("not json", "invalid_json"), ('{"type": "subscribe"}', "unknown_type"),
                          ('{"type": "filter", "colour": "red"}', "invalid_frame"),
                          ('{"type": "filter", "prefix": "1380013"}', "forbidden"),
                          ('{"type": "filter", "account": "nobody"}', "unknown_account"),
                          ("[1, 2]", "invalid_frame")):
            await ws.send_message(bad)
            err = await next_frame(ws, types={"error"})
            assert err["code"] == code, bad
        await ws.send_message('{"type": "ping"}')
        assert (await next_frame(ws, types={"pong"}))["type"] == "pong"


async def test_a_viewer_that_falls_behind_is_told_how_many_it_missed(nursery, database_url):
    gw = await start(nursery, database_url, buffer=100, viewer_rate=1e6, total_rate=1e6)
    bus = gw.running.bus
    async with open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(TOKEN)) as ws:
        await next_frame(ws)
        for i in range(500):  # no checkpoint: the viewer cannot keep up with this burst
            bus.publish(LinkEvent(channel=f"c{i}", up=True))
        first = await next_frame(ws, types={"link"})
        assert first["dropped"] == 400 and first["channel"] == "c400"
        rest = [await next_frame(ws, types={"link"}) for _ in range(99)]
        assert [f["channel"] for f in rest] == [f"c{i}" for i in range(401, 500)]
        assert all("dropped" not in f for f in rest)
        assert [f["seq"] for f in rest] == list(range(first["seq"] + 1, first["seq"] + 100))
        # those 100 frames went out as one write: the trio-websocket internals it uses are there
        assert _batch_writer(ws) is not None


async def test_frames_beyond_a_viewers_rate_are_dropped_and_counted(nursery, database_url):
    gw = await start(nursery, database_url, viewer_rate=5.0)
    bus = gw.running.bus
    async with open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(TOKEN)) as ws:
        await next_frame(ws)
        await trio.sleep(1.0)  # a full budget
        for i in range(50):
            bus.publish(LinkEvent(channel=f"c{i}", up=True))
        got, dropped = [], 0
        with trio.fail_after(10):
            while len(got) + dropped < 50:
                f = await next_frame(ws)
                dropped += f.get("dropped", 0)
                if f["type"] == "link":
                    got.append(f["channel"])
        assert got == [f"c{i}" for i in range(45, 50)], "over its budget a viewer gets the newest events"
        assert dropped == 45


def _raw_handshake(port: int, token: str) -> socket.socket:
    """A websocket client by hand on a socket with a tiny receive window, so it can stall."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_stalled_viewer_is_cut_off_and_slows_nobody(nursery, database_url, caplog):
    caplog.set_level(logging.INFO, logger="admin_ws.server")
    ch = ScriptedChannel()
    gw = await start(nursery, database_url, [ch], stall_timeout=1.0, viewer_rate=1e6, total_rate=1e6,
                     buffer=2000)
    running = gw.running
    port = int(gw.running.admin_ws_url.rsplit(":", 1)[1])
    stalled = await trio.to_thread.run_sync(_raw_handshake, port, PRIVILEGED)
    try:
        async with open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(PRIVILEGED)) as live, \
                gw.client() as c, httpx.AsyncClient() as plain:
            await next_frame(live)
            bulky = "x" * 8000
            slowest = 0.0
            with trio.fail_after(60):
                i = 0
                while 'smsgw_admin_disconnects_total{reason="stalled"} 1.0' not in \
                        (await plain.get(gw.url + "/metrics")).text:
                    for _ in range(100):
                        running.bus.publish(MoEvent(id=i, channel="fake", sender="13900000001",
                                                service_number="10658888", text=bulky))
                        i += 1
                    # the live viewer keeps up while the other one is stalled
                    while True:
                        f = await next_frame(live, types={"mo"})
                        if f["id"] == str(i - 1):
                            break
                    started = trio.current_time()
                    r = await c.post("/v1/messages", json={"to": "13800138000", "text": "still fast"})
                    assert r.status_code == 202
                    slowest = max(slowest, trio.current_time() - started)
            assert slowest < 1.0, f"a request took {slowest:.2f}s while a viewer was stalled"
            assert "reason=stalled" in caplog.text
            with trio.fail_after(10):
                while 'smsgw_admin_viewers 1.0' not in (await plain.get(gw.url + "/metrics")).text:
                    await trio.sleep(0.05)
            # the live viewer still gets events after the other was cut off
            running.bus.publish(LinkEvent(channel="after", up=False))
            assert (await next_frame(live, types={"link"}))["channel"] == "after"
    finally:
        stalled.close()


async def test_no_admin_token_no_admin_stream(nursery, database_url):
    gw = await start_gateway(nursery, database_url)
    assert gw.running.admin_ws_url == ""
    assert not gw.running.bus.active
    async with gw.client() as c:
        assert (await c.get("/admin")).status_code == 404


async def test_a_viewer_that_reads_nothing_is_cut_off_even_when_the_gateway_is_quiet(nursery, database_url):
    gw = await start(nursery, database_url, stall_timeout=0.5)
    port = int(gw.running.admin_ws_url.rsplit(":", 1)[1])
    stalled = await trio.to_thread.run_sync(_raw_handshake, port, TOKEN)
    try:
        async with httpx.AsyncClient(base_url=gw.url) as c:
            with trio.fail_after(10):
                while 'smsgw_admin_disconnects_total{reason="stalled"} 1.0' not in (await c.get("/metrics")).text:
                    await trio.sleep(0.1)
        # and one that reads (trio-websocket answers pings) stays
        async with open_websocket_url(gw.running.admin_ws_url, extra_headers=bearer(TOKEN)) as ws:
            await next_frame(ws)
            await trio.sleep(1.5)
            assert (await next_frame(ws, types={"stats"}))["type"] == "stats"
    finally:
        stalled.close()


async def test_viewer_limit_unknown_paths_and_oversized_client_frames(nursery, database_url):
    gw = await start(nursery, database_url, max_viewers=1)
    url = gw.running.admin_ws_url
    async with open_websocket_url(url, extra_headers=bearer(TOKEN)) as first:
        await next_frame(first)
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url, extra_headers=bearer(TOKEN)):
                pass
        assert info.value.status_code == 503
        assert json.loads(info.value.body)["error"]["code"] == "too_many_viewers"
        await first.send_message(json.dumps({"type": "filter", "channel": "x" * 40_000}))
        with trio.fail_after(10):
            while True:  # the server closes a connection that sends an oversized frame
                try:
                    await first.get_message()
                except ConnectionClosed:
                    break
    with trio.fail_after(10):  # its place is free again
        async with httpx.AsyncClient(base_url=gw.url) as c:
            while "smsgw_admin_viewers 0.0" not in (await c.get("/metrics")).text:
                await trio.sleep(0.05)
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url + "/elsewhere", extra_headers=bearer(TOKEN)):
            pass
    assert info.value.status_code == 404
    async with open_websocket_url(url, extra_headers=bearer(TOKEN)) as again:
        assert (await next_frame(again))["type"] == "snapshot"
