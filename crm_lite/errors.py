"""crm_lite's errors: the one hierarchy every crm_lite module raises from.

Each error carries the HTTP ``status`` and snake_case ``code`` that the REST layer answers
with (SPEC's error shape, see :func:`crm_lite.restkit.guarded`), a human ``message``, and,
for bad input, the ``field`` at fault (``attributes.<name>`` for a custom attribute). The
SMS handlers catch them by kind to pick a reply. Domain modules import their errors from here
and never from the REST modules.

::

    CrmError                 400 crm_error
    ├── InvalidInput         400 invalid_field (field)
    ├── CsvFileError         400 invalid_csv (field, when a column is at fault)
    ├── Forbidden            403 forbidden (role, permission)
    ├── NotFound             404 <what>_not_found, or not_found
    └── Conflict             409 <code>
        ├── InsufficientPoints   insufficient_points
        ├── AlreadyDrawn         already_drawn
        └── NoApprover           no_approver
"""

from __future__ import annotations

from gateway.errors import GatewayError


class CrmError(GatewayError):
    """Base of crm_lite's domain errors."""

    status = 400
    code = "crm_error"
    field: str | None = None

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


class CsvFileError(CrmError):
    """A CSV file as a whole cannot be read (encoding, header); no row was imported.
    ``field`` names the column at fault, when one is."""

    status = 400
    code = "invalid_csv"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Forbidden(CrmError):
    """The actor's role does not allow the action (see :mod:`crm_lite.staff`)."""

    status = 403
    code = "forbidden"

    def __init__(self, role: str, permission: str) -> None:
        super().__init__(f"a {role} may not {permission}")
        self.role = role
        self.permission = permission


class NotFound(CrmError):
    """No such thing for this merchant: code ``<what>_not_found`` (``member_not_found``,
    ``group_not_found``), or plain ``not_found`` when ``what`` is ``None``."""

    status = 404
    code = "not_found"

    def __init__(self, what: str | None, message: str) -> None:
        super().__init__(message)
        if what is not None:
            self.code = f"{what}_not_found"


class Conflict(CrmError):
    """The request clashes with what is stored or with the state of things (a taken name, a
    full attribute list, a lottery still open...); ``code`` says which clash."""

    status = 409
    code = "conflict"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InsufficientPoints(Conflict):
    """A redemption or deduction would take a member's balance below zero."""

    def __init__(self, balance: int, wanted: int) -> None:
        super().__init__("insufficient_points", f"the balance is {balance} points; {wanted} asked")
        self.balance = balance
        self.wanted = wanted


class AlreadyDrawn(Conflict):
    """The lottery is drawn: its prizes and winners are final."""

    def __init__(self, message: str) -> None:
        super().__init__("already_drawn", message)


class NoApprover(Conflict):
    """An approval request nobody can decide: the requester has no active approver and the
    merchant no owner."""

    def __init__(self, message: str) -> None:
        super().__init__("no_approver", message)
