"""LISTEN/NOTIFY: wake-ups between processes sharing the database."""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg
import trio
from trio_asyncio import aio_as_trio

from ..errors import StoreUnavailable
from .core import ROLLBACK_TIMEOUT, StoreCore

log = logging.getLogger(__name__)

LISTEN_CHECK_INTERVAL = 30.0
"""Seconds between two checks that a listening connection still answers."""


async def _aio_listen(url: str, channel: str, notified: Callable[..., None], terminated: Callable[..., None],
                      timeout: float) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn=url, timeout=timeout, server_settings={"application_name": "smsgw-listen"})
    try:
        conn.add_termination_listener(terminated)
        await conn.add_listener(channel, notified)
    except BaseException:
        conn.terminate()
        raise
    return conn


class NotifyStore(StoreCore):
    """``NOTIFY`` through the pool; ``LISTEN`` on a connection of its own."""

    async def notify(self, channel: str, payload: str = "") -> None:
        """``NOTIFY channel`` (delivered to every session listening on it, in any process)."""
        await self.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def serve_notifications(self, url: str, channel: str, on_notify: Callable[[], None], *,
                                  connect_timeout: float = 10.0, check_interval: float | None = None,
                                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """``LISTEN channel`` on a connection of its own (not the pool's) to ``url``; call
        ``on_notify`` in Trio for each notification, until cancelled.

        The connection is checked every ``check_interval`` seconds (default
        :data:`LISTEN_CHECK_INTERVAL`); raises :class:`StoreUnavailable` once it is lost (the
        caller listens again)."""
        interval = LISTEN_CHECK_INTERVAL if check_interval is None else check_interval
        token = trio.lowlevel.current_trio_token()
        lost = trio.Event()

        def notified(*_: object) -> None:  # on the asyncio side: hand over to Trio
            token.run_sync_soon(on_notify)

        def terminated(*_: object) -> None:
            token.run_sync_soon(lost.set)

        conn = await self._call(_aio_listen, url, channel, notified, terminated, connect_timeout)
        try:
            task_status.started()
            while True:
                with trio.move_on_after(interval):
                    await lost.wait()
                    raise StoreUnavailable(f"the connection listening on {channel} was lost")
                with trio.move_on_after(connect_timeout) as scope:
                    await self._call(conn.fetchval, "SELECT 1")
                if scope.cancelled_caught:
                    raise StoreUnavailable(f"the connection listening on {channel} does not answer")
        finally:
            with trio.move_on_after(ROLLBACK_TIMEOUT) as scope:
                scope.shield = True
                try:
                    await aio_as_trio(conn.close, loop=self._loop)(timeout=ROLLBACK_TIMEOUT)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                    log.debug("closing the listening connection failed channel=%s error=%r", channel, exc)
