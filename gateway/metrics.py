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

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The gateway's metrics; one instance per gateway (no module-level state)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition for no use
        r = self.registry = CollectorRegistry(auto_describe=True)
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
        self.limit_waits = Counter(
            "smsgw_limit_waits_total", "Messages that waited on a limit, by scope (channel, recipient, account)",
            ["scope"], registry=r)
        self.retries = Counter(
            "smsgw_message_retries_total", "Transient submit failures sent back to the queue, by failing channel",
            ["channel"], registry=r)
        self.routing_version = Gauge(
            "smsgw_routing_table_version", "Version of the routing table in force on this node", registry=r)

    def watch_links(self, channels: Callable[[], Iterable[object]]) -> None:
        """Export the links of channels that have ``statistics()`` (read at scrape time)."""
        self.registry.register(_LinkCollector(channels))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


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
