"""The claim with a deep queue (migration 0011): order, leases, quiet hours, and its plan."""

from __future__ import annotations

import trio

from gateway.store import CLAIM_CLASSES, CLAIM_PRIORITIES, AcceptRequest, NewMessage, claim_statement

LANES = len(CLAIM_PRIORITIES) * len(CLAIM_CLASSES)
"""Index scans the claim starts at most: one per (priority, class)."""


def msgs(n: int, start: int = 0, body: str = "x") -> tuple[NewMessage, ...]:
    return tuple(NewMessage(dest=f"1380013{start + i:04d}", operator="cmcc", body=body, encoding="gsm7", parts=1)
                 for i in range(n))


async def accept(store, account_id: int, n: int, *, start: int = 0, priority: int = 0,
                 msg_class: str = "transactional") -> list[int]:
    (res,) = await store.accept([AcceptRequest(account_id=account_id, messages=msgs(n, start), priority=priority,
                                               msg_class=msg_class)])
    return [m.id for m in res.messages]


async def test_claims_follow_priority_then_age_past_leased_rows(store):
    account = await store.ensure_account("shop")
    old = await accept(store, account.id, 30)
    held = await store.claim("other", 20, 600.0)  # in flight on another node
    assert [m.id for m in held] == old[:20]
    urgent = await accept(store, account.id, 5, start=100, priority=3)
    got = await store.claim("a", 8, 60.0)
    assert [m.id for m in got] == urgent + old[20:23]
    assert all(m.attempts == 1 for m in got)
    rest = await store.claim("a", 100, 60.0)
    assert [m.id for m in rest] == old[23:]


async def test_a_lapsed_lease_is_claimed_in_priority_order_with_free_rows(store):
    account = await store.ensure_account("shop")
    low = await accept(store, account.id, 3)
    dead = await store.claim("dead-node", 3, 0.2)
    high = await accept(store, account.id, 2, start=10, priority=2)
    late = await accept(store, account.id, 2, start=20)
    await trio.sleep(0.3)
    got = await store.claim("b", 4, 60.0)
    # priority 2 first, then the oldest priority-0 rows, lapsed lease or never leased alike
    assert [m.id for m in got] == high + low[:2]
    assert {m.id: m.attempts for m in got} == {high[0]: 1, high[1]: 1, low[0]: 2, low[1]: 2}
    assert [m.id for m in await store.claim("b", 10, 60.0)] == [low[2]] + late
    assert [m.id for m in dead] == low
    assert await store.fetchval("SELECT count(*) FROM outbound_queue WHERE leased_by = 'dead-node'") == 0


async def test_quiet_hours_leave_marketing_queued(store):
    account = await store.ensure_account("shop")
    promo = await accept(store, account.id, 4, msg_class="marketing", priority=1)
    codes = await accept(store, account.id, 3, start=10)
    got = await store.claim_routable("a", 10, 60.0, marketing=False)
    assert [m.id for m, _ in got] == codes and all(last is None for _, last in got)
    assert await store.claim_routable("a", 10, 60.0, marketing=False) == []
    assert [m.id for m in await store.claim("a", 10, 60.0)] == promo


async def test_claims_return_the_stored_plan_and_last_channel(store):
    account = await store.ensure_account("shop")
    long_text = "y" * 200  # two GSM 7-bit parts of 153 and 47
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=(
        NewMessage(dest="13800138000", operator="cmcc", body="hello", encoding="gsm7", parts=1),
        NewMessage(dest="13800138001", operator="cmcc", body=long_text, encoding="gsm7", parts=2),
        NewMessage(dest="13800138002", operator="cmcc", body="你好", encoding="ucs2", parts=1)))])
    ids = [m.id for m in res.messages]
    first = await store.claim("a", 10, 60.0)
    assert [m.parts for m in first] == [("hello",), ("y" * 153, "y" * 47), ("你好",)]
    assert [m.encoding for m in first] == ["gsm7", "gsm7", "ucs2"]
    await store.retry_later([(ids[0], "cmcc-1", "8", "flow control")], backoff=(0.0,))
    ((m, last),) = await store.claim_routable("a", 10, 60.0)
    assert (m.id, m.attempts, last) == (ids[0], 2, "cmcc-1")


async def test_the_claim_reads_neither_leased_rows_nor_whole_tables(store):
    """With a deep queue and thousands of rows in flight, the claim walks only what it takes:
    the free rows' index in order, then primary-key look-ups (no scan of the queue or the
    messages, no hash join), as EXPLAIN ANALYZE shows."""
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=tuple(
        NewMessage(dest=f"138{i:08d}", operator="cmcc", body="x", encoding="gsm7", parts=1)
        for i in range(6000)))])
    await store.claim("other", 3000, 600.0)
    await store.execute("ANALYZE outbound_queue")
    await store.execute("ANALYZE messages")
    for marketing in (True, False):
        async with store.transaction() as tx:
            plan = "\n".join(r[0] for r in await tx.fetch(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + claim_statement(marketing), 50, "a", 60.0))
        assert "outbound_queue_due" in plan, plan
        assert "Seq Scan" not in plan and "Hash Join" not in plan, plan
        assert "Rows Removed by Filter" not in plan, plan  # the 3,000 leased rows are not read
    # (EXPLAIN ANALYZE ran the claims: 100 rows are leased to "a" now.)
    assert await store.fetchval("SELECT count(*) FROM outbound_queue WHERE leased_by = 'a'") == 100
    assert res.messages[3000].id in {r["message_id"] for r in await store.fetch(
        "SELECT message_id FROM outbound_queue WHERE leased_by = 'a'")}


class _Rollback(Exception):
    pass


async def explain_claim(store, limit: int, *, marketing: bool = True, index_only: bool = False) -> list[dict]:
    """The claim's plan nodes (EXPLAIN ANALYZE, BUFFERS, as JSON), run in a transaction that
    is rolled back, so that the queue is as it was; ``index_only`` keeps the planner off
    sequential scans (which it rightly prefers for a nearly empty table)."""
    import json

    nodes: list[dict] = []
    try:
        async with store.transaction() as tx:
            if index_only:
                await tx.execute("SET LOCAL enable_seqscan = off")
            (doc,) = [r[0] for r in await tx.fetch(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON, TIMING OFF) " + claim_statement(marketing), limit, "x", 60.0)]
            raise _Rollback()
    except _Rollback:
        pass
    stack = [(json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", ()))
    return nodes


def free_scans(nodes: list[dict]) -> tuple[int, int, int]:
    """(rows returned, rows filtered out, buffers touched) by the scans of the free rows' index."""
    scans = [n for n in nodes if n.get("Index Name") == "outbound_queue_due"]
    assert scans, nodes
    rows = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
    removed = sum(n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0) for n in scans)
    buffers = sum(n["Shared Hit Blocks"] + n["Shared Read Blocks"] for n in scans)
    return rows, removed, buffers


async def test_rows_waiting_for_later_cost_the_claim_nothing(store):
    """Rows whose not_before is later (retry backoffs, recipient windows, scheduled sends) are
    outside the claim's index range: with 20,000 of them, at every priority, the claim reads
    only the due rows, and hardly more pages than on an empty queue (a page a lane for the
    index one level deeper, one where a lane's range ends on the next leaf page), where
    filtering those rows would read a hundred."""
    account = await store.ensure_account("shop")
    await store.execute("ANALYZE outbound_queue")
    empty = free_scans(await explain_claim(store, 50, index_only=True))
    assert empty[:2] == (0, 0)
    for p in range(4):
        (res,) = await store.accept([AcceptRequest(account_id=account.id, priority=p, messages=tuple(
            NewMessage(dest=f"139{i:08d}", operator="cmcc", body="x", encoding="gsm7", parts=1)
            for i in range(5000)))])
        await store.execute("UPDATE outbound_queue SET not_before = now() + make_interval(mins => 5 + $2)"
                            " WHERE message_id = ANY($1::bigint[])", [m.id for m in res.messages], p)
    await store.execute("VACUUM ANALYZE outbound_queue")
    rows, removed, buffers = free_scans(await explain_claim(store, 50))
    assert (rows, removed) == (0, 0)
    assert buffers <= empty[2] + 2 * LANES, (buffers, empty)
    assert await store.claim("a", 50, 60.0) == []
    due = [await accept(store, account.id, 2, start=p * 10, priority=p) for p in (0, 3)]
    rows, removed, buffers = free_scans(await explain_claim(store, 50))
    assert (rows, removed) == (4, 0)
    assert buffers <= empty[2] + 2 * LANES, (buffers, empty)
    got = await store.claim("a", 50, 60.0)
    assert [m.id for m in got] == due[1] + due[0]  # priority 3 first, then 0


async def test_a_retry_waits_out_its_backoff_behind_newer_messages_of_its_priority(store):
    """Within a priority, messages go in the order they became due: a retried message
    whose backoff ran out goes after those that were due before it."""
    account = await store.ensure_account("shop")
    first = await accept(store, account.id, 1)
    await store.claim("a", 1, 60.0)
    await store.release(first, delay=0.3)
    later = await accept(store, account.id, 2, start=10)
    assert [m.id for m in await store.claim("a", 10, 60.0)] == later  # the retry is not due yet
    await store.release(later)
    await trio.sleep(0.35)
    got = await store.claim("a", 10, 60.0)
    assert [m.id for m in got] == first + later or [m.id for m in got] == later + first


async def test_quiet_hours_skip_marketing_rows_without_reading_them(store):
    """During quiet hours the claim leaves the marketing lanes out: with 10,000 marketing
    messages queued, it returns the one transactional message having read that one row (no
    marketing row read, no look-up of a message's class); after quiet hours the marketing
    messages go, transactional ones of their priority first."""
    account = await store.ensure_account("shop")
    await store.execute("ANALYZE outbound_queue")
    empty = free_scans(await explain_claim(store, 50, marketing=False, index_only=True))
    (promo,) = await store.accept([AcceptRequest(account_id=account.id, msg_class="marketing", messages=tuple(
        NewMessage(dest=f"139{i:08d}", operator="cmcc", body="50% off", encoding="gsm7", parts=1)
        for i in range(10_000)))])
    code = await accept(store, account.id, 1)
    await store.execute("VACUUM ANALYZE outbound_queue")
    nodes = await explain_claim(store, 50, marketing=False)
    rows, removed, buffers = free_scans(nodes)
    assert (rows, removed) == (1, 0)
    assert buffers <= empty[2] + 2 * LANES, (buffers, empty)
    assert not [n for n in nodes if n.get("Relation Name") == "messages" and n["Actual Loops"] > 1 and
                n.get("Parent Relationship") == "SubPlan"], "no class look-up per row"
    got = await store.claim_routable("a", 50, 60.0, marketing=False)
    assert [m.id for m, _ in got] == code
    assert await store.claim_routable("a", 50, 60.0, marketing=False) == []
    later = await accept(store, account.id, 1, start=50)  # a code after the campaign: it goes first
    after = await store.claim("a", 3, 60.0)
    assert [m.id for m in after] == later + [m.id for m in promo.messages[:2]]
    assert [m.msg_class for m in after] == ["transactional", "marketing", "marketing"]


async def test_the_queue_row_carries_its_message_class(store):
    """Accepted messages' queue rows carry their class (migration 0014 filled in the rows
    queued before it from ``messages``)."""
    account = await store.ensure_account("shop")
    promo = await accept(store, account.id, 2, msg_class="marketing")
    codes = await accept(store, account.id, 2, start=10)
    rows = await store.fetch("SELECT q.message_id, q.class, m.class AS m_class FROM outbound_queue q"
                             " JOIN messages m ON m.id = q.message_id ORDER BY q.message_id")
    assert {r["message_id"]: r["class"] for r in rows} == dict.fromkeys(promo, "marketing") | dict.fromkeys(
        codes, "transactional")
    assert all(r["class"] == r["m_class"] for r in rows)
