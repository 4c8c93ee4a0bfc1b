"""The server side of HTTP for tests that play a peer: read one request off a stream."""

from __future__ import annotations

import trio


async def read_request(stream: trio.SocketStream, buf: bytes) -> tuple[bytes, bytes] | None:
    """One request (head and Content-Length body) from ``buf`` and then ``stream``: returns the
    request's bytes and what followed it, or None when the peer closed before a whole head."""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + rest[:length], rest[length:]
