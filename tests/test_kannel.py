"""Kannel-compatible /cgi-bin/sendsms and dlr-url callbacks."""

from __future__ import annotations

import functools
import urllib.parse
from datetime import datetime, timezone

import httpx
import trio

from gateway.http import Request, Response, Router, serve_http
from gateway.kannel import expand_dlr_url
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway


def q(**params) -> str:
    return urllib.parse.urlencode(params)


async def stored(gw) -> list:
    return await gw.store.fetch("SELECT dest, body, encoding, parts FROM messages ORDER BY id")


async def test_sendsms_utf8_chinese_without_coding_is_not_question_marks(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        r = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=gateway.key, to="+8613800138000",
                                                 text="您的订单已发货"))
    assert r.status_code == 202 and r.text == "0: Accepted for delivery"
    assert [tuple(x) for x in await stored(gateway)] == [("13800138000", "您的订单已发货", "ucs2", 1)]


async def test_sendsms_codings_charsets_and_several_receivers(gateway):
    ucs2 = urllib.parse.quote_from_bytes("你好".encode("utf-16-be"))
    gbk = urllib.parse.quote_from_bytes("积分".encode("gbk"))
    base = f"username=acme&password={urllib.parse.quote(gateway.key)}"
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        r1 = await c.get(f"/cgi-bin/sendsms?{base}&to=13800138001&coding=2&text={ucs2}")
        r2 = await c.get(f"/cgi-bin/sendsms?{base}&to=13800138002&charset=GBK&text={gbk}")
        r3 = await c.get(f"/cgi-bin/sendsms?{base}&to=13800138003+13900000001&text=Hello+world")
        r4 = await c.post("/cgi-bin/sendsms", data={"username": "acme", "password": gateway.key,
                                                    "to": "18600000001", "text": "表单"})
    assert [r.status_code for r in (r1, r2, r3, r4)] == [202] * 4
    rows = [tuple(x)[:2] for x in await stored(gateway)]
    assert rows == [("13800138001", "你好"), ("13800138002", "积分"), ("13800138003", "Hello world"),
                    ("13900000001", "Hello world"), ("18600000001", "表单")]


async def test_sendsms_errors_in_kannel_words(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        bad_pw = await c.get("/cgi-bin/sendsms?" + q(username="acme", password="nope", to="13800138000", text="x"))
        other = await gateway.store.ensure_account("other")
        other_key = await gateway.store.create_api_key(other.id)
        wrong_user = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=other_key, to="13800138000",
                                                          text="x"))
        no_to = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=gateway.key, text="x"))
        no_text = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=gateway.key, to="13800138000"))
        bad_num = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=gateway.key, to="12345", text="x"))
        bad_dlr = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=gateway.key, to="13800138000",
                                                       text="x", **{"dlr-url": "not a url", "dlr-mask": "3"}))
    assert (bad_pw.status_code, bad_pw.text) == (403, "Authorization failed for sendsms")
    assert wrong_user.status_code == 403
    assert (no_to.status_code, no_to.text) == (400, "Missing receiver number")
    assert (no_text.status_code, no_text.text) == (400, "Missing text")
    assert bad_num.status_code == 400 and "12345" in bad_num.text
    assert bad_dlr.status_code == 400
    assert await stored(gateway) == []


def test_dlr_url_escapes_expand_as_kannel_does():
    at = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)
    url = expand_dlr_url("http://app/dlr?type=%d&to=%p&ts=%T&reply=%A&smsc=%i&id=%I&x=%q&pct=%%&enc=%20",
                         dlr_type=1, to="13800138000", sender="10658888", at=at, reply="stat:DELIVRD err",
                         channel="cmcc-1", message_id=42)
    assert url == ("http://app/dlr?type=1&to=13800138000&ts=1795428000&reply=stat%3ADELIVRD%20err"
                   "&smsc=cmcc-1&id=42&x=%q&pct=%&enc=%20")


async def test_dlr_url_is_called_for_each_masked_event_in_order(nursery, database_url):
    calls: list[dict] = []
    got_final = trio.Event()

    async def dlr(request: Request) -> Response:
        params = dict(urllib.parse.parse_qsl(request.query))
        calls.append(params)
        if params["type"] == "1":
            got_final.set()
        return Response(status=200, body=b"ok", content_type="text/plain")

    router = Router()
    router.add("GET", "/dlr", dlr)
    port = await nursery.start(functools.partial(serve_http, router, "127.0.0.1", 0))
    channel = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[channel])
    async with httpx.AsyncClient(base_url=gw.url) as c:
        r = await c.get("/cgi-bin/sendsms?" + q(
            username="acme", password=gw.key, to="13800138000", text="x", **{
                "dlr-mask": "31", "dlr-url": f"http://127.0.0.1:{port}/dlr?type=%d&to=%p&ts=%T&id=%I"}))
    assert r.status_code == 202
    with trio.fail_after(10):
        while not channel.submitted:
            await trio.sleep(0.02)
    await trio.sleep(0.2)
    await channel.report("fake-1")
    with trio.fail_after(15):
        await got_final.wait()
    assert [c["type"] for c in calls] == ["4", "8", "1"]  # queued, submitted, delivered
    assert all(c["to"] == "13800138000" and c["ts"].isdigit() for c in calls)


async def test_sendsms_takes_kannels_intermediate_bit_in_dlr_mask(gateway):
    # Apps written for Kannel often ask for everything with dlr-mask=63 (32: intermediate reports).
    dlr_url = "http://127.0.0.1:9/dlr?type=%d"
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        everything = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=gateway.key, to="13800138000",
                                                          text="x", **{"dlr-mask": "63", "dlr-url": dlr_url}))
        too_big = await c.get("/cgi-bin/sendsms?" + q(username="acme", password=gateway.key, to="13800138001",
                                                       text="x", **{"dlr-mask": "64", "dlr-url": dlr_url}))
    assert (everything.status_code, everything.text) == (202, "0: Accepted for delivery")
    assert too_big.status_code == 400 and "dlr-mask 0 to 63" in too_big.text
    rows = await gateway.store.fetch("SELECT dest, dlr_url, dlr_mask FROM messages")
    assert [tuple(r) for r in rows] == [("13800138000", dlr_url, 63)]
