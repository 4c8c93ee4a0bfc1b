"""Lottery draw over many entries (docs/benchmarks.md, "CRM: lottery").

Starts an embedded PostgreSQL in a temporary directory, creates a merchant and a campaign with
three prizes (1 + 10 + 100 units), bulk-loads ``--entries`` entries (``unnest`` in chunks of
100,000, phones drawn from a pool so some repeat), then times, each once:

- the bulk load (entries/s);
- the draw: one transaction that locks the campaign, reads every entry, shuffles as far as it
  needs, writes the winner rows and marks the campaign drawn;
- the audit document (every entry, the seed, the draw order, the winners) and its JSON size;
- recomputing the winners from that JSON alone, as an outside auditor would.

Bounded: at most 5,000,000 entries; it stops by itself and removes its data directory.

    .venv/bin/python -m loadtest.lottery_bench --entries 1000000 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import msgspec
import trio
import trio_asyncio

from crm_lite import lottery as lt
from gateway.pgserver import EmbeddedPostgres
from gateway.store import open_store

MAX_ENTRIES = 5_000_000
PRIZES = (("一等奖", 1), ("二等奖", 10), ("三等奖", 100))


async def bench(entries: int, seed: int) -> dict:
    root = tempfile.mkdtemp(prefix="smsgw-lottery-bench-")
    server = EmbeddedPostgres(root)
    try:
        url = await server.start()
        async with trio_asyncio.open_loop():
            async with open_store(url, pool_size=2) as store:
                await store.migrate()
                account = await store.ensure_account("bench")
                merchant = await store.ensure_merchant("bench", account.id, "10658888009", "【压测】")
                now = datetime.now(timezone.utc)
                lot = await lt.create_lottery(store, merchant.id, name="百万抽奖", starts_at=now - timedelta(days=2),
                                              ends_at=now - timedelta(seconds=1), max_wins=1, prizes=PRIZES)
                rng = random.Random(seed)
                pool = [f"13{rng.randrange(10**9):09d}" for _ in range(max(1, entries * 4 // 5))]
                phones = [rng.choice(pool) for _ in range(entries)]

                t0 = time.perf_counter()
                await lt.import_entries(store, lot.id, phones, at=now - timedelta(days=1))
                load_s = time.perf_counter() - t0

                t0 = time.perf_counter()
                won = await lt.draw_lottery(store, merchant.id, lot.id)
                draw_s = time.perf_counter() - t0

                t0 = time.perf_counter()
                document = msgspec.json.encode(await lt.audit(store, merchant.id, lot.id))
                audit_s = time.perf_counter() - t0

                t0 = time.perf_counter()
                plain = json.loads(document)
                again = lt.recompute(plain["seed"], plain["entries"], plain["prizes"], max_wins=plain["max_wins"])
                recompute_s = time.perf_counter() - t0
                if [(w.prize_id, w.unit, w.entry_no) for w in again] != \
                        [(w.prize_id, w.unit, w.entry_no) for w in won]:
                    raise SystemExit("recomputed winners differ from the stored ones")
    finally:
        with trio.move_on_after(30) as scope:
            scope.shield = True
            await server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"entries": entries, "winners": len(won), "load_s": round(load_s, 2),
            "load_rows_per_s": round(entries / load_s), "draw_s": round(draw_s, 2),
            "audit_s": round(audit_s, 2), "audit_bytes": len(document), "recompute_s": round(recompute_s, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1, help="for the generated phones (not the draw's seed)")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args(argv)
    if not 1 <= args.entries <= MAX_ENTRIES:
        parser.error(f"--entries must be from 1 to {MAX_ENTRIES}")
    result = trio.run(bench, args.entries, args.seed)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
