"""crm_lite's errors: what callers (the REST layer, the SMS handlers) turn into answers.

Each carries a snake_case ``code`` that the REST layer uses as the SPEC error code, and the
status it maps to; :class:`InvalidInput` names the field or attribute at fault.
"""

from __future__ import annotations

from gateway.errors import GatewayError


class CrmError(GatewayError):
    """Base of crm_lite's domain errors."""

    status = 400
    code = "crm_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(CrmError):
    """A value does not fit (bad phone, unknown choice, malformed date...); ``field`` names it
    (``attributes.<name>`` for a custom attribute)."""

    status = 400
    code = "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(CrmError):
    status = 404
    code = "not_found"

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.code = f"{what}_not_found"


class Conflict(CrmError):
    """The request clashes with what is stored (a taken name, a full attribute list...)."""

    status = 409

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InsufficientPoints(Conflict):
    """A redemption or deduction would take a member's balance below zero."""

    def __init__(self, balance: int, wanted: int) -> None:
        super().__init__("insufficient_points", f"the balance is {balance} points; {wanted} asked")
        self.balance = balance
        self.wanted = wanted
