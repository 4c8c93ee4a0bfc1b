"""The load tester's parts: histogram, schedules, the open-loop generator, accounting, plans."""

from __future__ import annotations

import io
import json
import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metrics import Metrics
from loadtest.accounting import GatewayCounts, account, parse_metrics
from loadtest.generator import Call, OpenLoop
from loadtest.histogram import SUB_BUCKETS, Histogram, bucket_bounds, bucket_index
from loadtest.http_client import Connection, Endpoint, HttpClientError, render_request
from loadtest.report import summary, verdict
from loadtest.scenarios import MAX_DURATION, SCENARIOS, LoadTestError, destination, plan
from loadtest.schedule import RateProfile, arrivals, constant, day_shape, ramp
from tests.http_peer import read_request

# --- histogram ---------------------------------------------------------------------------------


def _nearest_rank(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=400),
       st.sampled_from([1.0, 50.0, 90.0, 99.0, 99.9, 100.0]))
def test_percentiles_are_within_one_percent_of_the_sorted_list(values, p):
    h = Histogram()
    for v in values:
        h.record(v)
    exact = _nearest_rank(values, p)
    assert abs(h.percentile(p) - exact) <= exact * 0.01
    assert h.max == max(values) and h.min == min(values) and h.count == len(values)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**50))
def test_every_value_falls_inside_its_bucket(value):
    low, high = bucket_bounds(bucket_index(value))
    assert low <= value <= high
    assert high - low <= max(0, low // SUB_BUCKETS)


def test_small_values_are_exact_and_buckets_do_not_overlap():
    assert [bucket_index(v) for v in range(256)] == list(range(256))
    previous_high = -1
    for index in range(0, 3000):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        previous_high = high


def test_merge_equals_recording_everything_in_one():
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in range(0, 100_000, 7):
        (a if v % 2 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.counts == both.counts and a.count == both.count and a.max == both.max and a.min == both.min
    assert Histogram.from_dict(json.loads(json.dumps(a.to_dict()))).counts == both.counts


def test_empty_histogram_and_bad_input():
    h = Histogram()
    assert h.percentile(99) == 0 and h.mean == 0.0
    with pytest.raises(ValueError):
        h.record(-1)
    with pytest.raises(ValueError):
        h.percentile(0)


# --- schedules ---------------------------------------------------------------------------------


def test_constant_rate_spaces_arrivals_evenly_and_stops_at_duration_or_count():
    times = list(arrivals(constant(100.0, 2.0)))
    assert len(times) == 200
    gaps = {round(b - a, 9) for a, b in zip(times, times[1:])}
    assert gaps == {0.01}
    assert len(list(arrivals(constant(100.0, 2.0), count=37))) == 37


def test_ramp_and_day_shape_follow_their_rate():
    times = list(arrivals(ramp(1000.0, 10.0, 10.0)))
    first_half = sum(1 for t in times if t < 5.0)
    assert first_half < len(times) / 3  # a linear ramp puts a quarter of its arrivals in its first half
    day = day_shape(500.0, 20.0)
    n = len(list(arrivals(day)))
    assert abs(n - day.expected()) / day.expected() < 0.03
    night = sum(1 for t in arrivals(day) if t < 0.25 * 20.0)
    peak = sum(1 for t in arrivals(day) if 0.40 * 20.0 <= t < 0.50 * 20.0)
    assert peak > 5 * night / 2.5  # ten per cent of the day at its peak outweighs a quarter at night


def test_profiles_refuse_nonsense():
    with pytest.raises(ValueError):
        RateProfile(((1.0, 5.0),), 10.0)
    with pytest.raises(ValueError):
        RateProfile(((0.0, -1.0),), 10.0)
    with pytest.raises(ValueError):
        constant(10.0, 0.0)


# --- the open-loop generator, on the mock clock ---------------------------------------------------


ACCEPTED = b'{"messages":[{"id":"m-1","to":"13800000000","status":"accepted","parts":1}]}'


async def _stalling_server(delays: list[float], seen: list[float], *, task_status=trio.TASK_STATUS_IGNORED):
    """An HTTP server that answers the n-th request after delays[n] seconds (0 past the list)."""

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        while True:
            got = await read_request(stream, buf)
            if got is None:
                return
            _, buf = got
            n = len(seen)
            seen.append(trio.current_time())
            await trio.sleep(delays[n] if n < len(delays) else 0.0)
            await stream.send_all(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n%s" % (len(ACCEPTED), ACCEPTED))

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


@pytest.fixture
def slow_autojump_clock():
    # Jump only after 20 ms of real idleness, so loopback I/O always lands before time moves.
    return trio.testing.MockClock(autojump_threshold=0.02)


async def _run_loop(nursery, delays, connections, rate=10.0, duration=1.0):
    seen: list[float] = []
    port = await nursery.start(_stalling_server, delays, seen)
    endpoint = Endpoint(f"http://127.0.0.1:{port}", "key")
    data = render_request(endpoint, "POST", "/v1/messages", b'{"to":"13800000000","text":"x"}')
    loop = OpenLoop({"mt": endpoint}, lambda i: Call("mt", data, 1), constant(rate, duration),
                    connections=connections)
    await loop.run()
    return loop, seen


async def test_stalled_server_does_not_slow_the_schedule(nursery, slow_autojump_clock):
    # Two connections: the first request stalls 3 s on one, the schedule carries on over the other.
    start = trio.current_time()
    loop, seen = await _run_loop(nursery, [3.0], connections=2)
    res = loop.results
    assert res.requests == 10 and res.accepted["mt"] == 10
    arrivals_at = sorted(t - start for t in seen[1:])
    assert arrivals_at == pytest.approx([0.1 * i for i in range(1, 10)], abs=0.02)
    assert res.latency["mt"].max >= 2_990_000  # the stalled one: 3 s
    assert res.latency["mt"].percentile(80) < 20_000  # the rest on time
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.05)


async def test_latency_includes_the_wait_for_a_free_connection(nursery, slow_autojump_clock):
    # One connection, the first request stalls 1 s: the nine behind it were due at 0.1 .. 0.9 s
    # and went out at 1 s, so their latencies are 0.9 .. 0.1 s (coordinated omission corrected).
    loop, seen = await _run_loop(nursery, [1.0], connections=1)
    res = loop.results
    assert res.requests == 10
    assert res.latency["mt"].max == pytest.approx(1_000_000, rel=0.02)
    assert res.latency["mt"].percentile(50) == pytest.approx(500_000, rel=0.02)
    assert res.start_delay.max == pytest.approx(900_000, rel=0.02)
    assert res.intervals[0].started == 10  # all were due in the first second


async def test_refused_and_failed_requests_are_counted_not_accepted(nursery):
    endpoint = Endpoint("http://127.0.0.1:9", "key")  # the discard port: nothing listens
    loop = OpenLoop({"mt": endpoint}, lambda i: Call("mt", b"GET / HTTP/1.1\r\n\r\n", 3), constant(50.0, 0.1),
                    connections=2)
    await loop.run()
    assert loop.results.accepted["mt"] == 0
    assert loop.results.refused["mt"] == 3 * loop.results.requests > 0
    assert sum(loop.results.errors.values()) == loop.results.requests


async def test_connection_reports_a_closed_server():
    async def close_at_once(stream):
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, close_at_once, 0)
        port = listeners[0].socket.getsockname()[1]
        conn = Connection(Endpoint(f"http://127.0.0.1:{port}"))
        with pytest.raises(HttpClientError):
            await conn.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        nursery.cancel_scope.cancel()


async def test_progress_line_shows_the_current_rate_and_percentiles(nursery, slow_autojump_clock):
    from loadtest.runner import _Progress

    loop, _ = await _run_loop(nursery, [], connections=4, rate=20.0, duration=2.0)
    line = _Progress(loop, 40, io.StringIO()).line(loop.t0 + 2.0)
    assert line.startswith("[" + "#" * 30 + "] 100% 40/40 requests  20 msg/s  in flight 0  p99 ")


def test_endpoint_wants_an_http_url():
    with pytest.raises(HttpClientError):
        Endpoint("ftp://example.com")
    ep = Endpoint("http://127.0.0.1:8080/", "k")
    assert (ep.host, ep.port, ep.url) == ("127.0.0.1", 8080, "http://127.0.0.1:8080")
    req = render_request(ep, "POST", "/v1/messages", b"{}")
    assert b"Authorization: Bearer k\r\n" in req and req.endswith(b"Content-Length: 2\r\n\r\n{}")


# --- accounting ----------------------------------------------------------------------------------


def test_parse_metrics_reads_the_gateways_own_exposition():
    m = Metrics()
    m.messages_accepted.inc(7)
    m.messages.labels("submitted", "cmcc-1").inc(7)
    m.messages.labels("delivered", "cmcc-1").inc(5)
    m.messages.labels("delivered", "m1").inc(1)
    m.messages.labels("expired", "").inc(1)
    m.mo_received.labels("cmcc-1").inc(3)
    m.reports_unmatched.labels("cmcc-1").inc(2)
    counts = parse_metrics(m.exposition().decode())
    assert counts.accepted == 7 and counts.mo_received == 3 and counts.reports_unmatched == 2
    assert counts.on("delivered", "m1") == 1 and counts.on("delivered", "cmcc-1") == 5
    assert counts.by_status["delivered"] == 6 and counts.final == 7


def test_accounting_names_losses_duplicates_and_mismatches():
    before = GatewayCounts(accepted=100, by_status={"delivered": 100, "submitted": 100})
    after = GatewayCounts(accepted=110, by_status={"delivered": 108, "submitted": 110}, mo_received=5)
    sim = {"accepted": 11, "duplicates": 1, "reports_acked": 8, "mo_acked": 5}  # the run's own counts
    acc = account(mt_accepted=10, mo_accepted=5, delta=after.minus(before), sim=sim)
    assert acc.lost == 2 and acc.duplicates == 1 and acc.accepted == 15 and acc.final == 13
    assert all(c.ok for c in acc.checks)
    assert not acc.clean
    off = account(mt_accepted=10, mo_accepted=0, delta=after.minus(before), sim=sim | {"reports_acked": 9})
    assert [c.name for c in off.checks if not c.ok] == ["simulator reports acked = gateway delivered"]
    assert "MISMATCH: simulator reports acked" in verdict(off, drained=True)
    assert verdict(off, drained=False).endswith("(messages were still in flight: raise --drain-timeout)")
    text = verdict(acc, drained=False)
    assert "LOST 2 of 15" in text and "1 DUPLICATES" in text and "drain timed out" in text

    clean = account(mt_accepted=10, mo_accepted=0, delta=GatewayCounts(accepted=10, by_status={"delivered": 10}),
                    sim=None)
    assert clean.lost == 0 and clean.duplicates is None
    assert verdict(clean, drained=True).startswith("no loss, duplicates not counted")


# --- plans ------------------------------------------------------------------------------------------


ENDPOINTS = {"mt": Endpoint("http://127.0.0.1:1", "k"), "mo": Endpoint("http://127.0.0.1:2")}


def test_plans_turn_message_rates_into_request_rates():
    p = plan("batch", rate=5000, duration=2, count=None, ramp_s=0, endpoints=ENDPOINTS, run_id="r")
    assert p.requests == 100 and p.profile.rate(0.5) == 50
    body = json.loads(p.call(3).data.split(b"\r\n\r\n", 1)[1])
    assert body["to"] == [destination(300 + j) for j in range(100)] and body["text"] == "LTr 3"
    campaign = plan("campaign", rate=None, duration=None, count=None, ramp_s=0, endpoints=ENDPOINTS, run_id="r")
    assert campaign.requests == 100 and campaign.call(0).messages == 1000
    mo = plan("mo-storm", rate=10, duration=1, count=None, ramp_s=0, endpoints=ENDPOINTS, run_id="r")
    assert b"POST /v1/sim/mo " in mo.call(0).data and b"Authorization" not in mo.call(0).data


def test_mixed_plan_sends_one_call_in_a_hundred_to_the_modems_when_there_are_some():
    without = plan("mixed", rate=None, duration=None, count=None, ramp_s=0, endpoints=ENDPOINTS, run_id="r")
    assert without.modem_numbers(1000) == []
    p = plan("mixed", rate=None, duration=None, count=None, ramp_s=0, endpoints=ENDPOINTS, run_id="r", modems=True)
    numbers = p.modem_numbers(1000)
    assert len(numbers) == 10 and all(n.startswith("1867") for n in numbers)
    sent_to = [json.loads(p.call(i).data.split(b"\r\n\r\n", 1)[1]).get("to") for i in range(1000)]
    assert [n for n in sent_to if isinstance(n, str) and n.startswith("1867")] == numbers


def test_modem_handsets_join_the_accounting():
    delta = GatewayCounts(accepted=10, by_status={"delivered": 10, "submitted": 10},
                          by_channel={("delivered", "cmpp"): 8, ("delivered", "modems"): 2})
    sim = {"accepted": 8, "duplicates": 0, "reports_acked": 8}
    acc = account(mt_accepted=10, mo_accepted=0, delta=delta, sim=sim, cmpp_channel="cmpp",
                  handsets={"received": 3, "duplicates": 1})
    assert acc.duplicates == 1 and acc.lost == 0
    assert [c.name for c in acc.checks if not c.ok] == ["handsets' messages from modems = gateway delivered via modems"]


def test_mixed_plan_mixes_singles_batches_and_mos():
    p = plan("mixed", rate=None, duration=None, count=None, ramp_s=0, endpoints=ENDPOINTS, run_id="r")
    calls = [p.call(i) for i in range(2000)]
    mos = sum(1 for c in calls if c.kind == "mo")
    batches = sum(1 for c in calls if c.messages == 10)
    assert 60 <= mos <= 140 and 240 <= batches <= 360
    texts = [json.loads(c.data.split(b"\r\n\r\n", 1)[1])["text"] for c in calls if c.kind == "mt"]
    assert len(set(texts)) == len(texts)  # every MT text unique: the simulator can spot a duplicate


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "nope"}, "unknown scenario"),
    ({"rate": 0}, "--rate"),
    ({"duration": MAX_DURATION + 1}, "--duration"),
    ({"count": 0}, "--count"),
    ({"ramp_s": -1}, "--ramp"),
])
def test_plan_errors_name_the_option(kwargs, message):
    args = {"name": "single", "rate": None, "duration": None, "count": None, "ramp_s": 0.0} | kwargs
    name = args.pop("name")
    with pytest.raises(LoadTestError, match=message):
        plan(name, endpoints=ENDPOINTS, run_id="r", **args)


def test_mo_scenarios_need_a_handset_endpoint():
    with pytest.raises(LoadTestError, match="handset simulator"):
        plan("mo-storm", rate=None, duration=None, count=None, ramp_s=0, endpoints={"mt": ENDPOINTS["mt"]},
             run_id="r")


def test_every_scenario_is_listed_in_the_cli_help():
    from gateway.cli import LOADTEST_DESCRIPTION, build_parser

    build_parser()
    for name in SCENARIOS:
        assert name in LOADTEST_DESCRIPTION


def test_summary_table_has_the_figures():
    report = {
        "scenario": "single", "mode": "target", "target": "http://x", "requests": 10, "send_seconds": 1.0,
        "messages_per_request": 1.0, "accepted": 10, "throughput_per_s": 10.0, "refused": 0, "final": 9,
        "delivered": 9, "drain_seconds": 2.0, "lost": 1, "duplicates": None,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p99.9": 4.0, "max": 5.0},
        "generator_lag_ms": {"p50": 0.1, "p99": 0.2, "max": 0.3},
        "peak_gateway_rates_per_s": {"accepted_per_s": 10.0}, "cpu_seconds": {"generator": 0.5},
        "checks": [{"name": "x", "expected": 1, "actual": 2, "ok": False}], "errors": {}, "verdict": "LOST 1",
    }
    text = summary(report)
    lines = dict(line.split(None, 1) for line in text.splitlines() if not line.startswith(("latency", "generator",
                                                                                              "peak", "cpu")))
    assert lines["lost"].strip() == "1" and lines["verdict"].strip() == "LOST 1"
    assert "p99 3.00" in text and "FAIL x: expected 1, got 2" in text and "not counted" in text


# --- the simulator's duplicate count ----------------------------------------------------------------


@pytest.mark.parametrize("count_duplicates, expected", [(True, 1), (False, 0)])
async def test_simulator_counts_a_message_handed_to_it_twice(nursery, count_duplicates, expected):
    from gateway.cmpp import CmppLink, CmppLinkConfig, IsmgSimulator, LinkUp, SubmitAcked, SubmitRequest
    from gateway.cmpp.pdus import MsgFmt

    sim = IsmgSimulator(sp_id="901234", secret="s", count_duplicates=count_duplicates)
    port = await nursery.start(sim.serve, "127.0.0.1", 0)
    send, receive = trio.open_memory_channel(100)
    link = CmppLink(CmppLinkConfig(sp_id="901234", secret="s", port=port, rate=1000.0), send)
    await nursery.start(link.run)
    acked = 0
    with trio.fail_after(10):
        async for ev in receive:
            if isinstance(ev, LinkUp):
                for ref, (dest, text) in enumerate([("13800000001", b"LT 1"), ("13800000002", b"LT 2"),
                                                    ("13800000001", b"LT 1"), ("13800000001", b"LT 3")]):
                    await link.submit(SubmitRequest(ref=ref, dest=dest, src_id="10658888", content=text,
                                                    msg_fmt=MsgFmt.ASCII))
            elif isinstance(ev, SubmitAcked):
                acked += 1
                if acked == 4:
                    break
    stats = sim.statistics()
    assert stats.accepted == 4 and stats.duplicates == expected
