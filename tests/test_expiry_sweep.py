"""The expiry sweep (migration 0016): every message whose validity ran out is read once, in
(expires_at, id) order from a cursor, and the open ones end ``expired``; and status writes
leave every index of ``messages`` alone, so they can rewrite the row in place."""

from __future__ import annotations

import re

from gateway.channel import Status
from gateway.store import AcceptRequest, NewMessage
from gateway.store.status import _EXPIRY_ADVANCE


async def accept(store, count: int) -> list[int]:
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(
        account_id=account.id,
        messages=tuple(NewMessage(dest=f"1380013{i:04d}", operator="cmcc", body="x", encoding="gsm7", parts=1)
                       for i in range(count)))])
    return [m.id for m in res.messages]


async def overdue(store, ids: list[int], seconds_ago: float) -> None:
    await store.execute("UPDATE messages SET expires_at = now() - make_interval(secs => $2)"
                        " WHERE id = ANY($1::bigint[])", ids, seconds_ago)


async def statuses(store, ids: list[int]) -> list[str]:
    rows = await store.fetch("SELECT status FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id", ids)
    return [r[0] for r in rows]


async def test_open_messages_past_validity_expire_across_pages_of_equal_deadlines(store):
    # One accept batch shares its expires_at: more messages than a page with the same deadline.
    ids = await accept(store, 7)
    await overdue(store, ids, 10)
    delivered, submitted = ids[0], ids[1]
    await store.set_status([(delivered, Status.DELIVERED, "cmpp-a", None, "all parts delivered"),
                            (submitted, Status.SUBMITTED, "cmpp-a", None, "channel=cmpp-a")])
    later = await accept(store, 2)  # validity not run out

    assert await store.expire_overdue(page=2) == 6
    assert await statuses(store, ids) == ["delivered"] + ["expired"] * 6
    assert await statuses(store, later) == ["accepted", "accepted"]
    # The delivered one kept its history; the others have an ``expired`` row each.
    events = await store.fetch("SELECT message_id, detail FROM message_events WHERE status = 'expired' ORDER BY 1")
    assert [e[0] for e in events] == ids[1:]
    assert {e[1] for e in events} == {"no final report within the validity period"}
    # The cursor stands on the last message read; the next sweep reads nothing new.
    cursor = await store.fetchrow("SELECT swept_at, swept_id FROM expiry_sweep")
    last = await store.fetchval("SELECT expires_at FROM messages WHERE id = $1", ids[-1])
    assert tuple(cursor) == (last, ids[-1])
    assert await store.expire_overdue(page=2) == 0


async def test_the_sweep_moves_on_from_where_it_stopped(store):
    first = await accept(store, 3)
    await overdue(store, first, 20)
    assert await store.expire_overdue() == 3
    second = await accept(store, 2)
    await overdue(store, second, 5)
    assert await store.expire_overdue() == 2
    assert await statuses(store, second) == ["expired", "expired"]
    # Messages already read are not read again: a (hypothetical) open message behind the
    # cursor stays as it is — only a commit slower than the validity could put one there.
    await store.execute("UPDATE messages SET status = 'submitted' WHERE id = $1", first[0])
    assert await store.expire_overdue() == 0
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", first[0]) == "submitted"


async def test_the_cursor_never_moves_back(store):
    ids = await accept(store, 2)
    await overdue(store, ids, 30)
    assert await store.expire_overdue() == 2
    ahead = await store.fetchrow("SELECT swept_at, swept_id FROM expiry_sweep")
    # Another node finishing an older page after this one must not rewind the cursor.
    await store.execute(_EXPIRY_ADVANCE, ahead[0], 0)
    assert tuple(await store.fetchrow("SELECT swept_at, swept_id FROM expiry_sweep")) == tuple(ahead)


# Columns that the status writes (gateway/store/status.py) change in a message's row.
STATUS_WRITE_COLUMNS = {"status", "channel", "error_code", "updated_at", "parts", "parts_submitted",
                        "parts_delivered"}


async def test_no_index_of_messages_names_a_column_that_status_writes_change(store):
    # An index on (or a predicate over) such a column makes every status write a new row
    # version plus an entry in every index: three times a message (migration 0016).
    rows = await store.fetch("SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def"
                             " FROM pg_index WHERE indrelid = 'messages'::regclass")
    assert {r["name"] for r in rows} >= {"messages_pkey", "messages_expiry"}
    for r in rows:
        words = set(re.findall(r"[a-z_]+", r["def"].split(" USING ", 1)[1]))
        assert not words & STATUS_WRITE_COLUMNS, r["def"]
    fillfactor = await store.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'messages'")
    assert "fillfactor=50" in fillfactor


async def test_a_page_is_read_from_the_cursor_by_the_index(store):
    from gateway.store.status import _EXPIRY_PAGE

    ids = await accept(store, 5000)  # enough that the planner would rather not sort them all
    await overdue(store, ids, 60)
    await store.execute("ANALYZE messages")
    plan = "\n".join(r[0] for r in await store.fetch("EXPLAIN " + _EXPIRY_PAGE, 10, ["delivered"]))
    # The cursor bounds the index scan itself, not a filter applied to every row before it.
    assert "messages_expiry" in plan
    assert re.search(r"Index Cond: \(\(ROW\(expires_at, id\) > ROW\(", plan), plan
