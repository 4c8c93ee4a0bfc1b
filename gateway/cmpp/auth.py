"""CONNECT authentication: AuthenticatorSource and AuthenticatorISMG (cmpp.md "CONNECT").

Pure functions over bytes; the timestamp is passed in (the core has no clock).
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.cmpp.errors import LocalProtocolError

__all__ = [
    "timestamp",
    "timestamp_text",
    "authenticator_source",
    "authenticator_ismg",
    "verify_authenticator_source",
    "verify_authenticator_ismg",
]


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode("ascii")


def timestamp(month: int, day: int, hour: int, minute: int, second: int) -> int:
    """The CONNECT Timestamp: decimal MMDDHHMMSS read as a number (e.g. 1123092000)."""
    for name, value, low, high in (
        ("month", month, 1, 12),
        ("day", day, 1, 31),
        ("hour", hour, 0, 23),
        ("minute", minute, 0, 59),
        ("second", second, 0, 59),
    ):
        if not low <= value <= high:
            raise LocalProtocolError(f"timestamp {name}={value} outside {low}..{high}")
    return int(f"{month:02d}{day:02d}{hour:02d}{minute:02d}{second:02d}")


def timestamp_text(value: int) -> str:
    """The 10-character ``MMDDHHMMSS`` string hashed into AuthenticatorSource."""
    if not 0 <= value <= 9_999_999_999:
        raise LocalProtocolError(f"timestamp {value} is not MMDDHHMMSS")
    return f"{value:010d}"


def authenticator_source(source_addr: str, secret: str | bytes, timestamp_value: int) -> bytes:
    """MD5(Source_Addr + 9 zero bytes + secret + timestamp as MMDDHHMMSS)."""
    data = (
        source_addr.encode("ascii")
        + b"\x00" * 9
        + _secret_bytes(secret)
        + timestamp_text(timestamp_value).encode("ascii")
    )
    return hashlib.md5(data).digest()


def authenticator_ismg(
    status: int, auth_source: bytes, secret: str | bytes, *, status_width: int = 1
) -> bytes:
    """MD5(Status + AuthenticatorSource + secret).

    ``status_width`` is 1 for 2.0; in 3.0 the letter of the spec hashes the 4-byte Status,
    while some ISMGs hash 1 byte (cmpp.md "CONNECT_RESP").
    """
    if status_width not in (1, 4):
        raise LocalProtocolError(f"status_width must be 1 or 4, not {status_width}")
    if not 0 <= status < (1 << (8 * status_width)):
        raise LocalProtocolError(f"status {status} does not fit {status_width} bytes")
    return hashlib.md5(
        status.to_bytes(status_width, "big") + auth_source + _secret_bytes(secret)
    ).digest()


def verify_authenticator_source(
    auth_source: bytes, source_addr: str, secret: str | bytes, timestamp_value: int
) -> bool:
    """True when a received CONNECT's AuthenticatorSource matches (constant-time compare)."""
    try:
        expected = authenticator_source(source_addr, secret, timestamp_value)
    except (LocalProtocolError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(expected, auth_source)


def verify_authenticator_ismg(
    auth_ismg: bytes, status: int, auth_source: bytes, secret: str | bytes, *, major: int
) -> bool:
    """True when a CONNECT_RESP's AuthenticatorISMG matches.

    For 2.0 the 1-byte Status is hashed; for 3.0 both the 4-byte (spec) and the 1-byte
    (field variant) hashing are accepted.
    """
    widths = (4, 1) if major >= 3 else (1,)
    for width in widths:
        if status >= (1 << (8 * width)):
            continue
        expected = authenticator_ismg(status, auth_source, secret, status_width=width)
        if hmac.compare_digest(expected, auth_ismg):
            return True
    return False
