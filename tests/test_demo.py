"""The demo stack in-process: a consumer's handset through /v1/sim/mo and /v1/sim/inbox."""

from __future__ import annotations

import httpx
import trio

from gateway.demo import DemoOptions, serve_demo


async def test_handsets_send_and_receive_through_the_simulated_operator(nursery, tmp_path):
    info = await nursery.start(serve_demo, DemoOptions(data_dir=str(tmp_path / "d"), http="127.0.0.1:0", admin_ws="127.0.0.1:0",
                                                       ismg="127.0.0.1:0"))
    auth = {"Authorization": f"Bearer {info['api_key']}"}
    long_text = "亲爱的会员，您的积分即将到期，请尽快兑换礼品。" * 4
    async with httpx.AsyncClient(base_url=info["http"], timeout=30) as c:
        r = await c.post("/v1/messages", json={"to": ["13800138000", "13800138000"], "text": long_text}, headers=auth)
        assert r.status_code == 202
        (m,) = r.json()["messages"]  # the same number twice is sent once
        mid = m["id"]
        assert m["parts"] == 2
        with trio.fail_after(20):
            while (await c.get(f"/v1/messages/{mid}", headers=auth)).json()["status"] != "delivered":
                await trio.sleep(0.1)
        inbox = (await c.get("/v1/sim/inbox/+86 138 0013 8000")).json()
        assert inbox["phone"] == "13800138000"
        assert inbox["messages"] == [{"from": "10658888", "text": long_text, "via": "cmpp", "parts": 2}]
        assert (await c.get("/v1/sim/inbox/13900000009")).json()["messages"] == []

        r = await c.post("/v1/sim/mo", json={"from": "13900000001", "to": "10658888001", "text": "1"})
        assert r.status_code == 202 and r.json() == {"from": "13900000001", "to": "10658888001", "via": "cmpp",
                                                     "parts": 1}
        with trio.fail_after(10):
            while 'smsgw_mo_received_total{channel="cmcc-demo"} 1.0' not in (await c.get("/metrics")).text:
                await trio.sleep(0.1)

        bad = await c.post("/v1/sim/mo", json={"from": "12345", "to": "10658888", "text": "1"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_number"
        bad = await c.post("/v1/sim/mo", json={"from": "13900000001", "to": "10658888"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_field"


async def test_unicom_and_telecom_go_through_the_emulated_modems(nursery, tmp_path):
    info = await nursery.start(serve_demo, DemoOptions(data_dir=str(tmp_path / "d"), http="127.0.0.1:0", admin_ws="127.0.0.1:0",
                                                       ismg="127.0.0.1:0"))
    assert len(info["modems"]) == 4 and all(d.startswith("/dev/pts/") for d in info["modems"])
    auth = {"Authorization": f"Bearer {info['api_key']}"}
    long_text = "尊敬的联通用户，" + "您的会员积分已到账，可在门店兑换精美礼品。" * 6
    async with httpx.AsyncClient(base_url=info["http"], timeout=30) as c:
        r = await c.post("/v1/messages", json={"to": ["18612345678", "18912345678"], "text": long_text},
                         headers=auth)
        assert r.status_code == 202
        msgs = r.json()["messages"]
        parts = msgs[0]["parts"]
        assert parts == 2 and all(m["parts"] == parts for m in msgs)
        for m in msgs:
            with trio.fail_after(30):
                while (body := (await c.get(f"/v1/messages/{m['id']}", headers=auth)).json())["status"] != "delivered":
                    await trio.sleep(0.2)
            assert body["channel"] == "modems"
        inbox = (await c.get("/v1/sim/inbox/18612345678")).json()["messages"]
        assert [(e["text"], e["via"], e["parts"]) for e in inbox] == [(long_text, "modem", parts)]

        r = await c.post("/v1/sim/mo", json={"from": "18611112222", "to": "18600000001", "text": "积分查询"})
        assert r.status_code == 202 and r.json()["via"] == "modem"
        with trio.fail_after(20):
            while 'smsgw_mo_received_total{channel="modems"} 1.0' not in (await c.get("/metrics")).text:
                await trio.sleep(0.2)
        bad = await c.post("/v1/sim/mo", json={"from": "18611112222", "to": "10658888", "text": "x", "via": "modem"})
        assert bad.status_code == 400 and "18600000001" in bad.json()["error"]["message"]
