"""Loss accounting: what the gateway and the simulator counted, against what the client sent.

The gateway's side comes from its ``/metrics`` (Prometheus text): messages accepted, status
transitions by status (the final ones: delivered, undeliverable, expired, rejected, failed),
MOs received. Figures are differences between two scrapes, so a long-running target's
history does not count (other traffic during the run does: say so when targeting a shared
gateway). Pure: parsing and arithmetic only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["FINAL_STATUSES", "GatewayCounts", "Accounting", "parse_metrics", "account"]

FINAL_STATUSES = ("delivered", "undeliverable", "expired", "rejected", "failed")

_SAMPLE_RE = re.compile(r'^(smsgw_[a-z_]+?)(?:\{([^}]*)\})?\s+([0-9.eE+\-]+|NaN|\+Inf)\s*$')
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class GatewayCounts:
    """The gateway's counters at one moment."""

    accepted: float = 0.0
    by_status: dict[str, float] = field(default_factory=dict)
    mo_received: float = 0.0
    by_channel: dict[tuple[str, str], float] = field(default_factory=dict)
    """Transitions by (status, channel)."""
    reports_unmatched: float = 0.0
    """Delivery reports the gateway gave up matching to a message."""

    @property
    def final(self) -> float:
        return sum(self.by_status.get(s, 0.0) for s in FINAL_STATUSES)

    def minus(self, before: GatewayCounts) -> GatewayCounts:
        statuses = set(self.by_status) | set(before.by_status)
        keys = set(self.by_channel) | set(before.by_channel)
        return GatewayCounts(
            accepted=self.accepted - before.accepted,
            by_status={s: self.by_status.get(s, 0.0) - before.by_status.get(s, 0.0) for s in statuses},
            mo_received=self.mo_received - before.mo_received,
            reports_unmatched=self.reports_unmatched - before.reports_unmatched,
            by_channel={k: self.by_channel.get(k, 0.0) - before.by_channel.get(k, 0.0) for k in keys})

    def on(self, status: str, channel: str) -> float:
        return self.by_channel.get((status, channel), 0.0)


def parse_metrics(text: str) -> GatewayCounts:
    """The counters load accounting needs, summed over channels, from an exposition."""
    accepted = 0.0
    mo = 0.0
    unmatched = 0.0
    by_status: dict[str, float] = {}
    by_channel: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("smsgw_"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "smsgw_messages_accepted_total":
            accepted += value
        elif name == "smsgw_mo_received_total":
            mo += value
        elif name == "smsgw_delivery_reports_unmatched_total":
            unmatched += value
        elif name == "smsgw_messages_total":
            label = dict(_LABEL_RE.findall(labels))
            status, channel = label.get("status", ""), label.get("channel", "")
            by_status[status] = by_status.get(status, 0.0) + value
            by_channel[(status, channel)] = by_channel.get((status, channel), 0.0) + value
    return GatewayCounts(accepted=accepted, by_status=by_status, mo_received=mo, by_channel=by_channel,
                         reports_unmatched=unmatched)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    expected: float
    actual: float

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True, slots=True)
class Accounting:
    accepted: int
    """Messages the client saw acknowledged (MT recipients in 202s, plus MOs acknowledged)."""
    final: int
    """Of those, how many reached a final state (MTs) or were stored (MOs), per the gateway."""
    delivered: int
    lost: int
    duplicates: int | None
    """None when nothing could count them (a target without the load test's simulator)."""
    checks: list[Check]

    @property
    def clean(self) -> bool:
        return self.lost == 0 and not self.duplicates and all(c.ok for c in self.checks)


def account(*, mt_accepted: int, mo_accepted: int, delta: GatewayCounts, sim: dict[str, int] | None,
            cmpp_channel: str | None = None, handsets: dict[str, int] | None = None) -> Accounting:
    """Compare the client's acknowledgements with the gateway's counters and, when there is
    one, the simulator's (``sim``: the ISMG's counts; ``cmpp_channel``: the gateway's name for
    the link to it; ``handsets``: what the emulated modems' handsets received, and repeats).
    ``lost`` is what was acknowledged and never reached a final state (or, for MOs, was
    acknowledged to the handset and not stored)."""
    mt_final = int(delta.final)
    mo_stored = int(delta.mo_received)
    lost = max(0, mt_accepted - mt_final) + max(0, mo_accepted - mo_stored)
    # The gateway storing more MOs than the handsets sent is a duplicate on the MO side.
    mo_duplicates = max(0, mo_stored - mo_accepted)
    checks = [Check("gateway accepted = client accepted (MT)", mt_accepted, int(delta.accepted))]
    duplicates: int | None = None
    if sim is not None:
        duplicates = int(sim.get("duplicates", 0)) + mo_duplicates
        unique_submits = int(sim.get("accepted", 0)) - int(sim.get("duplicates", 0))
        submitted, delivered = delta.by_status.get("submitted", 0), delta.by_status.get("delivered", 0)
        if cmpp_channel is not None:
            # The gateway labels a batch of "submitted" transitions with its first event's channel,
            # so the CMPP share is the total less what the modems delivered (every message
            # submitted to a modem was delivered once the run drained).
            delivered = delta.on("delivered", cmpp_channel)
            submitted -= delta.by_status.get("delivered", 0) - delivered
        checks.append(Check("simulator unique SUBMITs = gateway submitted", int(submitted), unique_submits))
        # The load test's simulator reports every message DELIVRD.
        checks.append(Check("simulator reports acked = gateway delivered", int(sim.get("reports_acked", 0)),
                            int(delivered)))
        if handsets is not None and cmpp_channel is not None:
            duplicates += int(handsets.get("duplicates", 0))
            via_modems = delta.by_status.get("delivered", 0) - delta.on("delivered", cmpp_channel)
            checks.append(Check("handsets' messages from modems = gateway delivered via modems", int(via_modems),
                                int(handsets.get("received", 0))))
        if mo_accepted:
            checks.append(Check("simulator MOs acked = gateway MOs stored", int(sim.get("mo_acked", 0)), mo_stored))
    elif mo_duplicates:
        duplicates = mo_duplicates
    return Accounting(accepted=mt_accepted + mo_accepted, final=mt_final + min(mo_stored, mo_accepted),
                      delivered=int(delta.by_status.get("delivered", 0)), lost=lost, duplicates=duplicates,
                      checks=checks)
