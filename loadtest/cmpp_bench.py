"""Benchmark of CMPP links: SUBMIT → SUBMIT_RESP throughput and latency, with reports flowing.

Starts ``smsgw sim ismg`` in a separate process on 127.0.0.1, then drives ``--links`` CmppLink
connections (window ``--window``) in this process with ``--count`` SUBMITs as fast as the
windows allow (or at ``--rate`` per second in all), and measures the time from handing each
SUBMIT to the link until its SUBMIT_RESP (at saturation this includes the wait in the link's
input queue; ``--rate`` paces the SUBMITs open-loop, for latency below saturation), and the
status reports received.
Then, unless ``--no-reconnect``, it kills the simulator process (every connection drops),
starts it again, and measures the time until the link is up and a SUBMIT is acknowledged.

    python -m loadtest.cmpp_bench --links 1 --count 50000
    python -m loadtest.cmpp_bench --links 4 --count 100000
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import subprocess
import sys
import time

import trio

from gateway.cmpp import CmppLink, CmppLinkConfig, LinkUp, StatusReport, SubmitAcked, SubmitRequest
from gateway.cmpp.pdus import MsgFmt

SP_ID, SECRET = "901234", "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_sim(port: int, dlr_delay_ms: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "sim", "ismg", "--listen",
         f"127.0.0.1:{port}", "--sp-id", SP_ID, "--secret", SECRET, "--dlr-delay-ms", str(dlr_delay_ms)],
        stdout=subprocess.PIPE)
    proc.stdout.readline()  # "listening on ..."
    return proc


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def _run(args: argparse.Namespace, port: int, sim: subprocess.Popen) -> dict:
    send, receive = trio.open_memory_channel(100_000)
    links = [CmppLink(CmppLinkConfig(sp_id=SP_ID, secret=SECRET, port=port, name=f"bench#{i}",
                                     window=args.window, rate=1e9),
                      send.clone()) for i in range(args.links)]
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    reports = 0
    acked = 0
    up = 0
    all_up = trio.Event()
    done = trio.Event()
    result: dict = {}
    async with trio.open_nursery() as nursery:
        for link in links:
            await nursery.start(link.run)

        async def consume() -> None:
            nonlocal reports, acked, up
            async for ev in receive:
                if isinstance(ev, SubmitAcked):
                    latencies.append(time.perf_counter() - sent_at.pop(ev.ref))
                    acked += 1
                    if acked == args.count:
                        done.set()
                elif isinstance(ev, StatusReport):
                    reports += 1
                elif isinstance(ev, LinkUp):
                    up += 1
                    if up == len(links):
                        all_up.set()

        nursery.start_soon(consume)
        with trio.fail_after(30):
            await all_up.wait()
        content = "您的验证码是123456，五分钟内有效。".encode("utf-16-be")
        started = time.perf_counter()

        async def feed(link: CmppLink, refs: range) -> None:
            # Open loop at --rate: each SUBMIT leaves at its scheduled time, whatever came before.
            interval = len(links) / args.rate if args.rate else 0.0
            t0 = trio.current_time()
            for k, ref in enumerate(refs):
                if interval:
                    await trio.sleep_until(t0 + k * interval)
                sent_at[ref] = time.perf_counter()
                await link.submit(SubmitRequest(ref=ref, dest=f"138{ref % 100000000:08d}", src_id="10658888",
                                                content=content, msg_fmt=MsgFmt.UCS2))

        async with trio.open_nursery() as feeders:
            for i, link in enumerate(links):
                feeders.start_soon(feed, link, range(i, args.count, len(links)))
        with trio.fail_after(300):
            await done.wait()
        elapsed = time.perf_counter() - started
        with trio.move_on_after(5):  # let the last reports arrive
            while reports < args.count:
                await trio.sleep(0.05)
        result = {
            "links": args.links, "window": args.window, "count": args.count,
            "submits_per_s": round(args.count / elapsed),
            "submit_resp_ms": {p: round(_percentile(latencies, float(p[1:])) * 1000, 2)
                               for p in ("p50", "p90", "p99")} | {"max": round(max(latencies) * 1000, 2)},
            "reports_received": reports,
        }
        if not args.no_reconnect:
            # Drop every connection (kill the simulator), restart it, time until a SUBMIT is acked again.
            sim.send_signal(signal.SIGKILL)
            sim.wait()
            acked_before = acked
            t0 = time.perf_counter()
            new = _start_sim(port, args.dlr_delay_ms)
            result["_sim"] = new
            sent_at[10**9] = time.perf_counter()
            await links[0].submit(SubmitRequest(ref=10**9, dest="13800138000", src_id="10658888",
                                                content=b"reconnect", msg_fmt=MsgFmt.ASCII))
            with trio.fail_after(120):
                while acked == acked_before:
                    await trio.sleep(0.01)
            result["reconnect_and_resume_s"] = round(time.perf_counter() - t0, 2)
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--links", type=int, default=1)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--rate", type=float, default=0.0, help="SUBMITs per second in all (0: as fast as possible)")
    ap.add_argument("--dlr-delay-ms", type=float, default=0.0)
    ap.add_argument("--no-reconnect", action="store_true")
    args = ap.parse_args()
    port = _free_port()
    sim = _start_sim(port, args.dlr_delay_ms)
    try:
        result = trio.run(_run, args, port, sim)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait()
    new = result.pop("_sim", None)
    if new is not None:
        new.send_signal(signal.SIGTERM)
        new.wait()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
