"""Accept → submitted and accept → delivered latency per channel kind, from messages' histories.

The generator keeps a uniform sample of accepted message ids per *route* (the kind of channel
the scenario addressed: ``cmpp`` for China Mobile numbers, ``modem`` for China Unicom numbers
that the gateway sends through its modems). After the drain the runner reads each sampled
message back (``GET /v1/messages/{id}``: the gateway's own history rows, timestamped by the
database), and :func:`route_latency` turns those histories into percentiles. Pure: no I/O, no
clock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

from .scenarios import ROUTE_CMPP, ROUTE_MODEM

__all__ = ["ROUTES", "MessageTimes", "delivery_report", "message_times", "percentile", "route_latency"]

ROUTES = (ROUTE_CMPP, ROUTE_MODEM)
"""The routes the scenarios address, in report order."""
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


class _Event(msgspec.Struct):
    status: str
    at: datetime


class _View(msgspec.Struct):
    id: str
    status: str
    channel: str | None = None
    events: list[_Event] = []


_view_decoder = msgspec.json.Decoder(_View)


@dataclass(frozen=True, slots=True)
class MessageTimes:
    """One message's history reduced to what the latency needs; seconds, None when not reached."""

    channel: str | None
    status: str
    to_submitted: float | None
    to_delivered: float | None
    to_queued: float | None = None
    """To ``queued``: the dispatcher claimed it and chose its channel."""


def message_times(body: bytes) -> MessageTimes:
    """A ``GET /v1/messages/{id}`` body → seconds from acceptance to the first ``submitted``
    and to ``delivered`` (a message of several parts is submitted when its first part is)."""
    view = _view_decoder.decode(body)
    first: dict[str, datetime] = {}
    for event in view.events:
        first.setdefault(event.status, event.at)
    accepted = first.get("accepted")

    def since(status: str) -> float | None:
        at = first.get(status)
        return None if accepted is None or at is None else max(0.0, (at - accepted).total_seconds())

    return MessageTimes(channel=view.channel, status=view.status, to_submitted=since("submitted"),
                        to_delivered=since("delivered"), to_queued=since("queued"))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted or not); 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(values: Sequence[float]) -> dict[str, float]:
    out = {name: round(percentile(values, p) * 1000, 1) for name, p in PERCENTILES}
    out["max"] = round(max(values) * 1000, 1) if values else 0.0
    out["count"] = len(values)
    return out


def route_latency(times: Iterable[MessageTimes]) -> dict[str, object]:
    """Percentiles (ms) of accept → queued (claimed and routed), accept → submitted and
    accept → delivered over one route's sample,
    the channels the sample went through, and how many never got there."""
    queued: list[float] = []
    submitted: list[float] = []
    delivered: list[float] = []
    channels: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    sampled = 0
    for t in times:
        sampled += 1
        channels[t.channel or "-"] += 1
        statuses[t.status] += 1
        if t.to_queued is not None:
            queued.append(t.to_queued)
        if t.to_submitted is not None:
            submitted.append(t.to_submitted)
        if t.to_delivered is not None:
            delivered.append(t.to_delivered)
    return {
        "sampled": sampled,
        "channels": dict(sorted(channels.items())),
        "statuses": dict(sorted(statuses.items())),
        "accept_to_queued_ms": _ms(queued),
        "accept_to_submitted_ms": _ms(submitted),
        "accept_to_delivered_ms": _ms(delivered),
        "not_submitted": sampled - len(submitted),
        "not_delivered": sampled - len(delivered),
    }


def delivery_report(times: Mapping[str, Iterable[MessageTimes]], accepted: Mapping[str, int],
                    send_seconds: float) -> dict[str, dict[str, object]]:
    """Per route: messages accepted and the rate they were offered at (accepted over the
    sending time), then :func:`route_latency` of its sample."""
    out: dict[str, dict[str, object]] = {}
    order = {r: i for i, r in enumerate(ROUTES)}
    for route in sorted(set(times) | set(accepted), key=lambda r: (order.get(r, len(ROUTES)), r)):
        n = accepted.get(route, 0)
        out[route] = {"accepted": n,
                      "offered_per_s": round(n / send_seconds, 2) if send_seconds > 0 else 0.0,
                      **route_latency(times.get(route, ()))}
    return out
