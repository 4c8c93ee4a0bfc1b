"""``smsgw loadtest``: one bounded run of a scenario, against the self-contained stack or a target.

1. Self-contained (no ``--target``): :func:`loadtest.stack.open_stack` starts the simulators
   and the gateway in processes of their own on 127.0.0.1. With ``--target URL --api-key K``
   the run goes to that gateway (and, for MO scenarios, to its demo handset endpoint).
2. The gateway's ``/metrics`` is scraped before, every second during, and after the run.
3. :class:`loadtest.generator.OpenLoop` sends the scenario's requests on schedule.
4. Drain: wait (at most ``--drain-timeout``) until every acknowledged message is final.
5. Accounting (:mod:`loadtest.accounting`), a sample of accepted ids read back with
   ``GET /v1/messages/{id}``, the report (:mod:`loadtest.report`).

Everything is bounded: the schedule by ``--count`` and ``--duration``, each request by
:data:`loadtest.generator.REQUEST_TIMEOUT`, the drain by its timeout, process start and stop
by :mod:`loadtest.stack`'s timeouts.
"""

from __future__ import annotations

import datetime as dt
import resource
import secrets
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import TextIO

import msgspec
import trio

from .accounting import FINAL_STATUSES, GatewayCounts, account, parse_metrics
from .delivery import MessageTimes, delivery_report, message_times
from .generator import OpenLoop
from .http_client import Connection, Endpoint, HttpClientError, fetch, render_request
from .scenarios import DEFAULT_SERVICE_NUMBER, SCENARIOS, LoadTestError, Plan, check_options, plan
from .stack import CMPP_CHANNEL, Stack, StackOptions, open_stack, process_cpu_seconds

__all__ = ["METRICS_INTERVAL", "Options", "run_loadtest", "run_scenario"]

METRICS_INTERVAL = 1.0
"""Seconds between scrapes of the gateway's /metrics during a run."""
PROGRESS_INTERVAL = 0.5
"""Seconds between progress bar updates on a terminal (every 10 x that when not a terminal)."""
DEFAULT_CONNECTIONS = 64
MAX_MODEMS = 64
DRAIN_POLL = 0.25
HOLD_MARGIN = 1.0
"""Seconds after the schedule's end at which a delivery-report storm is released."""
READ_BACK_CONNECTIONS = 8
"""Connections reading the sampled messages' histories back after the drain."""
READ_BACK_TIMEOUT = 10.0
"""Seconds one history read may take."""


@dataclass(frozen=True, slots=True)
class Options:
    scenario: str
    rate: float | None = None
    duration: float | None = None
    count: int | None = None
    ramp: float = 0.0
    target: str | None = None
    api_key: str | None = None
    json_path: str | None = None
    plots_dir: str | None = None
    connections: int = DEFAULT_CONNECTIONS
    drain_timeout: float = 120.0
    database_url: str = ""
    service_number: str = DEFAULT_SERVICE_NUMBER
    modems: int = 0
    """Self-contained mode: emulated modems to start (the mixed scenario sends 1 % to them)."""
    progress: bool = True
    keep_dir: bool = False
    workers: int = 1
    """Self-contained mode: the gateway's ``[http] workers``."""


def validate(options: Options) -> None:
    """Refuse bad options before anything starts; the error names the option."""
    check_options(options.scenario, rate=options.rate, duration=options.duration, count=options.count,
                  ramp_s=options.ramp)
    if (options.target is None) != (options.api_key is None):
        raise LoadTestError("--target and --api-key go together")
    if options.target is not None:
        Endpoint(options.target)  # raises on a malformed URL
    if not 1 <= options.connections <= 10_000:
        raise LoadTestError("--connections must be within 1..10000")
    if not 0 <= options.modems <= MAX_MODEMS:
        raise LoadTestError(f"--modems must be within 0..{MAX_MODEMS}")
    if options.modems and options.target is not None:
        raise LoadTestError("--modems starts emulated modems for the self-contained stack; it does not go with --target")
    if not 0 < options.drain_timeout <= 3600:
        raise LoadTestError("--drain-timeout must be within (0, 3600] seconds")
    if not 1 <= options.workers <= 64:
        raise LoadTestError("--workers must be within 1..64")
    if options.workers != 1 and options.target is not None:
        raise LoadTestError("--workers sets up the self-contained stack's gateway; it does not go with --target")


async def scrape(endpoint: Endpoint) -> GatewayCounts:
    try:
        status, body = await fetch(endpoint, "GET", "/metrics", timeout=10)
    except HttpClientError as exc:
        raise LoadTestError(f"cannot read the gateway's /metrics: {exc}") from None
    if status != 200:
        raise LoadTestError(f"the gateway's /metrics answered {status}")
    return parse_metrics(body.decode("utf-8", "replace"))


async def simulator_stats(control: Endpoint) -> dict[str, int]:
    status, body = await fetch(control, "GET", "/stats", timeout=10)
    if status != 200:
        raise LoadTestError(f"the simulator's /stats answered {status}")
    return msgspec.json.decode(body)


class _Progress:
    def __init__(self, loop: OpenLoop, planned: int, stream: TextIO) -> None:
        self.loop, self.planned, self.stream = loop, planned, stream
        self.tty = stream.isatty()

    def line(self, now: float) -> str:
        res = self.loop.results
        second = int(now - self.loop.t0) - 1
        iv = res.intervals.get(second)
        rate = iv.accepted if iv is not None else 0
        p99 = iv.latency.percentile(99) / 1000 if iv is not None and iv.latency.count else 0.0
        done = res.requests
        frac = min(1.0, done / self.planned) if self.planned else 1.0
        bar = "#" * int(frac * 30)
        return (f"[{bar:<30}] {frac:4.0%} {done:,}/{self.planned:,} requests  {rate:,} msg/s  "
                f"in flight {self.loop.in_flight}  p99 {p99:.1f} ms")

    async def run(self) -> None:
        ticks = 0
        while not self.loop.finished.is_set():
            with trio.move_on_after(PROGRESS_INTERVAL):
                await self.loop.finished.wait()
            ticks += 1
            if self.tty:
                print("\r" + self.line(trio.current_time()), end="", file=self.stream, flush=True)
            elif ticks % 10 == 0:
                print(self.line(trio.current_time()), file=self.stream, flush=True)
        if self.tty:
            print("\r" + self.line(trio.current_time()), file=self.stream, flush=True)


async def _poll_metrics(endpoint: Endpoint, t0: float, timeline: list[tuple[float, GatewayCounts]],
                        *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        await trio.sleep(METRICS_INTERVAL)
        try:
            counts = await scrape(endpoint)
        except LoadTestError:
            continue  # a missed scrape leaves a gap in the plot, nothing worse
        timeline.append((trio.current_time() - t0, counts))


async def _read_back(endpoint: Endpoint, ids: list[str]) -> dict[str, object]:
    """GET each sampled id: is its final status persisted?"""
    statuses: dict[str, int] = {}
    unreadable = 0
    for message_id in ids:
        try:
            status, body = await fetch(endpoint, "GET", f"/v1/messages/{message_id}", timeout=10)
            if status != 200:
                raise HttpClientError(f"status {status}")
            value = msgspec.json.decode(body).get("status", "")
        except (HttpClientError, msgspec.DecodeError, AttributeError):
            unreadable += 1
            continue
        statuses[value] = statuses.get(value, 0) + 1
    final = sum(n for s, n in statuses.items() if s in FINAL_STATUSES)
    return {"checked": len(ids), "final": final, "unreadable": unreadable, "statuses": statuses}


async def _read_histories(endpoint: Endpoint, ids: list[str]) -> tuple[list[MessageTimes], int]:
    """GET each id's history over a few keep-alive connections; the times and how many could
    not be read."""
    times: list[MessageTimes] = []
    unreadable = 0
    pending = iter(ids)

    async def worker() -> None:
        nonlocal unreadable
        conn = Connection(endpoint)
        try:
            for message_id in pending:
                try:
                    with trio.fail_after(READ_BACK_TIMEOUT):
                        status, body = await conn.request(
                            render_request(endpoint, "GET", f"/v1/messages/{message_id}"))
                    if status != 200:
                        raise HttpClientError(f"status {status}")
                    times.append(message_times(body))
                except (HttpClientError, trio.TooSlowError, msgspec.DecodeError, msgspec.ValidationError):
                    unreadable += 1
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(min(READ_BACK_CONNECTIONS, len(ids))):
            nursery.start_soon(worker)
    return times, unreadable


async def run_loadtest(options: Options, *, stream: TextIO = sys.stderr) -> dict[str, object]:
    """Run one scenario, starting the stack unless the options name a target; return the report
    (see :func:`loadtest.report.build_report`)."""
    validate(options)
    if options.target is not None:
        return await run_scenario(options, stack=None, stream=stream)
    stack_options = StackOptions(database_url=options.database_url, service_number=options.service_number,
                                 modems=options.modems, keep_dir=options.keep_dir, workers=options.workers)
    if options.progress:
        print("starting the gateway and the simulators on 127.0.0.1 ...", file=stream, flush=True)
    async with open_stack(stack_options) as stack:
        report = await run_scenario(options, stack=stack, stream=stream)
        # The stack's directory (logs, database) is kept when the run was not clean: the evidence.
        stack.keep = stack.keep or not report["clean"]
        report["gateway_log_warnings"] = _count_warnings(stack.directory / "gateway.log")
        report["kept_dir"] = str(stack.directory) if stack.keep else None
    return report


def _count_warnings(log: Path) -> int:
    """Lines the gateway logged at WARNING or above during the run (it runs at WARNING)."""
    try:
        with open(log, errors="replace") as f:
            return sum(1 for line in f if " WARNING " in line or " ERROR " in line or " CRITICAL " in line)
    except OSError:
        return 0


async def run_scenario(options: Options, *, stack: Stack | None, stream: TextIO = sys.stderr) -> dict[str, object]:
    """Run one scenario against ``stack`` (already started; several runs may share it) or, when
    it is None, against ``options.target``."""
    from .report import build_report

    validate(options)
    scenario = SCENARIOS[options.scenario]
    if stack is not None:
        mt = Endpoint(stack.http, stack.api_key)
        mo: Endpoint | None = Endpoint(stack.control)
    elif options.target is not None and options.api_key is not None:
        mt = Endpoint(options.target, options.api_key)
        mo = Endpoint(options.target) if scenario.uses_mo else None
    else:
        raise LoadTestError("no stack and no --target: nothing to test")
    run_id = secrets.token_hex(3)
    endpoints = {"mt": mt} | ({"mo": mo} if mo is not None else {})
    the_plan = plan(options.scenario, rate=options.rate, duration=options.duration, count=options.count,
                    ramp_s=options.ramp, endpoints=endpoints, run_id=run_id, service_number=options.service_number,
                    modems=stack is not None and stack.modems > 0)
    started_at = dt.datetime.now(dt.UTC)
    before = await scrape(mt)
    sim_before = await simulator_stats(mo) if stack is not None and mo is not None else None
    cpu_before = _own_cpu()
    pids = {"gateway": stack.gateway_pid, "simulator": stack.simulator_pid} if stack is not None else {}
    proc_cpu_before = {k: process_cpu_seconds(p) for k, p in pids.items()}
    if the_plan.scenario.hold_reports and stack is not None and mo is not None:
        # The storm: reports of everything sent are held until the sending is over, then come at once.
        status, _ = await fetch(mo, "POST", "/v1/sim/hold-reports",
                                msgspec.json.encode({"seconds": _sending_time(the_plan, options) + HOLD_MARGIN}))
        if status != 200:
            raise LoadTestError(f"the simulator refused to hold reports ({status})")
    loop = OpenLoop(endpoints, the_plan.call, the_plan.profile, count=the_plan.requests,
                    connections=options.connections)
    timeline: list[tuple[float, GatewayCounts]] = []
    drain_seconds = 0.0
    drained = False
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        t0 = loop.t0
        timeline.append((0.0, before))
        nursery.start_soon(_poll_metrics, mt, t0, timeline)
        if options.progress:
            nursery.start_soon(_Progress(loop, the_plan.requests, stream).run)
        await loop.finished.wait()
        send_end = trio.current_time()
        cpu_send = _own_cpu() - cpu_before
        res = loop.results
        mt_accepted = res.accepted.get("mt", 0)
        mo_accepted = res.accepted.get("mo", 0)
        with trio.move_on_after(options.drain_timeout):
            while True:
                delta = (await scrape(mt)).minus(before)
                if delta.final >= mt_accepted and delta.mo_received >= mo_accepted:
                    drained = True
                    break
                await trio.sleep(DRAIN_POLL)
        drain_seconds = trio.current_time() - send_end
        # Reports may still be on their way for messages that failed over or were retried:
        # one more short look lets late arrivals (and duplicates) show.
        await trio.sleep(METRICS_INTERVAL)
        nursery.cancel_scope.cancel()
    after = await scrape(mt)
    timeline.append((trio.current_time() - t0, after))
    sim_after = await simulator_stats(mo) if sim_before is not None and mo is not None else None
    sim_delta = ({k: v - sim_before.get(k, 0) for k, v in sim_after.items() if isinstance(v, int)}
                 if sim_after is not None and sim_before is not None else None)
    handsets = None
    if stack is not None and stack.modems and mo is not None:
        numbers = the_plan.modem_numbers(res.requests)
        status, body = await fetch(mo, "POST", "/v1/sim/inbox-counts", msgspec.json.encode({"numbers": numbers}))
        if status != 200:
            raise LoadTestError(f"the simulators' inbox counts answered {status}")
        handsets = msgspec.json.decode(body) | {"sent": len(numbers)}
    acc = account(mt_accepted=mt_accepted, mo_accepted=mo_accepted, delta=after.minus(before), sim=sim_delta,
                  cmpp_channel=CMPP_CHANNEL if stack is not None else None, handsets=handsets)
    sample = await _read_back(mt, res.sample_ids)
    histories = {route: await _read_histories(mt, ids) for route, ids in sorted(res.route_ids.items())}
    delivery = delivery_report({route: times for route, (times, _) in histories.items()},
                               res.accepted_by_route, send_end - t0)
    for route, (_, unreadable) in histories.items():
        delivery[route]["unreadable"] = unreadable
    cpu = {"generator": round(cpu_send, 2)}
    for k, p in pids.items():
        b, a = proc_cpu_before[k], process_cpu_seconds(p)
        cpu[k] = round(a - b, 2) if a is not None and b is not None else None
    report = build_report(options=options, plan=the_plan, results=res, accounting=acc, before=before, after=after,
                          timeline=timeline, t0=t0, send_seconds=send_end - t0, drain_seconds=drain_seconds,
                          drained=drained, simulator=sim_delta, handsets=handsets, sample=sample, cpu=cpu,
                          started_at=started_at, delivery=delivery,
                          mode="target" if stack is None else "self-contained", target=mt.url)
    return report


def _sending_time(the_plan: Plan, options: Options) -> float:
    """Seconds the schedule should take: its duration, or less when the count ends it first."""
    return min(the_plan.profile.duration, the_plan.requests / the_plan.profile.peak + options.ramp)


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime

