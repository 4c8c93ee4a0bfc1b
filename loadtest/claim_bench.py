"""The outbound queue's claim with a deep queue: its plan, and how fast it drains the queue.

Starts an embedded PostgreSQL in a temporary directory (or uses ``--database-url``), stores
``--history`` messages that are already done (not in the queue), ``--queued`` messages waiting
in it (one in ``--urgent-every`` at priority 2, the rest at 0, a fifth of them marketing),
and lets another node hold ``--leased`` of them by lease (in flight, as a busy dispatcher
keeps them); ``--waiting`` of the free ones, the oldest, wait for a later ``not_before`` (retry
backoffs, recipients' windows), at the head of the queue where they would hurt most. Then:

1. ``EXPLAIN (ANALYZE, BUFFERS)`` of one claim of ``--batch`` rows, as the dispatcher runs it,
   with and without quiet hours (inside a transaction that is rolled back);
2. drains the queue the way a dispatcher does, a claim of ``--batch`` at a time, each claimed
   batch then removed from the queue (as its submission would), and prints the claims a second
   and the milliseconds a claim took, by queue depth.

    python -m loadtest.claim_bench --queued 25000 --leased 5000
    python -m loadtest.claim_bench --queued 25000 --leased 5000 --waiting 15000

Prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time

import trio
import trio_asyncio

from gateway.pgserver import EmbeddedPostgres
from gateway.store import AcceptRequest, NewMessage, Store, claim_statement, open_store

REQUEST_SIZE = 1000
"""Recipients per stored request while filling the queue."""


def _requests(account_id: int, count: int, start: int, urgent_every: int) -> list[AcceptRequest]:
    out = []
    for first in range(start, start + count, REQUEST_SIZE):
        n = min(REQUEST_SIZE, start + count - first)
        msgs = tuple(NewMessage(dest=f"138{(first + i) % 10**8:08d}", operator="cmcc", body=f"code {first + i}",
                                encoding="gsm7", parts=1) for i in range(n))
        # Requests are single-priority: a whole request at 2 every ``urgent_every`` messages.
        urgent = urgent_every > 0 and (first // REQUEST_SIZE) % max(1, urgent_every // REQUEST_SIZE) == 0
        marketing = (first // REQUEST_SIZE) % 5 == 4
        out.append(AcceptRequest(account_id=account_id, messages=msgs, priority=2 if urgent else 0,
                                 msg_class="marketing" if marketing else "transactional"))
    return out


async def _fill(store: Store, args: argparse.Namespace) -> None:
    account = await store.ensure_account("claim-bench")
    if args.history:
        for req in _requests(account.id, args.history, 0, 0):
            await store.accept([req])
        await store.execute("UPDATE messages SET status = 'delivered'")
        await store.execute("DELETE FROM outbound_queue")
    for req in _requests(account.id, args.queued, args.history, args.urgent_every):
        await store.accept([req])
    await store.execute("UPDATE messages SET status = 'queued' WHERE status = 'accepted'")
    if args.leased:
        # Another node's in-flight work: claimed by lease, not yet submitted.
        await store.claim_routable("other-node", args.leased, 3600.0)
    if args.waiting:
        await store.execute(
            "UPDATE outbound_queue SET not_before = now() + interval '1 hour' WHERE message_id IN"
            " (SELECT message_id FROM outbound_queue WHERE leased_by IS NULL ORDER BY message_id LIMIT $1)",
            args.waiting)
    await store.execute("VACUUM ANALYZE outbound_queue")
    await store.execute("VACUUM ANALYZE messages")


class _Rollback(Exception):
    pass


async def _explain_rolled_back(store: Store, batch: int, marketing: bool) -> str:
    lines: list[str] = []
    try:
        async with store.transaction() as tx:
            lines = [r[0] for r in await tx.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + claim_statement(marketing),
                                                  batch, "bench-node", 60.0)]
            raise _Rollback()
    except _Rollback:
        pass
    return "\n".join(lines)


async def _drain(store: Store, batch: int) -> list[dict[str, float]]:
    """Claim and remove a batch at a time until nothing is claimable; timings by depth band."""
    bands: dict[int, list[float]] = {}
    while True:
        depth = await store.fetchval("SELECT count(*) FROM outbound_queue WHERE leased_by IS DISTINCT FROM 'other-node'")
        t = time.perf_counter()
        claimed = await store.claim_routable("bench-node", batch, 60.0)
        took = time.perf_counter() - t
        if not claimed:
            break
        bands.setdefault(depth // 5000 * 5000, []).append(took)
        await store.execute("DELETE FROM outbound_queue WHERE message_id = ANY($1::bigint[])",
                            [m.id for m, _ in claimed])
    out = []
    for band in sorted(bands, reverse=True):
        times = sorted(bands[band])
        out.append({"depth_from": band, "claims": len(times), "mean_ms": round(1000 * sum(times) / len(times), 2),
                    "p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 2),
                    "claims_per_s": round(len(times) / sum(times), 1)})
    return out


async def _main(args: argparse.Namespace, url: str) -> dict[str, object]:
    async with trio_asyncio.open_loop():
        async with open_store(url, pool_size=2) as store:
            await store.migrate()
            await _fill(store, args)
            plans = {"claim": await _explain_rolled_back(store, args.batch, True),
                     "claim_quiet_hours": await _explain_rolled_back(store, args.batch, False)}
            t = time.perf_counter()
            drain = await _drain(store, args.batch)
            return {"queued": args.queued, "leased": args.leased, "waiting": args.waiting,
                    "history": args.history, "batch": args.batch,
                    "plans": plans, "drain": drain, "drain_seconds": round(time.perf_counter() - t, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.claim_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=25_000, help="messages waiting in the queue")
    parser.add_argument("--leased", type=int, default=5_000, help="of them, held by another node's lease")
    parser.add_argument("--waiting", type=int, default=0,
                        help="of the free ones, the oldest wait for a later not_before (an hour on)")
    parser.add_argument("--history", type=int, default=50_000, help="messages already done (not queued)")
    parser.add_argument("--urgent-every", type=int, default=10_000,
                        help="one request of 1,000 at priority 2 every this many messages (0: none)")
    parser.add_argument("--batch", type=int, default=200, help="messages a claim asks for")
    parser.add_argument("--database-url", default="", help="an existing, empty database (default: embedded)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    root = None
    server = None
    url = args.database_url
    if not url:
        root = tempfile.mkdtemp(prefix="smsgw-claim-bench-")
        server = EmbeddedPostgres(root)
        url = server.start_blocking()
    try:
        result = trio.run(_main, args, url)
    finally:
        if server is not None:
            server.stop_blocking()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    for name, text in result["plans"].items():  # type: ignore[union-attr]
        print(f"-- {name}\n{text}\n")
    print(f"{'depth from':>10} {'claims':>7} {'mean ms':>8} {'p90 ms':>7} {'claims/s':>9}")
    for row in result["drain"]:  # type: ignore[union-attr]
        print(f"{row['depth_from']:>10} {row['claims']:>7} {row['mean_ms']:>8} {row['p90_ms']:>7} {row['claims_per_s']:>9}")
    print(f"drained {result['queued'] - result['leased']} messages in {result['drain_seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
