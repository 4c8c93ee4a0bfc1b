"""The store on a real PostgreSQL: migrations, keys, the queue's claims and leases."""

from __future__ import annotations

import trio

from gateway.store import AcceptRequest, NewMessage, hash_api_key


def msgs(n: int, operator: str = "cmcc") -> tuple[NewMessage, ...]:
    return tuple(NewMessage(dest=f"1380013{i:04d}", operator=operator, body="x", encoding="gsm7", parts=1)
                 for i in range(n))


async def test_migrations_are_idempotent(store):
    assert await store.migrate() == []  # the template is migrated already
    from gateway.store.core import _migrations

    versions = [r["version"] for r in await store.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [v for v, _, _ in _migrations()] and versions[:2] == [1, 2]


async def test_api_keys_are_stored_hashed(store):
    account = await store.ensure_account("shop")
    key = await store.create_api_key(account.id)
    assert key.startswith("smsgw_") and len(key) > 40
    row = await store.fetchrow("SELECT key_hash, prefix FROM api_keys")
    assert bytes(row["key_hash"]) == hash_api_key(key)
    assert key not in row["prefix"] or len(row["prefix"]) < 16
    assert (await store.account_for_key(key)).name == "shop"
    assert await store.account_for_key(key + "x") is None
    await store.execute("UPDATE api_keys SET revoked_at = now()")
    assert await store.account_for_key(key) is None
    assert (await store.ensure_account("shop")).id == account.id


async def test_two_nodes_claim_disjoint_sets(store):
    account = await store.ensure_account("shop")
    await store.accept([AcceptRequest(account_id=account.id, messages=msgs(100))])
    got: dict[str, list[int]] = {}

    async def node(name: str) -> None:
        ids = []
        for _ in range(10):
            ids += [m.id for m in await store.claim(name, 7, 60.0)]
        got[name] = ids

    async with trio.open_nursery() as n:
        n.start_soon(node, "a")
        n.start_soon(node, "b")
    assert set(got["a"]).isdisjoint(got["b"])
    assert len(got["a"]) + len(got["b"]) == 100
    assert await store.claim("c", 10, 60.0) == []


async def test_an_expired_lease_makes_the_message_claimable_again(store):
    account = await store.ensure_account("shop")
    await store.accept([AcceptRequest(account_id=account.id, messages=msgs(3))])
    first = await store.claim("dead-node", 10, 0.2)
    assert len(first) == 3 and all(m.attempts == 1 for m in first)
    assert await store.claim("b", 10, 60.0) == []
    await trio.sleep(0.3)
    again = await store.claim("b", 10, 60.0)
    assert sorted(m.id for m in again) == sorted(m.id for m in first)
    assert all(m.attempts == 2 for m in again)


async def test_release_with_delay(store):
    account = await store.ensure_account("shop")
    await store.accept([AcceptRequest(account_id=account.id, messages=msgs(1))])
    (m,) = await store.claim("a", 10, 60.0)
    await store.release([m.id], delay=0.3)
    assert await store.claim("a", 10, 60.0) == []
    await trio.sleep(0.4)
    assert [x.id for x in await store.claim("a", 10, 60.0)] == [m.id]


async def test_final_states_are_final(store):
    from gateway.channel import Status

    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=msgs(1))])
    mid = res.messages[0].id
    assert await store.set_status([(mid, Status.EXPIRED, None, None, "validity")]) == {mid}
    assert await store.set_status([(mid, Status.QUEUED, "x", None, "")]) == set()
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", mid) == "expired"
    assert await store.fetchval("SELECT count(*) FROM outbound_queue") == 0


async def test_release_with_backoff_by_attempts(store):
    account = await store.ensure_account("shop")
    await store.accept([AcceptRequest(account_id=account.id, messages=msgs(1))])
    (m,) = await store.claim("a", 10, 60.0)
    await store.release([m.id], backoff=(0.0, 0.5))  # first attempt: due at once
    (m,) = await store.claim("a", 10, 60.0)
    assert m.attempts == 2
    await store.release([m.id], backoff=(0.0, 0.5))  # second attempt: half a second
    assert await store.claim("a", 10, 60.0) == []
    await trio.sleep(0.6)
    (m,) = await store.claim("a", 10, 60.0)
    await store.release([m.id], backoff=(0.0, 0.5))  # past the end: the last delay again
    due = await store.fetchval("SELECT not_before - now() FROM outbound_queue")
    assert 0.3 < due.total_seconds() <= 0.5
