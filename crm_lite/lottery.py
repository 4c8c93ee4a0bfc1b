"""Lottery campaigns: consumers text a keyword (``CJ`` by default) to enter; a verifiable draw.

A campaign has prizes (name, stock), a keyword, an entry window ``[starts_at, ends_at)``, a
per-phone entry limit for the campaign and optionally per local day, and a limit on the prizes
one phone may win (one by default). Members-only campaigns ask a pluggable
``is_member(merchant_id, phone)`` check.

Auditable draw
--------------
When a campaign is created it draws a 32-byte seed from :func:`secrets.token_bytes` and
publishes ``seed_hash = SHA-256(seed)`` at once; the seed itself is shown only after the draw
(``GET /v1/crm/lotteries/{id}/audit``). The draw is a pure function of the seed, the entries,
the prizes and the win limit, so anyone holding the audit document can recompute the winners
with :func:`recompute` — or with the following description, in any language:

1. **Entries** ``E[0..n-1]`` are the campaign's entries ordered by entry number (ascending);
   each has an entry number and a phone. **Units** ``U`` are the prizes in their order
   (position), each repeated ``stock`` times: ``(prize, 1), …, (prize, stock)``.
2. **Random stream**: block ``k`` (``k = 0, 1, 2, …``) is ``SHA-256(seed ‖ k)`` with ``k`` as
   an 8-byte big-endian unsigned integer; the stream is the blocks concatenated, read as
   consecutive 8-byte big-endian unsigned integers ("words"; four per block).
3. **uniform(m)**: ``limit = 2**64 - (2**64 mod m)``; read words until one, ``w``, is below
   ``limit``; the result is ``w mod m`` (rejection sampling: no modulo bias).
4. **Shuffle**: forward Fisher–Yates. For ``i = 0, 1, …, n-1``: ``j = i + uniform(n - i)``;
   swap ``E[i]`` and ``E[j]``; ``E[i]`` is the ``i``-th entry drawn. (Every step reads at
   least one word, the last one too.)
5. **Prizes**: walk the drawn entries in order. An entry whose phone already holds
   ``max_wins`` prizes is passed over (no limit when ``max_wins`` is null); otherwise it wins
   the next unit of ``U``. The draw stops when every unit is given or every entry was drawn.

So the number of winners is ``min(len(U), Σ over phones of min(entries, max_wins))``. The draw
only shuffles as far as it needs to (the steps it takes are exactly those of the full shuffle),
so a draw over a million entries costs a few dozen hashes.

Stock is never oversold: each unit is a row in ``crm_lottery_winners`` keyed by
``(prize_id, unit)`` and checked against the prize's stock by the database; a campaign is drawn
once, under a row lock (a second draw is refused with :class:`AlreadyDrawn`).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import secrets
import zoneinfo
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

from gateway.errors import StoreConflict
from gateway.router.commands import InboundCommand, Outbox
from gateway.store import Merchant, Store
from gateway.text import mask_msisdn

from .errors import AlreadyDrawn, Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

ALGORITHM = "sha256-ctr-fisher-yates/1"
"""Names the draw described in this module's docstring (in the audit document)."""
SEED_BYTES = 32
DEFAULT_KEYWORD = "CJ"
DEFAULT_TIMEZONE = "Asia/Shanghai"
MAX_PRIZES = 50
"""Prizes per campaign."""
RESERVED_KEYWORDS = frozenset({"1", "2", "TD", "T", "退订", "SP"})
"""Keywords other commands own; a lottery cannot take them (nor ``Y<n>``/``N<n>``)."""
KEYWORD_RE = re.compile(r"^[A-Z0-9]{1,10}$")
_DECISION_RE = re.compile(r"^[YN][0-9]+$")
_WORD = 2**64

IsMember = Callable[[int, str], Awaitable[bool] | bool]
"""``is_member(merchant_id, phone)``, plain or async: may this phone enter a members-only lottery."""


KeywordFor = Callable[[int], Awaitable[str] | str]
"""``keyword_for(merchant_id)``, plain or async: the merchant's own lottery keyword (``CJ`` unless
the merchant chose another), for campaigns created without one and for the help text."""


async def merchant_keyword(keyword_for: KeywordFor | None, merchant_id: int) -> str:
    """The merchant's lottery keyword, normalized; ``CJ`` without a ``keyword_for``."""
    if keyword_for is None:
        return DEFAULT_KEYWORD
    value = keyword_for(merchant_id)
    if inspect.isawaitable(value):
        value = await value
    return str(value).strip().upper() or DEFAULT_KEYWORD


async def anyone(merchant_id: int, phone: str) -> bool:
    """The default membership check: everybody may enter."""
    return True


# --- the draw (pure) ------------------------------------------------------------------------------


class Win(msgspec.Struct, frozen=True, kw_only=True):
    """One unit of one prize given to one entry."""

    prize_id: int
    unit: int
    entry_no: int
    phone: str


class DrawResult(msgspec.Struct, frozen=True, kw_only=True):
    winners: tuple[Win, ...]
    drawn: tuple[int, ...]
    """Entry numbers in the order the shuffle drew them, as far as the draw went."""


class _Stream:
    """Counter-mode SHA-256 over the seed, read as 64-bit big-endian words."""

    __slots__ = ("_seed", "_counter", "_words")

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._words: list[int] = []

    def word(self) -> int:
        if not self._words:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._words = [int.from_bytes(block[i:i + 8], "big") for i in (24, 16, 8, 0)]
        return self._words.pop()

    def uniform(self, m: int) -> int:
        """Uniform in ``[0, m)`` by rejection sampling."""
        limit = _WORD - _WORD % m
        while True:
            w = self.word()
            if w < limit:
                return w % m


def draw(seed: bytes, entries: Sequence[tuple[int, str]], prizes: Sequence[tuple[int, int]], *,
         max_wins: int | None = 1) -> DrawResult:
    """The draw of the module docstring. ``entries``: ``(entry_no, phone)`` in entry-number
    order; ``prizes``: ``(prize_id, stock)`` in prize order."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"the seed must be {SEED_BYTES} bytes, not {len(seed)}")
    units = [(prize_id, unit) for prize_id, stock in prizes for unit in range(1, stock + 1)]
    stream = _Stream(seed)
    n = len(entries)
    moved: dict[int, int] = {}  # the shuffle's swaps, kept sparse: position -> entry index
    wins: dict[str, int] = {}
    winners: list[Win] = []
    drawn: list[int] = []
    i = 0
    while i < n and len(winners) < len(units):
        j = i + stream.uniform(n - i)
        at_i, at_j = moved.get(i, i), moved.get(j, j)
        moved[j] = at_i
        moved.pop(i, None)
        entry_no, phone = entries[at_j]
        drawn.append(entry_no)
        i += 1
        held = wins.get(phone, 0)
        if max_wins is not None and held >= max_wins:
            continue
        wins[phone] = held + 1
        prize_id, unit = units[len(winners)]
        winners.append(Win(prize_id=prize_id, unit=unit, entry_no=entry_no, phone=phone))
    return DrawResult(winners=tuple(winners), drawn=tuple(drawn))


def recompute(seed: bytes | str, entries: Iterable[Any], prizes: Iterable[Any], *,
              max_wins: int | None = 1) -> list[Win]:
    """The winners, from what the audit document publishes.

    ``seed`` as bytes or hex; ``entries`` as ``(entry_no, phone)`` pairs or mappings with
    ``entry_no`` and ``phone`` (any order: they are sorted by entry number); ``prizes`` in prize
    order as ``(prize_id, stock)`` pairs or mappings with ``id`` and ``stock``."""
    raw = bytes.fromhex(seed) if isinstance(seed, str) else seed
    pairs = sorted((int(e["entry_no"]), str(e["phone"])) if isinstance(e, Mapping) else (int(e[0]), str(e[1]))
                   for e in entries)
    stock = [(int(p["id"]), int(p["stock"])) if isinstance(p, Mapping) else (int(p[0]), int(p[1]))
             for p in prizes]
    return list(draw(raw, pairs, stock, max_wins=max_wins).winners)


def new_seed() -> tuple[bytes, bytes]:
    """A fresh seed and its SHA-256."""
    seed = secrets.token_bytes(SEED_BYTES)
    return seed, hashlib.sha256(seed).digest()


# --- the campaign in the store --------------------------------------------------------------------


class Prize(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    position: int
    name: str
    stock: int


class Lottery(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    merchant_id: int
    name: str
    keyword: str
    starts_at: datetime
    ends_at: datetime
    max_entries: int
    max_entries_per_day: int | None
    max_wins: int | None
    members_only: bool
    seed_hash: str
    status: str
    """``open`` (entries accepted inside the window), ``closed`` or ``drawn``."""
    created_at: datetime
    closed_at: datetime | None
    drawn_at: datetime | None
    entry_count: int | None = None
    """Entries so far (``None`` where the query did not count them)."""


class Winner(msgspec.Struct, frozen=True, kw_only=True):
    prize_id: int
    prize: str
    unit: int
    entry_no: int
    phone: str
    notified_at: datetime | None = None


_BASE = ("id, merchant_id, name, keyword, starts_at, ends_at, max_entries, max_entries_per_day, max_wins,"
         " members_only, seed_hash, status, created_at, closed_at, drawn_at")
_COLUMNS = _BASE + (", (SELECT count(*) FROM crm_lottery_entries e WHERE e.lottery_id = crm_lotteries.id)"
                    " AS entry_count")


def entry_sequence(lottery_id: int) -> str:
    """The campaign's own sequence of entry numbers (created with it)."""
    return f"crm_lottery_entry_seq_{int(lottery_id)}"


def _lottery(row: Any) -> Lottery:
    values = dict(row)
    values["seed_hash"] = bytes(values["seed_hash"]).hex()
    return Lottery(**values)


def check_keyword(keyword: str) -> str:
    kw = keyword.strip().upper()
    if not KEYWORD_RE.fullmatch(kw) or kw in RESERVED_KEYWORDS or _DECISION_RE.fullmatch(kw):
        raise InvalidInput("keyword", f"keyword {keyword!r} is not usable: 1-10 letters or digits, not one of "
                           f"{sorted(RESERVED_KEYWORDS)} nor Y<n>/N<n>")
    return kw


async def create_lottery(store: Store, merchant_id: int, *, name: str, starts_at: datetime, ends_at: datetime,
                         keyword: str = DEFAULT_KEYWORD, max_entries: int = 1,
                         max_entries_per_day: int | None = None, max_wins: int | None = 1,
                         members_only: bool = False, prizes: Sequence[tuple[str, int]] = ()) -> Lottery:
    """A new campaign, with its seed drawn and its hash published. Two campaigns of one
    merchant may share a keyword only if their windows do not overlap."""
    kw = check_keyword(keyword)
    if ends_at <= starts_at:
        raise InvalidInput("ends_at", "ends_at must be after starts_at")
    if len(prizes) > MAX_PRIZES:
        raise InvalidInput("prizes", f"at most {MAX_PRIZES} prizes")
    seed, seed_hash = new_seed()
    async with store.transaction() as tx:
        # One creator at a time per merchant, so two overlapping campaigns cannot both pass the check.
        await tx.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant_id)
        clash = await tx.fetchval(
            "SELECT id FROM crm_lotteries WHERE merchant_id = $1 AND keyword = $2 AND status <> 'drawn'"
            " AND starts_at < $4 AND ends_at > $3 LIMIT 1", merchant_id, kw, starts_at, ends_at)
        if clash is not None:
            raise Conflict("keyword_taken", f"lottery {clash} already uses keyword {kw} in an overlapping window")
        row = await tx.fetchrow(
            "INSERT INTO crm_lotteries (merchant_id, name, keyword, starts_at, ends_at, max_entries,"
            " max_entries_per_day, max_wins, members_only, seed, seed_hash)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {_BASE}",
            merchant_id, name, kw, starts_at, ends_at, max_entries, max_entries_per_day, max_wins,
            members_only, seed, seed_hash)
        await tx.execute(f"CREATE SEQUENCE {entry_sequence(row['id'])} AS bigint")
        for position, (prize_name, stock) in enumerate(prizes, start=1):
            await tx.execute("INSERT INTO crm_lottery_prizes (lottery_id, position, name, stock)"
                             " VALUES ($1, $2, $3, $4)", row["id"], position, prize_name, stock)
    log.info("lottery created merchant=%s lottery=%s keyword=%s", merchant_id, row["id"], kw)
    return msgspec.structs.replace(_lottery(row), entry_count=0)


async def lottery(store: Store, merchant_id: int, lottery_id: int) -> Lottery:
    row = await store.fetchrow(f"SELECT {_COLUMNS} FROM crm_lotteries WHERE id = $1 AND merchant_id = $2",
                               lottery_id, merchant_id)
    if row is None:
        raise NotFound(None, f"no lottery {lottery_id}")
    return _lottery(row)


async def lotteries(store: Store, merchant_id: int) -> list[Lottery]:
    return [_lottery(r) for r in await store.fetch(
        f"SELECT {_COLUMNS} FROM crm_lotteries WHERE merchant_id = $1 ORDER BY id DESC", merchant_id)]


async def prizes(store: Store, lottery_id: int) -> list[Prize]:
    return [Prize(**dict(r)) for r in await store.fetch(
        "SELECT id, position, name, stock FROM crm_lottery_prizes WHERE lottery_id = $1 ORDER BY position",
        lottery_id)]


async def add_prize(store: Store, merchant_id: int, lottery_id: int, name: str, stock: int) -> Prize:
    """Another prize, after the others; refused once the campaign is drawn."""
    async with store.transaction() as tx:
        row = await tx.fetchrow("SELECT status FROM crm_lotteries WHERE id = $1 AND merchant_id = $2 FOR UPDATE",
                                lottery_id, merchant_id)
        if row is None:
            raise NotFound(None, f"no lottery {lottery_id}")
        if row["status"] == "drawn":
            raise AlreadyDrawn(f"lottery {lottery_id} is drawn; its prizes are final")
        count = await tx.fetchval("SELECT count(*) FROM crm_lottery_prizes WHERE lottery_id = $1", lottery_id)
        if count >= MAX_PRIZES:
            raise InvalidInput("prizes", f"at most {MAX_PRIZES} prizes")
        prize = await tx.fetchrow(
            "INSERT INTO crm_lottery_prizes (lottery_id, position, name, stock)"
            " SELECT $1, coalesce(max(position), 0) + 1, $2, $3 FROM crm_lottery_prizes WHERE lottery_id = $1"
            " RETURNING id, position, name, stock", lottery_id, name, stock)
    return Prize(**dict(prize))


async def close_lottery(store: Store, merchant_id: int, lottery_id: int) -> Lottery:
    """Stop taking entries (before the window ends); closing a closed campaign changes nothing."""
    async with store.transaction() as tx:
        row = await tx.fetchrow("SELECT status FROM crm_lotteries WHERE id = $1 AND merchant_id = $2"
                                " FOR UPDATE", lottery_id, merchant_id)
        if row is None:
            raise NotFound(None, f"no lottery {lottery_id}")
        if row["status"] == "drawn":
            raise AlreadyDrawn(f"lottery {lottery_id} is already drawn")
        if row["status"] == "open":
            await tx.execute("UPDATE crm_lotteries SET status = 'closed', closed_at = now() WHERE id = $1", lottery_id)
    return await lottery(store, merchant_id, lottery_id)


# --- entering -------------------------------------------------------------------------------------


class EntryStatus(StrEnum):
    ENTERED = "entered"
    NOT_STARTED = "not_started"
    CLOSED = "closed"
    LIMIT = "limit"
    DAILY_LIMIT = "daily_limit"
    NOT_MEMBER = "not_member"


class EntryOutcome(msgspec.Struct, frozen=True, kw_only=True):
    status: EntryStatus
    entry_no: int | None = None


_ENTER = """
WITH lot AS (
    SELECT status, starts_at, ends_at, max_entries, max_entries_per_day
    FROM crm_lotteries WHERE id = $1 FOR SHARE
), counts AS (
    SELECT count(*) AS total, count(*) FILTER (WHERE local_day = $4) AS today
    FROM crm_lottery_entries WHERE lottery_id = $1 AND phone = $2
), verdict AS (
    SELECT CASE WHEN $3 < lot.starts_at THEN 'not_started'
                WHEN lot.status <> 'open' OR $3 >= lot.ends_at THEN 'closed'
                WHEN counts.total >= lot.max_entries THEN 'limit'
                WHEN counts.today >= lot.max_entries_per_day THEN 'daily_limit'
                ELSE 'entered' END AS status,
           counts.total, counts.today
    FROM lot, counts
), entry AS (
    INSERT INTO crm_lottery_entries (lottery_id, entry_no, phone, local_day, mo_id, slot, day_slot, created_at)
    SELECT $1, nextval($6::regclass), $2, $4, $5, total + 1, today + 1, $3 FROM verdict WHERE status = 'entered'
    RETURNING entry_no
)
SELECT verdict.status, (SELECT entry_no FROM entry) AS entry_no FROM verdict
"""
ENTER_ATTEMPTS = 5
"""Tries of an entry that collided with a simultaneous entry of the same phone."""


async def enter(store: Store, lot: Lottery, phone: str, *, at: datetime, mo_id: int | None = None,
                timezone: str = DEFAULT_TIMEZONE, is_member: IsMember = anyone) -> EntryOutcome:
    """Enter ``phone`` into ``lot`` as of ``at`` (the MO's reception time). An entry made for an
    ``mo_id`` is made once: asked again, the original entry is the answer.

    One statement: it holds the campaign's row in share mode (entries do not wait on each
    other; a draw or a close waits for them, and they for it), checks window and limits, and
    inserts. Two simultaneous entries of one phone collide on their ``slot`` and the later one
    is tried again, now counting the first."""
    if mo_id is not None:
        done = await store.fetchval("SELECT entry_no FROM crm_lottery_entries WHERE mo_id = $1", mo_id)
        if done is not None:
            return EntryOutcome(status=EntryStatus.ENTERED, entry_no=done)
    if lot.members_only:
        member = is_member(lot.merchant_id, phone)
        if inspect.isawaitable(member):
            member = await member
        if not member:
            return EntryOutcome(status=EntryStatus.NOT_MEMBER)
    local_day = at.astimezone(zoneinfo.ZoneInfo(timezone)).date()
    for attempt in range(ENTER_ATTEMPTS):
        try:
            row = await store.fetchrow(_ENTER, lot.id, phone, at, local_day, mo_id, entry_sequence(lot.id))
        except StoreConflict as exc:
            if mo_id is not None and "mo_id" in exc.constraint:
                # The same MO entered on another connection meanwhile: that entry stands.
                done = await store.fetchval("SELECT entry_no FROM crm_lottery_entries WHERE mo_id = $1", mo_id)
                return EntryOutcome(status=EntryStatus.ENTERED, entry_no=done)
            if attempt == ENTER_ATTEMPTS - 1 or "slot" not in exc.constraint:
                raise
            continue
        if row is None:
            raise NotFound(None, f"no lottery {lot.id}")
        status = EntryStatus(row["status"])
        if status == EntryStatus.ENTERED:
            log.info("lottery entry lottery=%s entry=%s phone=%s", lot.id, row["entry_no"], mask_msisdn(phone))
        return EntryOutcome(status=status, entry_no=row["entry_no"])
    raise AssertionError("unreachable")


IMPORT_CHUNK = 100_000
"""Entries inserted per statement by :func:`import_entries`."""


async def import_entries(store: Store, lottery_id: int, phones: Sequence[str], *, at: datetime,
                         timezone: str = DEFAULT_TIMEZONE) -> None:
    """Append entries taken elsewhere (paper forms at the till, another system), numbered in
    order after the existing ones, in bulk. The caller vouches for the window and the limits:
    they are not checked here (the entries count towards them afterwards)."""
    local_day = at.astimezone(zoneinfo.ZoneInfo(timezone)).date()
    for start in range(0, len(phones), IMPORT_CHUNK):
        chunk = list(phones[start:start + IMPORT_CHUNK])
        async with store.transaction() as tx:
            # The campaign's row in share mode, as for an SMS entry: no draw can run meanwhile.
            status = await tx.fetchval("SELECT status FROM crm_lotteries WHERE id = $1 FOR SHARE", lottery_id)
            if status is None:
                raise NotFound(None, f"no lottery {lottery_id}")
            if status == "drawn":
                raise AlreadyDrawn(f"lottery {lottery_id} is drawn")
            await tx.execute(
                "INSERT INTO crm_lottery_entries (lottery_id, entry_no, phone, local_day, created_at)"
                " SELECT $1, nextval($5::regclass), t.phone, $3, $4"
                " FROM unnest($2::text[]) WITH ORDINALITY AS t(phone, n) ORDER BY t.n",
                lottery_id, chunk, local_day, at, entry_sequence(lottery_id))


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    entry_no: int
    phone: str
    created_at: datetime


async def entries(store: Store, lottery_id: int, *, after: int = 0, limit: int = 100) -> list[Entry]:
    return [Entry(**dict(r)) for r in await store.fetch(
        "SELECT entry_no, phone, created_at FROM crm_lottery_entries WHERE lottery_id = $1 AND entry_no > $2"
        " ORDER BY entry_no LIMIT $3", lottery_id, after, limit)]


# --- drawing, notifying, auditing -----------------------------------------------------------------


async def _draw_inputs(conn: Any, lottery_id: int) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    arrays = await conn.fetchrow(
        "SELECT coalesce(array_agg(entry_no ORDER BY entry_no), '{}') AS nos,"
        " coalesce(array_agg(phone ORDER BY entry_no), '{}') AS phones"
        " FROM crm_lottery_entries WHERE lottery_id = $1", lottery_id)
    stock = [(r["id"], r["stock"]) for r in await conn.fetch(
        "SELECT id, stock FROM crm_lottery_prizes WHERE lottery_id = $1 ORDER BY position", lottery_id)]
    return list(zip(arrays["nos"], arrays["phones"])), stock


async def draw_lottery(store: Store, merchant_id: int, lottery_id: int) -> list[Winner]:
    """Draw the campaign once: closes it if still open past its window; refuses while it takes
    entries, without prizes, or when already drawn (also when several calls race)."""
    async with store.transaction() as tx:
        row = await tx.fetchrow("SELECT status, ends_at, now() AS now, seed, max_wins FROM crm_lotteries"
                                " WHERE id = $1 AND merchant_id = $2 FOR UPDATE", lottery_id, merchant_id)
        if row is None:
            raise NotFound(None, f"no lottery {lottery_id}")
        if row["status"] == "drawn":
            raise AlreadyDrawn(f"lottery {lottery_id} is already drawn")
        if row["status"] == "open" and row["now"] < row["ends_at"]:
            raise Conflict("lottery_open", f"lottery {lottery_id} still takes entries until"
                           f" {row['ends_at'].isoformat()}; close it first")
        pairs, stock = await _draw_inputs(tx, lottery_id)
        if not stock:
            raise Conflict("no_prizes", f"lottery {lottery_id} has no prizes")
        result = draw(bytes(row["seed"]), pairs, stock, max_wins=row["max_wins"])
        stock_of = dict(stock)
        await tx.execute(
            "INSERT INTO crm_lottery_winners (lottery_id, prize_id, stock, unit, entry_no, phone)"
            " SELECT $1, * FROM unnest($2::bigint[], $3::int[], $4::int[], $5::int[], $6::text[])",
            lottery_id, [w.prize_id for w in result.winners], [stock_of[w.prize_id] for w in result.winners],
            [w.unit for w in result.winners], [w.entry_no for w in result.winners],
            [w.phone for w in result.winners])
        await tx.execute("UPDATE crm_lotteries SET status = 'drawn', drawn_at = now(),"
                         " closed_at = coalesce(closed_at, now()) WHERE id = $1", lottery_id)
    log.info("lottery drawn lottery=%s entries=%d winners=%d", lottery_id, len(pairs), len(result.winners))
    return await winners(store, lottery_id)


async def winners(store: Store, lottery_id: int) -> list[Winner]:
    return [Winner(**dict(r)) for r in await store.fetch(
        "SELECT w.prize_id, p.name AS prize, w.unit, w.entry_no, w.phone, w.notified_at"
        " FROM crm_lottery_winners w JOIN crm_lottery_prizes p ON p.id = w.prize_id"
        " WHERE w.lottery_id = $1 ORDER BY p.position, w.unit", lottery_id)]


def win_client_ref(lottery_id: int, entry_no: int) -> str:
    return f"lottery-{lottery_id}-win-{entry_no}"


async def notify_winners(store: Store, outbox: Outbox, merchant: Merchant, lottery_id: int) -> int:
    """Tell every winner not yet told; each notice has its own client_ref, so calling this again
    (after a crash, or concurrently) never sends one twice. Returns the notices sent now."""
    lot = await lottery(store, merchant.id, lottery_id)
    sent = 0
    for w in await winners(store, lottery_id):
        if w.notified_at is not None:
            continue
        text = (f"{merchant.signature}恭喜！您在「{lot.name}」抽奖中获得「{w.prize}」"
                f"（抽奖号{w.entry_no}），请凭本短信领奖。")
        await outbox.send(account_id=merchant.account_id, to=w.phone, text=text,
                          client_ref=win_client_ref(lottery_id, w.entry_no))
        await store.execute("UPDATE crm_lottery_winners SET notified_at = now() WHERE prize_id = $1 AND unit = $2"
                            " AND notified_at IS NULL", w.prize_id, w.unit)
        sent += 1
    return sent


class AuditPrize(msgspec.Struct, frozen=True):
    id: int
    name: str
    stock: int


class AuditEntry(msgspec.Struct, frozen=True):
    entry_no: int
    phone: str


class AuditWinner(msgspec.Struct, frozen=True):
    prize_id: int
    prize: str
    unit: int
    entry_no: int
    phone: str


class Audit(msgspec.Struct, frozen=True, kw_only=True):
    """What anyone needs to check a draw: recompute the winners from ``seed``, ``entries``,
    ``prizes`` and ``max_wins`` with the algorithm named ``algorithm``, and compare."""

    lottery_id: int
    algorithm: str
    status: str
    seed_hash: str
    seed: str | None
    """Hex; shown once the campaign is drawn."""
    max_wins: int | None
    prizes: list[AuditPrize]
    entries: list[AuditEntry]
    """The draw's input, in entry-number order."""
    draw_order: list[int]
    """Entry numbers in the order the shuffle drew them (as far as the draw went)."""
    winners: list[AuditWinner]


async def audit(store: Store, merchant_id: int, lottery_id: int) -> Audit:
    row = await store.fetchrow("SELECT status, seed, seed_hash, max_wins FROM crm_lotteries"
                               " WHERE id = $1 AND merchant_id = $2", lottery_id, merchant_id)
    if row is None:
        raise NotFound(None, f"no lottery {lottery_id}")
    async with store.transaction() as tx:
        pairs, stock = await _draw_inputs(tx, lottery_id)
        prize_rows = await tx.fetch("SELECT id, name, stock FROM crm_lottery_prizes WHERE lottery_id = $1"
                                    " ORDER BY position", lottery_id)
    drawn = row["status"] == "drawn"
    order: list[int] = []
    won: list[AuditWinner] = []
    if drawn:
        order = list(draw(bytes(row["seed"]), pairs, stock, max_wins=row["max_wins"]).drawn)
        won = [AuditWinner(w.prize_id, w.prize, w.unit, w.entry_no, w.phone) for w in await winners(store, lottery_id)]
    return Audit(lottery_id=lottery_id, algorithm=ALGORITHM, status=row["status"],
                 seed_hash=bytes(row["seed_hash"]).hex(), seed=bytes(row["seed"]).hex() if drawn else None,
                 max_wins=row["max_wins"], prizes=[AuditPrize(r["id"], r["name"], r["stock"]) for r in prize_rows],
                 entries=[AuditEntry(no, phone) for no, phone in pairs], draw_order=order, winners=won)


# --- the SMS command ------------------------------------------------------------------------------


def _when(at: datetime, timezone: str) -> str:
    local = at.astimezone(zoneinfo.ZoneInfo(timezone))
    return f"{local.month}月{local.day}日{local.hour:02d}:{local.minute:02d}"


class LotteryHandler:
    """The ``CJ`` command (or a campaign's own keyword): :class:`~gateway.router.commands.CommandHandler`.

    ``is_member(merchant_id, phone)`` decides who may enter members-only campaigns (default:
    anyone); ``timezone`` is the merchants' local time zone, for daily limits and the times in
    replies; ``keyword_for(merchant_id)`` the merchant's own lottery keyword (default ``CJ``),
    which answers "no lottery now" when no campaign uses it.
    """

    def __init__(self, store: Store, *, is_member: IsMember = anyone, timezone: str = DEFAULT_TIMEZONE,
                 join_keyword: str = "1", keyword_for: KeywordFor | None = None) -> None:
        zoneinfo.ZoneInfo(timezone)  # an unknown zone fails here, at assembly
        self._store = store
        self._is_member = is_member
        self._timezone = timezone
        self._join_keyword = join_keyword
        self._keyword_for = keyword_for

    async def _campaign(self, merchant_id: int, keyword: str, at: datetime) -> Lottery | None:
        """The campaign a keyword means at ``at``: the running one; else the next to start;
        else the latest one (to say it has ended)."""
        row = await self._store.fetchrow(
            f"SELECT {_BASE} FROM crm_lotteries WHERE merchant_id = $1 AND keyword = $2"
            " ORDER BY (status = 'open' AND starts_at <= $3 AND ends_at > $3) DESC,"
            " (starts_at > $3) DESC, CASE WHEN starts_at > $3 THEN starts_at END ASC, starts_at DESC, id DESC"
            " LIMIT 1", merchant_id, keyword, at)
        return None if row is None else _lottery(row)

    async def handle(self, command: InboundCommand, outbox: Outbox) -> bool:
        merchant = command.merchant
        lot = await self._campaign(merchant.id, command.keyword, command.received_at)
        if lot is None and command.keyword != await merchant_keyword(self._keyword_for, merchant.id):
            return False
        sig = merchant.signature
        if lot is None:
            text = f"{sig}目前没有进行中的抽奖活动，敬请关注。"
        else:
            outcome = await enter(self._store, lot, command.phone, at=command.received_at, mo_id=command.mo_id,
                                  timezone=self._timezone, is_member=self._is_member)
            text = self._reply(sig, lot, outcome)
        await outbox.send(account_id=merchant.account_id, to=command.phone, text=text,
                          client_ref=f"mo-{command.mo_id}-1")
        return True

    def _reply(self, sig: str, lot: Lottery, outcome: EntryOutcome) -> str:
        name = f"「{lot.name}」"
        match outcome.status:
            case EntryStatus.ENTERED:
                return f"{sig}您已参加{name}抽奖，抽奖号{outcome.entry_no}，开奖后中奖者将收到短信通知。"
            case EntryStatus.NOT_STARTED:
                return f"{sig}{name}抽奖将于{_when(lot.starts_at, self._timezone)}开始，届时回复{lot.keyword}参加。"
            case EntryStatus.CLOSED:
                return f"{sig}{name}抽奖已截止，感谢关注，下次活动再见。"
            case EntryStatus.LIMIT:
                return f"{sig}您已参加{name}抽奖{lot.max_entries}次，已达本次活动上限，祝您好运。"
            case EntryStatus.DAILY_LIMIT:
                return f"{sig}您今天已参加{name}抽奖{lot.max_entries_per_day}次，请明天再来。"
            case EntryStatus.NOT_MEMBER:
                return (f"{sig}{name}抽奖仅限会员参加。回复{self._join_keyword}免费加入会员，"
                        f"再回复{lot.keyword}即可参加。")
        raise AssertionError(outcome.status)

    async def commands(self, merchant: Merchant) -> list[tuple[str, str]]:
        """(keyword, description) for the help text: each campaign taking entries now, or the
        merchant's lottery keyword."""
        rows = await self._store.fetch(
            "SELECT DISTINCT ON (keyword) keyword, name FROM crm_lotteries WHERE merchant_id = $1"
            " AND status = 'open' AND starts_at <= now() AND ends_at > now() ORDER BY keyword, starts_at DESC",
            merchant.id)
        if not rows:
            return [(await merchant_keyword(self._keyword_for, merchant.id), "参加抽奖")]
        return [(r["keyword"], f"参加「{r['name']}」抽奖") for r in rows]

    async def help_text(self, merchant: Merchant) -> str:
        listed = "，".join(f"回复{kw}{desc}" for kw, desc in await self.commands(merchant))
        return f"{merchant.signature}{listed}。"
