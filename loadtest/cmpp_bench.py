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
import os
import signal
import socket
import subprocess
import sys
import time

import trio

from gateway.cmpp import (CmppLink, CmppLinkConfig, LinkUp, StatusReport, SubmitAcked, SubmitRequest,
                          decode_status_report)
from gateway.cmpp.pdus import MsgFmt
from loadtest.procstat import cpu_times

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

        def handle(ev: object) -> None:
            nonlocal reports, acked, up
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

        async def consume() -> None:
            # Everything already queued in one step: one scheduler pass per batch, not per event.
            async for ev in receive:
                handle(ev)
                while True:
                    try:
                        handle(receive.receive_nowait())
                    except trio.WouldBlock:
                        break

        nursery.start_soon(consume)
        with trio.fail_after(30):
            await all_up.wait()
        content = "您的验证码是123456，五分钟内有效。".encode("utf-16-be")
        started = time.perf_counter()
        cpu0 = (cpu_times(os.getpid()), cpu_times(sim.pid))

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
        cpu1 = (cpu_times(os.getpid()), cpu_times(sim.pid))
        result = {
            "links": args.links, "window": args.window, "count": args.count,
            "submits_per_s": round(args.count / elapsed),
            "submit_resp_ms": {p: round(_percentile(latencies, float(p[1:])) * 1000, 2)
                               for p in ("p50", "p90", "p99")} | {"max": round(max(latencies) * 1000, 2)},
            "reports_received": reports,
            # CPU per message from the first SUBMIT to the last status report, each process
            # (this one: the links; the other: the simulator).
            "cpu_us_per_msg": {
                "link": round((sum(cpu1[0]) - sum(cpu0[0])) / args.count * 1e6, 1),
                "simulator": round((sum(cpu1[1]) - sum(cpu0[1])) / args.count * 1e6, 1),
                # of which in the kernel (system time): socket calls and epoll
                "link_sys": round((cpu1[0][1] - cpu0[0][1]) / args.count * 1e6, 1),
                "simulator_sys": round((cpu1[1][1] - cpu0[1][1]) / args.count * 1e6, 1),
            },
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


def core_bench(count: int, window: int) -> dict:
    """The sans-IO work alone, both roles in this process: SUBMIT → SUBMIT_RESP → status report
    → DELIVER_RESP through two CmppConnections, a window at a time, as the link and the
    simulator drive them. Returns µs of CPU per message for each side."""
    from gateway.cmpp import (CmppConnection, Deliver, DeliverResp, RequestReceived,
                              ResponseReceived, Role, StatusReportBody, Submit, SubmitResp,
                              encode_status_report)
    from gateway.cmpp.client import CmppLink, CmppLinkConfig
    now = 0.0
    client = CmppConnection(Role.CLIENT, sp_id=SP_ID, secret=SECRET, window=window)
    server = CmppConnection(Role.SERVER, sp_id=SP_ID, secret=SECRET, window=window)
    server.receive_data(client.login(timestamp=1010101, now=now), now=now)
    server.next_event()
    client.receive_data(server.answer_login(now=now), now=now)
    client.next_event()
    link = CmppLink(CmppLinkConfig(sp_id=SP_ID, secret=SECRET), trio.open_memory_channel(1)[0])
    content = "您的验证码是123456，五分钟内有效。".encode("utf-16-be")
    requests = [SubmitRequest(ref=i, dest=f"138{i:08d}", src_id="10658888", content=content)
                for i in range(count)]
    sp = ismg = 0.0
    msg_id = 0
    for start in range(0, count, window):
        t0 = time.process_time()
        out = b"".join(client.send(link._to_submit(r), now=now, context=r)
                       for r in requests[start:start + window])
        t1 = time.process_time()
        server.receive_data(out, now=now)
        replies, reports = [], []
        while (ev := server.next_event()) is not None:
            if isinstance(ev, RequestReceived) and isinstance(ev.pdu, Submit):
                msg_id += 1
                replies.append(server.respond(ev.sequence_id, SubmitResp(msg_id=msg_id, result=0), now=now))
                body = StatusReportBody(msg_id=msg_id, stat="DELIVRD", submit_time="2611231400",
                                        done_time="2611231400", dest_terminal_id=ev.pdu.dest_terminal_ids[0])
                reports.append(Deliver(msg_id=msg_id + 10**9, dest_id=ev.pdu.src_id, src_terminal_id=ev.pdu.dest_terminal_ids[0],
                                       registered_delivery=1, msg_content=encode_status_report(body, server.version)))
        out = b"".join(replies) + b"".join(server.send(d, now=now, context=d) for d in reports)
        t2 = time.process_time()
        client.receive_data(out, now=now)
        acks = []
        while (ev := client.next_event()) is not None:
            if isinstance(ev, RequestReceived):
                decode_status_report(ev.pdu.msg_content)
                acks.append(client.respond(ev.sequence_id, DeliverResp(msg_id=ev.pdu.msg_id), now=now))
            elif not isinstance(ev, ResponseReceived):
                raise RuntimeError(f"unexpected {ev!r}")
        out = b"".join(acks)
        t3 = time.process_time()
        server.receive_data(out, now=now)
        while (ev := server.next_event()) is not None:
            if not isinstance(ev, ResponseReceived):
                raise RuntimeError(f"unexpected {ev!r}")
        t4 = time.process_time()
        sp += (t1 - t0) + (t3 - t2)
        ismg += (t2 - t1) + (t4 - t3)
    return {"core_us_per_msg": {"link": round(sp / count * 1e6, 1), "simulator": round(ismg / count * 1e6, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--links", type=int, default=1)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--rate", type=float, default=0.0, help="SUBMITs per second in all (0: as fast as possible)")
    ap.add_argument("--dlr-delay-ms", type=float, default=0.0)
    ap.add_argument("--no-reconnect", action="store_true")
    ap.add_argument("--core", action="store_true",
                    help="the sans-IO codec and state machines alone, both roles in one process")
    args = ap.parse_args()
    if args.core:
        print(json.dumps(core_bench(args.count, args.window), indent=2))
        return
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
