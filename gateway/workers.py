"""HTTP worker processes: the accept path on several cores (``[http] workers``, README "HTTP workers").

One gateway process is one Trio event loop, so its HTTP accept path is bound to one core.
With ``workers = N`` > 1 the gateway (the *main* process: channels, dispatcher, webhooks, MO
dispatch, admin, CRM) starts N-1 *worker* processes (:mod:`gateway.worker`) once the database
is up and migrated, and every process listens on the same ``[http] listen`` address with
``SO_REUSEPORT``: the kernel spreads new connections over them.

* A worker serves the hot routes itself (``POST /v1/messages``, ``GET /v1/messages/{id}``,
  ``GET|POST /cgi-bin/sendsms``) with its own store and group commit, and passes every other
  request, and the sends of accounts with a rate or daily quota, to the main process over
  the main's private loopback listener, relaying the answer unchanged.
* After a worker's batch commits, it sends ``NOTIFY smsgw_queue``; the main process listens
  on a connection of its own and wakes its dispatcher (and so do other nodes with workers).
* ``/metrics`` (served by the main process, reached from any) is the sum of every process's
  metrics (:mod:`gateway.metrics_merge`), the workers' read from their private listeners.
* :class:`WorkerPool` owns the workers: started in order, each reporting ready with a line
  on its stdout; stopped with SIGTERM (killed after :data:`WORKER_STOP_TIMEOUT`); restarted
  with a backoff when one dies. A worker exits by itself when its stdin reaches EOF, that is
  when the main process is gone, even killed.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
from collections.abc import Callable

import msgspec
import trio
from prometheus_client import Counter, Gauge

from .config import Config, split_listen
from .errors import GatewayError, StoreUnavailable
from .http.server import Handler, HttpLimits, Request, Response, open_http_listeners, serve_http
from .httpclient import HttpClient, HttpClientError, Limits, Target
from .metrics import Metrics
from .metrics_merge import MetricsMergeError, merge_expositions, retire_exposition
from .store import Store

log = logging.getLogger(__name__)

__all__ = [
    "WAKE_CHANNEL",
    "ProcessMetrics",
    "WorkerPool",
    "WorkerReady",
    "WorkerStart",
    "WorkerStartError",
    "serve_wakeups",
    "serve_with_workers",
    "stop_process",
]

WAKE_CHANNEL = "smsgw_queue"
"""The PostgreSQL notification channel a worker signals after committing new messages."""
FORWARDED_FOR = "x-smsgw-forwarded-for"
"""Header a worker adds to a request it passes on: the client's address (trusted only on the
main process's private listener)."""
WORKER_READY_TIMEOUT = 60.0
"""Seconds a starting worker gets to open its store and listeners and report ready."""
WORKER_DRAIN_TIMEOUT = 10.0
"""Seconds a stopping worker waits for the requests it has taken to be answered."""
WORKER_STOP_TIMEOUT = WORKER_DRAIN_TIMEOUT + 5.0
"""Seconds the main process waits for a worker to exit after SIGTERM before it kills it."""
RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 30.0
"""Seconds before restarting a worker that died: doubled at each death, from the minimum."""
RESTART_BACKOFF_RESET = 60.0
"""A worker that ran this long before dying is restarted after the minimum backoff again."""
METRICS_SCRAPE_TIMEOUT = 2.0
"""Seconds a worker gets to answer the main's scrape; one that does not counts with its last reading."""
WAKE_RETRY_MIN = 1.0
WAKE_RETRY_MAX = 30.0
"""Seconds before listening again after the listening connection was lost (doubling)."""
MAX_READY_LINE = 4096
LOOPBACK_LIMITS = Limits(max_head=64 * 1024, max_body=64 * 1024 * 1024, max_idle_per_host=64)
"""Bounds of the clients between the gateway's own processes: the largest answers relayed are
admin listings and metrics; 64 idle connections kept per peer."""


class WorkerStartError(GatewayError):
    """A worker process did not start: it exited, or did not report ready in time."""


class WorkerStart(msgspec.Struct, frozen=True, kw_only=True):
    """What the main process writes to a new worker's stdin, as one JSON line."""

    index: int
    config: Config
    database_url: str
    host: str
    port: int
    """The public HTTP port the main process bound (the worker binds it too, SO_REUSEPORT)."""
    main_port: int
    """The main process's private listener on 127.0.0.1, for requests the worker passes on."""
    log_level: int = logging.INFO


class WorkerReady(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker writes to its stdout, as one JSON line, once it serves."""

    pid: int
    private_port: int
    """Its private listener on 127.0.0.1 (``GET /metrics``)."""


class ProcessMetrics:
    """Metrics of the several-process gateway, on the process's own registry."""

    def __init__(self, metrics: Metrics, *, main: bool) -> None:
        r = metrics.registry
        self.requests = Counter(
            "smsgw_http_process_requests_total", "HTTP requests received on the public listener, by the process"
            " whose socket took the connection (main, worker-N)", ["process"], registry=r)
        if main:
            self.workers_up = Gauge("smsgw_http_workers_up", "HTTP worker processes running and ready", registry=r)
            self.restarts = Counter(
                "smsgw_http_worker_restarts_total", "HTTP worker processes restarted after they died", registry=r)
            self.scrape_misses = Counter(
                "smsgw_http_worker_scrape_misses_total", "Scrapes a worker did not answer in time or well (it"
                " counted with its last reading)", registry=r)


# --- the main process ------------------------------------------------------------------------


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """One line (without its newline), or what came before EOF; bounded by MAX_READY_LINE."""
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(MAX_READY_LINE)
        if not chunk:
            return data
        data += chunk
        if len(data) > MAX_READY_LINE:
            raise WorkerStartError(f"worker's ready line is over {MAX_READY_LINE} bytes")
    return data.split(b"\n", 1)[0]


async def stop_process(proc: trio.Process, timeout: float) -> bool:
    """Stop ``proc``: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; return whether it
    had to be killed. Shielded: it runs on the way out."""
    with trio.CancelScope(shield=True):
        if proc.returncode is not None:
            return False
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await proc.wait()
        if proc.returncode is not None:
            return False
        proc.kill()
        await proc.wait()
        return True


async def _stop_worker(proc: trio.Process, index: int) -> None:
    """Stop worker ``index`` (killed after WORKER_STOP_TIMEOUT) and close its pipes."""
    if await stop_process(proc, WORKER_STOP_TIMEOUT):
        log.warning("worker did not stop in time; killed it worker=%d pid=%d", index, proc.pid)
    with trio.CancelScope(shield=True):
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                await pipe.aclose()


_start_encoder = msgspec.json.Encoder()
_ready_decoder = msgspec.json.Decoder(WorkerReady)


class WorkerPool:
    """``count`` worker processes, each supervised by a task of :meth:`run`.

    ``command`` runs a worker (default: this Python, ``-m gateway.worker``)."""

    def __init__(self, config: Config, *, count: int, database_url: str, host: str, metrics: ProcessMetrics,
                 port: int = 0, main_port: int = 0, command: list[str] | None = None) -> None:
        self._config = config
        self._count = count
        self._database_url = database_url
        self._host = host
        self.port = port
        """The public HTTP port (bound by the main process first); set before :meth:`run`."""
        self.main_port = main_port
        """The main process's private listener on 127.0.0.1; set before :meth:`run`."""
        self._metrics = metrics
        self._command = command or [sys.executable, "-m", "gateway.worker"]
        self._client = HttpClient(LOOPBACK_LIMITS)
        self._ports: dict[int, int] = {}
        """The private listener's port of each worker now ready, by worker index."""
        self.pids: dict[int, int] = {}
        """The process id of each worker now ready, by worker index."""
        self._readings: dict[int, str] = {}
        """The last exposition read from each worker now ready, by process id."""
        self.retired = ""
        """What the workers that exited had counted (:func:`retire_exposition`): part of the sum."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers one after the other, report ready once all are, and keep them
        running until cancelled; then stop them all (in parallel) before returning.
        Raises :class:`WorkerStartError` if one does not start the first time."""
        async with self._client, trio.open_nursery() as nursery:
            for index in range(1, self._count + 1):
                await nursery.start(self._supervise, index)
            log.info("http workers ready count=%d pids=%s", self._count, sorted(self.pids.values()))
            task_status.started()

    async def _supervise(self, index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = RESTART_BACKOFF_MIN
        first = True
        while True:
            began = trio.current_time()
            try:
                code = await self._run_once(index, task_status.started if first else _nothing)
            except WorkerStartError as exc:
                if first:
                    raise
                log.error("http worker failed to start worker=%d error=%s retry_in=%.1fs", index, exc, backoff)
            else:
                log.error("http worker exited unexpectedly worker=%d code=%s restart_in=%.1fs", index, code, backoff)
            first = False
            if trio.current_time() - began >= RESTART_BACKOFF_RESET:
                backoff = RESTART_BACKOFF_MIN
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            self._metrics.restarts.inc()

    async def _run_once(self, index: int, ready: Callable[[], None]) -> int:
        """Start worker ``index``, call ``ready`` once it serves, and return its exit code
        when it exits on its own. Stops it on the way out (cancellation included)."""
        start = WorkerStart(index=index, config=self._config, database_url=self._database_url, host=self._host,
                            port=self.port, main_port=self.main_port,
                            log_level=logging.getLogger().getEffectiveLevel())
        proc = await trio.lowlevel.open_process(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                await proc.stdin.send_all(_start_encoder.encode(start) + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise WorkerStartError(f"worker {index} exited before it read its start: {exc!r}") from None
            line = b""
            with trio.move_on_after(WORKER_READY_TIMEOUT):
                line = await _read_line(proc.stdout)
            if not line:
                if proc.poll() is not None:
                    raise WorkerStartError(f"worker {index} exited with {proc.returncode} before it was ready")
                raise WorkerStartError(f"worker {index} did not report ready within {WORKER_READY_TIMEOUT:g} s")
            try:
                info = _ready_decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise WorkerStartError(f"worker {index} reported {line[:200]!r}: {exc}") from None
            self.pids[index] = proc.pid
            self._ports[index] = info.private_port
            self._metrics.workers_up.inc()
            log.info("http worker ready worker=%d pid=%d", index, proc.pid)
            ready()
            try:
                return await proc.wait()
            finally:
                self._metrics.workers_up.dec()
                self.pids.pop(index, None)
                last = self._readings.pop(proc.pid, None)
                if last is not None:  # what it counted since then is lost with it
                    self.retired = retire_exposition(self.retired, last)
                port = self._ports.pop(index, None)
                if port is not None:
                    self._client.discard("127.0.0.1", port)
        finally:
            await _stop_worker(proc, index)

    async def scrape(self) -> list[str]:
        """Every ready worker's own metrics (Prometheus text), read concurrently, then
        :attr:`retired` (when a worker has exited). A worker that does not answer within
        METRICS_SCRAPE_TIMEOUT, or answers badly, counts with its last reading (logged), so
        that no counter of the sum goes back."""
        texts: dict[int, str] = {}

        async def one(index: int, port: int, pid: int | None) -> None:
            error = "no answer in time"
            with trio.move_on_after(METRICS_SCRAPE_TIMEOUT):
                try:
                    answer = await self._client.request("GET", Target("127.0.0.1", port, f"127.0.0.1:{port}",
                                                                      "/metrics"), whole=True)
                except HttpClientError as exc:
                    error = str(exc)
                else:
                    if answer.status == 200:
                        if pid is not None and self.pids.get(index) == pid:
                            texts[index] = self._readings[pid] = answer.body.decode("utf-8", "replace")
                        # else it exited meanwhile: its last reading is in ``retired`` already
                        return
                    error = f"status {answer.status}"
            self._metrics.scrape_misses.inc()
            last = self._readings.get(pid) if pid is not None else None
            if last is not None:
                texts[index] = last
            log.warning("worker metrics %s worker=%d error=%s", "at their last reading" if last else "left out",
                        index, error)

        async with trio.open_nursery() as nursery:
            for index, port in list(self._ports.items()):
                nursery.start_soon(one, index, port, self.pids.get(index))
        return [texts[i] for i in sorted(texts)] + ([self.retired] if self.retired else [])


def _nothing() -> None:
    pass


class MainHandler:
    """The main process's HTTP handler when it has workers: the gateway's router, with
    ``/metrics`` summed over every process. ``requests`` counts the requests it takes (on the
    public listener; the private one passes None)."""

    def __init__(self, router: Handler, pool: WorkerPool, requests: Counter | None) -> None:
        self._router = router
        self._pool = pool
        self._requests = requests.labels("main") if requests is not None else None

    async def __call__(self, request: Request) -> Response:
        if self._requests is not None:
            self._requests.inc()
        else:  # a worker passed it on: the client's address is the worker's header
            remote = request.headers.pop(FORWARDED_FOR, None)
            if remote:
                request.remote = remote
        if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
            return await self._router(request)
        texts = await self._pool.scrape()  # first, so that this exposition counts its misses
        response = await self._router(request)
        if response.status != 200 or not texts:
            return response
        try:
            body = merge_expositions([response.body.decode("utf-8", "replace"), *texts])
        except MetricsMergeError as exc:
            log.error("metrics of the workers could not be merged error=%s", exc)
            return response
        return Response(status=200, body=body, content_type=response.content_type, headers=response.headers)


async def serve_wakeups(store: Store, url: str, on_wake: Callable[[], None], *, connect_timeout: float = 10.0,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``on_wake`` whenever any process sharing the database notifies WAKE_CHANNEL,
    until cancelled. A lost listening connection is logged and listened again (with a
    backoff; the dispatcher's idle poll runs meanwhile), then ``on_wake`` is called once for
    what may have been missed. Reports ready after the first attempt, failed or not."""
    status = _Once(task_status)
    delay = WAKE_RETRY_MIN
    while True:
        began = trio.current_time()
        try:
            await store.serve_notifications(url, WAKE_CHANNEL, on_wake, connect_timeout=connect_timeout,
                                            task_status=status)
        except StoreUnavailable as exc:
            status.started()
            if trio.current_time() - began > WAKE_RETRY_MAX:
                delay = WAKE_RETRY_MIN
            log.warning("wake-up listener lost channel=%s error=%s retry_in=%.0fs (the dispatcher polls meanwhile)",
                        WAKE_CHANNEL, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, WAKE_RETRY_MAX)
            on_wake()


class _Once:
    """A task status that passes on only the first ``started``."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status: trio.TaskStatus[None] | None = status

    def started(self, value: None = None) -> None:
        if self._status is not None:
            status, self._status = self._status, None
            status.started()


async def serve_with_workers(config: Config, router: Handler, *, store: Store, database_url: str, metrics: Metrics,
                             on_wake: Callable[[], None], limits: HttpLimits,
                             task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """The HTTP API of a gateway with ``config.http.workers`` > 1, until cancelled: the main
    process's public listener (SO_REUSEPORT) and private one, the wake-up listener, and the
    workers. Reports the public port once every worker is ready."""
    host, port = split_listen(config.http.listen)
    process = ProcessMetrics(metrics, main=True)
    pool = WorkerPool(config, count=config.http.workers - 1, database_url=database_url, host=host,
                      metrics=process)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_wakeups, store, database_url, on_wake,
                                              connect_timeout=config.database.connect_timeout))
        pool.main_port = await nursery.start(functools.partial(
            serve_http, MainHandler(router, pool, None), "127.0.0.1", 0, limits=limits))
        listeners = await open_http_listeners(host, port, reuse_port=True)
        pool.port = listeners[0].socket.getsockname()[1]
        await nursery.start(functools.partial(serve_http, MainHandler(router, pool, process.requests), host,
                                              pool.port, limits=limits, listeners=listeners))
        await nursery.start(pool.run)
        task_status.started(pool.port)
