"""Does a CMPP link hold its configured rate under overload? Counted at the simulator side.

The issue's guarantee: a configured rate is achieved within ±5% over a minute under overload,
and never exceeded over any one-second window by more than one bucket's burst. This starts
the ISMG simulator in a separate process (which samples its SUBMIT count every
``SAMPLE_INTERVAL`` seconds), drives one gateway CMPP channel configured at ``--rate``
messages/second with ``--overload`` times that offered, for ``--duration`` seconds, and reports:
the SUBMITs the simulator saw in the whole run and the rate over the minute, the largest count
in any one-second window (sliding, at the sampling resolution) against rate + burst, and
the achieved rate after the initial burst.

    python -m loadtest.rate_bench                      # 200/s, 5x overload, 60 s
    python -m loadtest.rate_bench --duration 10 --json rate.json
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import trio

SAMPLE_INTERVAL = 0.005
"""Seconds between samples of the simulator's SUBMIT count."""
SP_ID, SECRET = "901234", "bench"


def max_window(samples: Sequence[tuple[float, int]], span: float = 1.0) -> int:
    """The largest increase of a cumulative count over any ``span`` seconds, from samples
    (time, count) in time order: for each sample, the count at the last sample before
    ``t + span`` minus the count at the sample before ``t`` (so at most one sampling interval
    is added at each end)."""
    times = [t for t, _ in samples]
    best = 0
    for i, (t, _) in enumerate(samples):
        j = bisect.bisect_left(times, t + span) - 1
        base = samples[i - 1][1] if i > 0 else 0
        best = max(best, samples[j][1] - base)
    return best


def count_between(samples: Sequence[tuple[float, int]], start: float, end: float) -> int:
    """SUBMITs counted from the last sample at or before ``start`` to the last at or before ``end``."""
    times = [t for t, _ in samples]

    def at(when: float) -> int:
        i = bisect.bisect_right(times, when) - 1
        return samples[i][1] if i >= 0 else 0

    return at(end) - at(start)


def analyse(samples: Sequence[tuple[float, int]], *, rate: float, burst: float, start: float,
            duration: float) -> dict:
    """The figures the guarantee speaks of; times relative to the first submit offered."""
    total = count_between(samples, start - 1.0, start + duration)
    steady_from = start + burst / rate + 1.0  # after the initial burst has drained
    steady = count_between(samples, steady_from, start + duration) / max(1e-9, start + duration - steady_from)
    return {
        "configured_rate": rate,
        "burst": burst,
        "duration_s": duration,
        "submits": total,
        "rate_over_run": total / duration,
        "rate_over_run_error_pct": 100.0 * (total / duration - rate) / rate,
        "steady_rate": steady,
        "steady_rate_error_pct": 100.0 * (steady - rate) / rate,
        "max_1s_window": max_window([s for s in samples if start - 1.0 <= s[0] <= start + duration + 1.0]),
        "max_1s_allowed": rate + burst,
    }


# --- the simulator process ------------------------------------------------------------------------


async def _serve_sim(port_out, seconds: float) -> None:
    from gateway.cmpp import IsmgSimulator

    sim = IsmgSimulator(sp_id=SP_ID, secret=SECRET, dlr_delay=0.05)
    samples: list[tuple[float, int]] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        print(json.dumps({"port": port}), file=port_out, flush=True)
        with trio.move_on_after(seconds):
            while True:
                samples.append((time.time(), sim.submits))
                await trio.sleep(SAMPLE_INTERVAL)
        nursery.cancel_scope.cancel()
    print(json.dumps({"samples": samples}), file=port_out, flush=True)


# --- the gateway side -----------------------------------------------------------------------------


async def _drive(port: int, rate: float, overload: float, duration: float) -> tuple[float, dict]:
    from gateway.channel import OutboundMessage
    from gateway.cmpp_channel import CmppChannel
    from gateway.config import CmppConfig

    channel = CmppChannel(CmppConfig(name="bench", port=port, sp_id=SP_ID, secret=SECRET, service_number="10658888",
                                     window=32, rate=rate, operators=["cmcc"]))
    send, receive = trio.open_memory_channel(10_000)
    expires = datetime.now(timezone.utc) + timedelta(days=1)
    offered = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run, send)

        async def drain() -> None:
            async for _ in receive:
                pass

        nursery.start_soon(drain)
        with trio.fail_after(10):
            while not channel.up:
                await trio.sleep(0.01)
        start = time.time()
        tick = 0.01
        per_tick = rate * overload * tick
        owed = 0.0
        with trio.move_on_after(duration):
            next_at = trio.current_time()
            while True:
                owed += per_tick
                while owed >= 1:
                    owed -= 1
                    offered += 1
                    await channel.submit(OutboundMessage(
                        id=offered, account_id=1, dest="13800138000", operator="cmcc", encoding="gsm7",
                        parts=("rate bench",), priority=0, msg_class="transactional", sender="",
                        expires_at=expires))
                next_at += tick
                await trio.sleep_until(next_at)
        stats = channel.statistics()
        nursery.cancel_scope.cancel()
    return start, {"offered": offered, "link": stats}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="the link's configured rate (messages/second)")
    p.add_argument("--overload", type=float, default=5.0, help="offered load as a multiple of the rate")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--serve-sim", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_sim is not None:
        trio.run(_serve_sim, sys.stdout, args.serve_sim)
        return 0
    sim = subprocess.Popen([sys.executable, "-m", "loadtest.rate_bench", "--serve-sim", str(args.duration + 8)],
                           stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(sim.stdout.readline())["port"]
        start, extra = trio.run(_drive, port, args.rate, args.overload, args.duration)
        samples = [tuple(s) for s in json.loads(sim.stdout.readline())["samples"]]
    finally:
        sim.kill()
        sim.wait()
    report = analyse(samples, rate=args.rate, burst=max(1.0, args.rate), start=start, duration=args.duration)
    # The offer is paced at rate × overload; what the link took is less (its queue full, the
    # offer waits): the gap is the overload.
    report.update(offered_rate=args.rate * args.overload, handed_to_link=extra["offered"])
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    ok = abs(report["rate_over_run_error_pct"]) <= 5.0 and report["max_1s_window"] <= report["max_1s_allowed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
