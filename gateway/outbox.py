"""The gateway's own sender: MTs that the gateway itself originates (MO replies, CRM notices)
go through the same intake as the HTTP API's, so they are durable, routed and tracked alike."""

from __future__ import annotations

from .intake import Intake
from .store import AcceptRequest, NewMessage
from .text import normalize_msisdn, operator_of, plan

DEFAULT_VALIDITY_S = 86_400
MAX_PARTS = 10


class IntakeOutbox:
    """:class:`gateway.router.commands.Outbox` over the intake (group commit)."""

    def __init__(self, intake: Intake, *, max_parts: int = MAX_PARTS, timeout: float = 10.0) -> None:
        self._intake = intake
        self._max_parts = max_parts
        self._timeout = timeout

    async def send(self, *, account_id: int, to: str, text: str, msg_class: str = "transactional",
                   priority: int = 1, client_ref: str | None = None) -> list[int]:
        """Raises :class:`~gateway.text.InvalidNumber`, :class:`~gateway.text.EmptyText` or
        :class:`~gateway.text.TooLong` for what the API would refuse with a 400 or 413."""
        dest = normalize_msisdn(to)
        segments = plan(text, max_parts=self._max_parts)
        request = AcceptRequest(
            account_id=account_id, client_ref=client_ref, priority=priority, msg_class=msg_class,
            validity_s=DEFAULT_VALIDITY_S,
            messages=(NewMessage(dest=dest, operator=str(operator_of(dest).value), body=text,
                                 encoding=segments.encoding, parts=len(segments.parts)),))
        result = await self._intake.accept(request, timeout=self._timeout)
        return [m.id for m in result.messages]
