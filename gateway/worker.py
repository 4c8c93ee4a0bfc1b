"""One HTTP worker process of a gateway with ``[http] workers`` > 1 (see :mod:`gateway.workers`).

Started by the main process as ``python -m gateway.worker``: it reads a
:class:`~gateway.workers.WorkerStart` line on stdin, opens its own store (no migrations: the
main process applied them) and group commit, binds the public HTTP address with
``SO_REUSEPORT`` and a private listener on 127.0.0.1 (its metrics), writes a
:class:`~gateway.workers.WorkerReady` line on stdout, and serves:

* ``POST /v1/messages``, ``GET|HEAD /v1/messages/{id}``, ``GET|POST|HEAD /cgi-bin/sendsms``
  itself, except the sends of accounts with a rate or daily quota;
* everything else through the main process's private listener, answer relayed unchanged.

After each committed batch it sends one ``NOTIFY`` (coalesced while one is on its way) so that
the dispatchers claim the new messages at once. It stops on SIGTERM or SIGINT, and when its
stdin reaches EOF (the main process is gone): it stops accepting, answers what it has taken
(new requests on open connections get 503 meanwhile), and exits. It has no channels,
dispatcher, webhook sender, MO dispatcher, admin stream or CRM services.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from urllib.parse import quote

import msgspec
import trio
import trio_asyncio

from . import heap
from .api import Api, PassOn
from .compliance import MerchantDirectory
from .errors import GatewayError, StoreError
from .http import Router
from .http.server import HttpLimits, Request, Response, error_response, open_http_listeners, serve_http
from .httpclient import HttpClient, HttpClientError, Target, header_lines
from .intake import Intake
from .metrics import MeteredBus, Metrics
from .store import Store, open_store
from .workers import (FORWARDED_FOR, LOOPBACK_LIMITS, WAKE_CHANNEL, WORKER_DRAIN_TIMEOUT, ProcessMetrics, WorkerReady,
                      WorkerStart)

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 120.0
"""Seconds a request passed on to the main process may take before the client gets a 504."""
STDIN_READ = 4096
NOTIFY_INTERVAL = 0.01
"""Seconds at least between two wake-up notifications of one worker: under load, a batch
commits every few milliseconds and each NOTIFY costs about a request's CPU; the dispatcher,
busy then anyway, is woken at most this late."""

#: Request headers not passed on: hop-by-hop fields (RFC 9110 section 7.6.1) and the framing
#: the client sets again (``Host`` too: it goes as the request's authority); and the forwarded-for
#: header, which only this process may set.
_NOT_PASSED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade", "content-length", "expect", "host", FORWARDED_FOR})
#: Answer headers the server sets itself (as :func:`gateway.http.server.render_response` requires).
_NOT_RELAYED = frozenset({"content-length", "transfer-encoding", "connection", "content-type", "date", "server",
                          "keep-alive"})
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def served_here(method: str, path: str) -> bool:
    """Whether a worker answers ``method path`` itself (the accept path); else the main does."""
    if path == "/v1/messages":
        return method == "POST"
    if path == "/cgi-bin/sendsms":
        return method in ("GET", "POST", "HEAD")
    if path.startswith("/v1/messages/"):
        rest = path[len("/v1/messages/"):]
        return method in ("GET", "HEAD") and bool(rest) and "/" not in rest
    return False


class Notifier:
    """Sends ``NOTIFY`` on WAKE_CHANNEL after commits: :meth:`wake` is the intake's
    ``on_commit``. The first commit after a quiet spell is notified at once; wakes that come
    while one is on its way, or within ``interval`` after it, make one more after that (so at
    most one per committed batch, and far fewer under load)."""

    def __init__(self, store: Store, *, interval: float = NOTIFY_INTERVAL) -> None:
        self._store = store
        self._interval = interval
        self._pending = trio.Event()
        self.sent = 0

    def wake(self) -> None:
        self._pending.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._pending.wait()
            self._pending = trio.Event()
            try:
                await self._store.notify(WAKE_CHANNEL)
                self.sent += 1
            except StoreError as exc:  # the dispatchers' idle poll finds the messages anyway
                log.warning("wake-up notification failed channel=%s error=%s", WAKE_CHANNEL, exc)
            await trio.sleep(self._interval)


class _Gate(trio.abc.Listener[trio.SocketStream]):
    """A listening socket that can stop accepting while :func:`serve_http` goes on serving the
    connections it has: once :meth:`shut`, accepting waits forever and the socket is closed
    (so that the kernel gives new connections to the other processes)."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener
        self.socket = listener.socket
        self._scopes: set[trio.CancelScope] = set()
        self._shut = False

    async def accept(self) -> trio.SocketStream:
        if not self._shut:
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    return await self._listener.accept()
                finally:
                    self._scopes.discard(scope)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def shut(self) -> None:
        self._shut = True
        for scope in list(self._scopes):
            scope.cancel()
        await trio.lowlevel.checkpoint()
        await self._listener.aclose()

    async def aclose(self) -> None:
        self._shut = True
        await self._listener.aclose()


class WorkerHandler:
    """The worker's public handler: the hot routes here, the rest through the main process."""

    def __init__(self, router: Router, main: HttpClient, main_port: int, requests: object) -> None:
        self._router = router
        self._main = main
        self._main_port = main_port
        self._requests = requests
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.draining = False
        self.passed_on = 0

    async def __call__(self, request: Request) -> Response:
        if self.draining:
            return error_response(503, "shutting_down", "this process is stopping; retry the request",
                                  headers=[("Retry-After", "1")])
        self._requests.inc()  # type: ignore[attr-defined]
        self._inflight += 1
        if self._inflight == 1:
            self._idle = trio.Event()
        try:
            if served_here(request.method, request.path):
                try:
                    return await self._router(request)
                except PassOn:
                    pass
            return await self.pass_on(request)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until no request is being answered."""
        await self._idle.wait()

    async def pass_on(self, request: Request) -> Response:
        """``request`` sent to the main process; its answer relayed unchanged."""
        self.passed_on += 1
        headers = [(name, value) for name, value in request.headers.items() if name not in _NOT_PASSED]
        headers.append((FORWARDED_FOR, request.remote))
        path = quote(request.path, safe=_PATH_SAFE)
        if request.query:
            path += "?" + request.query
        authority = request.headers.get("host") or f"127.0.0.1:{self._main_port}"
        target = Target("127.0.0.1", self._main_port, authority, path)
        method = "GET" if request.method == "HEAD" else request.method  # this server drops the body
        answer = None
        with trio.move_on_after(FORWARD_TIMEOUT):
            try:
                answer = await self._main.request(method, target, header_lines(headers), request.body, whole=True)
            except HttpClientError as exc:
                log.warning("passing a request on failed method=%s route=%s error=%s", request.method,
                            request.path.split("/", 3)[:3], exc)
                return error_response(503, "service_unavailable", "the gateway is not available; retry later",
                                      headers=[("Retry-After", "1")])
        if answer is None:
            return error_response(504, "gateway_timeout", f"no answer within {FORWARD_TIMEOUT:g} s")
        content_type = "application/json"
        relayed = []
        for name, value in answer.headers:
            low = name.lower()
            if low == "content-type":
                content_type = value
            elif low not in _NOT_RELAYED:
                relayed.append((name, value))
        return Response(status=answer.status, body=answer.body, content_type=content_type, headers=relayed)


def worker_router(api: Api) -> Router:
    """The routes a worker serves itself, with the API's error answers and metrics."""
    r = Router()
    r.add("POST", "/v1/messages", api.wrap("send", api.send))
    r.add("GET", "/v1/messages/{id}", api.wrap("message", api.message))
    r.add("GET", "/cgi-bin/sendsms", api.wrap("sendsms", api.sendsms))
    r.add("POST", "/cgi-bin/sendsms", api.wrap("sendsms", api.sendsms))
    return r


async def _until_stop(stdin: trio.abc.ReceiveStream) -> str:
    """Until SIGTERM, SIGINT or EOF on stdin; returns which."""
    async with trio.open_nursery() as nursery:
        reason = ""

        async def signals() -> None:
            nonlocal reason
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for signum in received:
                    reason = signal.Signals(signum).name
                    nursery.cancel_scope.cancel()
                    return

        async def eof() -> None:
            nonlocal reason
            while True:
                try:
                    data = await stdin.receive_some(STDIN_READ)
                except (trio.BrokenResourceError, OSError):
                    data = b""
                if not data:
                    reason = "the main process is gone"
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(signals)
        nursery.start_soon(eof)
    return reason


async def serve_worker(start: WorkerStart, stdin: trio.abc.ReceiveStream, *,
                       task_status: trio.TaskStatus[WorkerReady] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve as worker ``start.index`` until told to stop (see the module's docstring);
    reports its :class:`WorkerReady` once it serves."""
    config = start.config
    async with trio_asyncio.open_loop():
        async with open_store(start.database_url, pool_size=config.database.pool_size,
                              connect_timeout=config.database.connect_timeout) as store:
            metrics = Metrics()
            process = ProcessMetrics(metrics, main=False)
            bus = MeteredBus(metrics)
            store.events = bus
            notifier = Notifier(store)
            intake = Intake(store, config.intake, metrics, on_commit=notifier.wake)
            api = Api(config=config, store=store, intake=intake, metrics=metrics,
                      merchants=MerchantDirectory(store), bus=bus, pass_limited=True)
            limits = HttpLimits(max_body=config.http.max_body)
            async with HttpClient(LOOPBACK_LIMITS) as main:
                handler = WorkerHandler(worker_router(api), main, start.main_port,
                                        process.requests.labels(f"worker-{start.index}"))
                private = Router()

                async def own_metrics(request: Request) -> Response:
                    return Response(status=200, body=metrics.exposition(), content_type=metrics.content_type)

                private.add("GET", "/metrics", own_metrics)
                async with trio.open_nursery() as nursery:
                    await nursery.start(notifier.run)
                    await nursery.start(intake.run)
                    private_port = await nursery.start(functools.partial(
                        serve_http, private, "127.0.0.1", 0, limits=limits))
                    gates = [_Gate(listener) for listener in
                             await open_http_listeners(start.host, start.port, reuse_port=True)]
                    await nursery.start(functools.partial(serve_http, handler, start.host, start.port, limits=limits,
                                                          listeners=gates))
                    task_status.started(WorkerReady(pid=os.getpid(), private_port=private_port))
                    log.info("http worker serving pid=%d http=%s:%d", os.getpid(), start.host, start.port)
                    reason = await _until_stop(stdin)
                    log.info("http worker stopping reason=%s", reason)
                    for gate in gates:
                        await gate.shut()
                    handler.draining = True
                    with trio.move_on_after(WORKER_DRAIN_TIMEOUT) as scope:
                        await handler.wait_idle()
                    if scope.cancelled_caught:
                        log.warning("http worker stopped with requests unanswered after %.0fs", WORKER_DRAIN_TIMEOUT)
                    nursery.cancel_scope.cancel()
    log.info("http worker stopped notifications=%d passed_on=%d", notifier.sent, handler.passed_on)


async def _main(start: WorkerStart) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:
        ready: WorkerReady = await nursery.start(functools.partial(serve_worker, start, stdin))
        line = msgspec.json.encode(ready) + b"\n"
        os.write(1, line)
        # Nothing else goes to stdout: the main process has read its line.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        heap.settle()


def main() -> int:
    line = sys.stdin.buffer.readline()
    try:
        start = msgspec.json.decode(line, type=WorkerStart)
    except msgspec.DecodeError as exc:
        print(f"smsgw worker: bad start line: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=start.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker={start.index} %(name)s %(message)s")
    try:
        trio.run(_main, start)
    except GatewayError as exc:
        log.error("http worker failed error=%s", exc)
        return 2
    except BaseExceptionGroup as group:
        expected, unexpected = group.split(GatewayError)
        if unexpected is not None:
            raise
        log.error("http worker failed error=%s", expected.exceptions[0] if expected else group)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
