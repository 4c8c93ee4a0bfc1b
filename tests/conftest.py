"""Shared fixtures: one real embedded PostgreSQL for the whole run, a fresh database per test.

The server lives in a temporary directory and is deleted at the end. Each test that asks for
``database_url`` gets a new database cloned from a migrated template (a cheap file copy).
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from gateway.pgserver import EmbeddedPostgres

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    root = Path(tempfile.mkdtemp(prefix="smsgw-test-pg-"))
    server = EmbeddedPostgres(root)
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()
        shutil.rmtree(root, ignore_errors=True)


def _psql(server: EmbeddedPostgres, sql: str) -> str:
    return server._server.psql(sql)  # the wheel's psql helper, over the Unix socket


@pytest.fixture(scope="session")
def pg_template(pg_server):
    """A database with every migration applied, to clone per test."""
    import trio
    import trio_asyncio

    from gateway.store import open_store

    _psql(pg_server, "CREATE DATABASE smsgw_template;")
    url = _with_db(pg_server.url, "smsgw_template")

    async def migrate():
        async with trio_asyncio.open_loop():
            async with open_store(url, pool_size=2) as store:
                await store.migrate()

    trio.run(migrate)
    return "smsgw_template"


def _with_db(url: str, db: str) -> str:
    # The wheel's URL is postgresql://postgres:@/postgres?host=/socket/dir
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{db}?{query}"


@pytest.fixture
def database_url(pg_server, pg_template):
    name = f"t{os.getpid()}_{next(_counter)}"
    _psql(pg_server, f"CREATE DATABASE {name} TEMPLATE {pg_template};")
    yield _with_db(pg_server.url, name)
    _psql(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


@pytest.fixture
async def store(database_url):
    """A migrated store on a fresh database, inside a trio-asyncio loop."""
    import trio_asyncio

    from gateway.store import open_store

    async with trio_asyncio.open_loop():
        async with open_store(database_url, pool_size=4) as s:
            yield s


class GatewayUnderTest:
    """A gateway started in-process on a fresh database, with an account and a key."""

    def __init__(self, running, account, key: str) -> None:
        self.running = running
        self.account = account
        self.key = key
        self.url = running.http_url
        self.store = running.store
        self.headers = {"Authorization": f"Bearer {key}"}

    def client(self):
        import httpx

        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30)


async def start_gateway(nursery, database_url, *, channels=(), **overrides):
    from gateway.app import serve_gateway
    from gateway.config import DatabaseConfig, HttpConfig, default_config

    from gateway.config import CrmConfig, DispatcherConfig

    http = overrides.pop("http", HttpConfig(listen="127.0.0.1:0"))
    # No quiet hours unless a test asks: the suite must not depend on the time of day.
    overrides.setdefault("dispatcher", DispatcherConfig(quiet_hours=""))
    # Without crm_lite unless a test asks: MO tests see the gateway's own dispatch alone.
    overrides.setdefault("crm", CrmConfig(enabled=False))
    config = default_config(database=DatabaseConfig(url=database_url), http=http, **overrides)
    running = await nursery.start(functools.partial(serve_gateway, config, channels=channels))
    account = await running.store.ensure_account("acme")
    key = await running.store.create_api_key(account.id)
    return GatewayUnderTest(running, account, key)


@pytest.fixture
async def gateway(nursery, database_url):
    return await start_gateway(nursery, database_url)
