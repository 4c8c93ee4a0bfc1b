"""Every Prometheus metric the gateway exports, declared once, on a registry of its own.

Names follow Prometheus conventions: the ``smsgw_`` prefix, counters end in ``_total``,
durations are ``_seconds`` histograms. Labels stay bounded: channel, status, route, code —
never a phone number or a message id. Drivers update these; protocol cores expose
``statistics()`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .events import Event, EventBus, LimitEvent

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The gateway's metrics; one instance per gateway (no module-level state)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition for no use
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._watched: list[Callable[[], Iterable[object]]] = []
        self.api_requests = Counter(
            "smsgw_api_requests_total", "HTTP API requests by route and status code", ["route", "code"], registry=r)
        self.api_latency = Histogram(
            "smsgw_api_request_duration_seconds", "HTTP API request handling time", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.messages_accepted = Counter(
            "smsgw_messages_accepted_total", "Messages accepted and stored", registry=r)
        self.message_parts_accepted = Counter(
            "smsgw_message_parts_accepted_total", "SMS parts of the messages accepted", registry=r)
        self.messages = Counter(
            "smsgw_messages_total", "Message status transitions by status and channel", ["status", "channel"],
            registry=r)
        self.intake_batch_rows = Histogram(
            "smsgw_intake_batch_requests", "Requests committed together in one group commit",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000), registry=r)
        self.intake_commit = Histogram(
            "smsgw_intake_commit_duration_seconds", "Time to commit one batch of accepted messages",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "smsgw_queue_depth", "Messages in the outbound queue (accepted, not yet submitted)", registry=r)
        self.channel_up = Gauge("smsgw_channel_up", "1 when the channel can send", ["channel"], registry=r)
        self.reports_unmatched = Counter(
            "smsgw_delivery_reports_unmatched_total", "Delivery reports that matched no message after the grace period",
            ["channel"], registry=r)
        self.messages_purged = Counter(
            "smsgw_messages_purged_total", "Finished messages deleted by retention ([retention] days)", registry=r)
        self.webhooks = Counter(
            "smsgw_webhook_attempts_total", "Delivery webhook attempts by result (delivered, retry, failed)",
            ["result"], registry=r)
        self.mo_received = Counter("smsgw_mo_received_total", "Inbound messages received", ["channel"], registry=r)
        # MO dispatch and compliance
        self.mo_dispatched = Counter(
            "smsgw_mo_dispatched_total", "Inbound messages dispatched, by command (a known keyword or other)"
            " and outcome", ["command", "outcome"], registry=r)
        self.compliance_refused = Counter(
            "smsgw_compliance_refused_total", "Messages refused before sending, by reason (blocklisted,"
            " unsubscribed)", ["reason"], registry=r)
        # -- routing and limits --
        self.retries = Counter(
            "smsgw_message_retries_total", "Transient submit failures sent back to the queue, by failing channel",
            ["channel"], registry=r)
        self.routing_version = Gauge(
            "smsgw_routing_table_version", "Version of the routing table in force on this node", registry=r)
        self._declare_operations(r)
        self._declare_points_expiry(r)

    def watch_links(self, channels: Callable[[], Iterable[object]]) -> None:
        """Export the links of channels that have ``statistics()`` (read at scrape time)."""
        self.registry.register(_LinkCollector(channels))
        self._watched.append(channels)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- operations: queue, modems, limits, MO commands, CRM, admin stream ----------------------

    def _declare_operations(self, r: CollectorRegistry) -> None:
        self.queue_messages = Gauge(
            "smsgw_queue_messages", "Messages in the outbound queue by class (sampled)", ["class"], registry=r)
        self.queue_oldest_age = Gauge(
            "smsgw_queue_oldest_age_seconds", "Age of the oldest message in the outbound queue by class (sampled)",
            ["class"], registry=r)
        # Counted by the drivers (dispatcher, API), which know how many messages a wait held;
        # the bus only carries how long (limit_wait_seconds).
        self.limit_waits = Counter(
            "smsgw_rate_limit_waits_total", "Sends that waited or were refused for a rate limit or quota, by scope"
            " (channel, recipient, account)", ["scope"], registry=r)
        self.limit_wait_seconds = Histogram(
            "smsgw_rate_limit_wait_seconds", "How long a rate limit made a send wait, by scope", ["scope"],
            buckets=_WAIT_BUCKETS, registry=r)
        self.crm_events = Counter(
            "smsgw_crm_events_total", "CRM events by kind (member joined, points, lottery, approval, ...)",
            ["kind"], registry=r)
        self.admin_viewers = Gauge("smsgw_admin_viewers", "Admin stream viewers connected", registry=r)
        self.admin_frames = Counter("smsgw_admin_frames_total", "Frames sent to admin stream viewers", registry=r)
        self.admin_dropped = Counter(
            "smsgw_admin_dropped_events_total", "Events admin viewers missed (behind, or over their frame rate)",
            registry=r)
        self.admin_refused = Counter(
            "smsgw_admin_refused_total", "Admin stream handshakes refused, by reason", ["reason"], registry=r)
        self.admin_disconnects = Counter(
            "smsgw_admin_disconnects_total", "Admin viewers disconnected by the gateway, by reason", ["reason"],
            registry=r)
        r.register(_ModemCollector(self._watched))
        self._crm_label = _BoundedLabel()
        self._scope_label = _BoundedLabel()

    def count_crm(self, kind: str, n: int = 1) -> None:
        """Count ``n`` CRM events of ``kind`` (at most ``LABEL_VALUES_MAX`` distinct kinds)."""
        self.crm_events.labels(self._crm_label(kind)).inc(n)

    def observe_event(self, event: Event) -> None:
        """Observe what only the bus carries: how long a limit made sends wait. (The drivers
        count the waits themselves, in ``limit_waits``; MO dispatch counts commands in
        ``mo_dispatched``.)"""
        if type(event) is LimitEvent and event.wait_s > 0:
            self.limit_wait_seconds.labels(self._scope_label(event.scope)).observe(event.wait_s)

    async def sample_queue(self, store) -> None:
        """Read the queue's depth and oldest age per class from ``store`` into the gauges.

        Called when Prometheus scrapes and by the admin stream's sampler, never per request.
        """
        stats = await store.queue_stats()
        total = 0
        for klass in ("transactional", "marketing"):
            depth, oldest = stats.get(klass, (0, 0.0))
            total += depth
            self.queue_messages.labels(klass).set(depth)
            self.queue_oldest_age.labels(klass).set(oldest)
        self.queue_depth.set(total)

    # -- crm_lite's scheduled points expiry ---------------------------------------------------

    def _declare_points_expiry(self, r: CollectorRegistry) -> None:
        self.points_expired = Counter(
            "smsgw_crm_points_expired_total", "Loyalty points expired by the scheduled expiry", registry=r)
        self.points_expiry_rounds = Counter(
            "smsgw_crm_points_expiry_rounds_total", "Scheduled points expiry rounds, by result (ok, failed)",
            ["result"], registry=r)

    def count_points_expiry(self, points: int, *, failed: bool) -> None:
        """Count one expiry round that expired ``points`` (``failed``: some merchant's run failed)."""
        self.points_expired.inc(points)
        self.points_expiry_rounds.labels("failed" if failed else "ok").inc()

    def totals(self) -> dict[str, float]:
        """Running totals the admin stream turns into rates: ``accepted``, each status, ``mo``."""
        out = {"accepted": _sum(self.messages_accepted)}
        for metric in self.messages.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels.get("status", "")
                    out[status] = out.get(status, 0.0) + sample.value
        out["mo"] = _sum(self.mo_received)
        return out


_LINK_GAUGES = {
    "up": ("smsgw_link_up", "1 when the link is connected and logged in"),
    "window_used": ("smsgw_link_window_used", "Requests sent and not yet answered on the link"),
    "window": ("smsgw_link_window_size", "The link's window: requests it may have unanswered"),
    "queued": ("smsgw_link_queued", "Submits waiting for the link's window or rate"),
    "rate": ("smsgw_link_rate_limit", "The link's configured submit rate (messages per second)"),
}
_LINK_COUNTERS = {
    "submitted": ("smsgw_link_submits", "SUBMITs written to the link"),
    "acked": ("smsgw_link_submits_acked", "SUBMITs acknowledged with Result 0"),
    "flow_controlled": ("smsgw_link_flow_controlled", "SUBMITs answered with flow control (Result 8)"),
    "resubmitted": ("smsgw_link_resubmitted", "SUBMITs sent again after a timeout or a reconnect"),
    "reports": ("smsgw_link_status_reports", "Status reports received"),
    "mo": ("smsgw_link_mo", "Mobile-originated messages received"),
    "connects": ("smsgw_link_connects", "TCP connections opened"),
}


class _LinkCollector:
    """Reads link statistics from the channels when Prometheus scrapes."""

    def __init__(self, channels: Callable[[], Iterable[object]]) -> None:
        self._channels = channels

    def describe(self):
        return []

    def collect(self):
        gauges = {k: GaugeMetricFamily(n, h, labels=["channel", "link"]) for k, (n, h) in _LINK_GAUGES.items()}
        counters = {k: CounterMetricFamily(n, h, labels=["channel", "link"]) for k, (n, h) in _LINK_COUNTERS.items()}
        for channel in self._channels():
            stats = getattr(channel, "statistics", None)
            if stats is None:
                continue
            for link, values in stats().items():
                for key, family in gauges.items():
                    if key in values:
                        family.add_metric([channel.name, link], values[key])
                for key, family in counters.items():
                    if key in values:
                        family.add_metric([channel.name, link], values[key])
        yield from gauges.values()
        yield from counters.values()


# -- operations (see Metrics._declare_operations) ------------------------------------------------

LABEL_VALUES_MAX = 32
"""Distinct values a free-form label (MO command, CRM event kind, limit scope) may take; later
ones are counted as ``other`` so that a stream of odd inputs cannot grow the exposition."""

_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _BoundedLabel:
    """Maps free-form values onto at most ``LABEL_VALUES_MAX`` label values."""

    def __init__(self, empty: str = "none") -> None:
        self._seen: set[str] = set()
        self._empty = empty

    def __call__(self, value: str) -> str:
        if not value:
            return self._empty
        if value in self._seen:
            return value
        if len(self._seen) >= LABEL_VALUES_MAX:
            return "other"
        self._seen.add(value)
        return value


def _sum(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


_MODEM_GAUGES = {
    "up": ("smsgw_modem_up", "1 when the modem is up (SIM ready, registered, answering)"),
    "rssi": ("smsgw_modem_signal_rssi", "Signal strength as +CSQ reports it: 0 (-113 dBm) to 31 (-51 dBm or more)"),
    "registered": ("smsgw_modem_registered", "1 when the modem is registered on its network (+CREG 1 or 5)"),
    "sent_today": ("smsgw_modem_sent_today", "Messages the SIM sent today (its daily quota counts these)"),
    "queued": ("smsgw_modem_queued", "Sends waiting for the modem"),
}


class _ModemCollector:
    """Reads the modems of channels that have ``modem_statistics()`` when Prometheus scrapes."""

    def __init__(self, watched: list[Callable[[], Iterable[object]]]) -> None:
        self._watched = watched

    def describe(self):
        return []

    def collect(self):
        families = {k: GaugeMetricFamily(n, h, labels=["channel", "modem"]) for k, (n, h) in _MODEM_GAUGES.items()}
        for channels in self._watched:
            for channel in channels():
                stats = getattr(channel, "modem_statistics", None)
                if stats is None:
                    continue
                for modem, values in stats().items():
                    for key, family in families.items():
                        value = values.get(key)
                        if value is not None:
                            family.add_metric([channel.name, modem], value)
        yield from families.values()


class MeteredBus(EventBus):
    """The event bus, observing into ``metrics`` what only travels on it (limit wait
    durations). One type test per event; nothing is built when nobody listens."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def publish(self, event: Event) -> None:
        self._metrics.observe_event(event)
        super().publish(event)
