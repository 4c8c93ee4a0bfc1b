"""CSV import and export of members.

The file is UTF-8, with or without a byte-order mark; the first row names the columns: the
standard fields (``phone`` required; ``name``, ``gender``, ``birthday``, ``email``, ``note``;
Chinese headers such as 手机号, 姓名 are understood too) and the merchant's custom attribute
names. The columns an export adds (``member_no``, ``joined_at``, ``source``, ``points``) are
accepted and ignored, so an export imports back unchanged.

Each row is validated on its own: a bad row is reported by its line number with the reason and
skipped; good rows are kept. Import is idempotent by phone: a phone that is a member already
has the row's non-empty cells written over its profile (an empty cell changes nothing), a new
phone becomes a member numbered in file order. Rows are written in batches of
:data:`IMPORT_BATCH` with ``unnest`` (one statement per batch, not one per row), each batch in
its own transaction, so a long import never holds the merchant's member counter for long and
a repeated import after a failure does no harm.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import msgspec

from gateway.store import Store

from .errors import CsvFileError, InvalidInput
from .members import allocate_member_numbers, attribute_definitions
from .profile import READ_ONLY_FIELDS, STANDARD_FIELDS, AttributeDef, Profile, clean_profile, member_no_text

IMPORT_BATCH = 5_000
"""Rows written per statement (and per transaction)."""
MAX_IMPORT_ROWS = 1_000_000
MAX_REPORTED_ERRORS = 1_000
"""Bad rows listed in an import's answer (all are counted)."""
EXPORT_PAGE = 5_000
HEADER_ALIASES = {
    "手机": "phone", "手机号": "phone", "手机号码": "phone", "电话": "phone", "mobile": "phone",
    "姓名": "name", "性别": "gender", "生日": "birthday", "出生日期": "birthday", "邮箱": "email",
    "电子邮件": "email", "备注": "note", "会员号": "member_no", "入会时间": "joined_at", "来源": "source",
    "积分": "points",
}


class RowError(msgspec.Struct, frozen=True):
    line: int
    reason: str
    field: str | None = None


class ImportReport(msgspec.Struct, frozen=True, kw_only=True):
    rows: int
    created: int
    updated: int
    bad_rows: int
    errors: list[RowError]


def decode_csv(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvFileError(f"the file is not UTF-8 (byte {exc.start}); save it as CSV UTF-8") from None


def parse_csv(text: str, definitions: dict[str, AttributeDef]) -> Iterator[tuple[int, Profile] | RowError]:
    """The file's rows, each a validated :class:`Profile` with its line number or a
    :class:`RowError` (pure). Raises :class:`CsvFileError` for a bad header."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise CsvFileError(f"line 1: {exc}") from None
    if not header or not any(h.strip() for h in header):
        raise CsvFileError("the file is empty; the first row names the columns (phone, name, ...)")
    columns: list[str | None] = []  # None: a read-only column, ignored
    for raw in header:
        name = raw.strip()
        name = HEADER_ALIASES.get(name, name.lower() if name.lower() in STANDARD_FIELDS + READ_ONLY_FIELDS else name)
        if name in columns:
            raise CsvFileError(f"column {name!r} appears twice in the header", field=name)
        if name not in STANDARD_FIELDS and name not in READ_ONLY_FIELDS and name not in definitions:
            raise CsvFileError(f"unknown column {raw!r}: not a member field nor a defined attribute", field=raw)
        columns.append(name)
    if "phone" not in columns:
        raise CsvFileError("the header has no phone column", field="phone")
    width = len(columns)
    seen: dict[str, int] = {}
    line = 1
    count = 0
    while True:
        start = line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            yield RowError(start, f"unreadable row: {exc}")
            continue
        line = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        count += 1
        if count > MAX_IMPORT_ROWS:
            raise CsvFileError(f"at most {MAX_IMPORT_ROWS} rows per file; split it")
        if len(cells) != width:
            yield RowError(start, f"expected {width} cells as in the header, found {len(cells)}")
            continue
        values: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for name, cell in zip(columns, cells):
            if name is None or name in READ_ONLY_FIELDS or not cell.strip():
                continue
            if name in STANDARD_FIELDS:
                values[name] = cell
            else:
                attrs[name] = cell
        if "phone" not in values:
            yield RowError(start, "phone is empty", "phone")
            continue
        try:
            profile = clean_profile(values, attrs, definitions)
        except InvalidInput as exc:
            yield RowError(start, exc.message, exc.field)
            continue
        first = seen.setdefault(profile.phone, start)
        if first != start:
            yield RowError(start, f"phone {profile.phone} appears already on line {first}", "phone")
            continue
        yield start, profile


_INSERT = """
INSERT INTO crm_members (merchant_id, member_no, phone, name, gender, birthday, email, note, attrs, source)
SELECT $1, t.no, t.phone, coalesce(t.name, ''), coalesce(t.gender, ''), t.birthday, coalesce(t.email, ''),
       coalesce(t.note, ''), t.attrs::jsonb, 'import'
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[], $8::text[], $9::text[])
     AS t(no, phone, name, gender, birthday, email, note, attrs)
ON CONFLICT DO NOTHING
RETURNING phone
"""

_UPDATE = """
UPDATE crm_members m SET name = coalesce(t.name, m.name), gender = coalesce(t.gender, m.gender),
       birthday = coalesce(t.birthday, m.birthday), email = coalesce(t.email, m.email),
       note = coalesce(t.note, m.note), attrs = m.attrs || t.attrs::jsonb, updated_at = now()
FROM unnest($2::text[], $3::text[], $4::text[], $5::date[], $6::text[], $7::text[], $8::text[])
     AS t(phone, name, gender, birthday, email, note, attrs)
WHERE m.merchant_id = $1 AND m.phone = t.phone
"""


def _field(profile: Profile, name: str) -> Any:
    value = getattr(profile, name)
    return None if value is msgspec.UNSET else value


async def _write_batch(store: Store, merchant_id: int, batch: list[Profile]) -> tuple[int, int]:
    phones = [p.phone for p in batch]
    async with store.transaction() as tx:
        existing = {r["phone"] for r in await tx.fetch(
            "SELECT phone FROM crm_members WHERE merchant_id = $1 AND phone = ANY($2::text[])", merchant_id, phones)}
        new = [p for p in batch if p.phone not in existing]
        inserted: set[str] = set()
        if new:
            first = await allocate_member_numbers(tx, merchant_id, len(new))
            inserted = {r["phone"] for r in await tx.fetch(
                _INSERT, merchant_id, list(range(first, first + len(new))), [p.phone for p in new],
                *[[_field(p, f) for p in new] for f in ("name", "gender", "birthday", "email", "note")],
                [json.dumps(p.attributes) for p in new])}
        rest = [p for p in batch if p.phone not in inserted]
        if rest:
            await tx.execute(_UPDATE, merchant_id, [p.phone for p in rest],
                             *[[_field(p, f) for p in rest] for f in ("name", "gender", "birthday", "email", "note")],
                             [json.dumps(p.attributes) for p in rest])
    return len(inserted), len(rest)


async def import_members(store: Store, merchant_id: int, data: bytes) -> ImportReport:
    """Import a CSV file (see the module's docstring); raises :class:`CsvFileError` when the
    file cannot be read at all, otherwise reports every bad row and keeps the good ones."""
    definitions = await attribute_definitions(store, merchant_id)
    text = decode_csv(data)
    errors: list[RowError] = []
    bad = rows = created = updated = 0
    batch: list[Profile] = []
    for item in parse_csv(text, definitions):
        if isinstance(item, RowError):
            bad += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(item)
            continue
        rows += 1
        batch.append(item[1])
        if len(batch) >= IMPORT_BATCH:
            c, u = await _write_batch(store, merchant_id, batch)
            created, updated, batch = created + c, updated + u, []
    if batch:
        c, u = await _write_batch(store, merchant_id, batch)
        created, updated = created + c, updated + u
    return ImportReport(rows=rows + bad, created=created, updated=updated, bad_rows=bad, errors=errors)


async def export_members(store, merchant_id: int) -> bytes:
    """Every member as CSV (UTF-8 with a byte-order mark, so spreadsheet programs show Chinese
    correctly), with the current points balance; the attributes in definition order."""
    definitions = list(await attribute_definitions(store, merchant_id))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["member_no", *STANDARD_FIELDS, "joined_at", "source", "points", *definitions])
    after = 0
    while True:
        rows = await store.fetch(
            "SELECT m.id, m.member_no, m.phone, m.name, m.gender, m.birthday, m.email, m.note, m.joined_at, m.source,"
            " m.attrs, coalesce(b.balance, 0) AS points FROM crm_members m"
            " LEFT JOIN crm_points_balances b ON b.member_id = m.id"
            " WHERE m.merchant_id = $1 AND m.id > $2 ORDER BY m.id LIMIT $3", merchant_id, after, EXPORT_PAGE)
        for r in rows:
            attrs = json.loads(r["attrs"])
            writer.writerow([member_no_text(r["member_no"]), r["phone"], r["name"], r["gender"],
                             r["birthday"].isoformat() if r["birthday"] else "", r["email"], r["note"],
                             r["joined_at"].isoformat(timespec="seconds"), r["source"], r["points"],
                             *(_cell(attrs.get(name)) for name in definitions)])
        if len(rows) < EXPORT_PAGE:
            break
        after = rows[-1]["id"]
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value)
