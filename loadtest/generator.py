"""The open-loop load generator: requests start on schedule, latency counts from the schedule.

:class:`OpenLoop` runs a pool of ``connections`` workers. Each takes the next arrival from a
shared schedule (:mod:`loadtest.schedule`), waits for its intended start time, sends the
scenario's request for that index and records the latency from the *intended* start to the
response. When every worker is busy, due requests wait for a free one with their latency
clock already running (the pool is bounded; the backlog is just the schedule's cursor, so
it costs no memory). A request whose intended start has passed is sent at once.

Time comes from ``trio.current_time()``, so tests drive it with ``trio.testing.MockClock``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
import trio

from .histogram import Histogram
from .http_client import Connection, Endpoint, HttpClientError
from .schedule import RateProfile, arrivals

__all__ = ["REQUEST_TIMEOUT", "ROUTE_SAMPLE_IDS", "SAMPLE_IDS", "Call", "Interval", "OpenLoop", "Results"]

REQUEST_TIMEOUT = 30.0
"""Seconds one request may take before it counts as an error (``timeout``)."""
SAMPLE_IDS = 200
"""Accepted message ids kept (a uniform sample) to read back from the gateway at the end."""
ROUTE_SAMPLE_IDS = 500
"""Accepted ids kept per route (:attr:`Call.route`) for the delivery latency of each channel kind."""
MAX_ERROR_KINDS = 20
"""Distinct error texts kept; further kinds are counted under ``other``."""


@dataclass(frozen=True, slots=True)
class Call:
    """One request of a scenario: ``kind`` names its endpoint (``"mt"``: the gateway's API,
    ``"mo"``: the handset simulator); ``messages`` is how many messages a 202 stands for."""

    kind: str
    data: bytes
    messages: int = 1
    route: str = ""
    """For an MT, the kind of channel its recipients are routed to (``"cmpp"``, ``"modem"``), so
    that delivery latency can be sampled per kind; empty for none."""


@dataclass(slots=True)
class Interval:
    """What happened in one second of the run."""

    started: int = 0
    completed: int = 0
    accepted: int = 0
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)


class _Ids(msgspec.Struct):
    id: str


class _Accepted(msgspec.Struct):
    messages: list[_Ids]


_accepted_decoder = msgspec.json.Decoder(_Accepted)


@dataclass(slots=True)
class Results:
    """Everything the generator saw; latencies in microseconds."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    """Messages acknowledged with 202, per call kind."""
    refused: Counter[str] = field(default_factory=Counter)
    """Messages whose request got an answer other than 202, per call kind."""
    errors: Counter[str] = field(default_factory=Counter)
    latency: dict[str, Histogram] = field(default_factory=dict)
    """From the intended start to the response, per call kind."""
    start_delay: Histogram = field(default_factory=Histogram)
    """From the intended start to the moment the request went out: the generator's own lag."""
    intervals: dict[int, Interval] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)
    accepted_by_route: Counter[str] = field(default_factory=Counter)
    """MT messages acknowledged with 202, per route (:attr:`Call.route`)."""
    route_ids: dict[str, list[str]] = field(default_factory=dict)
    """Per route, a uniform sample of accepted ids (at most :data:`ROUTE_SAMPLE_IDS`), whose
    histories give the delivery latency of each channel kind."""
    first_start: float | None = None
    last_done: float | None = None

    def interval(self, second: int) -> Interval:
        iv = self.intervals.get(second)
        if iv is None:
            iv = self.intervals[second] = Interval()
        return iv

    def all_latency(self) -> Histogram:
        total = Histogram()
        for h in self.latency.values():
            total.merge(h)
        return total


class OpenLoop:
    """Drive ``call(i)`` for each arrival of ``profile`` (at most ``count``) over
    ``connections`` keep-alive connections per endpoint."""

    def __init__(self, endpoints: dict[str, Endpoint], call: Callable[[int], Call], profile: RateProfile, *,
                 count: int | None = None, connections: int = 64, seed: int = 0) -> None:
        if connections < 1:
            raise ValueError("at least one connection")
        self.endpoints = endpoints
        self.call = call
        self.profile = profile
        self.count = count
        self.connections = connections
        self.results = Results()
        self.in_flight = 0
        self.t0 = 0.0
        self._schedule: Iterator[tuple[int, float]] = iter(())
        self._rng = random.Random(seed)
        self._accepted_seen = 0
        self._route_seen: Counter[str] = Counter()
        self.finished = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.t0 = trio.current_time()
        self._schedule = enumerate(arrivals(self.profile, self.count))
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.connections):
                    nursery.start_soon(self._worker)
        finally:
            self.finished.set()

    async def _worker(self) -> None:
        conns = {kind: Connection(ep) for kind, ep in self.endpoints.items()}
        res = self.results
        try:
            while True:
                try:
                    index, offset = next(self._schedule)
                except StopIteration:
                    return
                intended = self.t0 + offset
                if intended > trio.current_time():
                    await trio.sleep_until(intended)
                call = self.call(index)
                sent = trio.current_time()
                if res.first_start is None:
                    res.first_start = sent
                res.start_delay.record(int((sent - intended) * 1e6))
                self.in_flight += 1
                status, body, error = 0, b"", ""
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        status, body = await conns[call.kind].request(call.data)
                except HttpClientError as exc:
                    error = str(exc)
                except trio.TooSlowError:
                    error = "timeout"
                finally:
                    self.in_flight -= 1
                done = trio.current_time()
                res.last_done = done
                self._record(call, intended, done, status, body, error)
        finally:
            for conn in conns.values():
                await conn.aclose()

    def _record(self, call: Call, intended: float, done: float, status: int, body: bytes, error: str) -> None:
        res = self.results
        res.requests += 1
        latency = int((done - intended) * 1e6)
        hist = res.latency.get(call.kind)
        if hist is None:
            hist = res.latency[call.kind] = Histogram()
        hist.record(latency)
        iv = res.interval(int(intended - self.t0))
        iv.started += 1
        iv.latency.record(latency)
        done_iv = res.interval(int(done - self.t0))
        done_iv.completed += 1
        if error:
            res.errors[error if len(res.errors) < MAX_ERROR_KINDS or error in res.errors else "other"] += 1
            res.refused[call.kind] += call.messages
            done_iv.errors += 1
            return
        res.statuses[status] += 1
        if status != 202:
            res.refused[call.kind] += call.messages
            done_iv.errors += 1
            return
        res.accepted[call.kind] += call.messages
        done_iv.accepted += call.messages
        if call.kind == "mt":
            self._sample(body)
            if call.route:
                res.accepted_by_route[call.route] += call.messages
                self._sample_route(call.route, body)

    def _sample_route(self, route: str, body: bytes) -> None:
        """Reservoir sampling per route, like :meth:`_sample`."""
        self._route_seen[route] += 1
        ids = self.results.route_ids.setdefault(route, [])
        if len(ids) < ROUTE_SAMPLE_IDS:
            slot = len(ids)
        else:
            slot = self._rng.randrange(self._route_seen[route])
            if slot >= ROUTE_SAMPLE_IDS:
                return
        try:
            messages = _accepted_decoder.decode(body).messages
        except (msgspec.ValidationError, msgspec.DecodeError):
            return  # counted by _sample
        if not messages:
            return
        chosen = messages[self._rng.randrange(len(messages))].id
        if slot == len(ids):
            ids.append(chosen)
        else:
            ids[slot] = chosen

    def _sample(self, body: bytes) -> None:
        """Reservoir sampling of accepted ids, decoding only the bodies that may be kept."""
        self._accepted_seen += 1
        ids = self.results.sample_ids
        if len(ids) < SAMPLE_IDS:
            slot = len(ids)
        else:
            slot = self._rng.randrange(self._accepted_seen)
            if slot >= SAMPLE_IDS:
                return
        try:
            messages = _accepted_decoder.decode(body).messages
        except (msgspec.ValidationError, msgspec.DecodeError):
            self.results.errors["202 without message ids"] += 1
            return
        if not messages:
            return
        chosen = messages[self._rng.randrange(len(messages))].id
        if slot == len(ids):
            ids.append(chosen)
        else:
            ids[slot] = chosen
