"""Benchmark of the CRM's CSV member import (issue "crm_lite", Measure: CSV import of 100,000
members, rows/s).

Starts an embedded PostgreSQL in a temporary directory (or uses ``--database-url``), applies
the migrations, defines two custom attributes for a merchant, and times, in this process:

1. parsing and validating the generated file alone (no database);
2. importing it into an empty merchant (every row a new member);
3. importing it again (every row an update of an existing member, matched by phone);
4. exporting every member back to CSV.

The file is generated from a fixed seed, 1% of its rows deliberately bad (reported, skipped).
Bounded: at most 1,000,000 rows; the database is deleted afterwards.

    python -m loadtest.crm_bench [--rows 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio_asyncio

from crm_lite.csvio import RowError, decode_csv, export_members, import_members, parse_csv
from crm_lite.members import attribute_definitions, define_attribute
from crm_lite.profile import AttributeDef
from gateway.pgserver import EmbeddedPostgres
from gateway.store import open_store

MAX_ROWS = 1_000_000
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"


def make_csv(rows: int, seed: int = 20261123) -> bytes:
    rng = random.Random(seed)
    lines = ["\ufeffphone,name,gender,birthday,email,note,level,shoe_size"]
    for i in range(rows):
        phone = f"139{i:08d}"
        if i % 100 == 99:
            phone = phone[:7]  # a bad row
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN)
        gender = rng.choice(("男", "女", ""))
        birthday = f"{rng.randint(1950, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        email = f"user{i}@example.com" if i % 3 == 0 else ""
        level = rng.choice(("银卡", "金卡", "钻石卡", ""))
        size = str(rng.randint(34, 46)) if i % 2 else ""
        lines.append(f"{phone},{name},{gender},{birthday},{email},,{level},{size}")
    return ("\r\n".join(lines) + "\r\n").encode()


async def run(args: argparse.Namespace, url: str) -> dict:
    data = make_csv(args.rows)
    async with trio_asyncio.open_loop():
        async with open_store(url, pool_size=4) as store:
            await store.migrate()
            acct = await store.ensure_account("bench")
            merchant = await store.ensure_merchant("bench", acct.id, "10658888099", "【测试】")
            await define_attribute(store, merchant.id, AttributeDef(name="level", type="choice",
                                                                    choices=("银卡", "金卡", "钻石卡")))
            await define_attribute(store, merchant.id, AttributeDef(name="shoe_size", type="number"))
            definitions = await attribute_definitions(store, merchant.id)

            t0 = time.perf_counter()
            parsed = sum(1 for item in parse_csv(decode_csv(data), definitions) if not isinstance(item, RowError))
            parse_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            first = await import_members(store, merchant.id, data)
            create_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            second = await import_members(store, merchant.id, data)
            update_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            exported = await export_members(store, merchant.id)
            export_s = time.perf_counter() - t0
            members = await store.fetchval("SELECT count(*) FROM crm_members WHERE merchant_id = $1", merchant.id)
    return {
        "rows": args.rows, "file_bytes": len(data), "good_rows": parsed, "members": members,
        "bad_rows": first.bad_rows,
        "parse_rows_per_s": round(args.rows / parse_s),
        "import_new": {"seconds": round(create_s, 2), "rows_per_s": round(args.rows / create_s),
                       "created": first.created},
        "import_again": {"seconds": round(update_s, 2), "rows_per_s": round(args.rows / update_s),
                         "updated": second.updated},
        "export": {"seconds": round(export_s, 2), "rows_per_s": round(members / export_s),
                   "bytes": len(exported)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--database-url", default="", help="an empty database to use instead of an embedded one")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()
    if not 1 <= args.rows <= MAX_ROWS:
        sys.exit(f"--rows must be between 1 and {MAX_ROWS}")

    async def main_async() -> dict:
        if args.database_url:
            return await run(args, args.database_url)
        root = Path(tempfile.mkdtemp(prefix="smsgw-crm-bench-"))
        pg = EmbeddedPostgres(root)
        try:
            url = await pg.start()
            try:
                return await run(args, url)
            finally:
                await pg.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)

    result = trio.run(main_async)
    text = json.dumps(result, ensure_ascii=False, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
