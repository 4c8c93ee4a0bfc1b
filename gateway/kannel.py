"""Kannel-compatible ``/cgi-bin/sendsms`` (SPEC.md), so apps written for Kannel work unchanged.

``GET|POST /cgi-bin/sendsms?username=&password=&to=&text=`` with Kannel's ``from``, ``coding``,
``charset``, ``dlr-mask`` and ``dlr-url``: ``username`` is the account name, ``password`` one of
its API keys. Success is ``202`` with ``0: Accepted for delivery``; errors are Kannel's plain-text
lines with the matching status. ``to`` may list several numbers separated by spaces.

Unlike Kannel, UTF-8 Chinese text sent without ``coding=2`` is delivered as UCS2, never as
question marks: the text is decoded from its charset first and the encoding is chosen from
the characters, as for the JSON API. With ``coding=2`` and no ``charset`` the bytes are
UTF-16BE, as Kannel has it (UTF-8 only when they cannot be UTF-16BE). Text that is not UTF-8
and names no charset is tried as GB18030, which Chinese apps often send unannounced.
"""

from __future__ import annotations

import codecs
import re
import urllib.parse
from datetime import datetime

from .http import Request, Response
from .store import AcceptRequest

KANNEL_DLR_BITS = {1: "delivered", 2: "failed", 4: "queued", 8: "submitted", 16: "rejected"}
MAX_DLR_MASK = 63
"""Kannel's mask also has 32, intermediate notifications (apps often send ``dlr-mask=63``): accepted;
the gateway has no such reports, so that bit adds no callback."""
MAX_DLR_URL = 2048


class KannelError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    def response(self) -> Response:
        return Response(status=self.status, body=self.text.encode(), content_type="text/plain; charset=utf-8")


def accepted() -> Response:
    return Response(status=202, body=b"0: Accepted for delivery", content_type="text/plain; charset=utf-8")


def parse_params(request: Request) -> dict[str, bytes]:
    """Query string and, for a form POST, the body; values kept as raw bytes (charset comes later)."""
    raw = request.query
    if request.method == "POST" and request.body:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded") or not ctype:
            raw = f"{raw}&{request.body.decode('latin-1')}" if raw else request.body.decode("latin-1")
    params: dict[str, bytes] = {}
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True, encoding="latin-1"):
        params.setdefault(key, value.encode("latin-1"))
    return params


def decode_text(raw: bytes, *, coding: int, charset: str | None) -> str:
    """The message text as Unicode, from Kannel's ``text`` bytes, ``coding`` and ``charset``."""
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:
            raise KannelError(400, f"Unknown charset {charset!r}") from None
        try:
            return raw.decode(charset)
        except UnicodeDecodeError:
            raise KannelError(400, f"Text is not valid {charset}") from None
    if coding == 2:
        try:
            return raw.decode("utf-16-be")  # Kannel's default charset for coding=2
        except UnicodeDecodeError:
            pass  # odd length or a lone surrogate: not UTF-16BE; an app that sent UTF-8
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KannelError(400, "Text is neither UTF-16BE nor UTF-8") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Apps written for Chinese Kannel setups often send GB18030 without saying so.
        try:
            return raw.decode("gb18030")
        except UnicodeDecodeError:
            raise KannelError(400, "Text is not valid UTF-8; give its charset") from None


def sendsms_request(params: dict[str, bytes], account_id: int, *, max_recipients: int, max_parts: int,
                    build) -> AcceptRequest:
    """Validate Kannel parameters into the same AcceptRequest the JSON API stores.

    ``build`` is the JSON API's builder (numbers, parts, limits), so both paths agree.
    """
    from .api import ApiError, SendBody

    to_raw = params.get("to", b"").decode("utf-8", "replace")
    recipients = [t for t in to_raw.replace(",", " ").split() if t]
    if not recipients:
        raise KannelError(400, "Missing receiver number")
    if len(recipients) > max_recipients:
        raise KannelError(413, f"Too many receivers ({len(recipients)}; at most {max_recipients})")
    if "text" not in params:
        raise KannelError(400, "Missing text")
    try:
        coding = int(params.get("coding", b"0") or b"0")
        dlr_mask = int(params.get("dlr-mask", b"0") or b"0")
    except ValueError:
        raise KannelError(400, "coding and dlr-mask must be numbers") from None
    if coding not in (0, 1, 2) or not 0 <= dlr_mask <= MAX_DLR_MASK:
        raise KannelError(400, f"coding must be 0, 1 or 2 and dlr-mask 0 to {MAX_DLR_MASK}")
    charset = params.get("charset", b"").decode("ascii", "replace") or None
    text = decode_text(params["text"], coding=coding, charset=charset)
    dlr_url = params.get("dlr-url", b"").decode("utf-8", "replace") or None
    if dlr_url is not None:
        u = urllib.parse.urlsplit(dlr_url)
        if u.scheme not in ("http", "https") or not u.hostname or len(dlr_url) > MAX_DLR_URL:
            raise KannelError(400, "dlr-url must be an absolute http(s) URL")
        if dlr_mask == 0:
            dlr_mask = 3  # Kannel's custom when a URL comes without a mask: delivered and failed
    sender = params.get("from", b"").decode("ascii", "replace")
    if sender and not (sender.isdigit() and len(sender) <= 12):
        raise KannelError(400, "from must be the digits of a service-number extension")
    try:
        body = SendBody(to=recipients, text=text, sender=sender)
        req = build(body, account_id, max_parts=max_parts)
    except ApiError as exc:
        raise KannelError(exc.status, exc.body.error.message) from None
    return AcceptRequest(account_id=req.account_id, messages=req.messages, validity_s=req.validity_s,
                         sender=req.sender, dlr_url=dlr_url, dlr_mask=dlr_mask if dlr_url else 0)


def expand_dlr_url(template: str, *, dlr_type: int, to: str, sender: str, at: datetime, reply: str,
                   channel: str, message_id: int) -> str:
    """Kannel's dlr-url escapes: %d type, %p receiver, %P sender, %T unix time, %t time,
    %A reply text, %i channel (SMSC id), %I message id, %% a percent sign. Values are
    URL-encoded; unknown escapes stay as they are."""
    values = {
        "d": str(dlr_type), "p": to, "P": sender, "T": str(int(at.timestamp())),
        "t": at.strftime("%Y-%m-%d %H:%M:%S"), "A": reply, "i": channel, "I": str(message_id),
    }
    quote = urllib.parse.quote
    return _DLR_ESCAPE.sub(lambda m: "%" if m[1] == "%" else quote(values[m[1]], safe=""), template)


_DLR_ESCAPE = re.compile(r"%([dpPTtAiI%])")
