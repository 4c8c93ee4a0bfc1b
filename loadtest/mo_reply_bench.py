"""Benchmark of the SMS command path: a consumer's MO to the CRM's reply being submitted.

Runs in one process: an embedded PostgreSQL in a temporary directory, the ISMG simulator, and
the gateway with one CMPP 3.0 link and crm_lite on, with a merchant at 10658888001. Handsets
text ``--command`` (``2``: points, answered with an invitation to join for a non-member; ``1``:
join, answered with a welcome) to the merchant open-loop at ``--rate`` per second for
``--duration`` seconds, each from its own number. Each MO's latency runs from the moment the
simulator is told to send it to the ``submitted`` history row of the reply (the reply has been
taken by the ISMG): MO over CMPP, stored, dispatched (claimed by lease), the command handled,
the reply accepted durably, claimed, submitted and acknowledged. ``cpu_us_per_mo`` is the CPU
(utime + stime, from /proc) spent from the first MO to the last reply, per MO, by this process
(the gateway and the simulator) and by the embedded PostgreSQL's processes.

    python -m loadtest.mo_reply_bench --rate 500 --duration 10
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import tempfile
import time

import trio

from gateway.app import serve_gateway
from gateway.cmpp import IsmgSimulator
from gateway.config import CmppConfig, DispatcherConfig, HttpConfig, MerchantConfig, default_config
from loadtest.procstat import children, cmdline, cpu_seconds

SP_ID, SECRET = "901234", "bench"
SERVICE = "10658888001"
FIRST_PHONE = 13_700_000_000


def _database_pids(data_dir: str) -> list[int]:
    """The embedded PostgreSQL server started in ``data_dir`` and its children (backends)."""
    needle = data_dir.encode()
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if name.isdigit() and needle in cmdline(int(name)):
            return [int(name), *children(int(name))]
    return []


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def _run(args: argparse.Namespace, data_dir: str) -> dict:
    sim = IsmgSimulator(sp_id=SP_ID, secret=SECRET, dlr_delay=0.0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve, "127.0.0.1", 0)
        config = default_config(
            data_dir=data_dir, http=HttpConfig(listen="127.0.0.1:0"),
            cmpp=[CmppConfig(name="cmcc", port=port, sp_id=SP_ID, secret=SECRET, service_number="10658888",
                             rate=5000.0, window=32, operators=["cmcc", "cucc", "ctcc"])],
            merchants=[MerchantConfig(name="shop", account="shop", service_number=SERVICE, signature="【商场】")],
            dispatcher=DispatcherConfig(quiet_hours=""))
        running = await nursery.start(functools.partial(serve_gateway, config))
        with trio.fail_after(30):
            await sim.wait_logged_in()
        store = running.store
        count = int(args.rate * args.duration)
        sent_at: dict[str, float] = {}
        interval = 1.0 / args.rate
        db_pids = _database_pids(data_dir)
        cpu0 = cpu_seconds(os.getpid()), sum(cpu_seconds(p) for p in db_pids)
        t0 = trio.current_time()
        async with trio.open_nursery() as senders:
            for i in range(count):
                await trio.sleep_until(t0 + i * interval)
                phone = str(FIRST_PHONE + i)
                sent_at[phone] = time.time()
                senders.start_soon(sim.inject_mo, phone, SERVICE, args.command)
        offered_s = trio.current_time() - t0
        with trio.fail_after(args.drain_timeout):
            while True:
                done = await store.fetchval(
                    "SELECT count(DISTINCT m.dest) FROM messages m JOIN message_events e"
                    " ON e.message_id = m.id AND e.status = 'submitted' WHERE m.client_ref LIKE 'mo-%'")
                if done >= count:
                    break
                await trio.sleep(0.2)
        drained_s = trio.current_time() - t0
        cpu = cpu_seconds(os.getpid()) - cpu0[0], sum(cpu_seconds(p) for p in db_pids) - cpu0[1]
        rows = await store.fetch(
            "SELECT m.dest, extract(epoch FROM min(e.at))::float8 AS at FROM messages m JOIN message_events e"
            " ON e.message_id = m.id AND e.status = 'submitted' WHERE m.client_ref LIKE 'mo-%' GROUP BY m.dest")
        latencies = [r["at"] - sent_at[r["dest"]] for r in rows if r["dest"] in sent_at]
        replies = await store.fetchval("SELECT count(*) FROM messages WHERE client_ref LIKE 'mo-%'")
        mos = await store.fetchval("SELECT count(*) FROM inbound_messages")
        nursery.cancel_scope.cancel()
    return {
        "command": args.command, "rate": args.rate, "mos": count, "mos_stored": mos, "replies": replies,
        "offered_per_s": round(count / offered_s, 1),
        "answered_per_s": round(count / drained_s, 1),
        # CPU from /proc over the run: this process (gateway and simulator) and the database's
        "cpu_us_per_mo": {"gateway": round(cpu[0] / count * 1e6), "database": round(cpu[1] / count * 1e6)},
        "mo_to_reply_submitted_ms": {p: round(_percentile(latencies, float(p[1:])) * 1000, 1)
                                     for p in ("p50", "p90", "p99")} | {"max": round(max(latencies) * 1000, 1)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="MOs per second (open loop)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    ap.add_argument("--command", default="2", help="what each handset texts (default 2: points)")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="smsgw-mo-bench-") as tmp:
        print(json.dumps(trio.run(_run, args, tmp), indent=2))


if __name__ == "__main__":
    main()
