"""The admin stream's pure core: client frames, filters, masking, frame budget, and the hub."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from admin_ws.frames import (
    PASS_ALL,
    BadClientFrame,
    Criteria,
    FilterRequest,
    FrameBudget,
    PingRequest,
    check_prefix,
    decode_client_frame,
    encode,
    matches,
    rates,
    to_frame,
)
from admin_ws.hub import Hub
from gateway.events import EventBus, LimitEvent, LinkEvent, MoEvent, MtEvent, WebhookEvent

MT = MtEvent(id=7, account_id=3, to="13800138000", status="delivered", channel="cmcc-1", parts=2,
             msg_class="marketing", at=1.5)
MO = MoEvent(id=9, channel="cmcc-1", sender="13912345678", service_number="10658888001", text="1",
             merchant_id=4, command="join", at=2.0)
LINK = LinkEvent(channel="cmcc-1", up=False, detail="connection reset")
HOOK = WebhookEvent(message_id=7, kind="dlr", attempt=2, ok=False, status_code=502)
LIMIT = LimitEvent(scope="recipient", name="13800138000", wait_s=1.5)


def test_client_frames_decode_and_bad_ones_say_why():
    assert decode_client_frame('{"type": "filter", "status": ["delivered", "failed"], "prefix": "138"}') == \
        FilterRequest(status=["delivered", "failed"], prefix="138")
    assert decode_client_frame(b'{"type": "ping"}') == PingRequest()
    cases = {
        "{": "invalid_json",
        '{"type": "subscribe"}': "unknown_type",
        '{"status": "delivered"}': "invalid_frame",
        '{"type": "filter", "prefix": "13a"}': "invalid_frame",
        '{"type": "filter", "types": ["sms"]}': "invalid_frame",
        '{"type": "filter", "channel": ""}': "invalid_frame",
        '"filter"': "invalid_frame",
    }
    for text, code in cases.items():
        with pytest.raises(BadClientFrame) as info:
            decode_client_frame(text)
        assert info.value.code == code, text
        assert info.value.message


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers(), st.none()),
                                 max_size=4).map(json.dumps)))
def test_garbage_from_a_client_is_a_bad_frame_never_a_crash(data):
    try:
        decode_client_frame(data)
    except BadClientFrame as exc:
        assert exc.code in {"invalid_json", "unknown_type", "invalid_frame"}


def test_frames_mask_numbers_and_hide_texts_unless_privileged():
    plain = json.loads(encode(to_frame(MT, seq=3, dropped=0, privileged=False)))
    assert plain == {"type": "mt", "seq": 3, "id": "7", "account": 3, "to": "138****8000", "status": "delivered",
                     "channel": "cmcc-1", "parts": 2, "class": "marketing", "detail": "", "error_code": "",
                     "at": 1.5}
    assert json.loads(encode(to_frame(MT, seq=1, dropped=0, privileged=True)))["to"] == "13800138000"
    mo = json.loads(encode(to_frame(MO, seq=4, dropped=12, privileged=False)))
    assert (mo["from"], mo["text"], mo["length"], mo["dropped"]) == ("139****5678", None, 1, 12)
    assert mo["service_number"] == "10658888001" and mo["command"] == "join" and mo["merchant"] == 4
    assert json.loads(encode(to_frame(MO, seq=4, dropped=0, privileged=True)))["text"] == "1"
    limit = json.loads(encode(to_frame(LIMIT, seq=5, dropped=0, privileged=False)))
    assert limit["name"] == "138****8000" and limit["type"] == "limit"
    hook = json.loads(encode(to_frame(HOOK, seq=6, dropped=0, privileged=False)))
    assert (hook["type"], hook["message_id"], hook["ok"], hook["status_code"]) == ("webhook", "7", False, 502)
    link = json.loads(encode(to_frame(LINK, seq=7, dropped=0, privileged=False)))
    assert (link["type"], link["up"], link["detail"]) == ("link", False, "connection reset")


def test_filters_match_what_each_event_carries():
    everything = [MT, MO, LINK, HOOK, LIMIT]
    assert all(matches(PASS_ALL, e) for e in everything)

    def passing(c: Criteria) -> list:
        return [e for e in everything if matches(c, e)]

    assert passing(Criteria(channel="cmcc-1")) == [MT, MO, LINK]
    assert passing(Criteria(channel="other")) == []
    assert passing(Criteria(statuses=frozenset({"delivered"}))) == [MT]
    assert passing(Criteria(statuses=frozenset({"failed"}))) == []
    assert passing(Criteria(prefix="138")) == [MT]
    assert passing(Criteria(prefix="139")) == [MO]
    assert passing(Criteria(account_ids=frozenset({3}))) == [MT]
    assert passing(Criteria(account_ids=frozenset({3}), merchant_id=4)) == [MT, MO]
    assert passing(Criteria(account_ids=frozenset({5}), merchant_id=4)) == [MO]
    assert passing(Criteria(types=frozenset({"webhook", "limit"}))) == [HOOK, LIMIT]
    assert passing(Criteria(types=frozenset({"mt"}), channel="cmcc-1")) == [MT]


def test_a_plain_viewer_cannot_filter_on_hidden_digits():
    check_prefix("138", privileged=False)
    check_prefix("13800138000", privileged=True)
    with pytest.raises(BadClientFrame) as info:
        check_prefix("1380", privileged=False)
    assert info.value.code == "forbidden"


def test_frame_budget_and_rates():
    b = FrameBudget(rate=10, burst=3, now=0.0)
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    assert b.wait_time() == pytest.approx(0.1)
    assert b.refill(0.25) == pytest.approx(2.5)
    assert b.refill(10.0) == 3  # never beyond the burst
    assert b.refill(10.1, rate=1.0) == 3 and b.rate == 1.0
    assert rates({"a": 10}, {"a": 30, "b": 4}, 2.0) == {"a": 10.0, "b": 2.0}
    assert rates({"a": 10}, {"a": 5}, 1.0) == {"a": 0.0}  # a reset counter is no negative rate
    assert rates({}, {"a": 5}, 0.0) == {"a": 0.0}


async def test_hub_subscribes_only_while_watched_and_counts_what_a_viewer_lost():
    bus = EventBus()
    hub = Hub(bus, size=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        bus.publish(LINK)
        await trio.sleep(0.01)
        assert not bus.active and hub.head == 0
        position = hub.attach()
        await trio.sleep(0.01)
        assert bus.active
        for i in range(6):
            bus.publish(LinkEvent(channel=f"c{i}", up=True))
        await hub.wait(position, hub.board_version)
        await trio.sleep(0.01)
        events, position, lost = hub.read(position, 100)
        assert lost == 2 and [e.channel for e in events] == ["c2", "c3", "c4", "c5"] and position == 6
        assert hub.read(position, 100) == ([], 6, 0)
        for i in range(6, 9):
            bus.publish(LinkEvent(channel=f"c{i}", up=True))
        await trio.sleep(0.01)
        events, position, skipped = hub.tail(3, 2)  # from an old position: 3 lost, 1 passed over
        assert [e.channel for e in events] == ["c7", "c8"] and position == 9 and skipped == 4
        assert hub.tail(position, 5) == ([], 9, 0)
        hub.detach()
        await trio.sleep(0.01)
        assert not bus.active
        nursery.cancel_scope.cancel()
