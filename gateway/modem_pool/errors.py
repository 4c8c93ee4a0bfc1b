"""Errors of the modem pool: AT command exchange and TS 23.040 PDUs.

After h11: :class:`LocalProtocolError` means we asked for something the protocol does not
allow (a second command while one is in flight, a number too long for TP-DA);
:class:`RemoteProtocolError` means the modem or the network sent something malformed
(truncated PDU hex, an unparsable ``+CSQ`` line).
"""

from __future__ import annotations

from gateway.errors import GatewayError


class ModemError(GatewayError):
    """Base of every error raised by :mod:`gateway.modem_pool`."""


class ProtocolError(ModemError):
    """The AT or PDU protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We misbehaved: the request cannot be expressed or is not allowed now."""


class RemoteProtocolError(ProtocolError):
    """The peer misbehaved: what it sent cannot be parsed."""


class PduError(RemoteProtocolError):
    """A TS 23.040 PDU is truncated, malformed or not of the expected type."""


class PduEncodeError(LocalProtocolError):
    """The fields given cannot be encoded into a TS 23.040 PDU."""


class ModemUnavailable(ModemError):
    """The serial device cannot be opened, or went away (unplugged, I/O error)."""


class CommandError(ModemError):
    """The modem answered a command with an error result (``ERROR``, ``+CME``/``+CMS ERROR``).

    ``result`` is the :class:`gateway.modem_pool.at.FinalResult`; ``code`` the numeric error.
    """

    def __init__(self, command: str, result: object, code: int | None, text: str = "") -> None:
        self.command = command
        self.result = result
        self.code = code
        self.text = text
        detail = f" {code}" if code is not None else (f" {text}" if text else "")
        super().__init__(f"{command}: {getattr(result, 'value', result)}{detail}")
