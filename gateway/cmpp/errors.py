"""CMPP errors, split by who misbehaved (after h11): we did, or the peer did."""

from __future__ import annotations

from gateway.errors import GatewayError


class ProtocolError(GatewayError):
    """Something about the CMPP exchange is wrong; ``reason`` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We were asked to send something CMPP does not allow (our bug or bad input)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something CMPP does not allow (bad frame, bad field, bad order)."""


class LinkError(GatewayError):
    """The link driver was used wrongly (e.g. its event channel was closed under it)."""
