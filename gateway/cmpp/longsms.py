"""Long messages: splitting MTs with a concatenation UDH and reassembling MO parts (sans-IO).

cmpp.md "Message formats": TP_udhi = 1 and Msg_Content begins with the 6-byte UDH
``05 00 03 <ref> <total> <seq>``, leaving 134 bytes per part; Pk_total / Pk_number repeat
total and seq. On receive the 16-bit-reference form ``06 08 04 <ref hi> <ref lo> <total>
<seq>`` is accepted too.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import msgspec

from gateway.cmpp.errors import LocalProtocolError, RemoteProtocolError
from gateway.cmpp.pdus import encode_text

__all__ = [
    "SINGLE_PART_BYTES",
    "PART_PAYLOAD_BYTES",
    "MAX_PARTS",
    "MAX_PENDING_GROUPS",
    "Part",
    "split_long",
    "concat_udh",
    "parse_concat_udh",
    "ConcatInfo",
    "Reassembled",
    "Reassembler",
]

#: Msg_Content limit of a single SUBMIT (70 UCS2 characters).
SINGLE_PART_BYTES = 140
#: Payload after the 6-byte UDH (67 UCS2 characters).
PART_PAYLOAD_BYTES = 134
#: Pk_total is one byte.
MAX_PARTS = 255
#: Incomplete MO groups kept at once; the oldest is evicted beyond this.
MAX_PENDING_GROUPS = 1024


class Part(NamedTuple):
    """One SUBMIT's worth of a message: TP_udhi, Pk_total, Pk_number, Msg_Content."""

    udhi: int
    pk_total: int
    pk_number: int
    content: bytes


def concat_udh(ref: int, total: int, seq: int) -> bytes:
    """The 6-byte concatenation UDH ``05 00 03 ref total seq``."""
    return bytes((0x05, 0x00, 0x03, ref, total, seq))


def _units(text_or_bytes: str | bytes, msg_fmt: int) -> list[bytes]:
    """Indivisible encoded units: characters (a UTF-16 surrogate pair or a GB18030 four-byte
    sequence is one unit) or single bytes for binary content."""
    if isinstance(text_or_bytes, bytes):
        return [text_or_bytes[i : i + 1] for i in range(len(text_or_bytes))]
    return [encode_text(ch, msg_fmt) for ch in text_or_bytes]


def split_long(text_or_bytes: str | bytes, msg_fmt: int, ref: int) -> list[Part]:
    """Split a message into SUBMIT parts (cmpp.md "Message formats").

    A message that fits 140 bytes is one part without UDH. Otherwise each part carries the
    6-byte UDH and at most 134 payload bytes, cut only between characters. ``ref`` is the
    8-bit concatenation reference (0..255).
    """
    if not 0 <= ref <= 0xFF:
        raise LocalProtocolError(f"concatenation reference {ref} does not fit one byte")
    if isinstance(text_or_bytes, str):
        whole = encode_text(text_or_bytes, msg_fmt)
    else:
        whole = bytes(text_or_bytes)
    if len(whole) <= SINGLE_PART_BYTES:
        return [Part(0, 1, 1, whole)]
    chunks: list[bytes] = []
    current = bytearray()
    for unit in _units(text_or_bytes, msg_fmt):
        if len(current) + len(unit) > PART_PAYLOAD_BYTES:
            chunks.append(bytes(current))
            current = bytearray()
        current += unit
    if current:
        chunks.append(bytes(current))
    total = len(chunks)
    if total > MAX_PARTS:
        raise LocalProtocolError(f"message needs {total} parts, more than {MAX_PARTS}")
    return [
        Part(1, total, seq, concat_udh(ref, total, seq) + chunk)
        for seq, chunk in enumerate(chunks, start=1)
    ]


class ConcatInfo(NamedTuple):
    """What a concatenation UDH says, and where the payload starts."""

    ref: int
    total: int
    seq: int
    payload: bytes


def parse_concat_udh(content: bytes) -> ConcatInfo | None:
    """Parse the UDH at the start of ``content`` (TP_udhi = 1).

    Returns None when the UDH is well-formed but holds no concatenation element (the payload
    is then a message of its own); raises RemoteProtocolError when it is malformed.
    """
    if not content:
        raise RemoteProtocolError("TP_udhi set but Msg_Content is empty")
    udhl = content[0]
    if 1 + udhl > len(content):
        raise RemoteProtocolError(f"UDH length {udhl} exceeds Msg_Content of {len(content)}")
    udh = content[1 : 1 + udhl]
    payload = content[1 + udhl :]
    pos = 0
    found: tuple[int, int, int] | None = None
    while pos < len(udh):
        if pos + 2 > len(udh):
            raise RemoteProtocolError("truncated UDH information element")
        iei, iedl = udh[pos], udh[pos + 1]
        data = udh[pos + 2 : pos + 2 + iedl]
        if len(data) != iedl:
            raise RemoteProtocolError("truncated UDH information element")
        if iei == 0x00 and iedl == 3:
            found = (data[0], data[1], data[2])
        elif iei == 0x08 and iedl == 4:
            found = ((data[0] << 8) | data[1], data[2], data[3])
        pos += 2 + iedl
    if found is None:
        return None
    ref, total, seq = found
    if total == 0 or not 1 <= seq <= total:
        raise RemoteProtocolError(f"concatenation part {seq} of {total} is impossible")
    return ConcatInfo(ref, total, seq, payload)


class Reassembled(msgspec.Struct, frozen=True, kw_only=True):
    """A reassembled MO: payloads joined in part order (UDH removed).

    ``complete`` is False for a group given up on after its timeout; ``content`` then holds
    the parts that did arrive, in order, and ``missing`` the part numbers that did not.
    ``meta`` is what the caller passed with the group's first part.
    """

    sender: str
    ref: int
    total: int
    content: bytes
    first_seen: float
    complete: bool = True
    missing: tuple[int, ...] = ()
    meta: Any = None


class _Group:
    __slots__ = ("first_seen", "parts", "meta")

    def __init__(self, now: float, meta: Any) -> None:
        self.first_seen = now
        self.meta = meta
        self.parts: dict[int, bytes] = {}


class Reassembler:
    """Collects MO parts keyed by (sender, ref, total): any order, duplicates ignored.

    Sans-IO: every call takes ``now`` (float seconds, the caller's clock). Groups older than
    ``timeout`` are given up on; at most ``max_groups`` incomplete groups are kept, the
    oldest being given up on first. Given-up groups come back from :meth:`expire` (and from
    :meth:`add`'s eviction, through :meth:`take_expired`) so the caller can still deliver
    what arrived.
    """

    def __init__(self, *, timeout: float, max_groups: int = MAX_PENDING_GROUPS) -> None:
        if timeout <= 0 or max_groups < 1:
            raise LocalProtocolError("Reassembler needs timeout > 0 and max_groups >= 1")
        self.timeout = timeout
        self.max_groups = max_groups
        self._groups: OrderedDict[tuple[str, int, int], _Group] = OrderedDict()
        self._given_up: list[Reassembled] = []
        self.duplicates = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._groups)

    def add(
        self, sender: str, content: bytes, *, udhi: bool, now: float, meta: Any = None
    ) -> Reassembled | None:
        """Add one received Msg_Content; return the whole message once complete.

        Content without UDH (or whose UDH has no concatenation element) is complete at once.
        A malformed UDH raises RemoteProtocolError. ``meta`` (e.g. the destination and
        Msg_Fmt) is kept with a new group and returned with it.
        """
        if not udhi:
            return Reassembled(
                sender=sender, ref=0, total=1, content=content, first_seen=now, meta=meta
            )
        info = parse_concat_udh(content)
        if info is None:
            payload = content[1 + content[0] :]
            return Reassembled(
                sender=sender, ref=0, total=1, content=payload, first_seen=now, meta=meta
            )
        if info.total == 1:
            return Reassembled(
                sender=sender, ref=info.ref, total=1, content=info.payload, first_seen=now,
                meta=meta,
            )
        self._expire_old(now)
        key = (sender, info.ref, info.total)
        group = self._groups.get(key)
        if group is None:
            while len(self._groups) >= self.max_groups:
                old_key, old = self._groups.popitem(last=False)
                self.evicted += 1
                self._given_up.append(self._partial(old_key, old))
            group = self._groups[key] = _Group(now, meta)
        if info.seq in group.parts:
            self.duplicates += 1
            return None
        group.parts[info.seq] = info.payload
        if len(group.parts) < info.total:
            return None
        del self._groups[key]
        content_all = b"".join(group.parts[i] for i in range(1, info.total + 1))
        return Reassembled(
            sender=sender, ref=info.ref, total=info.total, content=content_all,
            first_seen=group.first_seen, meta=group.meta,
        )

    def _partial(self, key: tuple[str, int, int], group: _Group) -> Reassembled:
        sender, ref, total = key
        return Reassembled(
            sender=sender,
            ref=ref,
            total=total,
            content=b"".join(group.parts[i] for i in sorted(group.parts)),
            first_seen=group.first_seen,
            complete=False,
            missing=tuple(i for i in range(1, total + 1) if i not in group.parts),
            meta=group.meta,
        )

    def expire(self, now: float) -> list[Reassembled]:
        """Give up on groups older than the timeout; return them and any evicted earlier."""
        self._expire_old(now)
        return self.take_expired()

    def _expire_old(self, now: float) -> None:
        while self._groups:
            key, group = next(iter(self._groups.items()))
            if now - group.first_seen < self.timeout:
                break
            del self._groups[key]
            self.expired += 1
            self._given_up.append(self._partial(key, group))

    def take_expired(self) -> list[Reassembled]:
        """Groups given up on (timed out or evicted) since the last call."""
        given_up, self._given_up = self._given_up, []
        return given_up

    def next_expiry(self) -> float | None:
        """When the oldest pending group times out, or None."""
        if not self._groups:
            return None
        return next(iter(self._groups.values())).first_seen + self.timeout
