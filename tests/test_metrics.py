"""/metrics: every documented metric with its type, the sampled queue, modems, bus-counted
metrics with bounded labels, and the dashboards and alert rules under deploy/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import trio

from gateway.config import AdminConfig, ModemConfig
from gateway.events import LimitEvent, MoEvent
from gateway.metrics import LABEL_VALUES_MAX, MeteredBus, Metrics
from gateway.modem_channel import ModemChannel
from gateway.modem_pool.emulator import HandsetNetwork
from gateway.sim_modems import serve_sim_modems
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
_SUFFIXES = ("_bucket", "_count", "_sum")


def documented_metrics() -> dict[str, str]:
    """Name → type from the README's metrics table."""
    section = ROOT.joinpath("README.md").read_text().split("## Operations: admin page, live stream, metrics", 1)[1]
    rows = re.findall(r"^\| `(smsgw_[a-z_]+)` \| (counter|gauge|histogram) \|", section, re.M)
    return dict(rows)


def exposed_types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def base_name(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def test_every_documented_metric_is_exposed_with_its_type(nursery, database_url):
    documented = documented_metrics()
    assert len(documented) >= 35
    gw = await start_gateway(nursery, database_url, channels=[ScriptedChannel()])
    async with gw.client() as c:
        text = (await c.get("/metrics")).text
    exposed = exposed_types(text)
    missing = {n: t for n, t in documented.items() if exposed.get(n) != t}
    assert not missing, f"documented but not exposed with that type: {missing}"
    undocumented = sorted(n for n in exposed if n.startswith("smsgw_") and n not in documented)
    assert not undocumented, f"exposed but not in the README: {undocumented}"


async def test_queue_depth_and_age_are_sampled_per_class(nursery, database_url):
    ch = ScriptedChannel(room=0)  # takes nothing: messages stay queued
    gw = await start_gateway(nursery, database_url, channels=[ch])
    async with gw.client() as c:
        await c.post("/v1/messages", json={"to": ["13800138000", "13800138001"], "text": "a"})
        await c.post("/v1/messages", json={"to": "13800138002", "text": "b", "class": "marketing"})
        await trio.sleep(0.3)
        text = (await c.get("/metrics")).text
    assert 'smsgw_queue_messages{class="transactional"} 2.0' in text
    assert 'smsgw_queue_messages{class="marketing"} 1.0' in text
    assert "smsgw_queue_depth 3.0" in text
    age = float(re.search(r'smsgw_queue_oldest_age_seconds\{class="transactional"\} (\S+)', text).group(1))
    assert 0.2 < age < 30


async def test_modem_signal_and_registration_are_exported(nursery, database_url):
    sims = await nursery.start(lambda task_status: serve_sim_modems(
        2, numbers=["18600000011", "18600000012"], operators=["cucc", "cucc"], network=HandsetNetwork(),
        task_status=task_status))
    ch = ModemChannel([ModemConfig(name=f"u{i}", device=s.device, operators=["cucc"]) for i, s in enumerate(sims)])
    gw = await start_gateway(nursery, database_url, channels=[ch],
                             admin=AdminConfig(listen="127.0.0.1:0", token="t" * 16))
    async with gw.client() as c:
        with trio.fail_after(20):
            while 'smsgw_modem_registered{channel="modems",modem="u1"} 1.0' not in (text := (await c.get("/metrics")).text):
                await trio.sleep(0.1)
    assert 'smsgw_modem_up{channel="modems",modem="u0"} 1.0' in text
    rssi = re.search(r'smsgw_modem_signal_rssi\{channel="modems",modem="u0"\} (\S+)', text)
    assert rssi is not None and 0 <= float(rssi.group(1)) <= 31


def test_the_bus_feeds_wait_lengths_only_with_bounded_labels():
    metrics = Metrics()
    bus = MeteredBus(metrics)
    bus.publish(LimitEvent(scope="channel", name="cmcc-1", wait_s=0.5, count=3))
    bus.publish(LimitEvent(scope="recipient", name="13800138000", wait_s=0.0))
    for i in range(LABEL_VALUES_MAX + 5):
        bus.publish(LimitEvent(scope=f"scope{i}", name="x", wait_s=1.0))
    bus.publish(MoEvent(id=99, channel="c", sender="13900000001", service_number="1065", text="?", command="TD"))
    metrics.count_crm("member_joined")
    text = metrics.exposition().decode()
    assert 'smsgw_rate_limit_wait_seconds_count{scope="channel"} 1.0' in text
    assert 'smsgw_rate_limit_wait_seconds_count{scope="recipient"}' not in text  # no wait, no observation
    assert 'smsgw_rate_limit_wait_seconds_count{scope="other"} 6.0' in text  # 32 distinct labels at most
    # The drivers count the waits (the dispatcher, the API), MO dispatch the commands: never the bus too.
    assert "smsgw_rate_limit_waits_total{" not in text
    assert "smsgw_mo_dispatched_total{" not in text
    assert 'smsgw_crm_events_total{kind="member_joined"} 1.0' in text
    assert "13800138000" not in text
    assert not bus.active, "counting does not make anyone a listener"


def test_each_overlap_is_gone():
    """One counter for limit waits and one for MO commands."""
    text = Metrics().exposition().decode()
    for gone in ("smsgw_limit_waits_total", "smsgw_mo_commands_total"):
        assert gone not in text and gone not in (ROOT / "README.md").read_text(encoding="utf-8")
        assert gone not in (DEPLOY / "grafana" / "smsgw-dashboard.json").read_text()
    assert "# TYPE smsgw_rate_limit_waits_total counter" in text
    assert "# TYPE smsgw_mo_dispatched_total counter" in text


async def test_an_account_over_its_rate_is_counted_once(nursery, database_url):
    from gateway.config import AccountConfig

    gw = await start_gateway(nursery, database_url, accounts=[AccountConfig(name="acme", rate=0.1, burst=3)])
    async with gw.client() as c:
        codes = [(await c.post("/v1/messages", json={"to": to, "text": "x"})).status_code
                 for to in (["13800138001", "13800138002", "13800138003"], ["13800138004", "13800138005"],
                            "13800138006")]
    assert codes == [202, 429, 429]
    text = gw.running.metrics.exposition().decode()
    # two 429s refusing 2 and 1 recipients: 3 sends, each counted once (the bus carries them too)
    assert 'smsgw_rate_limit_waits_total{scope="account"} 3.0' in text
    assert 'smsgw_rate_limit_wait_seconds_count{scope="account"} 2.0' in text


def deploy_metric_names() -> set[str]:
    exprs = []
    dashboard = json.loads((DEPLOY / "grafana" / "smsgw-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    exprs.append((DEPLOY / "prometheus" / "smsgw-alerts.yml").read_text())
    return {base_name(n) for e in exprs for n in re.findall(r"\bsmsgw_[a-z_]+", e)}


async def test_queue_statistics_are_read_once_for_callers_close_together(store, monkeypatch):
    import gateway.store.queue as queue_module
    from gateway.store import AcceptRequest, NewMessage

    account = await store.ensure_account("shop")

    async def enqueue(n: int) -> None:
        await store.accept([AcceptRequest(account_id=account.id, messages=tuple(
            NewMessage(dest=f"1380013{i:04d}", operator="cmcc", body="x", encoding="gsm7", parts=1)
            for i in range(n)))])

    await enqueue(2)
    results = []

    async def read() -> None:
        results.append(await store.queue_stats())

    async with trio.open_nursery() as n:  # ten at once share one reading
        for _ in range(10):
            n.start_soon(read)
    assert [r["transactional"][0] for r in results] == [2] * 10
    await enqueue(3)
    assert (await store.queue_stats())["transactional"][0] == 2  # reused within its age
    monkeypatch.setattr(queue_module, "QUEUE_STATS_MIN_AGE", 0.0)
    monkeypatch.setattr(queue_module, "QUEUE_STATS_SHARE", 1e9)
    store._queue_stats_until = 0.0
    assert (await store.queue_stats())["transactional"][0] == 5


def test_dashboard_and_alerts_name_only_documented_metrics():
    documented = documented_metrics()
    names = deploy_metric_names()
    assert {"smsgw_link_up", "smsgw_queue_oldest_age_seconds", "smsgw_modem_signal_rssi",
            "smsgw_webhook_attempts_total", "smsgw_messages_total"} <= names
    unknown = sorted(n for n in names if n not in documented)
    assert not unknown, f"deploy/ names metrics the gateway does not export: {unknown}"
    dashboard = json.loads((DEPLOY / "grafana" / "smsgw-dashboard.json").read_text())
    assert dashboard["uid"] and all(p["gridPos"]["w"] <= 24 for p in dashboard["panels"])


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (see .ci/run)"
    rules = DEPLOY / "prometheus"
    check = subprocess.run([promtool, "check", "rules", "smsgw-alerts.yml"], cwd=rules, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "smsgw-alerts.test.yml"], cwd=rules, capture_output=True,
                          text=True, timeout=60)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


async def test_admin_page_lookup_endpoint(nursery, database_url):
    ch = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[ch],
                             admin=AdminConfig(listen="127.0.0.1:0", token="plain-token", privileged_token="full-token"))
    async with gw.client() as c, httpx.AsyncClient(base_url=gw.url) as admin:
        mid = (await c.post("/v1/messages", json={"to": "13800138000", "text": "秘密"})).json()["messages"][0]["id"]
        with trio.fail_after(10):
            while (await c.get(f"/v1/messages/{mid}")).json()["status"] != "submitted":
                await trio.sleep(0.05)
        plain = {"Authorization": "Bearer plain-token"}
        full = {"Authorization": "Bearer full-token"}
        r = await admin.get("/v1/admin/messages", params={"id": mid}, headers=plain)
        assert r.status_code == 200
        (m,) = r.json()["messages"]
        assert (m["id"], m["to"], m["text"], m["account"], m["channel"]) == (mid, "138****8000", None, "acme", "fake")
        assert [e["status"] for e in m["events"]] == ["accepted", "queued", "submitted"]
        r = await admin.get("/v1/admin/messages", params={"to": "+86 138 0013 8000"}, headers=full)
        assert r.status_code == 200 and r.json()["privileged"] is True
        assert [(m["id"], m["to"], m["text"]) for m in r.json()["messages"]] == [(mid, "13800138000", "秘密")]
        for params, headers, status, code in (
                ({"id": mid}, {}, 401, "unauthorized"),
                ({"id": mid}, {"Authorization": "Bearer nope"}, 401, "unauthorized"),
                ({"to": "13800138000"}, plain, 403, "forbidden"),
                ({"to": "12345"}, full, 400, "invalid_number"),
                ({"id": "abc"}, plain, 400, "invalid_field"),
                ({}, plain, 400, "invalid_field"),
                ({"id": "999999"}, plain, 404, "not_found")):
            r = await admin.get("/v1/admin/messages", params=params, headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), params
        page = await admin.get("/admin")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        port = gw.running.admin_ws_url.rsplit(":", 1)[1]
        assert f'content="{port}"' in page.text and "{{" not in page.text
        js = await admin.get("/admin/admin.js")
        assert js.status_code == 200 and "new WebSocket" in js.text
        assert (await admin.get("/admin/admin.css")).status_code == 200
