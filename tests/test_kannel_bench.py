"""The Kannel benchmark's pure parts: the request it sends, the dlr-url it asks for and how the
callbacks are counted, wrk's report read as numbers, the summary."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime

import pytest

from gateway.api import build_accept
from gateway.http import Request
from gateway.kannel import expand_dlr_url, parse_params, sendsms_request
from loadtest.kannel_bench import (DLR_MASK_ALL, DLR_PATH, DlrCounter, _leaves, dlr_url_template, parse_wrk,
                                   sendsms_prefix, summarize)
from loadtest.scenarios import LoadTestError

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40123
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    61.20ms   40.11ms 412.00ms   71.23%
    Req/Sec   375.12     80.20   610.00     68.00%
  Latency Distribution
     50%   60.41ms
     75%   89.64ms
     90%  110.73ms
     99%    1.22s
  7466 requests in 10.04s, 1.23MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    743.62
Transfer/sec:    125.40KB
"""


def _gateway_sees(path_and_query: str, to: str):
    """What the gateway's Kannel handler makes of the request the wrk script sends."""
    path, query = path_and_query.split("?", 1)
    request = Request(method="GET", path=path, query=f"{query}&to={to}", headers={}, body=b"", remote="127.0.0.1")
    params = parse_params(request)
    return params, sendsms_request(params, 7, max_recipients=10, max_parts=10, build=build_accept)


def test_the_request_reaches_the_gateway_with_its_dlr_url_escapes_intact():
    template = dlr_url_template("http://127.0.0.1:5555/")
    assert template == f"http://127.0.0.1:5555{DLR_PATH}?id=%I&type=%d&to=%p&at=%T"
    prefix = sendsms_prefix("loadtest", "smsgw_k&y=1", dlr_url=template)
    assert prefix.startswith("/cgi-bin/sendsms?") and "%25I" in prefix and "%25d" in prefix
    params, accept = _gateway_sees(prefix, "13900000001")
    assert params["username"] == b"loadtest" and params["password"] == b"smsgw_k&y=1"
    assert accept.dlr_url == template and accept.dlr_mask == DLR_MASK_ALL
    assert [m.dest for m in accept.messages] == ["13900000001"]


def test_without_dlr_the_request_asks_for_no_report():
    prefix = sendsms_prefix("loadtest", "key")
    assert "dlr" not in prefix
    _, accept = _gateway_sees(prefix, "13900000002")
    assert accept.dlr_url is None and accept.dlr_mask == 0


def test_a_callback_the_gateway_expands_is_counted_once_per_type():
    template = dlr_url_template("http://127.0.0.1:5555")
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def callback(dlr_type: int, message_id: int) -> str:
        url = expand_dlr_url(template, dlr_type=dlr_type, to="13900000001", sender="10658888", at=at,
                             reply="DELIVRD", channel="cmcc-1", message_id=message_id)
        parts = urllib.parse.urlsplit(url)
        assert parts.path == DLR_PATH
        return parts.query

    counter = DlrCounter()
    assert counter.record(callback(8, 41), at=1.0)
    assert counter.record(callback(1, 41), at=2.0)
    assert counter.record(callback(2, 42), at=3.0)
    assert counter.record(callback(1, 41), at=4.0)  # the same report again
    assert not counter.record("id=43", at=5.0)
    assert counter.callbacks == 4 and counter.duplicates == 1 and counter.malformed == 1
    assert counter.by_type == {8: 1, 1: 1, 2: 1}
    assert counter.finished == {"41", "42"}
    assert (counter.first_at, counter.last_at) == (1.0, 4.0)


def test_wrk_report_read_as_numbers():
    figures = parse_wrk(WRK_OUTPUT)
    assert figures["requests"] == 7466 and figures["seconds"] == pytest.approx(10.04)
    assert figures["requests_per_s"] == pytest.approx(743.62)
    assert figures["latency_ms"] == {"p50": 60.41, "p75": 89.64, "p90": 110.73, "p99": 1220.0}
    assert figures["non_2xx"] == 3 and figures["socket_errors"] == ""
    with pytest.raises(LoadTestError, match="no request count"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_summary_counts_callbacks_against_what_the_gateway_accepted():
    wrk = parse_wrk(WRK_OUTPUT)
    counter = DlrCounter()
    for i in range(100):
        counter.record(f"id={i}&type=8", at=101.0)
    for i in range(90):
        counter.record(f"id={i}&type=1", at=105.0 + i / 10)
    s = summarize(wrk=wrk, accepted=100, dlr=counter, wrk_end=110.04, gateway_cpu_s=0.5, simulator_cpu_s=None,
                  dlr_mask=DLR_MASK_ALL, waited_s=4.0)
    assert s["accepted"] == 100 and s["accepted_per_s"] == pytest.approx(100 / 10.04, abs=0.1)
    assert s["gateway_cpu_ms_per_message"] == 5.0 and s["simulator_cpu_ms_per_message"] is None
    dlr = s["dlr"]
    assert dlr["callbacks"] == 190 and dlr["by_type"] == {"1": 90, "8": 100}
    assert dlr["final_received"] == 90 and dlr["final_missing"] == 10 and dlr["complete"] is False
    # From wrk's start (110.04 - 10.04 = 100.0) to the last callback (113.9).
    assert dlr["callbacks_per_s"] == pytest.approx(190 / 13.9, abs=0.1)
    assert dlr["last_callback_after_wrk_s"] == pytest.approx(3.86)
    plain = summarize(wrk=wrk, accepted=7466, dlr=None, wrk_end=None, gateway_cpu_s=None, simulator_cpu_s=None,
                      dlr_mask=0, waited_s=0.0)
    assert "dlr" not in plain and plain["gateway_cpu_ms_per_message"] is None
    assert plain["latency_ms"]["p99"] == 1220.0


def test_a_failure_inside_the_receivers_nursery_is_found_in_its_group():
    group = ExceptionGroup("run", [LoadTestError("wrk exited with 1"),
                                   ExceptionGroup("stack", [LoadTestError("the gateway exited with 3")])])
    assert [str(e) for e in _leaves(group)] == ["wrk exited with 1", "the gateway exited with 3"]
