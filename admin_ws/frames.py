"""The admin stream's wire format and policy, pure: frames, filters, masking.

SPEC.md "Admin websocket": every frame is a JSON object with ``type`` and ``seq`` (numbered per
connection from 1); the first is ``snapshot``; then events (``mt``, ``mo``, ``link``,
``webhook``, ``limit``), a ``stats`` frame each second, and answers to the client's frames
(``filter``, ``pong``, ``error``). A frame that follows a loss carries ``dropped``: how many
events this viewer missed since its previous frame.

Nothing here does I/O or reads a clock: the server (``admin_ws.server``) feeds events and time.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.events import Event, LimitEvent, LinkEvent, MoEvent, MtEvent, WebhookEvent
from gateway.text import mask_msisdn

MASKED_PREFIX_MAX = 3
"""Digits of a number prefix a viewer without privilege may filter on: the visible part of a
masked number (``138****8000``), so that filters cannot be used to uncover the hidden digits."""

EVENT_TYPES = ("mt", "mo", "link", "webhook", "limit")


# --- frames the server sends ---------------------------------------------------------------------


class Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    seq: int
    dropped: int = 0
    """Events missed since the previous frame (omitted when none)."""


class LinkState(msgspec.Struct, frozen=True, kw_only=True):
    """One CMPP connection of a channel."""

    name: str
    up: bool
    window_used: int
    window: int
    queued: int
    rate: float
    """SUBMITs a second over the last sampling interval."""


class ModemState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    up: bool
    rssi: int | None
    """+CSQ signal, 0 (-113 dBm) to 31 (-51 dBm); None when unknown."""
    registered: bool
    sent_today: int
    queued: int
    rate: float
    """Messages a second over the last sampling interval."""


class ChannelState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    up: bool
    links: list[LinkState] = []
    modems: list[ModemState] = []


class QueueState(msgspec.Struct, frozen=True, kw_only=True):
    depth: int
    oldest_age_s: float


class Board(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway looks like now: channels, queue, rates and totals."""

    at: float
    channels: list[ChannelState]
    queue: dict[str, QueueState]
    """By class: ``transactional``, ``marketing``."""
    rates: dict[str, float]
    """Per second over the last sampling interval: ``accepted``, each status, ``mo``."""
    totals: dict[str, float]
    """Since the gateway started."""
    viewers: int


class Snapshot(Frame, frozen=True, kw_only=True, tag="snapshot"):
    privileged: bool
    filter: dict[str, object]
    board: Board


class Stats(Frame, frozen=True, kw_only=True, tag="stats"):
    board: Board


class MtFrame(Frame, frozen=True, kw_only=True, tag="mt"):
    id: str
    account: int
    to: str
    status: str
    channel: str
    parts: int
    msg_class: str = msgspec.field(name="class")
    detail: str
    error_code: str
    at: float


class MoFrame(Frame, frozen=True, kw_only=True, tag="mo"):
    id: str
    channel: str
    sender: str = msgspec.field(name="from")
    service_number: str
    text: str | None
    """The text for a privileged viewer; ``null`` otherwise."""
    length: int
    merchant: int | None
    command: str
    at: float


class LinkFrame(Frame, frozen=True, kw_only=True, tag="link"):
    channel: str
    up: bool
    detail: str
    at: float


class WebhookFrame(Frame, frozen=True, kw_only=True, tag="webhook"):
    message_id: str | None
    kind: str
    attempt: int
    ok: bool
    status_code: int
    detail: str
    at: float


class LimitFrame(Frame, frozen=True, kw_only=True, tag="limit"):
    scope: str
    name: str
    wait_s: float
    count: int
    at: float


class FilterAck(Frame, frozen=True, kw_only=True, tag="filter"):
    filter: dict[str, object]


class Pong(Frame, frozen=True, kw_only=True, tag="pong"):
    pass


class ErrorFrame(Frame, frozen=True, kw_only=True, tag="error"):
    code: str
    message: str


ServerFrame = Snapshot | Stats | MtFrame | MoFrame | LinkFrame | WebhookFrame | LimitFrame | FilterAck | Pong | ErrorFrame


# --- frames the client sends ---------------------------------------------------------------------

Digits = Annotated[str, Meta(pattern=r"^[0-9]{1,11}$")]
Short = Annotated[str, Meta(min_length=1, max_length=64)]


class FilterRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="filter",
                    omit_defaults=True):
    """``{"type": "filter", ...}``: every criterion given must hold; an empty filter passes all.

    A criterion about something an event does not carry excludes it: ``status`` keeps only
    ``mt`` events, ``prefix`` only ``mt`` and ``mo``, ``channel`` only ``mt``, ``mo`` and ``link``.
    """

    channel: Short | None = None
    account: Short | None = None
    """Account name or id."""
    merchant: Short | None = None
    """Merchant name: its MO, and the MT of its account."""
    status: Short | list[Short] | None = None
    prefix: Digits | None = None
    """Leading digits of the number (``to`` of an MT, ``from`` of an MO), 11-digit form."""
    types: list[Literal["mt", "mo", "link", "webhook", "limit"]] | None = None


class PingRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="ping"):
    pass


ClientFrame = FilterRequest | PingRequest

_client_decoder = msgspec.json.Decoder(ClientFrame)
_encoder = msgspec.json.Encoder()
_filter_view_encoder = msgspec.json.Encoder()


class BadClientFrame(ValueError):
    """A client frame that is not JSON, not an object of a known type, or breaks a rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Decode one client frame; raises :class:`BadClientFrame` with a reason a person can act on."""
    try:
        return _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "Invalid value" in text and "$.type" in text:
            raise BadClientFrame("unknown_type", f"{text}; known types: filter, ping") from None
        raise BadClientFrame("invalid_frame", text) from None
    except msgspec.DecodeError as exc:
        raise BadClientFrame("invalid_json", f"malformed JSON: {exc}") from None


def encode(frame: ServerFrame) -> str:
    return _encoder.encode(frame).decode()


def filter_view(request: FilterRequest) -> dict[str, object]:
    """The filter as echoed back to the client (only the criteria set)."""
    view = msgspec.json.decode(_filter_view_encoder.encode(request))
    view.pop("type", None)
    return view


# --- filtering --------------------------------------------------------------------------------


class Criteria(msgspec.Struct, frozen=True, kw_only=True):
    """A filter with names resolved to ids (the server looks them up in the store)."""

    channel: str | None = None
    account_ids: frozenset[int] | None = None
    merchant_id: int | None = None
    """With ``account_ids`` set to the merchant's account."""
    statuses: frozenset[str] | None = None
    prefix: str | None = None
    types: frozenset[str] | None = None


PASS_ALL = Criteria()


def check_prefix(prefix: str | None, *, privileged: bool) -> None:
    """Refuse a prefix longer than the visible part of a masked number without privilege."""
    if prefix is not None and not privileged and len(prefix) > MASKED_PREFIX_MAX:
        raise BadClientFrame(
            "forbidden", f"a number prefix of more than {MASKED_PREFIX_MAX} digits needs the privileged admin token")


def matches(c: Criteria, event: Event) -> bool:
    """Whether ``event`` passes the criteria (see :class:`FilterRequest`)."""
    if c is PASS_ALL:
        return True
    kind = type(event)
    if c.types is not None and kind.__struct_config__.tag not in c.types:
        return False
    if kind is MtEvent:
        if c.channel is not None and event.channel != c.channel:
            return False
        if c.account_ids is not None and event.account_id not in c.account_ids:
            return False
        if c.statuses is not None and event.status not in c.statuses:
            return False
        return c.prefix is None or event.to.startswith(c.prefix)
    if c.statuses is not None:
        return False
    if kind is MoEvent:
        if c.channel is not None and event.channel != c.channel:
            return False
        if c.merchant_id is not None:
            if event.merchant_id != c.merchant_id:
                return False
        elif c.account_ids is not None:
            return False
        return c.prefix is None or event.sender.startswith(c.prefix)
    if c.prefix is not None or c.account_ids is not None or c.merchant_id is not None:
        return False
    if kind is LinkEvent:
        return c.channel is None or event.channel == c.channel
    return c.channel is None


# --- events to frames --------------------------------------------------------------------------


def to_frame(event: Event, *, seq: int, dropped: int, privileged: bool) -> Frame:
    """The frame a viewer is sent for ``event``: numbers masked and texts hidden unless
    ``privileged``."""
    kind = type(event)
    if kind is MtEvent:
        return MtFrame(seq=seq, dropped=dropped, id=str(event.id), account=event.account_id,
                       to=event.to if privileged else mask_msisdn(event.to), status=event.status,
                       channel=event.channel, parts=event.parts, msg_class=event.msg_class, detail=event.detail,
                       error_code=event.error_code, at=event.at)
    if kind is MoEvent:
        return MoFrame(seq=seq, dropped=dropped, id=str(event.id), channel=event.channel,
                       sender=event.sender if privileged else mask_msisdn(event.sender),
                       service_number=event.service_number, text=event.text if privileged else None,
                       length=len(event.text), merchant=event.merchant_id, command=event.command, at=event.at)
    if kind is LinkEvent:
        return LinkFrame(seq=seq, dropped=dropped, channel=event.channel, up=event.up, detail=event.detail,
                         at=event.at)
    if kind is WebhookEvent:
        return WebhookFrame(seq=seq, dropped=dropped,
                            message_id=None if event.message_id is None else str(event.message_id),
                            kind=event.kind, attempt=event.attempt, ok=event.ok, status_code=event.status_code,
                            detail=event.detail, at=event.at)
    if kind is LimitEvent:
        name = event.name if privileged or event.scope != "recipient" else mask_msisdn(event.name)
        return LimitFrame(seq=seq, dropped=dropped, scope=event.scope, name=name, wait_s=event.wait_s,
                          count=event.count, at=event.at)
    raise TypeError(f"not an event: {event!r}")


# --- rates ---------------------------------------------------------------------------------------


def rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Per-second rates between two readings of running totals (keys of ``after``)."""
    if seconds <= 0:
        return {k: 0.0 for k in after}
    return {k: round(max(0.0, v - before.get(k, 0.0)) / seconds, 2) for k, v in after.items()}


class FrameBudget:
    """A token bucket on frames a viewer is sent (``rate`` a second, ``burst`` at once).

    Time comes from the caller (``trio.current_time()``), as for the gateway's other limiters.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def refill(self, now: float, rate: float | None = None) -> float:
        """Add what accrued since the last call at ``rate``; returns the tokens available."""
        if rate is not None:
            self.rate = rate
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._tokens

    def take(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until one token is available."""
        return max(0.0, (1.0 - self._tokens) / self.rate)
