"""Modem SIM quotas: the parts each modem sent per local day, kept across restarts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from .core import StoreCore


class ModemQuotaStore(StoreCore):
    """Sent counts per modem and day (see :class:`gateway.modem_channel.ModemChannel`)."""

    async def modem_sent_counts(self, day: date) -> dict[str, int]:
        """Parts each modem (by name) sent on ``day`` (a local day), as recorded."""
        rows = await self.fetch("SELECT modem, sent FROM modem_quota WHERE day = $1", day)
        return {r["modem"]: r["sent"] for r in rows}

    async def add_modem_sent(self, counts: Sequence[tuple[str, date, int]]) -> None:
        """Add (modem, day, parts) to the recorded counts, in one statement."""
        if not counts:
            return
        await self.execute(
            "INSERT INTO modem_quota (modem, day, sent)"
            " SELECT * FROM unnest($1::text[], $2::date[], $3::integer[])"
            " ON CONFLICT (modem, day) DO UPDATE"
            " SET sent = modem_quota.sent + EXCLUDED.sent, updated_at = now()",
            *[list(c) for c in zip(*counts)],
        )
