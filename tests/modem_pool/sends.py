"""What the pool tests send: a text planned as the API plans it, as one SendRequest."""

from __future__ import annotations

from gateway.modem_pool.pdu import Alphabet
from gateway.modem_pool.pool import SendRequest
from gateway.text import Encoding, plan

HANDSET = "18600000001"


def request(ref: int, text: str, *, dest: str = HANDSET, operator: str = "cucc") -> SendRequest:
    p = plan(text)
    alphabet = Alphabet.UCS2 if p.encoding is Encoding.UCS2 else Alphabet.GSM7
    return SendRequest(ref=ref, destination=dest, operator=operator, parts=p.parts, alphabet=alphabet)
