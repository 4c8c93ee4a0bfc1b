"""The intake's group commit against the real database: answers, deadlines, cancellation."""

from __future__ import annotations

import trio

from gateway.config import IntakeConfig
from gateway.errors import StoreUnavailable
from gateway.intake import EXPIRY_TICK, Intake
from gateway.metrics import Metrics
from gateway.store import AcceptRequest, NewMessage


async def _account(store) -> int:
    return (await store.ensure_account("acme")).id


def _request(account_id: int, dest: str) -> AcceptRequest:
    return AcceptRequest(account_id=account_id, messages=(
        NewMessage(dest=dest, operator="cmcc", body="hello", encoding="gsm7", parts=1),))


async def _dests(store) -> list[str]:
    return [r["dest"] for r in await store.fetch("SELECT dest FROM messages ORDER BY id")]


async def _start(nursery, store, **config) -> Intake:
    intake = Intake(store, IntakeConfig(**config), Metrics())
    await nursery.start(intake.run)
    return intake


async def _lock_messages(nursery, store) -> trio.Event:
    """Hold a lock on ``messages`` that stops inserts until the returned event is set."""
    release = trio.Event()

    async def hold(task_status=trio.TASK_STATUS_IGNORED):
        async with store.transaction() as tx:
            await tx.execute("LOCK TABLE messages IN SHARE MODE")
            task_status.started()
            await release.wait()

    await nursery.start(hold)
    return release


async def test_concurrent_callers_each_get_their_own_result(nursery, store):
    account = await _account(store)
    intake = await _start(nursery, store)
    results = {}

    async def send(i):
        results[i] = await intake.accept(_request(account, f"1390000{i:04d}"))

    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(send, i)
    assert sorted(results) == list(range(200))
    for i, result in results.items():
        assert [m.dest for m in result.messages] == [f"1390000{i:04d}"]
    ids = [result.messages[0].id for result in results.values()]
    assert len(set(ids)) == 200
    assert sorted(await _dests(store)) == [f"1390000{i:04d}" for i in range(200)]


async def test_deadline_answers_503_and_a_request_not_yet_taken_is_never_stored(nursery, store):
    account = await _account(store)
    intake = await _start(nursery, store, flushers=1, max_delay=0)
    release = await _lock_messages(nursery, store)
    outcomes = {}

    async def send(dest, timeout):
        started = trio.current_time()
        try:
            await intake.accept(_request(account, dest), timeout=timeout)
            outcomes[dest] = "stored"
        except StoreUnavailable:
            outcomes[dest] = trio.current_time() - started

    async with trio.open_nursery() as n:
        n.start_soon(send, "13900000001", 0.5)  # taken into a batch, which waits on the lock
        await trio.sleep(0.1)
        n.start_soon(send, "13900000002", 0.5)  # queued behind it: the one flusher is busy
    for dest in ("13900000001", "13900000002"):
        assert 0.5 <= outcomes[dest] < 0.5 + EXPIRY_TICK + 0.3, outcomes
    release.set()
    # A later request goes through, after the flusher has passed over the expired one.
    result = await intake.accept(_request(account, "13900000003"), timeout=10)
    assert [m.dest for m in result.messages] == ["13900000003"]
    # The batch already being written commits (the retry's client_ref makes that safe);
    # the request no batch had taken when its caller was answered is dropped.
    assert await _dests(store) == ["13900000001", "13900000003"]


async def test_a_cancelled_caller_not_yet_taken_is_not_stored(nursery, store):
    account = await _account(store)
    intake = await _start(nursery, store, flushers=1, max_delay=0)
    release = await _lock_messages(nursery, store)
    first_done = trio.Event()

    async def first():
        await intake.accept(_request(account, "13900000001"))
        first_done.set()

    nursery.start_soon(first)
    await trio.sleep(0.1)
    with trio.move_on_after(0.2) as scope:  # the caller's own deadline, as a cancel scope
        await intake.accept(_request(account, "13900000002"))
    assert scope.cancelled_caught
    release.set()
    await first_done.wait()
    await intake.accept(_request(account, "13900000003"))
    assert await _dests(store) == ["13900000001", "13900000003"]


async def test_callers_waiting_when_the_intake_stops_get_503(store):
    account = await _account(store)
    errors = []
    async with trio.open_nursery() as outer:
        release = await _lock_messages(outer, store)
        with trio.CancelScope() as intake_scope:
            async with trio.open_nursery() as inner:
                intake = await _start(inner, store, flushers=1, max_delay=0)

                async def send(dest):
                    try:
                        await intake.accept(_request(account, dest), timeout=30)
                    except StoreUnavailable as exc:
                        errors.append((dest, str(exc)))

                outer.start_soon(send, "13900000001")
                await trio.sleep(0.1)
                outer.start_soon(send, "13900000002")
                await trio.sleep(0.1)
                release.set()  # the batch under way finishes; the queued request is answered
                intake_scope.cancel()
    assert errors == [("13900000002", "the intake stopped")]
    assert await _dests(store) == ["13900000001"]


async def test_accepted_since_counts_an_accounts_day_through_the_brin_index(store):
    from datetime import datetime, timedelta, timezone

    from gateway.store.accounts import ACCEPTED_SINCE

    acme = await _account(store)
    other = (await store.ensure_account("other")).id
    # Older rows first, a second apart, as time stores them (created_at follows the table's
    # physical order), and enough of them for the planner to prefer an index to the table.
    await store.execute(
        "INSERT INTO messages (id, account_id, dest, operator, body, encoding, parts, status, expires_at,"
        " created_at, updated_at) SELECT 10000000 + g, $1, '139' || lpad(g::text, 8, '0'), 'cmcc', 'x', 'gsm7', 1,"
        " 'delivered', now(), now() - interval '3 days' + g * interval '1 s', now() FROM generate_series(1, 50000) g",
        acme)
    await store.accept([_request(acme, f"1390000{i:04d}") for i in range(3)] + [_request(other, "13900009999")])
    await store.execute("UPDATE messages SET created_at = created_at - interval '2 days' WHERE dest = '13900000000'")
    midnight = datetime.now(timezone.utc) - timedelta(hours=1)
    assert await store.accepted_since(acme, midnight) == 2
    assert await store.accepted_since(other, midnight) == 1
    indexes = {r["indexname"] for r in await store.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'messages'")}
    assert "messages_account_created" not in indexes and "messages_created_brin" in indexes
    await store.execute("ANALYZE messages")
    assert await store.accepted_since(acme, midnight) == 2
    async with store.transaction() as tx:  # as accepted_since runs it
        await tx.execute("SET LOCAL enable_indexscan = off")
        plan = "\n".join(r[0] for r in await tx.fetch("EXPLAIN " + ACCEPTED_SINCE, acme, midnight))
    assert "messages_created_brin" in plan, plan


async def test_the_inserts_connection_goes_back_without_the_reset_round_trip(store):
    account = await _account(store)
    async with store.transaction() as tx:  # holds a connection, so the insert takes another
        await store.accept([_request(account, "13900000001")])
        last = [r["query"] for r in await tx.fetch(
            "SELECT query FROM pg_stat_activity WHERE application_name = 'smsgw' AND pid <> pg_backend_pid()")]
    # The backend that ran the insert is idle with the insert as its last statement: no
    # RESET ALL / UNLISTEN * followed it.
    assert any("INSERT INTO messages" in q for q in last), last


async def test_a_batch_being_gathered_when_the_intake_stops_is_answered_not_stored(store):
    account = await _account(store)
    errors = []
    async def release_later():
        await trio.sleep(0.3)
        release.set()

    with trio.fail_after(10):  # a caller nobody answers would hang here
        async with trio.open_nursery() as outer:
            release = await _lock_messages(outer, store)
            with trio.CancelScope() as intake_scope:
                async with trio.open_nursery() as inner:
                    # Two flushers; the second lingers up to max_delay for more while the first commits.
                    intake = await _start(inner, store, flushers=2, max_delay=1.0)

                    async def send(dest):
                        try:
                            await intake.accept(_request(account, dest), timeout=30)
                        except StoreUnavailable as exc:
                            errors.append((dest, str(exc)))

                    outer.start_soon(send, "13900000001")  # its batch waits on the lock
                    await trio.sleep(0.1)
                    outer.start_soon(send, "13900000002")  # gathered by the other flusher, lingering
                    await trio.sleep(0.1)
                    outer.start_soon(release_later)
                    intake_scope.cancel()
    assert errors == [("13900000002", "the intake stopped")]
    assert await _dests(store) == ["13900000001"]
