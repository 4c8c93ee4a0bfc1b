"""The intake's group commit: a batch of send requests stored in one statement.

``_aio_accept`` runs on the asyncio side, one crossing a batch; :meth:`AcceptStore.accept` is
the Trio side. Message ids come from blocks of :data:`ID_BLOCK` that this process fetches
and no other node is handed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import asyncpg

from ..events import MtEvent
from ..events import now as events_now
from .core import StoreCore
from .records import AcceptRequest, AcceptResult, StoredMessage

_CLAIM_REFS = """
INSERT INTO client_refs (account_id, client_ref)
SELECT * FROM unnest($1::bigint[], $2::text[])
ON CONFLICT DO NOTHING
RETURNING account_id, client_ref
"""

_ORIGINALS = """
SELECT m.client_ref, m.account_id, m.id, m.dest, m.status, m.parts
FROM messages m JOIN unnest($1::bigint[], $2::text[]) AS r(account_id, client_ref)
  ON m.account_id = r.account_id AND m.client_ref = r.client_ref
ORDER BY m.id
"""

ID_BLOCK = 1000
"""Ids one ``nextval`` of ``message_id_blocks`` hands out; block b holds b*1000 .. b*1000+999."""

_INSERT_ACCEPTED = """
WITH r AS (
    SELECT * FROM unnest($6::bigint[], $7::text[], $8::smallint[], $9::text[], $10::int[], $11::text[],
                         $12::text[], $13::text[], $14::smallint[])
         WITH ORDINALITY AS r(account_id, client_ref, priority, class, validity_s, callback_url, sender,
                              dlr_url, dlr_mask, n)
),
x AS (
    SELECT * FROM unnest($15::text[], $16::text[], $17::smallint[]) WITH ORDINALITY AS x(body, encoding, parts, n)
),
m AS (
    INSERT INTO messages (id, account_id, client_ref, dest, operator, body, encoding, parts, priority,
                          class, expires_at, callback_url, sender, dlr_url, dlr_mask, status, created_at, updated_at)
    SELECT t.id, r.account_id, r.client_ref, t.dest, t.operator, x.body, x.encoding, x.parts, r.priority,
           r.class, $18::timestamptz + make_interval(secs => r.validity_s), r.callback_url, r.sender, r.dlr_url,
           r.dlr_mask, 'accepted', $18::timestamptz, $18::timestamptz
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::int[]) AS t(id, dest, operator, r, x)
    JOIN r ON r.n = t.r
    JOIN x ON x.n = t.x
    RETURNING id, priority, class
),
q AS (
    INSERT INTO outbound_queue (message_id, priority, class, not_before) SELECT id, priority, class, $18 FROM m
)
SELECT count(*) FROM m
"""
"""The group commit's one statement. A message's own columns come in arrays of one element a
message ($1-$5); what it shares with other messages comes once: its request's fields
(account, client_ref, class, ...; $6-$14, ``r``) and its text ($15-$17, ``x``), each numbered
by its ordinality and referred to by number. A request of 100 recipients sends its text once,
and asyncpg encodes 5 array elements a message instead of 15. The queue rows are ``q``."""


async def _aio_accept(pool: asyncpg.Pool, batch: Sequence[AcceptRequest],
                      allocate: Callable[[asyncpg.Connection, int], Any]) -> list[AcceptResult]:
    """Store a batch of requests in one transaction (the group commit): the messages and
    their queue rows (the history's ``accepted`` entry is the message row's ``created_at``).

    Without idempotency keys in the batch this is one statement (its own transaction): one
    round trip for hundreds of messages.
    """
    results: list[AcceptResult | None] = [None] * len(batch)
    keyed = any(req.client_ref is not None for req in batch)
    async with pool.acquire() as conn:
        # One statement is atomic on its own; BEGIN/COMMIT only when refs are claimed first.
        async with conn.transaction() if keyed else contextlib.nullcontext():
            # Idempotency: the first request of a (account, client_ref) in this batch claims
            # the ref; a ref already claimed (now or by a concurrent transaction, which we wait
            # for on the unique index) makes the request a duplicate of the original.
            leaders: dict[tuple[int, str], int] = {}
            followers: list[tuple[int, tuple[int, str]]] = []
            for i, req in enumerate(batch):
                if req.client_ref is not None:
                    key = (req.account_id, req.client_ref)
                    if key in leaders:
                        followers.append((i, key))
                    else:
                        leaders[key] = i
            duplicates: set[tuple[int, str]] = set()
            if leaders:
                keys = list(leaders)
                won = await conn.fetch(_CLAIM_REFS, [k[0] for k in keys], [k[1] for k in keys])
                won_keys = {(r["account_id"], r["client_ref"]) for r in won}
                duplicates = set(keys) - won_keys
            fresh = [
                i for i, req in enumerate(batch)
                if req.client_ref is None or (leaders.get((req.account_id, req.client_ref)) == i
                                              and (req.account_id, req.client_ref) not in duplicates)
            ]
            count = sum(len(batch[i].messages) for i in fresh)
            if count:
                ids = await allocate(conn, count)
                # Columns shared by several messages, once each: request fields and texts.
                shared: dict[tuple[Any, ...], int] = {}
                texts: dict[tuple[str, str, int], int] = {}
                dests: list[str] = []
                operators: list[str] = []
                rs: list[int] = []
                xs: list[int] = []
                at = 0
                for i in fresh:
                    req = batch[i]
                    msgs = req.messages
                    fields = (req.account_id, req.client_ref, req.priority, req.msg_class, req.validity_s,
                              req.callback_url, req.sender, req.dlr_url, req.dlr_mask)
                    ri = shared.setdefault(fields, len(shared) + 1)
                    last: tuple[str, str, int] | None = None
                    xi = 0
                    for m in msgs:
                        text = (m.body, m.encoding, m.parts)
                        if text != last:  # a request's messages nearly always share one text
                            last = text
                            xi = texts.setdefault(text, len(texts) + 1)
                        dests.append(m.dest)
                        operators.append(m.operator)
                        xs.append(xi)
                    rs.extend([ri] * len(msgs))
                    mids = ids[at:at + len(msgs)]
                    at += len(msgs)
                    results[i] = AcceptResult(messages=tuple([
                        StoredMessage(id=mid, dest=m.dest, status="accepted", parts=m.parts)
                        for mid, m in zip(mids, msgs)]))
                await conn.fetchval(_INSERT_ACCEPTED, ids, dests, operators, rs, xs, *map(list, zip(*shared)),
                                    *map(list, zip(*texts)), datetime.now(timezone.utc))
            # Duplicates across transactions: the originals are committed (we waited on the
            # index). Duplicates inside this batch follow their leader's fresh rows.
            if duplicates:
                dup = list(duplicates)
                found: dict[tuple[int, str], list[StoredMessage]] = {}
                for r in await conn.fetch(_ORIGINALS, [k[0] for k in dup], [k[1] for k in dup]):
                    found.setdefault((r["account_id"], r["client_ref"]), []).append(
                        StoredMessage(id=r["id"], dest=r["dest"], status=r["status"], parts=r["parts"]))
                for key in dup:
                    results[leaders[key]] = AcceptResult(messages=tuple(found.get(key, ())), duplicate=True)
            for i, key in followers:
                lead = results[leaders[key]]
                assert lead is not None
                results[i] = AcceptResult(messages=lead.messages, duplicate=True)
    return results  # type: ignore[return-value]


class AcceptStore(StoreCore):
    """The intake's writes: accepted messages and their queue rows."""

    async def accept(self, batch: Sequence[AcceptRequest]) -> list[AcceptResult]:
        """Store a batch of send requests durably, in one transaction (group commit)."""
        results = await self._call(_aio_accept, self._pool, batch, self._allocate_ids)
        if self.events is not None and self.events.active:
            at = events_now()
            self._emit([MtEvent(id=m.id, account_id=req.account_id, to=m.dest, status="accepted", parts=m.parts,
                                msg_class=req.msg_class, at=at)
                        for req, res in zip(batch, results) if not res.duplicate for m in res.messages])
        return results

    async def _allocate_ids(self, conn: asyncpg.Connection, count: int) -> list[int]:
        """``count`` unused message ids (asyncio side): from this process's blocks, each
        fetched with one ``nextval`` and never handed to another node."""
        while len(self._ids) < count:
            need = (count - len(self._ids) + ID_BLOCK - 1) // ID_BLOCK
            for (block,) in await conn.fetch(
                    "SELECT nextval('message_id_blocks') FROM generate_series(1, $1)", need):
                self._ids.extend(range(block * ID_BLOCK, (block + 1) * ID_BLOCK))
        out, self._ids = self._ids[:count], self._ids[count:]
        out.sort()  # blocks fetched concurrently may land out of order; a request's ids ascend
        return out
