"""Benchmark of the Kannel interface: ``GET /cgi-bin/sendsms`` through the whole stack.

Starts the self-contained stack (:func:`loadtest.stack.open_stack`: the ISMG simulator in one
process, ``smsgw run`` on an embedded PostgreSQL in another), then drives Kannel's interface
with wrk the way Kannel's own figures are taken: one recipient per request, 50 keep-alive
connections, a different China Mobile number each request (``loadtest/wrk/kannel_sendsms.lua``),
so no per-recipient limit or duplicate check shapes the result.

With ``--dlr`` each request also carries ``dlr-mask`` (default 31: every report) and a
``dlr-url`` pointing at a small HTTP receiver this process runs on 127.0.0.1; it counts the
callbacks by their ``%d`` type. After wrk stops, the bench waits (at most ``--wait``) until every
message the gateway accepted has had its final callback (type 1 delivered, 2 failed or
16 rejected), then prints accepted/s, callbacks/s, how many arrived, wrk's latency percentiles
and the gateway's CPU per message, and a JSON summary.

    python -m loadtest.kannel_bench --duration 10 [--dlr] [--json FILE]

Everything goes to 127.0.0.1 and every step is bounded in time. Needs Debian's ``wrk``.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import sys
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gateway.http import Request, Response, serve_http
from gateway.kannel import MAX_DLR_MASK

from .accounting import GatewayCounts
from .http_client import Endpoint
from .runner import scrape
from .scenarios import LoadTestError
from .stack import ACCOUNT, StackOptions, open_stack, process_cpu_seconds

__all__ = ["CONNECTIONS", "DLR_MASK_ALL", "DLR_PATH", "DlrCounter", "FINAL_DLR_TYPES", "dlr_url_template",
           "parse_wrk", "sendsms_prefix", "summarize"]

HERE = Path(__file__).parent
WRK_SCRIPT = HERE / "wrk" / "kannel_sendsms.lua"
CONNECTIONS = 50
"""Keep-alive connections, as in Kannel's figures."""
WRK_THREADS = 2
DLR_MASK_ALL = 31
"""Kannel's dlr-mask for every report: 1 delivered, 2 failed, 4 queued, 8 submitted, 16 rejected."""
FINAL_DLR_TYPES = {1: "delivered", 2: "failed", 16: "rejected"}
"""The ``%d`` types that end a message: after one of these no other callback follows."""
DLR_PATH = "/dlr"
TEXT = "Your verification code is 482913"
WARMUP_SECONDS = 1
WAIT_POLL = 0.25
DEFAULT_WAIT = 120.0
"""Seconds the bench waits after wrk for the last callbacks (and for the warm-up to drain)."""
SETTLE = 1.0
"""Seconds after wrk before the gateway's accepted count is taken as complete."""
WRK_TIMEOUT_MARGIN = 30.0
"""Seconds wrk may overrun its ``-d`` before it is stopped."""


def sendsms_prefix(username: str, password: str, *, text: str = TEXT, dlr_url: str | None = None,
                   dlr_mask: int = 0) -> str:
    """The ``/cgi-bin/sendsms?...`` path and query without ``to``, which the wrk script appends.

    Every value is percent-encoded, so the ``%d``/``%I`` escapes of ``dlr_url`` travel as
    ``%25d``/``%25I`` and reach the gateway intact, as Kannel clients send them."""
    params = {"username": username, "password": password, "text": text}
    if dlr_url is not None:
        params["dlr-mask"] = str(dlr_mask or DLR_MASK_ALL)
        params["dlr-url"] = dlr_url
    return "/cgi-bin/sendsms?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def dlr_url_template(receiver: str) -> str:
    """The ``dlr-url`` each request carries: message id, report type, receiver, unix time."""
    return f"{receiver.rstrip('/')}{DLR_PATH}?id=%I&type=%d&to=%p&at=%T"


@dataclass(slots=True)
class DlrCounter:
    """Counts Kannel delivery-report callbacks (the query of each GET to :data:`DLR_PATH`)."""

    callbacks: int = 0
    by_type: Counter[int] = field(default_factory=Counter)
    finished: set[str] = field(default_factory=set)
    """Message ids whose final callback came."""
    duplicates: int = 0
    """Callbacks of a type a message had already had."""
    malformed: int = 0
    first_at: float | None = None
    last_at: float | None = None
    _seen: set[tuple[str, int]] = field(default_factory=set)

    def record(self, query: str, at: float) -> bool:
        """Count one callback received at ``at`` (seconds); False when it names no id and type."""
        params = dict(urllib.parse.parse_qsl(query))
        try:
            message_id, dlr_type = params["id"], int(params["type"])
        except (KeyError, ValueError):
            self.malformed += 1
            return False
        self.callbacks += 1
        self.first_at = at if self.first_at is None else self.first_at
        self.last_at = at
        key = (message_id, dlr_type)
        if key in self._seen:
            self.duplicates += 1
            return True
        self._seen.add(key)
        self.by_type[dlr_type] += 1
        if dlr_type in FINAL_DLR_TYPES:
            self.finished.add(message_id)
        return True


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(out: str) -> dict[str, object]:
    """wrk's report (run with ``--latency``) as numbers: requests, seconds, rates, percentiles."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if m is None:
        raise LoadTestError("wrk printed no request count:\n" + out[-2000:])
    seconds = float(m.group(2)) * _UNITS_MS[m.group(3)] / 1000
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency: dict[str, float] = {}
    for p in ("50", "75", "90", "99"):
        lm = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if lm is not None:
            latency[f"p{p}"] = round(float(lm.group(1)) * _UNITS_MS[lm.group(2)], 3)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"requests": int(m.group(1)), "seconds": seconds,
            "requests_per_s": float(rps.group(1)) if rps else 0.0,
            "latency_ms": latency, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1).strip() if errors else ""}


def summarize(*, wrk: dict[str, object], accepted: int, dlr: DlrCounter | None, wrk_end: float | None,
              gateway_cpu_s: float | None, simulator_cpu_s: float | None, dlr_mask: int,
              waited_s: float) -> dict[str, object]:
    """The figures of one run. ``accepted`` is the gateway's own count (its
    ``smsgw_messages_accepted_total`` delta), which includes requests wrk cut off at its end;
    ``wrk_end`` is when wrk stopped, on the clock of ``dlr``'s arrival times."""
    seconds = float(wrk["seconds"]) or 1.0
    out: dict[str, object] = {
        "interface": "GET /cgi-bin/sendsms, one recipient per request",
        "connections": CONNECTIONS,
        "seconds": round(seconds, 2),
        "requests": wrk["requests"],
        "non_2xx": wrk["non_2xx"],
        "socket_errors": wrk["socket_errors"],
        "accepted": accepted,
        "accepted_per_s": round(accepted / seconds, 1),
        "latency_ms": wrk["latency_ms"],
        "gateway_cpu_ms_per_message": round(gateway_cpu_s * 1000 / accepted, 3)
        if gateway_cpu_s is not None and accepted else None,
        "simulator_cpu_ms_per_message": round(simulator_cpu_s * 1000 / accepted, 3)
        if simulator_cpu_s is not None and accepted else None,
    }
    if dlr is None:
        return out
    span = (dlr.last_at - min(dlr.first_at, wrk_end - seconds if wrk_end is not None else dlr.first_at)
            if dlr.first_at is not None and dlr.last_at is not None else 0.0)
    out["dlr"] = {
        "mask": dlr_mask,
        "callbacks": dlr.callbacks,
        "by_type": {str(k): v for k, v in sorted(dlr.by_type.items())},
        "final_received": len(dlr.finished),
        "final_missing": max(0, accepted - len(dlr.finished)),
        "duplicates": dlr.duplicates,
        "malformed": dlr.malformed,
        "callbacks_per_s": round(dlr.callbacks / span, 1) if span > 0 else 0.0,
        "final_per_s": round(len(dlr.finished) / span, 1) if span > 0 else 0.0,
        "last_callback_after_wrk_s": round(dlr.last_at - wrk_end, 2)
        if dlr.last_at is not None and wrk_end is not None else None,
        "waited_s": round(waited_s, 2),
        "complete": len(dlr.finished) >= accepted and dlr.duplicates == 0,
    }
    return out


async def _run_wrk(url: str, prefix: str, seconds: int) -> dict[str, object]:
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(WRK_SCRIPT),
           url, "--", prefix]
    with trio.fail_after(seconds + WRK_TIMEOUT_MARGIN):
        proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    if proc.returncode != 0:
        raise LoadTestError(f"wrk exited with {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return parse_wrk(proc.stdout.decode(errors="replace"))


async def _wait_final(endpoint: Endpoint, before: GatewayCounts, timeout: float) -> None:
    """Until every message accepted since ``before`` is final (the warm-up's, before measuring)."""
    with trio.move_on_after(timeout):
        while True:
            delta = (await scrape(endpoint)).minus(before)
            if delta.final >= delta.accepted:
                return
            await trio.sleep(WAIT_POLL)


async def run_bench(*, duration: int, dlr: bool, dlr_mask: int = DLR_MASK_ALL, wait: float = DEFAULT_WAIT,
                    database_url: str = "", workers: int = 1, out=sys.stderr) -> dict[str, object]:
    counter = DlrCounter() if dlr else None

    async def receive(request: Request) -> Response:
        if counter is None or request.path != DLR_PATH:
            return Response(status=404, body=b"not found", content_type="text/plain")
        counter.record(request.query, trio.current_time())
        return Response(status=200, body=b"ok", content_type="text/plain")

    print("starting the gateway and the ISMG simulator on 127.0.0.1 ...", file=out, flush=True)
    async with open_stack(StackOptions(database_url=database_url, workers=workers)) as stack, trio.open_nursery() as nursery:
        endpoint = Endpoint(stack.http, stack.api_key)
        receiver_port = await nursery.start(functools.partial(serve_http, receive, "127.0.0.1", 0))
        warm = await scrape(endpoint)
        await _run_wrk(stack.http, sendsms_prefix(ACCOUNT, stack.api_key), WARMUP_SECONDS)
        await _wait_final(endpoint, warm, wait)
        dlr_url = dlr_url_template(f"http://127.0.0.1:{receiver_port}") if dlr else None
        prefix = sendsms_prefix(ACCOUNT, stack.api_key, dlr_url=dlr_url, dlr_mask=dlr_mask)
        before = await scrape(endpoint)
        cpu_before = process_cpu_seconds(stack.gateway_pid), process_cpu_seconds(stack.simulator_pid)
        print(f"wrk: {CONNECTIONS} connections for {duration} s{' with dlr-url' if dlr else ''} ...", file=out,
              flush=True)
        wrk = await _run_wrk(stack.http, prefix, duration)
        wrk_end = trio.current_time()
        # Requests wrk cut off at its end may still commit: the gateway's count is read again
        # while waiting, and the last reading is the one reported.
        accepted = int((await scrape(endpoint)).minus(before).accepted)
        waited = 0.0
        if counter is not None:
            with trio.move_on_after(wait):
                while len(counter.finished) < accepted or trio.current_time() - wrk_end < SETTLE:
                    await trio.sleep(WAIT_POLL)
                    accepted = int((await scrape(endpoint)).minus(before).accepted)
            waited = trio.current_time() - wrk_end
        else:
            await trio.sleep(SETTLE)
            await _wait_final(endpoint, before, wait)
        accepted = int((await scrape(endpoint)).minus(before).accepted)
        cpu_after = process_cpu_seconds(stack.gateway_pid), process_cpu_seconds(stack.simulator_pid)
        cpu = [a - b if a is not None and b is not None else None for a, b in zip(cpu_after, cpu_before)]
        nursery.cancel_scope.cancel()
    return summarize(wrk=wrk, accepted=accepted, dlr=counter, wrk_end=wrk_end, gateway_cpu_s=cpu[0],
                     simulator_cpu_s=cpu[1], dlr_mask=dlr_mask, waited_s=waited)


def render(summary: dict[str, object]) -> str:
    lat = summary["latency_ms"]
    lines = [f"accepted      {summary['accepted']:,} in {summary['seconds']} s = {summary['accepted_per_s']:,}/s"
             f" (non-2xx {summary['non_2xx']}, socket errors: {summary['socket_errors'] or 'none'})",
             "latency       " + "  ".join(f"{k} {v} ms" for k, v in lat.items()),
             f"gateway CPU   {summary['gateway_cpu_ms_per_message']} ms per message"]
    dlr = summary.get("dlr")
    if dlr:
        lines += [f"callbacks     {dlr['callbacks']:,} (by %d type {dlr['by_type']}) = {dlr['callbacks_per_s']:,}/s",
                  f"final         {dlr['final_received']:,} of {summary['accepted']:,} ({dlr['final_per_s']:,}/s),"
                  f" missing {dlr['final_missing']}, duplicates {dlr['duplicates']},"
                  f" last {dlr['last_callback_after_wrk_s']} s after wrk"]
    return "\n".join(lines)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds of wrk (default 10)")
    ap.add_argument("--dlr", action="store_true", help="ask for delivery reports to a local dlr-url and count them")
    ap.add_argument("--dlr-mask", type=int, default=DLR_MASK_ALL,
                    help="dlr-mask with --dlr (default 31: every report; 63 as Kannel apps often send)")
    ap.add_argument("--wait", type=float, default=DEFAULT_WAIT,
                    help=f"seconds to wait for the last callbacks after wrk (default {DEFAULT_WAIT:g})")
    ap.add_argument("--database-url", default="", help="an existing PostgreSQL (default: an embedded one)")
    ap.add_argument("--workers", type=int, default=1, help="the gateway's [http] workers (default 1)")
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    if not 1 <= args.duration <= 600:
        print("--duration must be within 1..600 seconds", file=sys.stderr)
        return 2
    if not 1 <= args.workers <= 64:
        print("--workers must be within 1..64", file=sys.stderr)
        return 2
    if not 1 <= args.dlr_mask <= MAX_DLR_MASK:
        print(f"--dlr-mask must be within 1..{MAX_DLR_MASK}", file=sys.stderr)
        return 2
    failures: list[str] = []
    summary: dict[str, object] = {}
    try:
        summary = trio.run(functools.partial(run_bench, duration=args.duration, dlr=args.dlr,
                                             dlr_mask=args.dlr_mask, wait=args.wait,
                                             database_url=args.database_url, workers=args.workers))
    except* LoadTestError as group:  # raised inside the receiver's nursery, so it comes grouped
        failures = [str(e) for e in _leaves(group)]
    if failures:
        print("kannel_bench: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(render(summary))
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
