"""Stored messages as the API and the admin views show them: the row and its history."""

from __future__ import annotations

from .core import StoreCore
from .records import MessageEvent, MessageView


class MessageStore(StoreCore):
    """Look-ups of stored messages, by id or by recipient."""

    async def message(self, message_id: int, account_id: int | None = None) -> MessageView | None:
        row = await self.fetchrow(
            "SELECT id, account_id, dest, body, status, channel, parts, created_at, callback_url, error_code"
            " FROM messages WHERE id = $1",
            message_id,
        )
        if row is None or (account_id is not None and row["account_id"] != account_id):
            return None
        # The acceptance is the message row itself (created_at): no history row is written
        # for it, which saves a quarter of the rows an accepted message costs.
        events = [MessageEvent("accepted", row["created_at"], "")] + [
            MessageEvent(e["status"], e["at"], e["detail"]) for e in await self.fetch(
                "SELECT status, at, detail FROM message_events WHERE message_id = $1 ORDER BY at, ctid",
                message_id)]
        return MessageView(
            id=row["id"], account_id=row["account_id"], dest=row["dest"], body=row["body"],
            status=row["status"], channel=row["channel"], parts=row["parts"],
            created_at=row["created_at"], callback_url=row["callback_url"], error_code=row["error_code"],
            events=tuple(events),
        )

    async def messages_to(self, dest: str, limit: int = 20) -> list[MessageView]:
        """The latest ``limit`` messages to ``dest`` (11-digit form), newest first, with history."""
        ids = [r["id"] for r in await self.fetch(
            "SELECT id FROM messages WHERE dest = $1 ORDER BY created_at DESC, id DESC LIMIT $2", dest, limit)]
        views = [await self.message(i) for i in ids]
        return [v for v in views if v is not None]
