"""The demo as a newcomer plays it: a consumer joins, asks for points and enters the lottery;
staff file a request by SMS and the manager approves it by replying Y<n>. Everything goes
through MO dispatch, crm_lite and the real channels (CMPP simulator) of the demo."""

from __future__ import annotations

import re

import httpx
import trio

from gateway.demo import DemoOptions, serve_demo
from tests.test_mo_demo import inbox, wait_inbox

SERVICE = "10658888001"


async def text(c: httpx.AsyncClient, phone: str, body: str) -> None:
    r = await c.post("/v1/sim/mo", json={"from": phone, "to": SERVICE, "text": body})
    assert r.status_code == 202, r.text


async def test_consumer_and_staff_play_the_demo(nursery, tmp_path):
    info = await nursery.start(serve_demo, DemoOptions(data_dir=str(tmp_path / "d"), http="127.0.0.1:0", admin_ws="127.0.0.1:0",
                                                       ismg="127.0.0.1:0"))
    assert info["staff"] == {"owner": "13900000009", "manager": "13900000008", "cashier": "13900000007"}
    async with httpx.AsyncClient(base_url=info["http"], timeout=30) as c:
        consumer = "13800001111"
        await text(c, consumer, "２")  # not a member yet: invited to join
        (invite,) = await wait_inbox(c, consumer, 1)
        assert "1" in invite["text"] and invite["from"] == SERVICE
        await text(c, consumer, "代码1")
        welcome = (await wait_inbox(c, consumer, 2))[1]["text"]
        assert welcome.startswith("【演示商场】") and re.search(r"M\d{6}", welcome)
        await text(c, consumer, "1")
        assert "已" in (await wait_inbox(c, consumer, 3))[2]["text"]  # already a member
        await text(c, consumer, "2")
        assert "0" in (await wait_inbox(c, consumer, 4))[3]["text"]  # balance 0
        await text(c, consumer, "cj")
        entered = (await wait_inbox(c, consumer, 5))[4]["text"]
        assert "抽奖" in entered or "CJ" in entered

        await text(c, "13900000007", "SP 报销 500 出差")
        (ask,) = await wait_inbox(c, "13900000008", 1)
        number = re.search(r"Y(\d+)", ask["text"]).group(1)
        await text(c, "13900000008", f"Y{number}")
        told = await wait_inbox(c, "13900000007", 2)  # filed, then decided
        assert any("同意" in m["text"] or "批准" in m["text"] for m in told)
        owner = {"Authorization": f"Bearer {info['crm_token']}"}
        with trio.fail_after(20):
            while (r := await c.get(f"/v1/crm/approvals/{number}", headers=owner)).json()["request"]["status"] != "approved":
                await trio.sleep(0.1)
        assert [e["kind"] for e in r.json()["events"]][:1] == ["filed"]
        r = await c.get("/v1/crm/members", headers=owner, params={"phone": consumer})
        assert r.status_code == 200 and consumer in r.text
        assert len(await inbox(c, "13900000009")) == 0  # the owner was not involved
