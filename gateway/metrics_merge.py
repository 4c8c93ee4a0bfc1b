"""The metrics of several gateway processes as one exposition (README "Metrics").

Each process of a gateway with ``[http] workers`` > 1 counts what it does in its own registry;
``/metrics`` answers the sum. Expositions in the Prometheus text format are parsed
(``prometheus_client.parser``) and every sample is summed with the samples of the same name
and labels in the others: counters, histogram buckets, sums and counts, and gauges alike (a
gauge only one process sets, such as the queue depth or a link's state, is that process's
value, since the others do not export it or export 0). Families keep the order of the first
exposition that names them; help and type come from it too.

Pure: text in, bytes out; no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from .errors import GatewayError

__all__ = ["MONOTONIC_TYPES", "MetricsMergeError", "merge_expositions", "retire_exposition"]

MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary"})
"""Metric types whose samples only grow while a process lives."""


class MetricsMergeError(GatewayError):
    """An exposition could not be parsed."""


class _Merged:
    """Families in order, samples summed by (sample name, labels)."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self.values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(self, family: Metric) -> None:
        name = family.name
        if name not in self.families:
            self.families[name] = Metric(name, family.documentation, family.type, family.unit)
            self.values[name] = {}
        values = self.values[name]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            values[key] = values.get(key, 0.0) + sample.value

    def collect(self) -> Iterable[Metric]:
        for name, family in self.families.items():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for (sample_name, labels), value in self.values[name].items():
                out.add_sample(sample_name, dict(labels), value)
            yield out


def merge_expositions(texts: Sequence[str]) -> bytes:
    """The sum of ``texts`` (Prometheus text format 0.0.4) as one exposition in that format.

    Raises :class:`MetricsMergeError` naming the exposition that does not parse."""
    return _expose(_merge(texts, monotonic_only=False))


def retire_exposition(retired: str, last: str) -> str:
    """``retired`` (what processes that exited had counted) plus the counters, histograms and
    summaries of ``last``, the last reading of a process that has now exited; its gauges are
    dropped, since nothing sets them any more.

    Added to the sum of the live processes, this keeps every counter of the whole from going
    back when a worker is replaced by a new one that counts from zero again (Prometheus would
    take the drop for a reset and count the survivors' totals once more in its ``rate``)."""
    return _expose(_merge([retired, last], monotonic_only=True)).decode("utf-8")


def _merge(texts: Sequence[str], *, monotonic_only: bool) -> _Merged:
    merged = _Merged()
    for i, text in enumerate(texts):
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            raise MetricsMergeError(f"exposition {i} does not parse: {exc}") from None
        for family in families:
            if not monotonic_only or family.type in MONOTONIC_TYPES:
                merged.add(family)
    return merged


def _expose(merged: _Merged) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(merged)
    return generate_latest(registry)
