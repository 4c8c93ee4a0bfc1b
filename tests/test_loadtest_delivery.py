"""Delivery latency per channel kind in the load test: sampling accepted ids per route, reading
a message's history, the percentiles and the report's rows."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta

import msgspec

from gateway.api import EventOut, MessageDetail
from gateway.http import Request, Response, serve_http
from loadtest.delivery import MessageTimes, delivery_report, message_times, percentile, route_latency
from loadtest.generator import ROUTE_SAMPLE_IDS, Call, OpenLoop
from loadtest.http_client import Endpoint, render_request
from loadtest.report import summary
from loadtest.scenarios import ROUTE_CMPP, ROUTE_MODEM, plan
from loadtest.schedule import constant

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _history(*events: tuple[str, float], channel: str | None = "cmcc-1", status: str = "delivered") -> bytes:
    """A ``GET /v1/messages/{id}`` body as the gateway encodes it; event times in seconds after T0."""
    return msgspec.json.encode(MessageDetail(
        id="7", to="13800000000", text="x", status=status, channel=channel, parts=1, created_at=T0,
        events=[EventOut(s, T0 + timedelta(seconds=at), "") for s, at in events]))


def test_message_times_from_the_gateways_history():
    t = message_times(_history(("accepted", 0), ("queued", 0.01), ("submitted", 0.25), ("submitted", 0.3),
                               ("delivered", 1.5)))
    assert t == MessageTimes(channel="cmcc-1", status="delivered", to_submitted=0.25, to_delivered=1.5,
                             to_queued=0.01)
    pending = message_times(_history(("accepted", 0), ("queued", 0.01), channel=None, status="queued"))
    assert pending.to_submitted is None and pending.to_delivered is None and pending.channel is None
    failed = message_times(_history(("accepted", 0), ("submitted", 2.0), ("undeliverable", 9.0),
                                    status="undeliverable"))
    assert failed.to_submitted == 2.0 and failed.to_delivered is None


def test_nearest_rank_percentile():
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) == 0.0


def test_route_latency_and_the_report_per_route():
    cmpp = [MessageTimes("cmcc-1", "delivered", i / 1000, 1 + i / 1000) for i in range(1, 101)]
    cmpp.append(MessageTimes("cmcc-1", "submitted", 0.5, None, to_queued=0.25))
    modem = [MessageTimes("modems", "delivered", 2.0, 6.0), MessageTimes("modems", "delivered", 4.0, 8.0)]
    report = delivery_report({ROUTE_MODEM: modem, ROUTE_CMPP: cmpp}, {ROUTE_CMPP: 5000, ROUTE_MODEM: 40}, 10.0)
    assert list(report) == [ROUTE_CMPP, ROUTE_MODEM]
    c = report[ROUTE_CMPP]
    assert c["accepted"] == 5000 and c["offered_per_s"] == 500.0 and c["sampled"] == 101
    assert c["channels"] == {"cmcc-1": 101} and c["statuses"] == {"delivered": 100, "submitted": 1}
    # 101 values (1 .. 100 ms and 500 ms): the median is the 51st.
    assert c["accept_to_submitted_ms"]["p50"] == 51.0 and c["accept_to_submitted_ms"]["count"] == 101
    assert c["accept_to_delivered_ms"] == {"p50": 1050.0, "p90": 1090.0, "p99": 1099.0, "max": 1100.0, "count": 100}
    assert c["not_submitted"] == 0 and c["not_delivered"] == 1
    assert c["accept_to_queued_ms"]["count"] == 1 and c["accept_to_queued_ms"]["p50"] == 250.0
    m = report[ROUTE_MODEM]
    assert m["offered_per_s"] == 4.0 and m["accept_to_delivered_ms"]["p50"] == 6000.0
    assert m["accept_to_delivered_ms"]["p99"] == 8000.0
    empty = route_latency([])
    assert empty["sampled"] == 0 and empty["accept_to_delivered_ms"]["count"] == 0


def test_mixed_plan_names_the_route_of_each_mt_call():
    endpoints = {"mt": Endpoint("http://127.0.0.1:1", "k"), "mo": Endpoint("http://127.0.0.1:2")}
    p = plan("mixed", rate=None, duration=None, count=None, ramp_s=0, endpoints=endpoints, run_id="r", modems=True)
    calls = [p.call(i) for i in range(1000)]
    modem_tos = {json.loads(c.data.split(b"\r\n\r\n", 1)[1])["to"] for c in calls if c.route == ROUTE_MODEM}
    assert modem_tos == set(p.modem_numbers(1000))
    assert all(c.route == "" for c in calls if c.kind == "mo")
    assert all(c.route == ROUTE_CMPP for c in calls if c.kind == "mt" and c.route != ROUTE_MODEM)
    single = plan("single", rate=10, duration=1, count=None, ramp_s=0, endpoints=endpoints, run_id="r")
    assert single.call(0).route == ROUTE_CMPP


async def test_generator_samples_accepted_ids_per_route(nursery):
    async def accept(request: Request) -> Response:
        body = json.loads(request.body)
        return Response(status=202, body=json.dumps(
            {"messages": [{"id": body["text"], "to": body["to"], "status": "accepted", "parts": 1}]}).encode())

    port = await nursery.start(functools.partial(serve_http, accept, "127.0.0.1", 0))
    endpoint = Endpoint(f"http://127.0.0.1:{port}", "key")

    def route_of(i: int) -> str:
        return ROUTE_MODEM if i % 4 == 0 else ROUTE_CMPP

    def call(i: int) -> Call:
        body = json.dumps({"to": "13800000000", "text": f"{route_of(i)}-{i}"}).encode()
        return Call("mt", render_request(endpoint, "POST", "/v1/messages", body), 1, route_of(i))

    total = 4 * ROUTE_SAMPLE_IDS  # 3 in 4 to cmpp: more than a sample holds
    loop = OpenLoop({"mt": endpoint}, call, constant(20_000.0, 10.0), count=total, connections=8)
    await loop.run()
    res = loop.results
    assert res.accepted["mt"] == total
    assert res.accepted_by_route == {ROUTE_CMPP: 3 * total // 4, ROUTE_MODEM: total // 4}
    cmpp, modem = res.route_ids[ROUTE_CMPP], res.route_ids[ROUTE_MODEM]
    assert len(cmpp) == ROUTE_SAMPLE_IDS and len(set(cmpp)) == ROUTE_SAMPLE_IDS
    assert all(i.startswith("cmpp-") for i in cmpp)
    assert sorted(modem) == sorted(f"modem-{i}" for i in range(0, total, 4))


def test_summary_shows_each_routes_latency():
    report = {
        "scenario": "mixed", "mode": "self-contained", "target": "http://x", "requests": 10, "send_seconds": 1.0,
        "messages_per_request": 1.0, "accepted": 10, "throughput_per_s": 10.0, "refused": 0, "final": 10,
        "delivered": 10, "delivered_throughput_per_s": 4.0, "drain_seconds": 1.5, "lost": 0, "duplicates": 0,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p99.9": 4.0, "max": 5.0},
        "generator_lag_ms": {"p50": 0.1, "p99": 0.2, "max": 0.3},
        "peak_gateway_rates_per_s": {"accepted_per_s": 10.0}, "cpu_seconds": {"generator": 0.5},
        "checks": [], "errors": {}, "verdict": "no loss, no duplicates",
        "delivery_by_route": delivery_report(
            {ROUTE_CMPP: [MessageTimes("cmcc-1", "delivered", 0.2, 1.25)],
             ROUTE_MODEM: [MessageTimes("modems", "delivered", 3.0, 7.5)]}, {ROUTE_CMPP: 9, ROUTE_MODEM: 1}, 1.0),
    }
    text = summary(report)
    assert "4/s first request to last report" in text
    cmpp_line = next(line for line in text.splitlines() if line.startswith("cmpp ms"))
    assert "accept→submitted p50 200 p99 200" in cmpp_line and "accept→delivered p50 1,250" in cmpp_line
    modem_line = next(line for line in text.splitlines() if line.startswith("modem ms"))
    assert "accept→delivered p50 7,500 p99 7,500" in modem_line and "offered 1.0/s" in modem_line
