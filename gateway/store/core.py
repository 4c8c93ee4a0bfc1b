"""The store's core: the pool, the crossing into asyncio, transactions and migrations.

asyncpg is an asyncio library and the gateway runs on Trio: the root opens one
``trio_asyncio`` loop and every crossing into asyncio goes through :meth:`StoreCore._call`
(marked ``aio_as_trio``), which turns asyncpg's errors into
:class:`~gateway.errors.StoreUnavailable` (cannot reach the database) or
:class:`~gateway.errors.StoreError`. Each concern's queries live in a module of their own
(a class over :class:`StoreCore`, next to its SQL); :class:`gateway.store.Store` is all of
them.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio
from trio_asyncio import aio_as_trio

from ..errors import StoreConflict, StoreError, StoreUnavailable
from ..events import EventBus, MtEvent

log = logging.getLogger(__name__)

ROLLBACK_TIMEOUT = 10.0
"""Seconds a rollback or connection release may take when a transaction block is left."""


def _translate(exc: BaseException) -> StoreError:
    if isinstance(
        exc,
        (
            OSError,
            asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.InterfaceError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            TimeoutError,
        ),
    ):
        return StoreUnavailable(f"database unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
        return StoreConflict(f"{type(exc).__name__}: {exc}", getattr(exc, "constraint_name", "") or "")
    return StoreError(f"{type(exc).__name__}: {exc}")


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in (importlib.resources.files("gateway") / "migrations").iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            found.append((int(m[1]), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


# -- asyncio side: runs inside the asyncio loop, in one crossing -------------------------------


async def _aio_migrate(pool: asyncpg.Pool) -> list[int]:
    applied: list[int] = []
    async with pool.acquire() as conn:
        async with conn.transaction():
            # One migrator at a time across every node sharing the database.
            await conn.execute("SELECT pg_advisory_xact_lock(7346001)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in _migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(version)
    return applied


# -- Trio side ---------------------------------------------------------------------------------


class StoreCore:
    """What every part of the store shares: the pool and the loop, the event bus, the crossing
    into asyncio, plain statements, transactions and the schema. The store itself is
    :class:`gateway.store.Store`, created with :func:`gateway.store.open_store`."""

    def __init__(self, pool: asyncpg.Pool, loop: Any) -> None:
        self._pool = pool
        self._ids: list[int] = []
        """Message ids fetched and not yet handed out (:mod:`gateway.store.accept`)."""
        # The loop is held here so that any Trio task may use the store, not only those
        # started inside ``trio_asyncio.open_loop()`` (the loop is found by context variable).
        self._loop = loop
        self.events: EventBus | None = None
        """Where status transitions go once committed, as :class:`MtEvent` (when anyone listens)."""
        # The last reading of the queue's statistics (:mod:`gateway.store.queue`).
        self._queue_stats: dict[str, tuple[int, float]] = {}
        self._queue_stats_until = -math.inf
        self._queue_stats_reading: trio.Event | None = None

    def _sink(self) -> list[MtEvent] | None:
        return [] if self.events is not None and self.events.active else None

    def _emit(self, sink: list[MtEvent] | None) -> None:
        if sink and self.events is not None:
            self.events.publish_many(sink)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await aio_as_trio(fn, loop=self._loop)(*args)
        except (StoreError,):
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._call(self._pool.execute, sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(self._pool.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._call(self._pool.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call(self._pool.fetchval, sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One connection, one transaction: committed when the block ends, rolled back when it
        raises (or is cancelled)."""
        try:
            conn = await aio_as_trio(self._pool.acquire, loop=self._loop)()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc
        try:
            tx = conn.transaction()
            await self._call(tx.start)
            try:
                yield Transaction(self, conn)
            except BaseException:
                with trio.move_on_after(ROLLBACK_TIMEOUT) as scope:
                    scope.shield = True
                    await self._call(tx.rollback)
                raise
            else:
                await self._call(tx.commit)
        finally:
            with trio.move_on_after(ROLLBACK_TIMEOUT) as scope:
                scope.shield = True
                await aio_as_trio(self._pool.release, loop=self._loop)(conn)

    async def ping(self) -> bool:
        try:
            return await self.fetchval("SELECT 1") == 1
        except StoreError:
            return False

    # -- schema -----------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; safe to run twice and from several nodes."""
        applied = await self._call(_aio_migrate, self._pool)
        if applied:
            log.info("migrations applied versions=%s", applied)
        return applied


class Transaction:
    """Statements on one connection inside :meth:`Store.transaction`."""

    def __init__(self, store: StoreCore, conn: asyncpg.Connection) -> None:
        self._store = store
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._store._call(self._conn.execute, sql, *args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._store._call(self._conn.executemany, sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._store._call(self._conn.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._store._call(self._conn.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._store._call(self._conn.fetchval, sql, *args)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection going back to the pool keeps its session as it is.

    asyncpg has already ended any transaction left open (``ROLLBACK``) and dropped its
    listeners; its default reset would add a round trip per use of the pool (advisory
    unlock, ``CLOSE ALL``, ``UNLISTEN *``, ``RESET ALL``) for session state the store never
    creates: it takes only transaction-scoped advisory locks, declares no cursor outside a
    transaction, listens to nothing and sets no session variable.
    """
