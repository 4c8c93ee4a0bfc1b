"""Account limits: a rate (token bucket) and a daily quota, answered with 429 and Retry-After."""

from __future__ import annotations

from datetime import date

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import AccountConfig
from gateway.router import DailyQuota, TokenBucket
from tests.conftest import start_gateway


def test_bucket_takes_n_and_tells_the_wait():
    b = TokenBucket(rate=10, burst=10, stamp=0.0)
    assert b.take(10, 0.0) == 0.0
    assert b.take(1, 0.0) == pytest.approx(0.1)
    assert b.take(1, 0.1) == 0.0
    # A batch larger than the burst goes when the bucket is full, leaving it in debt.
    b = TokenBucket(rate=10, burst=10, stamp=0.0)
    assert b.take(25, 0.0) == 0.0
    assert b.take(1, 1.0) == pytest.approx(0.6)  # 15 owed, 10 refilled, 1 more needs 0.6 s
    b.give_back(25)
    assert b.take(1, 1.0) == 0.0


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 30)), min_size=1, max_size=80))
def test_bucket_never_exceeds_rate_plus_burst(steps):
    rate, burst = 20.0, 20.0
    b = TokenBucket(rate=rate, burst=burst, stamp=0.0)
    now = taken = 0.0
    for dt, n in steps:
        now += dt
        if b.take(n, now) == 0.0:
            taken += n
        # Whatever was taken beyond burst + rate × time is at most one request's overdraft.
        assert taken <= burst + rate * now + 30


def test_quota_reserves_and_releases():
    q = DailyQuota(limit=5)
    assert q.needs_seed(date(2026, 11, 23))
    q.seed(date(2026, 11, 23), 3)
    assert q.reserve(2) and not q.reserve(1)
    q.release(2)
    assert q.reserve(1) and not q.needs_seed(date(2026, 11, 23)) and q.needs_seed(date(2026, 11, 24))


async def test_rate_limited_requests_get_429_and_store_nothing(nursery, database_url):
    gw = await start_gateway(nursery, database_url, accounts=[AccountConfig(name="acme", rate=0.5, burst=3)])
    async with gw.client() as c:
        codes = [(await c.post("/v1/messages", json={"to": f"1380013800{i}", "text": "x"})).status_code
                 for i in range(4)]
        r = await c.post("/v1/messages", json={"to": "13800138009", "text": "x"})
    assert codes == [202, 202, 202, 429]
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert await gw.store.fetchval("SELECT count(*) FROM messages") == 3


async def test_daily_quota_counts_recipients_not_duplicates(nursery, database_url):
    gw = await start_gateway(nursery, database_url, accounts=[AccountConfig(name="acme", daily_quota=3)])
    async with gw.client() as c:
        a = await c.post("/v1/messages", json={"to": ["13800138000", "13800138001"], "text": "x", "client_ref": "r1"})
        again = await c.post("/v1/messages", json={"to": ["13800138000", "13800138001"], "text": "x",
                                                   "client_ref": "r1"})
        b = await c.post("/v1/messages", json={"to": "13800138002", "text": "x"})
        over = await c.post("/v1/messages", json={"to": "13800138003", "text": "x"})
        kannel = await c.get("/cgi-bin/sendsms", params={"username": "acme", "password": gw.key,
                                                         "to": "13800138004", "text": "x"})
    assert [a.status_code, again.status_code, b.status_code] == [202, 202, 202]
    assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    assert 1 <= int(over.headers["retry-after"]) <= 86400
    assert kannel.status_code == 429 and "quota" in kannel.text
    assert await gw.store.fetchval("SELECT count(*) FROM messages") == 3


async def test_accounts_without_limits_are_unlimited(nursery, database_url):
    gw = await start_gateway(nursery, database_url, accounts=[AccountConfig(name="other", rate=0.1)])
    async with httpx.AsyncClient(base_url=gw.url, headers=gw.headers) as c:
        codes = {(await c.post("/v1/messages", json={"to": "13800138000", "text": "x"})).status_code
                 for _ in range(5)}
    assert codes == {202}
    assert await gw.store.fetchval("SELECT count(*) FROM accounts WHERE name = 'other'") == 1
