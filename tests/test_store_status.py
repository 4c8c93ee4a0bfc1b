"""Status writes of the submission path, each one statement: submitted parts, delivery
reports, status moves, and what they leave behind (history, webhooks, the queue, events)."""

from __future__ import annotations

from gateway.channel import Status
from gateway.events import EventBus, MtEvent
from gateway.store import AcceptRequest, NewMessage

CH = "cmpp-a"


async def queued(store, *parts: int, callback_url: str | None = None, dlr_url: str | None = None,
                 dlr_mask: int = 0) -> list[int]:
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(
        account_id=account.id, callback_url=callback_url, dlr_url=dlr_url, dlr_mask=dlr_mask,
        messages=tuple(NewMessage(dest=f"1380013{i:04d}", operator="cmcc", body="x" * (160 if n == 1 else 300),
                                  encoding="gsm7", parts=n) for i, n in enumerate(parts)))])
    ids = [m.id for m in res.messages]
    await store.set_status([(i, Status.QUEUED, CH, None, f"channel={CH}") for i in ids])
    return ids


async def history(store, message_id: int) -> list[tuple[str, str]]:
    view = await store.message(message_id)
    return [(e.status, e.detail) for e in view.events]


async def test_a_message_is_submitted_when_its_last_part_is(store):
    a, b = await queued(store, 2, 1)
    assert await store.record_submitted([(CH, a, 1, "r1"), (CH, b, 1, "r3")]) == [b]
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", a) == "queued"
    assert await store.fetchval("SELECT parts_submitted FROM messages WHERE id = $1", a) == 1
    assert await store.record_submitted([("cmpp-b", a, 2, "r2")]) == [a]
    row = await store.fetchrow("SELECT status, channel, parts_submitted FROM messages WHERE id = $1", a)
    assert tuple(row) == ("submitted", "cmpp-b", 2)
    assert await history(store, a) == [("accepted", ""), ("queued", "channel=cmpp-a"),
                                       ("submitted", "channel=cmpp-b")]
    assert await store.fetchval("SELECT count(*) FROM outbound_queue") == 0
    refs = await store.fetch("SELECT channel, ref, message_id, part FROM message_refs ORDER BY ref")
    assert [tuple(r) for r in refs] == [(CH, "r1", a, 1), ("cmpp-b", "r2", a, 2), (CH, "r3", b, 1)]


async def test_the_channel_s_own_part_count_replaces_the_planned_one(store):
    a, b = await queued(store, 1, 2)
    # a: one GSM part that the channel sends in two; b: two GSM parts it sends in one.
    assert await store.record_submitted([(CH, a, 1, "a1", 2), (CH, b, 1, "b1", 1)]) == [b]
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", a) == "queued"
    assert await store.record_submitted([(CH, a, 2, "a2", 2)]) == [a]
    rows = await store.fetch("SELECT id, parts, parts_submitted FROM messages ORDER BY id")
    assert [tuple(r) for r in rows] == [(a, 2, 2), (b, 1, 1)]
    await store.record_reports([(CH, "a1", "delivered", "")])
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", a) == "submitted"
    await store.record_reports([(CH, "a2", "delivered", ""), (CH, "b1", "delivered", "")])
    assert [r[0] for r in await store.fetch("SELECT status FROM messages ORDER BY id")] == ["delivered"] * 2


async def test_a_ref_named_twice_points_at_its_latest_part_and_parts_are_capped(store):
    (a,) = await queued(store, 2)
    # The same ref twice in one batch (an operator reusing a Msg_Id), and a part acknowledged twice.
    done = await store.record_submitted([(CH, a, 1, "r1"), (CH, a, 2, "r1"), (CH, a, 2, "r2")])
    assert done == [a]
    assert await store.fetchval("SELECT parts_submitted FROM messages WHERE id = $1", a) == 2
    assert tuple(await store.fetchrow("SELECT message_id, part FROM message_refs WHERE ref = 'r1'")) == (a, 2)
    assert await store.record_submitted([(CH, a, 2, "r2")]) == []  # submitted already: no second move
    assert [s for s, _ in await history(store, a)].count("submitted") == 1


async def test_submitting_a_final_message_counts_the_part_and_keeps_the_state(store):
    (a,) = await queued(store, 1)
    assert await store.set_status([(a, Status.EXPIRED, None, None, "validity")]) == {a}
    assert await store.record_submitted([(CH, a, 1, "late")]) == []
    row = await store.fetchrow("SELECT status, parts_submitted FROM messages WHERE id = $1", a)
    assert tuple(row) == ("expired", 1)
    assert [s for s, _ in await history(store, a)] == ["accepted", "queued", "expired"]


async def test_reports_finish_a_message_once_every_part_is_delivered(store):
    a, b = await queued(store, 2, 1, callback_url="https://app.example/dlr")
    await store.record_submitted([(CH, a, 1, "a1"), (CH, a, 2, "a2"), (CH, b, 1, "b1")])
    out = await store.record_reports([(CH, "a1", "delivered", ""), (CH, "b1", "delivered", "")])
    assert [(o.matched, o.message_id, o.status) for o in out] == [(True, a, "delivered"), (True, b, "delivered")]
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", a) == "submitted"
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", b) == "delivered"
    await store.record_reports([(CH, "a2", "delivered", "")])
    row = await store.fetchrow("SELECT status, parts_delivered FROM messages WHERE id = $1", a)
    assert tuple(row) == ("delivered", 2)
    assert (await history(store, a))[-1] == ("delivered", "all parts delivered")
    hooks = await store.fetch("SELECT message_id, url, kind, event_status FROM webhook_outbox ORDER BY message_id")
    assert [tuple(h) for h in hooks] == [(a, "https://app.example/dlr", "webhook", "delivered"),
                                         (b, "https://app.example/dlr", "webhook", "delivered")]


async def test_the_first_failed_part_decides_and_keeps_its_code(store):
    a, b = await queued(store, 2, 1)
    await store.record_submitted([(CH, a, 1, "a1"), (CH, a, 2, "a2"), (CH, b, 1, "b1")])
    out = await store.record_reports([(CH, "a1", "delivered", ""), (CH, "a2", "undeliverable", "UNDELIV"),
                                      (CH, "b1", "rejected", "")])
    assert [o.status for o in out] == ["delivered", "undeliverable", "rejected"]
    row = await store.fetchrow("SELECT status, error_code, parts_delivered FROM messages WHERE id = $1", a)
    assert tuple(row) == ("undeliverable", "UNDELIV", 1)
    assert (await history(store, a))[-1] == ("undeliverable", "report stat=UNDELIV")
    assert (await history(store, b))[-1] == ("rejected", "report stat=rejected")
    assert await store.fetchval("SELECT error_code FROM messages WHERE id = $1", b) is None


async def test_duplicate_unknown_and_repeated_reports(store):
    (a,) = await queued(store, 1)
    await store.record_submitted([(CH, a, 1, "a1")])
    out = await store.record_reports([(CH, "a1", "delivered", ""), (CH, "a1", "delivered", ""),
                                      (CH, "nope", "delivered", ""), ("other", "a1", "delivered", "")])
    assert [(o.matched, o.message_id, o.status) for o in out] == [
        (True, a, "delivered"), (True, a, None), (False, None, None), (False, None, None)]
    again = await store.record_reports([(CH, "a1", "undeliverable", "X")])
    assert [(o.matched, o.message_id, o.status) for o in again] == [(True, a, None)]
    row = await store.fetchrow("SELECT status, parts_delivered, error_code FROM messages WHERE id = $1", a)
    assert tuple(row) == ("delivered", 1, None)
    assert [s for s, _ in await history(store, a)].count("delivered") == 1


async def test_a_report_on_a_final_message_counts_but_does_not_move_it(store):
    (a,) = await queued(store, 1, callback_url="https://app.example/dlr")
    await store.record_submitted([(CH, a, 1, "a1")])
    await store.set_status([(a, Status.EXPIRED, None, None, "validity")])
    (o,) = await store.record_reports([(CH, "a1", "delivered", "")])
    assert (o.matched, o.message_id) == (True, a)
    row = await store.fetchrow("SELECT status, parts_delivered FROM messages WHERE id = $1", a)
    assert tuple(row) == ("expired", 1)
    assert [h["event_status"] for h in await store.fetch("SELECT event_status FROM webhook_outbox")] == ["expired"]


async def test_kannel_dlr_bits_for_submitted_and_final(store):
    url = "http://app.example/kannel?d=%d"
    a, b = await queued(store, 1, 1, dlr_url=url, dlr_mask=1 | 2 | 8)
    await store.record_submitted([(CH, a, 1, "a1"), (CH, b, 1, "b1")])
    await store.record_reports([(CH, "a1", "delivered", ""), (CH, "b1", "undeliverable", "UNDELIV")])
    rows = await store.fetch("SELECT message_id, dlr_type, event_status FROM webhook_outbox WHERE kind = 'kannel'"
                             " ORDER BY message_id, id")
    assert [tuple(r) for r in rows] == [(a, 8, "submitted"), (a, 1, "delivered"),
                                        (b, 8, "submitted"), (b, 2, "undeliverable")]


async def test_transitions_are_published_once_committed(store):
    bus = EventBus()
    store.events = bus
    with bus.subscribe() as sub:
        (a,) = await queued(store, 1)
        await store.record_submitted([(CH, a, 1, "a1")])
        await store.record_reports([(CH, "a1", "undeliverable", "UNDELIV")])
        events, dropped = await sub.receive()
    mt = [(e.id, e.status, e.channel, e.error_code, e.detail) for e in events if isinstance(e, MtEvent)]
    assert dropped == 0
    assert mt == [(a, "accepted", "", "", ""), (a, "queued", CH, "", f"channel={CH}"),
                  (a, "submitted", CH, "", f"channel={CH}"),
                  (a, "undeliverable", CH, "UNDELIV", "report stat=UNDELIV")]


async def test_a_routing_is_recorded_with_the_first_part_the_channel_submits(store):
    """The dispatcher does not write ``queued`` on its own: a message it routed is moved to
    ``queued`` on the channel by the statement that records its first submitted part, with
    the same history, Kannel DLRs (4 before 8) and events as two separate moves."""
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(
        account_id=account.id, dlr_url="http://app.example/k?d=%d", dlr_mask=4 | 8,
        messages=(NewMessage(dest="13800130000", operator="cmcc", body="x", encoding="gsm7", parts=1),
                  NewMessage(dest="13800130001", operator="cmcc", body="x" * 300, encoding="gsm7", parts=2)))])
    one, two = (m.id for m in res.messages)
    bus = EventBus()
    store.events = bus
    with bus.subscribe() as sub:
        assert await store.record_submitted([(CH, one, 1, "o1"), (CH, two, 1, "t1")], routed={one, two}) == [one]
        assert await store.fetchval("SELECT status FROM messages WHERE id = $1", two) == "queued"
        assert await store.record_submitted([(CH, two, 2, "t2")]) == [two]
        events, _ = await sub.receive()
    assert await history(store, one) == [("accepted", ""), ("queued", f"channel={CH}"), ("submitted", f"channel={CH}")]
    assert await history(store, two) == [("accepted", ""), ("queued", f"channel={CH}"), ("submitted", f"channel={CH}")]
    rows = await store.fetch("SELECT message_id, dlr_type FROM webhook_outbox ORDER BY id")
    assert [tuple(r) for r in rows if r[0] == one] == [(one, 4), (one, 8)]
    assert [tuple(r) for r in rows if r[0] == two] == [(two, 4), (two, 8)]
    mt = [(e.id, e.status) for e in events if isinstance(e, MtEvent)]
    assert mt == [(one, "queued"), (two, "queued"), (one, "submitted"), (two, "submitted")]
    assert await store.fetchval("SELECT count(*) FROM outbound_queue") == 0


async def test_set_status_takes_final_messages_out_of_the_queue_in_one_statement(store):
    a, b = await queued(store, 1, 1)
    assert await store.set_status([(a, Status.REJECTED, None, "blocklisted", "rejected: blocklisted"),
                                   (b, Status.QUEUED, "cmpp-b", None, "channel=cmpp-b")]) == {a, b}
    assert [r[0] for r in await store.fetch("SELECT message_id FROM outbound_queue")] == [b]
    assert await store.fetchval("SELECT channel FROM messages WHERE id = $1", b) == "cmpp-b"


async def test_report_and_submit_statements_probe_the_indexes_whatever_the_tables_hold(store):
    """With thousands of refs already reported (the planner then thinks few are still
    'submitted'), a batch's statements never join the batch with itself or with a table by a
    filtered nested loop (work quadratic in the batch's size), and messages are found by
    primary key. (On a table this small a sequential scan of message_refs is the planner's
    cheapest choice; with tens of thousands of refs it probes the primary key instead, see
    docs/benchmarks.md.)"""
    import json

    from gateway.store.status import _FINAL, _REPORTS, _SUBMITTED

    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=tuple(
        NewMessage(dest=f"138{i:08d}", operator="cmcc", body="x", encoding="gsm7", parts=1) for i in range(4000)))])
    ids = [m.id for m in res.messages]
    await store.record_submitted([(CH, i, 1, f"r{i}") for i in ids[:3900]])
    await store.record_reports([(CH, f"r{i}", "delivered", "") for i in ids[:3800]])
    await store.execute("ANALYZE")
    pending = ids[3800:3900]
    fresh = ids[3900:]

    async def plan(sql: str, *args) -> str:
        async with store.transaction() as tx:
            return "\n".join(r[0] for r in await tx.fetch("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "
                                                          + sql, *args))

    reports = await plan(_REPORTS, [CH] * 100, [f"r{i}" for i in pending],
                         json.dumps({f"{CH} r{i}": ["delivered", "", n] for n, i in enumerate(pending, 1)}), _FINAL)
    submitted = await plan(_SUBMITTED, [CH] * 100, [f"s{i}" for i in fresh], fresh, [1] * 100, fresh, [1] * 100,
                           [CH] * 100, [0] * 100, fresh)  # (each routed here, as the dispatcher's are)
    for text in (reports, submitted):
        assert "Seq Scan on messages" not in text, text
        assert "Rows Removed by Join Filter" not in text, text
        assert "Index Scan using messages_pkey" in text or "Bitmap Index Scan on messages_pkey" in text, text
    # EXPLAIN ANALYZE ran them: the 100 pending messages are delivered, the last 100 submitted.
    assert await store.fetchval("SELECT count(*) FROM messages WHERE status = 'delivered'") == 3900
    assert await store.fetchval("SELECT count(*) FROM messages WHERE status = 'submitted'") == 100
