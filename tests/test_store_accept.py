"""The accept statement and what migrations 0015 and 0017 keep of the dropped foreign keys."""

from __future__ import annotations

import pytest

from gateway.errors import StoreConflict
from gateway.store import AcceptRequest, NewMessage


def _msg(dest: str, body: str = "hello", encoding: str = "gsm7", parts: int = 1) -> NewMessage:
    return NewMessage(dest=dest, operator="cmcc", body=body, encoding=encoding, parts=parts)


async def test_deleting_messages_deletes_their_queue_rows(store):
    account = await store.ensure_account("shop")
    [res] = await store.accept([AcceptRequest(account_id=account.id, messages=(_msg("13800138000"),
                                                                               _msg("13800138001")))])
    first, second = (m.id for m in res.messages)
    assert await store.fetchval("SELECT count(*) FROM outbound_queue") == 2
    await store.execute("DELETE FROM messages WHERE id = $1", first)
    assert [r["message_id"] for r in await store.fetch("SELECT message_id FROM outbound_queue")] == [second]


async def test_deleting_messages_deletes_their_refs(store):
    account = await store.ensure_account("shop")
    [res] = await store.accept([AcceptRequest(account_id=account.id, messages=(_msg("13800138000"),
                                                                               _msg("13800138001")))])
    first, second = (m.id for m in res.messages)
    await store.record_submitted([("cmpp-a", first, 1, "r1"), ("cmpp-a", second, 1, "r2")])
    await store.execute("DELETE FROM messages WHERE id = $1", first)
    assert [tuple(r) for r in await store.fetch("SELECT ref, message_id FROM message_refs")] == [("r2", second)]


async def test_an_account_with_messages_cannot_be_deleted(store):
    shop = await store.ensure_account("shop")
    idle = await store.ensure_account("idle")
    await store.accept([AcceptRequest(account_id=shop.id, messages=(_msg("13800138000"),))])
    with pytest.raises(StoreConflict):
        await store.execute("DELETE FROM accounts WHERE id = $1", shop.id)
    assert await store.account_by_name("shop") is not None
    await store.execute("DELETE FROM accounts WHERE id = $1", idle.id)  # no messages: allowed
    assert await store.account_by_name("idle") is None


async def test_a_batch_of_several_requests_stores_each_request_fields_on_its_own_rows(store):
    a = await store.ensure_account("a")
    b = await store.ensure_account("b")
    batch = [
        AcceptRequest(account_id=a.id, messages=(_msg("13800138000", "hi"), _msg("13800138001", "hi")),
                      priority=3, msg_class="marketing", validity_s=600, callback_url="http://x/cb", sender="12"),
        AcceptRequest(account_id=b.id, messages=(_msg("13900139000", "你好", "ucs2", 1),), client_ref="r-1",
                      dlr_url="http://y/%d", dlr_mask=3),
        AcceptRequest(account_id=a.id, messages=(_msg("13700137000", "x" * 200, "gsm7", 2),
                                                 _msg("13700137001", "other", "gsm7", 1))),
        # the first request's fields again with another text, and its text again from b
        AcceptRequest(account_id=a.id, messages=(_msg("13600136000", "bye"),),
                      priority=3, msg_class="marketing", validity_s=600, callback_url="http://x/cb", sender="12"),
        AcceptRequest(account_id=b.id, messages=(_msg("13500135000", "hi"),)),
    ]
    results = await store.accept(batch)
    assert [len(r.messages) for r in results] == [2, 1, 2, 1, 1]
    assert not any(r.duplicate for r in results)
    rows = {r["dest"]: r for r in await store.fetch(
        "SELECT m.*, q.priority AS q_priority, extract(epoch FROM m.expires_at - m.created_at) AS validity"
        " FROM messages m JOIN outbound_queue q ON q.message_id = m.id")}
    assert len(rows) == 7
    for res, req in zip(results, batch):
        for stored, new in zip(res.messages, req.messages):
            row = rows[new.dest]
            assert row["id"] == stored.id and stored.status == "accepted" and stored.parts == new.parts
            assert (row["account_id"], row["body"], row["encoding"], row["parts"], row["operator"]) == (
                req.account_id, new.body, new.encoding, new.parts, new.operator)
            assert (row["priority"], row["q_priority"], row["class"], row["callback_url"], row["sender"]) == (
                req.priority, req.priority, req.msg_class, req.callback_url, req.sender)
            assert (row["client_ref"], row["dlr_url"], row["dlr_mask"]) == (req.client_ref, req.dlr_url, req.dlr_mask)
            assert row["validity"] == req.validity_s and row["status"] == "accepted"
    ids = [m.id for r in results for m in r.messages]
    assert len(set(ids)) == 7 and all(x.id < y.id for r in results for x, y in zip(r.messages, r.messages[1:]))
