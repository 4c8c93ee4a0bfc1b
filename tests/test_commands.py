"""The command language's normalization, merchants, transactions and the gateway's outbox."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import StoreConflict
from gateway.router.commands import parse_command
from gateway.text import InvalidNumber
from tests.conftest import start_gateway


@pytest.mark.parametrize(("text", "expected"), [
    ("1", ("1", ())),
    ("  １ ", ("1", ())),                  # full-width digit, spaces around
    ("代码1", ("1", ())),
    ("代码２", ("2", ())),
    ("代码 1", ("1", ())),
    ("cj", ("CJ", ())),
    ("ＣＪ", ("CJ", ())),                  # full-width letters
    ("y12", ("Y12", ())),
    ("Ｎ１２", ("N12", ())),
    ("SP 报销  500　出差", ("SP", ("报销", "500", "出差"))),  # ideographic space too
    ("退订", ("退订", ())),
    ("td", ("TD", ())),
    ("", ("", ())),
    ("   ", ("", ())),
    ("代码", ("代码", ())),
])
def test_parse_command(text, expected):
    assert parse_command(text) == expected


@given(st.text(max_size=200))
def test_parse_command_never_fails_and_has_no_blank_words(text):
    keyword, args = parse_command(text)
    assert keyword == keyword.strip() and keyword == keyword.upper()
    assert all(a and a == a.strip() for a in args)
    assert keyword or not args


async def test_merchants_by_service_number_with_extension(store):
    acct = await store.ensure_account("mall")
    m = await store.ensure_merchant("mall", acct.id, "10658888001", "【某某商场】")
    other = await store.ensure_merchant("cafe", acct.id, "10658888", "")
    assert (await store.merchant_for_number("10658888001")) == m
    assert (await store.merchant_for_number("1065888800123")) == m   # the sender's extension
    assert (await store.merchant_for_number("10658888002")) == other
    assert await store.merchant_for_number("10659999") is None
    again = await store.ensure_merchant("mall", acct.id, "10658888001", "【新】")
    assert again.id == m.id and again.signature == "【新】"
    with pytest.raises(StoreConflict) as info:
        await store.ensure_merchant("dup", acct.id, "10658888001")
    assert info.value.constraint == "merchants_service_number_key"


async def test_transaction_commits_or_rolls_back(store):
    await store.execute("CREATE TABLE t (n int PRIMARY KEY)")
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES (1)")
        assert await tx.fetchval("SELECT count(*) FROM t") == 1
    with pytest.raises(StoreConflict):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (2)")
            await tx.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("boom")
    with trio.move_on_after(0.05):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (4)")
            await trio.sleep(10)
    assert [r[0] for r in await store.fetch("SELECT n FROM t ORDER BY n")] == [1]


async def test_outbox_sends_through_the_pipeline(nursery, database_url):
    gw = await start_gateway(nursery, database_url)
    outbox = gw.running.outbox
    ids = await outbox.send(account_id=gw.account.id, to="+86 138-0013-8000", text="欢迎", client_ref="w-1")
    again = await outbox.send(account_id=gw.account.id, to="13800138000", text="欢迎", client_ref="w-1")
    assert ids == again and len(ids) == 1
    row = await gw.store.fetchrow("SELECT dest, body, status, priority FROM messages WHERE id = $1", ids[0])
    assert tuple(row) == ("13800138000", "欢迎", "accepted", 1)
    with pytest.raises(InvalidNumber):
        await outbox.send(account_id=gw.account.id, to="12345", text="x")
