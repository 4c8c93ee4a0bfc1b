"""Mobile approvals: staff file requests by SMS (``SP 报销 500 出差``) or API; the approver
decides by texting ``Y12`` / ``N12``; undecided requests escalate up the chain.

Each request gets a number unique per merchant (``crm_approval_counters``): the ``12`` staff
type back. Its approver is the requester's ``approver_id`` (an active staff member), else the
merchant's owner. The approver is told by SMS::

    【演示商场】申请#12 李四 报销 500元 出差，回复Y12同意，N12拒绝

Only the current approver may decide; anyone else gets a polite refusal (recorded); a decided
request says so. The requester is told the decision by SMS. A request still pending at its
deadline (``timeout_s`` after filing or after the last escalation; default
:data:`DEFAULT_TIMEOUT_S`) passes to the approver's own approver, else the owner, who is told
by SMS; when there is nobody higher the request stays with its approver (``stalled``).
:func:`serve_escalations` does that, and sends any notice a crash left unsent; it claims due
requests with ``FOR UPDATE SKIP LOCKED``, so every node may run it.

Every step is a row in ``crm_approval_events`` (``filed``, ``notified``, ``escalated``,
``decided``, ``refused``, ``told``, ``stalled``) with the actor (NULL for the system), the
person it concerned, and the time.

Idempotency: a request filed by SMS keeps the MO's id (``mo_id``), a decision by SMS its own
(``decided_mo_id``), and each SMS-caused event too, so a re-dispatched MO changes nothing twice;
replies use ``mo-<mo_id>-<n>`` client refs and other notices ``approval-<id>-…`` ones, so no
notice is ever sent twice.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
import trio

from gateway.errors import GatewayError, StoreConflict
from gateway.router.commands import InboundCommand, Outbox
from gateway.store import Merchant, Store
from gateway.text import mask_msisdn

from .errors import Forbidden, InvalidInput, NoApprover, NotFound
from .settings import merchant_by_id
from .staff import PERMISSIONS, Permission, Role, Staff, require, staff_by_phone

log = logging.getLogger(__name__)

SP_KEYWORD = "SP"
DEFAULT_TIMEOUT_S = 24 * 3600.0
"""Seconds a request waits for its approver before it escalates."""
DEFAULT_INTERVAL_S = 30.0
"""Seconds between two rounds of :func:`serve_escalations`."""
ESCALATION_BATCH = 100
"""Due requests one round claims at most."""
RECORD_TIMEOUT = 10.0
"""Seconds the record of a notice just sent may take, shielded from cancellation (a notice sent
but not recorded would be sent again, deduplicated by its client_ref, but missing from the trail)."""
MAX_KIND = 20
MAX_REASON = 200
MAX_AMOUNT_FEN = 10**12
FORMAT_HELP = "格式：SP 类型 金额 事由，例如 SP 报销 500 出差（金额单位：元）"
_AMOUNT_RE = re.compile(r"^([0-9]{1,10})(?:\.([0-9]{1,2}))?元?$")
_DECISION_RE = re.compile(r"^([YN])([0-9]{1,9})$")


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


# --- parsing (pure) -------------------------------------------------------------------------------


def parse_amount(text: str) -> int:
    """Yuan with at most two decimals (``"500"``, ``"12.5"``, ``"99.99元"``) → fen."""
    m = _AMOUNT_RE.fullmatch(text)
    if m is None:
        raise InvalidInput("amount", f"amount {text!r} is not a sum in yuan such as 500 or 12.50")
    fen = int(m[1]) * 100 + int((m[2] or "0").ljust(2, "0"))
    if not 0 < fen <= MAX_AMOUNT_FEN:
        raise InvalidInput("amount", f"amount {text!r} is out of range")
    return fen


def check_request(kind: str, amount_fen: int, reason: str) -> None:
    if not 1 <= len(kind) <= MAX_KIND:
        raise InvalidInput("kind", f"the type must be 1 to {MAX_KIND} characters")
    if not 1 <= len(reason) <= MAX_REASON:
        raise InvalidInput("reason", f"the reason must be 1 to {MAX_REASON} characters")
    if not 0 < amount_fen <= MAX_AMOUNT_FEN:
        raise InvalidInput("amount_fen", f"amount_fen must be from 1 to {MAX_AMOUNT_FEN}")


def parse_sp(text: str) -> tuple[str, int, str]:
    """``SP <type> <amount> <reason…>`` → (type, amount in fen, reason), case kept."""
    words = unicodedata.normalize("NFKC", text).split()
    if len(words) < 4 or words[0].upper() != SP_KEYWORD:
        raise InvalidInput("text", "expected SP <type> <amount> <reason>")
    kind, amount, reason = words[1], parse_amount(words[2]), " ".join(words[3:])
    check_request(kind, amount, reason)
    return kind, amount, reason


def parse_decision(keyword: str, args: tuple[str, ...] = ()) -> tuple[bool, int] | None:
    """``Y12`` → ``(True, 12)``; ``N12`` (or ``N 12``) → ``(False, 12)``; else ``None``."""
    m = _DECISION_RE.fullmatch(keyword)
    if m is None and keyword in ("Y", "N") and len(args) == 1:
        m = _DECISION_RE.fullmatch(keyword + args[0])
    if m is None:
        return None
    return m[1] == "Y", int(m[2])


def yuan(amount_fen: int) -> str:
    whole, cents = divmod(amount_fen, 100)
    return f"{whole}" if cents == 0 else f"{whole}.{cents:02d}".rstrip("0")


# --- the request in the store ---------------------------------------------------------------------


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    merchant_id: int
    number: int
    requester_id: int
    requester_name: str
    kind: str
    amount_fen: int
    reason: str
    status: str
    approver_id: int
    approver_name: str
    level: int
    """Escalations so far."""
    deadline: datetime | None
    decided_by: int | None
    decided_at: datetime | None
    created_at: datetime


class ApprovalEvent(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    actor_id: int | None
    actor_name: str | None
    target_id: int | None
    target_name: str | None
    detail: str
    at: datetime


_VIEW = """
SELECT r.id, r.merchant_id, r.number, r.requester_id, q.name AS requester_name, r.kind, r.amount_fen, r.reason,
       r.status, r.approver_id, a.name AS approver_name, r.level, r.deadline, r.decided_by, r.decided_at,
       r.created_at
FROM crm_approval_requests r JOIN crm_staff q ON q.id = r.requester_id JOIN crm_staff a ON a.id = r.approver_id
"""


def _request(row: Any) -> ApprovalRequest:
    return ApprovalRequest(**dict(row))


async def request_by_id(store: Any, request_id: int) -> ApprovalRequest:
    row = await store.fetchrow(_VIEW + " WHERE r.id = $1", request_id)
    if row is None:
        raise NotFound(None, f"no approval request {request_id}")
    return _request(row)


async def request_by_number(store: Store, merchant_id: int, number: int) -> ApprovalRequest:
    row = await store.fetchrow(_VIEW + " WHERE r.merchant_id = $1 AND r.number = $2", merchant_id, number)
    if row is None:
        raise NotFound(None, f"no approval request #{number}")
    return _request(row)


async def requests_for(store: Store, actor: Staff, *, status: str | None = None,
                       limit: int = 100) -> list[ApprovalRequest]:
    """Newest first: all of the merchant's for those who may decide, else the actor's own
    and those waiting for the actor."""
    everyone = Permission.APPROVALS_DECIDE in _permissions(actor)
    rows = await store.fetch(
        _VIEW + " WHERE r.merchant_id = $1 AND ($2 OR r.requester_id = $3 OR r.approver_id = $3)"
        " AND ($4::text IS NULL OR r.status = $4) ORDER BY r.number DESC LIMIT $5",
        actor.merchant_id, everyone, actor.id, status, limit)
    return [_request(r) for r in rows]


def may_see(actor: Staff, request: ApprovalRequest) -> bool:
    return (actor.merchant_id == request.merchant_id and actor.active
            and (Permission.APPROVALS_DECIDE in _permissions(actor)
                 or actor.id in (request.requester_id, request.approver_id)))


def _permissions(actor: Staff) -> frozenset[Permission]:
    return PERMISSIONS[actor.role]


async def history(store: Store, request_id: int) -> list[ApprovalEvent]:
    return [ApprovalEvent(**dict(r)) for r in await store.fetch(
        "SELECT e.kind, e.actor_id, a.name AS actor_name, e.target_id, t.name AS target_name, e.detail, e.at"
        " FROM crm_approval_events e LEFT JOIN crm_staff a ON a.id = e.actor_id"
        " LEFT JOIN crm_staff t ON t.id = e.target_id WHERE e.request_id = $1 ORDER BY e.id", request_id)]


async def _owner(tx: Any, merchant_id: int, *, other_than: int | None = None) -> int | None:
    return await tx.fetchval(
        "SELECT id FROM crm_staff WHERE merchant_id = $1 AND role = 'owner' AND active"
        " AND id IS DISTINCT FROM $2 ORDER BY id LIMIT 1", merchant_id, other_than)


async def _active(tx: Any, staff_id: int | None, merchant_id: int) -> bool:
    if staff_id is None:
        return False
    return bool(await tx.fetchval("SELECT active FROM crm_staff WHERE id = $1 AND merchant_id = $2",
                                  staff_id, merchant_id))


async def _event(tx: Any, request_id: int, kind: str, *, actor: int | None = None, target: int | None = None,
                 detail: str = "", mo_id: int | None = None) -> None:
    await tx.execute(
        "INSERT INTO crm_approval_events (request_id, kind, actor_id, target_id, detail, mo_id)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (mo_id) DO NOTHING",
        request_id, kind, actor, target, detail, mo_id)


async def file_request(store: Store, requester: Staff, *, kind: str, amount_fen: int, reason: str,
                       timeout_s: float = DEFAULT_TIMEOUT_S, mo_id: int | None = None,
                       client_key: str | None = None) -> tuple[ApprovalRequest, bool]:
    """File a request; returns it and whether it is new (a known ``mo_id`` or ``client_key``
    returns the original). Raises :class:`NoApprover` when nobody can decide it."""
    check_request(kind, amount_fen, reason)
    if timeout_s <= 0:
        raise InvalidInput("timeout_s", "timeout_s must be positive")
    try:
        async with store.transaction() as tx:
            existing = await tx.fetchval(
                "SELECT id FROM crm_approval_requests WHERE mo_id = $1 OR (requester_id = $2 AND client_key = $3)",
                mo_id, requester.id, client_key)
            if existing is not None:
                return await request_by_id(tx, existing), False
            approver = requester.approver_id
            if not await _active(tx, approver, requester.merchant_id):
                approver = await _owner(tx, requester.merchant_id)
            if approver is None:
                raise NoApprover(f"{requester.name} has no approver and the merchant has no owner")
            number = await tx.fetchval(
                "INSERT INTO crm_approval_counters AS c (merchant_id, last_number) VALUES ($1, 1)"
                " ON CONFLICT (merchant_id) DO UPDATE SET last_number = c.last_number + 1 RETURNING last_number",
                requester.merchant_id)
            request_id = await tx.fetchval(
                "INSERT INTO crm_approval_requests (merchant_id, number, requester_id, kind, amount_fen, reason,"
                " approver_id, deadline, timeout_s, mo_id, client_key)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $8, $9, $10) RETURNING id",
                requester.merchant_id, number, requester.id, kind, amount_fen, reason, approver, timeout_s, mo_id,
                client_key)
            await _event(tx, request_id, "filed", actor=requester.id, target=approver,
                         detail=f"{kind} {yuan(amount_fen)}元 {reason}", mo_id=mo_id)
            created = await request_by_id(tx, request_id)
    except StoreConflict:
        if mo_id is None and client_key is None:
            raise
        # The same MO (or key) was filed on another connection meanwhile: that one stands.
        existing = await store.fetchval(
            "SELECT id FROM crm_approval_requests WHERE mo_id = $1 OR (requester_id = $2 AND client_key = $3)",
            mo_id, requester.id, client_key)
        if existing is None:
            raise
        return await request_by_id(store, existing), False
    log.info("approval filed merchant=%s number=%s requester=%s", requester.merchant_id, number, requester.id)
    return created, True


class Decision(StrEnum):
    DECIDED = "decided"
    ALREADY = "already_decided"
    NOT_APPROVER = "not_approver"


async def decide(store: Store, actor: Staff, number: int, approve: bool, *,
                 mo_id: int | None = None) -> tuple[Decision, ApprovalRequest]:
    """``actor`` approves or rejects request ``number`` of its merchant. Only the current
    approver may; a refusal is recorded. Raises :class:`NotFound` for an unknown number."""
    async with store.transaction() as tx:
        row = await tx.fetchrow(
            "SELECT id, status, approver_id, decided_mo_id FROM crm_approval_requests"
            " WHERE merchant_id = $1 AND number = $2 FOR UPDATE", actor.merchant_id, number)
        if row is None:
            raise NotFound(None, f"no approval request #{number}")
        if mo_id is not None and row["decided_mo_id"] == mo_id:
            return Decision.DECIDED, await request_by_id(tx, row["id"])
        if row["status"] != Status.PENDING:
            return Decision.ALREADY, await request_by_id(tx, row["id"])
        if row["approver_id"] != actor.id or not actor.active:
            await _event(tx, row["id"], "refused", actor=actor.id, target=row["approver_id"],
                         detail="not the current approver", mo_id=mo_id)
            return Decision.NOT_APPROVER, await request_by_id(tx, row["id"])
        status = Status.APPROVED if approve else Status.REJECTED
        await tx.execute(
            "UPDATE crm_approval_requests SET status = $2, decided_by = $3, decided_at = now(), decided_mo_id = $4,"
            " deadline = NULL WHERE id = $1", row["id"], str(status), actor.id, mo_id)
        await _event(tx, row["id"], "decided", actor=actor.id, detail=str(status), mo_id=mo_id)
        decided = await request_by_id(tx, row["id"])
    log.info("approval decided merchant=%s number=%s status=%s by=%s", actor.merchant_id, number, status, actor.id)
    return Decision.DECIDED, decided


# --- notices --------------------------------------------------------------------------------------


async def notify_approver(store: Store, outbox: Outbox, merchant: Merchant, request_id: int) -> bool:
    """Tell the current approver of a pending request, unless already told at this level."""
    row = await store.fetchrow(
        "SELECT r.number, r.kind, r.amount_fen, r.reason, r.status, r.level, r.notified_level, r.mo_id,"
        " r.approver_id, q.name AS requester, a.phone AS approver_phone"
        " FROM crm_approval_requests r JOIN crm_staff q ON q.id = r.requester_id"
        " JOIN crm_staff a ON a.id = r.approver_id WHERE r.id = $1", request_id)
    if row is None or row["status"] != Status.PENDING or row["notified_level"] >= row["level"]:
        return False
    n, level = row["number"], row["level"]
    note = "（超时转交）" if level else ""
    text = (f"{merchant.signature}申请#{n} {row['requester']} {row['kind']} {yuan(row['amount_fen'])}元 "
            f"{row['reason']}{note}，回复Y{n}同意，N{n}拒绝")
    ref = f"mo-{row['mo_id']}-2" if level == 0 and row["mo_id"] is not None else f"approval-{request_id}-notify-{level}"
    await outbox.send(account_id=merchant.account_id, to=row["approver_phone"], text=text, client_ref=ref)
    with trio.CancelScope(shield=True) as scope:  # the notice is out: record it even when cancelled now
        scope.deadline = trio.current_time() + RECORD_TIMEOUT
        async with store.transaction() as tx:
            moved = await tx.fetchval("UPDATE crm_approval_requests SET notified_level = $2 WHERE id = $1"
                                      " AND notified_level < $2 RETURNING id", request_id, level)
            if moved is not None:
                await _event(tx, request_id, "notified", target=row["approver_id"], detail=f"level {level}")
    return True


async def tell_requester(store: Store, outbox: Outbox, merchant: Merchant, request_id: int) -> bool:
    """Tell the requester the decision, unless already told."""
    row = await store.fetchrow(
        "SELECT r.number, r.kind, r.amount_fen, r.status, r.requester_told, r.decided_mo_id, r.requester_id,"
        " q.phone AS requester_phone, d.name AS decider"
        " FROM crm_approval_requests r JOIN crm_staff q ON q.id = r.requester_id"
        " LEFT JOIN crm_staff d ON d.id = r.decided_by WHERE r.id = $1", request_id)
    if row is None or row["status"] == Status.PENDING or row["requester_told"]:
        return False
    verdict = "同意" if row["status"] == Status.APPROVED else "拒绝"
    text = (f"{merchant.signature}您的申请#{row['number']} {row['kind']} {yuan(row['amount_fen'])}元"
            f"已被{row['decider']}{verdict}。")
    ref = f"mo-{row['decided_mo_id']}-2" if row["decided_mo_id"] is not None else f"approval-{request_id}-decision"
    await outbox.send(account_id=merchant.account_id, to=row["requester_phone"], text=text, client_ref=ref)
    with trio.CancelScope(shield=True) as scope:  # the notice is out: record it even when cancelled now
        scope.deadline = trio.current_time() + RECORD_TIMEOUT
        async with store.transaction() as tx:
            moved = await tx.fetchval("UPDATE crm_approval_requests SET requester_told = true WHERE id = $1"
                                      " AND NOT requester_told RETURNING id", request_id)
            if moved is not None:
                await _event(tx, request_id, "told", target=row["requester_id"], detail=str(row["status"]))
    return True


# --- escalation -----------------------------------------------------------------------------------


async def escalate_due(store: Store, *, limit: int = ESCALATION_BATCH) -> list[int]:
    """Pass every request pending past its deadline to the next approver up the chain (the
    approver's approver, else the owner); returns the ids moved. Rows another node holds are
    skipped. The notices go out with :func:`send_pending`."""
    moved: list[int] = []
    async with store.transaction() as tx:
        due = await tx.fetch(
            "SELECT r.id, r.merchant_id, r.approver_id, a.approver_id AS next_id, a.role AS approver_role"
            " FROM crm_approval_requests r JOIN crm_staff a ON a.id = r.approver_id"
            " WHERE r.status = 'pending' AND r.deadline <= now() ORDER BY r.deadline LIMIT $1"
            " FOR UPDATE OF r SKIP LOCKED", limit)
        for r in due:
            nxt = r["next_id"] if r["next_id"] != r["approver_id"] else None
            if not await _active(tx, nxt, r["merchant_id"]):
                nxt = None if r["approver_role"] == Role.OWNER else await _owner(
                    tx, r["merchant_id"], other_than=r["approver_id"])
            if nxt is None:
                await tx.execute("UPDATE crm_approval_requests SET deadline = NULL WHERE id = $1", r["id"])
                await _event(tx, r["id"], "stalled", target=r["approver_id"], detail="nobody above the approver")
                continue
            await tx.execute(
                "UPDATE crm_approval_requests SET approver_id = $2, level = level + 1,"
                " deadline = now() + make_interval(secs => timeout_s) WHERE id = $1", r["id"], nxt)
            await _event(tx, r["id"], "escalated", actor=None, target=nxt, detail=f"from staff {r['approver_id']}")
            moved.append(r["id"])
    if moved:
        log.info("approvals escalated count=%d", len(moved))
    return moved


async def send_pending(store: Store, outbox: Outbox, *, limit: int = ESCALATION_BATCH) -> int:
    """Send the notices still owed: approvers not told at their level, requesters not told the
    decision. Each notice has a fixed client_ref, so racing with the inline path sends nothing
    twice. Returns the notices sent."""
    rows = await store.fetch(
        "SELECT id, merchant_id, status FROM crm_approval_requests"
        " WHERE (status = 'pending' AND notified_level < level) OR (status <> 'pending' AND NOT requester_told)"
        " ORDER BY id LIMIT $1", limit)
    merchants: dict[int, Merchant] = {}
    sent = 0
    for r in rows:
        merchant = merchants.get(r["merchant_id"]) or await merchant_by_id(store, r["merchant_id"])
        merchants[merchant.id] = merchant
        if r["status"] == Status.PENDING:
            sent += await notify_approver(store, outbox, merchant, r["id"])
        else:
            sent += await tell_requester(store, outbox, merchant, r["id"])
    return sent


async def serve_escalations(store: Store, outbox: Outbox, *, interval: float = DEFAULT_INTERVAL_S,
                            batch: int = ESCALATION_BATCH,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Every ``interval`` seconds: escalate due requests, then send owed notices. A failing
    round (database or outbox unavailable) is logged and retried next round."""
    task_status.started()
    while True:
        try:
            while len(await escalate_due(store, limit=batch)) == batch:
                pass
            await send_pending(store, outbox, limit=batch)
        except GatewayError as exc:
            log.warning("approval escalation round failed error=%s: %s", type(exc).__name__, exc)
        await trio.sleep(interval)


# --- the SMS commands -----------------------------------------------------------------------------


class ApprovalHandler:
    """``SP <type> <amount> <reason>`` and ``Y<n>`` / ``N<n>`` from staff phones:
    :class:`~gateway.router.commands.CommandHandler`."""

    def __init__(self, store: Store, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._store = store
        self._timeout_s = timeout_s

    async def handle(self, command: InboundCommand, outbox: Outbox) -> bool:
        decision = parse_decision(command.keyword, command.args)
        if command.keyword != SP_KEYWORD and decision is None:
            return False
        merchant = command.merchant
        sig = merchant.signature

        async def reply(text: str, n: int = 1) -> None:
            await outbox.send(account_id=merchant.account_id, to=command.phone, text=f"{sig}{text}",
                              client_ref=f"mo-{command.mo_id}-{n}")

        staff = await staff_by_phone(self._store, merchant.id, command.phone)
        if staff is None:
            await reply("审批指令仅限本店员工使用。如需帮助请联系门店。")
            return True
        if decision is None:
            await self._file(command, staff, merchant, reply, outbox)
        else:
            await self._decide(command, staff, merchant, decision, reply, outbox)
        return True

    async def _file(self, command: InboundCommand, staff: Staff, merchant: Merchant, reply: Any,
                    outbox: Outbox) -> None:
        try:
            kind, amount_fen, reason = parse_sp(command.text)
            require(staff, Permission.APPROVALS_FILE)
            request, _ = await file_request(self._store, staff, kind=kind, amount_fen=amount_fen, reason=reason,
                                            timeout_s=self._timeout_s, mo_id=command.mo_id)
        except InvalidInput:  # the text does not say type, amount and reason properly
            await reply(f"审批申请{FORMAT_HELP}")
            return
        except Forbidden:
            await reply("您的岗位不能提交审批申请。")
            return
        except NoApprover:
            await reply("尚未设置审批人，请联系店长。")
            return
        log.info("approval by sms merchant=%s number=%s phone=%s", merchant.id, request.number,
                 mask_msisdn(command.phone))
        await reply(f"已提交申请#{request.number} {request.kind} {yuan(request.amount_fen)}元 {request.reason}，"
                    f"等待{request.approver_name}审批。")
        await notify_approver(self._store, outbox, merchant, request.id)

    async def _decide(self, command: InboundCommand, staff: Staff, merchant: Merchant,
                      decision: tuple[bool, int], reply: Any, outbox: Outbox) -> None:
        approve, number = decision
        try:
            outcome, request = await decide(self._store, staff, number, approve, mo_id=command.mo_id)
        except NotFound:
            await reply(f"未找到申请#{number}，请核对编号。")
            return
        n = request.number
        match outcome:
            case Decision.ALREADY:
                done = "同意" if request.status == Status.APPROVED else "拒绝"
                await reply(f"申请#{n} 已被{request.approver_name}{done}，无需再次处理。")
            case Decision.NOT_APPROVER:
                await reply(f"抱歉，申请#{n} 由{request.approver_name}审批，您无法处理。")
            case Decision.DECIDED:
                done = "同意" if request.status == Status.APPROVED else "拒绝"
                await reply(f"已{done}申请#{n}（{request.requester_name} {request.kind} "
                            f"{yuan(request.amount_fen)}元）。")
                await tell_requester(self._store, outbox, merchant, request.id)

    async def commands(self, merchant: Merchant) -> list[tuple[str, str]]:
        return [("SP 类型 金额 事由", "员工提交审批"), ("Y编号/N编号", "审批人同意/拒绝")]

    async def help_text(self, merchant: Merchant) -> str:
        return f"{merchant.signature}员工审批：{FORMAT_HELP}；审批人回复Y编号同意，N编号拒绝。"

