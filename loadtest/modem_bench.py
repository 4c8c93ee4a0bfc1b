"""Benchmark of the modem pool: utilization of the SIMs, CPU per message, failover time.

Starts ``smsgw sim modems --count N --send-delay S --network-listen 127.0.0.1:0`` in a
separate process (N emulated modems on pseudo-terminals, each send taking S seconds of
network time, as on real SIMs), drives them with a :class:`ModemPool` in this process kept
saturated by one feeder per operator, and measures over ``--duration`` seconds, after one rate
period of warm-up:

* parts sent, against what the SIMs allow: ``N * duration / max(60 / rate, send time)``;
* CPU seconds per part, of this process (the pool, the driver, the parsers) and of the
  emulator process;
* then ``--failovers`` times: a modem with a send in flight is unplugged through the handset
  network, and the time is taken until the pool notices (``ModemDown``) and until the lost
  send is taken by the network through another modem (``PartSent``, so one send time
  included).

Bounded in time; 127.0.0.1 and ptys only.

    python -m loadtest.modem_bench --modems 64 --duration 30 --send-delay 3 --rate 12
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import time

import trio

from gateway.modem_pool.pdu import Alphabet
from gateway.modem_pool.pool import ModemDown, ModemPool, ModemSpec, ModemUp, PartSent, SendFailed, SendRequest
from gateway.sim_modems import open_handset_client
from loadtest.procstat import cpu_seconds

HANDSETS = {"cucc": "18600000001", "ctcc": "18900000001"}
START_TIMEOUT = 120.0


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            return proc.stdout.readline().decode()
        if proc.poll() is not None:
            raise SystemExit(f"sim modems exited with {proc.returncode}")
    raise SystemExit("sim modems did not start in time")


def _start_sims(count: int, send_delay: float) -> subprocess.Popen:
    # Unbuffered, so that select() sees every line the simulator prints.
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "sim", "modems", "--count", str(count),
         "--send-delay", str(send_delay), "--network-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, bufsize=0)


def _sims_ready(proc: subprocess.Popen, count: int) -> tuple[list[tuple[str, str]], tuple[str, int]]:
    modems = []
    for _ in range(count):
        device, number = _read_line(proc, 60).split()
        modems.append((device, number))
    host, port = _read_line(proc, 60).split()[-1].rsplit(":", 1)
    return modems, (host, int(port))


class _Watch:
    """Counts parts sent and lets the failover probe wait for one event."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []
        self.failed = 0
        self.wanted: dict[tuple[type, object], tuple[trio.Event, list[float]]] = {}

    def want(self, kind: type, key: object) -> tuple[trio.Event, list[float]]:
        entry = (trio.Event(), [])
        self.wanted[(kind, key)] = entry
        return entry

    def _hit(self, kind: type, key: object) -> None:
        entry = self.wanted.pop((kind, key), None)
        if entry is not None:
            entry[1].append(trio.current_time())
            entry[0].set()

    async def consume(self, pool: ModemPool) -> None:
        async for event in pool.events:
            if isinstance(event, PartSent):
                self.sent.append((trio.current_time(), event.modem))
                self._hit(PartSent, event.ref)
            elif isinstance(event, ModemDown):
                self._hit(ModemDown, event.modem)
            elif isinstance(event, ModemUp):
                self._hit(ModemUp, event.modem)
            elif isinstance(event, SendFailed):
                self.failed += 1


async def _feed(pool: ModemPool, operator: str, refs) -> None:
    while True:
        ref = next(refs)
        await pool.send(SendRequest(ref=ref, destination=HANDSETS[operator], operator=operator,
                                    parts=(f"bench {ref}",), alphabet=Alphabet.GSM7))


async def _run(args: argparse.Namespace, sims: subprocess.Popen, modems: list[tuple[str, str]],
               network: tuple[str, int]) -> dict:
    specs = [ModemSpec(name=f"m{i + 1}", device=device, operators=frozenset({"cucc" if number.startswith("186") else "ctcc"}),
                       rate_per_minute=args.rate, daily_quota=1_000_000)
             for i, (device, number) in enumerate(modems)]
    numbers = {f"m{i + 1}": number for i, (_, number) in enumerate(modems)}
    pool = ModemPool(specs)
    watch = _Watch()
    refs = iter(range(1, 10**9))
    async with trio.open_nursery() as nursery:
        ups = [watch.want(ModemUp, s.name)[0] for s in specs]
        nursery.start_soon(watch.consume, pool)
        await nursery.start(pool.run)
        with trio.fail_after(START_TIMEOUT):
            for up in ups:
                await up.wait()
        for operator in sorted({op for s in specs for op in s.operators}):
            nursery.start_soon(_feed, pool, operator, refs)

        period = 60.0 / args.rate
        await trio.sleep(period)  # warm-up: the first saved-up token of every SIM is spent
        start, cpu0, sim_cpu0 = trio.current_time(), time.process_time(), cpu_seconds(sims.pid)
        first = len(watch.sent)
        await trio.sleep(args.duration)
        sent = len(watch.sent) - first
        cpu, sim_cpu = time.process_time() - cpu0, cpu_seconds(sims.pid) - sim_cpu0
        elapsed = trio.current_time() - start

        failovers = []
        async with open_handset_client(*network) as client:
            for _ in range(args.failovers):
                with trio.move_on_after(2 * period):
                    while len(busy := [s for s in pool.statistics()
                                       if s.state == "up" and s.in_flight is not None]) < 2:
                        await trio.sleep(0.05)
                if len(busy) < 2:
                    break
                victim = busy[0]
                down, down_at = watch.want(ModemDown, victim.name)
                taken, taken_at = watch.want(PartSent, victim.in_flight)
                t0 = trio.current_time()
                await client.unplug(numbers[victim.name])
                with trio.fail_after(60):
                    await down.wait()
                    await taken.wait()
                failovers.append({"modem": victim.name, "noticed_s": round(down_at[0] - t0, 3),
                                  "resent_s": round(taken_at[0] - t0, 3)})
        nursery.cancel_scope.cancel()

    send_time = args.send_delay
    allowed = len(specs) * elapsed / max(period, send_time)
    return {
        "modems": len(specs), "rate_per_minute": args.rate, "send_delay_s": args.send_delay,
        "window_s": round(elapsed, 2), "sent": sent, "allowed": round(allowed, 1),
        "utilization": round(sent / allowed, 3) if allowed else None,
        "send_failures": watch.failed,
        "cpu_ms_per_message": round(1000 * cpu / sent, 3) if sent else None,
        "emulator_cpu_ms_per_message": round(1000 * sim_cpu / sent, 3) if sent else None,
        "failovers": failovers,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modems", type=int, default=64, help="emulated modems (default 64)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    p.add_argument("--send-delay", type=float, default=3.0, help="network time of each send in s (default 3)")
    p.add_argument("--rate", type=float, default=12.0, help="sends per minute per SIM (default 12)")
    p.add_argument("--failovers", type=int, default=3, help="unplugs to time after the window (default 3)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if not 1 <= args.modems <= 256 or args.duration <= 0 or args.rate <= 0 or args.send_delay < 0:
        p.error("--modems 1-256, --duration and --rate positive, --send-delay not negative")
    sims = _start_sims(args.modems, args.send_delay)
    try:
        modems, network = _sims_ready(sims, args.modems)
        result = trio.run(_run, args, sims, modems, network)
    finally:
        sims.terminate()
        try:
            sims.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sims.kill()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
