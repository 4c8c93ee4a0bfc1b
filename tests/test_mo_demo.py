"""The demo merchant: a consumer's handset texts 10658888001 and gets answers; TD is honoured."""

from __future__ import annotations

import json

import httpx
import trio

from gateway.demo import DemoOptions, serve_demo


async def inbox(c: httpx.AsyncClient, phone: str) -> list[dict]:
    return (await c.get(f"/v1/sim/inbox/{phone}")).json()["messages"]


async def wait_inbox(c: httpx.AsyncClient, phone: str, count: int) -> list[dict]:
    with trio.fail_after(20):
        while len(got := await inbox(c, phone)) < count:
            await trio.sleep(0.1)
    return got


async def test_demo_merchant_answers_and_honours_td(nursery, tmp_path):
    ready = tmp_path / "ready.json"
    info = await nursery.start(serve_demo, DemoOptions(data_dir=str(tmp_path / "d"), http="127.0.0.1:0", admin_ws="127.0.0.1:0",
                                                       ismg="127.0.0.1:0", ready_file=str(ready)))
    assert json.loads(ready.read_text())["service_number"] == "10658888001"
    auth = {"Authorization": f"Bearer {info['api_key']}"}
    async with httpx.AsyncClient(base_url=info["http"], timeout=30) as c:
        r = await c.post("/v1/sim/mo", json={"from": "13900000001", "to": "10658888001", "text": "你好"})
        assert r.status_code == 202
        (help_reply,) = await wait_inbox(c, "13900000001", 1)
        assert help_reply["from"] == "10658888001" and help_reply["text"].startswith("【演示商场】")
        assert "TD" in help_reply["text"]

        await c.post("/v1/sim/mo", json={"from": "13900000001", "to": "10658888001", "text": "TD"})
        confirmation = (await wait_inbox(c, "13900000001", 2))[1]
        assert confirmation["from"] == "10658888001" and "退订" in confirmation["text"]

        r = await c.post("/v1/messages", headers=auth,
                         json={"to": ["13900000001", "13800138000"], "text": "周末全场八折", "class": "marketing"})
        assert r.status_code == 202
        blocked, sent = r.json()["messages"]
        with trio.fail_after(20):
            while (d := (await c.get(f"/v1/messages/{blocked['id']}", headers=auth)).json())["status"] != "rejected":
                await trio.sleep(0.1)
        assert d["events"][-1]["detail"] == "rejected: unsubscribed"
        (promo,) = await wait_inbox(c, "13800138000", 1)
        assert promo["text"] == "【演示商场】周末全场八折"
        assert len(await inbox(c, "13900000001")) == 2  # nothing more reached the unsubscribed handset
