"""``smsgw demo``: the whole gateway on embedded defaults, for a first look.

An ISMG simulator with one CMPP 3.0 link to it (China Mobile numbers), four emulated GSM
modems on pseudo-terminals (China Unicom and China Telecom numbers), an embedded PostgreSQL in the data directory, the HTTP API, a demo account with an API key
(kept in ``<data_dir>/demo-credentials.json`` so that it survives restarts), the demo merchant
``demo-mall`` (service number 10658888001, signature 【演示商场】) whose consumers the handset
endpoints play, and a ready file for scripts. Channels and simulators join the demo as they are wired into the gateway.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import trio

from .app import Running, serve_gateway
from .api import error_response
from .cmpp import IsmgSimulator
from .cmpp.errors import ProtocolError as CmppProtocolError
from .cmpp.longsms import parse_concat_udh
from .cmpp.pdus import VERSION_3_0, decode_text
from .http import Request, Response, Router
from .text import InvalidNumber, national_or_raw, normalize_msisdn
from .config import (AdminConfig, CmppConfig, Config, DispatcherConfig, HttpConfig, MerchantConfig, ModemConfig,
                     default_config, split_listen)
from .modem_pool.emulator import HandsetNetwork
from .sim_modems import DEMO_NUMBERS, SimModem, serve_sim_modems
from .store import Store

log = logging.getLogger(__name__)

DEMO_ACCOUNT = "demo"
CREDENTIALS_FILE = "demo-credentials.json"


class DemoOptions(msgspec.Struct, kw_only=True):
    data_dir: str = "./.smsgw"
    http: str = "127.0.0.1:8080"
    admin_ws: str = "127.0.0.1:8081"
    ismg: str = "127.0.0.1:7890"
    ready_file: str | None = None


DEMO_SP_ID = "901234"
DEMO_SECRET = "demo-secret"
DEMO_SERVICE_NUMBER = "10658888"
DEMO_MERCHANT = "demo-mall"
DEMO_MERCHANT_NUMBER = DEMO_SERVICE_NUMBER + "001"
"""The demo merchant's service number: the CMPP link's number plus the extension 001."""
DEMO_SIGNATURE = "【演示商场】"
DLR_DELAY = 0.5
"""Seconds the simulated operator takes to report delivery."""


DEMO_MODEM_RATE = 30.0
"""Messages a minute per emulated SIM: brisker than a real SIM's few, so the demo is quick."""


def demo_config(options: DemoOptions, ismg_port: int, modems: list[SimModem]) -> Config:
    host, _ = split_listen(options.ismg)
    cmpp = CmppConfig(name="cmcc-demo", host=host, port=ismg_port, version="3.0", sp_id=DEMO_SP_ID,
                      secret=DEMO_SECRET, service_number=DEMO_SERVICE_NUMBER, window=16, rate=1000.0,
                      operators=["cmcc"])
    modem_configs = [
        ModemConfig(name=f"m{i}", device=m.device, operators=[m.operator], rate_per_minute=DEMO_MODEM_RATE,
                    daily_quota=10_000, service_number=m.number)
        for i, m in enumerate(modems, start=1)
    ]
    # The demo merchant: consumers text 10658888001 and get its replies from that number. The
    # modems' numbers are not its service numbers (a merchant has one): MOs to them reach MO
    # callbacks subscribed to those numbers only.
    merchant = MerchantConfig(name=DEMO_MERCHANT, account=DEMO_ACCOUNT, service_number=DEMO_MERCHANT_NUMBER,
                              signature=DEMO_SIGNATURE)
    # No quiet hours in the demo: a newcomer trying marketing (and TD) at night sees it happen.
    return default_config(data_dir=options.data_dir, http=HttpConfig(listen=options.http), cmpp=[cmpp],
                          modems=modem_configs, merchants=[merchant], dispatcher=DispatcherConfig(quiet_hours=""))


async def demo_credentials(store: Store, data_dir: str) -> tuple[str, str]:
    """The demo account's API key and webhook secret; the key is reused across restarts."""
    account = await store.ensure_account(DEMO_ACCOUNT)
    path = Path(data_dir) / CREDENTIALS_FILE
    try:
        saved = json.loads(path.read_text())
        key = saved.get("api_key", "")
    except (OSError, ValueError):
        key = ""
    if not key or await store.account_for_key(key) is None:
        key = await store.create_api_key(account.id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"account": DEMO_ACCOUNT, "api_key": key}, f)
        os.replace(tmp, path)
    return key, account.webhook_secret


# --- the simulated handsets (demo only: SPEC "POST /v1/sim/mo", "GET /v1/sim/inbox/{phone}") ------


class SimMoBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sender: str = msgspec.field(name="from")
    to: str
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    via: Literal["cmpp", "modem"] | None = None


class InboxEntry(msgspec.Struct, frozen=True):
    sender: str = msgspec.field(name="from")
    text: str = ""
    via: str = "cmpp"
    parts: int = 1


class Inbox(msgspec.Struct, frozen=True):
    phone: str
    messages: list[InboxEntry]


_inbox_encoder = msgspec.json.Encoder()
_mo_decoder = msgspec.json.Decoder(SimMoBody)
MO_TIMEOUT = 10.0


def cmpp_inbox(sim: IsmgSimulator, phone: str) -> list[InboxEntry]:
    """What a China Mobile handset has received: the SUBMITs the ISMG took for it, long ones
    reassembled from their concatenation UDH, oldest first."""
    whole: list[InboxEntry] = []
    groups: dict[tuple[str, int, int], dict[int, str]] = {}
    for submit in list(sim.recent_submits):
        if phone not in [d[-11:] for d in submit.dest_terminal_ids]:
            continue
        if submit.tp_udhi:
            try:
                info = parse_concat_udh(submit.msg_content)
            except CmppProtocolError:
                continue
            if info is not None:
                group = groups.setdefault((submit.src_id, info.ref, info.total), {})
                group[info.seq] = decode_text(info.payload, submit.msg_fmt)
                if len(group) == info.total:
                    whole.append(InboxEntry(submit.src_id, "".join(group[i] for i in sorted(group)),
                                            "cmpp", info.total))
                    del groups[(submit.src_id, info.ref, info.total)]
                continue
        whole.append(InboxEntry(submit.src_id, decode_text(submit.msg_content, submit.msg_fmt), "cmpp", 1))
    return whole


class Handsets(msgspec.Struct):
    """The two simulated networks a demo handset lives on."""

    sim: IsmgSimulator
    network: HandsetNetwork
    modem_numbers: set[str]


def sim_routes(router: Router, handsets: Handsets) -> None:
    """The demo's handset endpoints; they act as consumers' phones, so they take no API key."""
    sim, network = handsets.sim, handsets.network

    async def mo(request: Request) -> Response:
        try:
            body = _mo_decoder.decode(request.body)
            sender = normalize_msisdn(body.sender)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error_response(400, "invalid_field", str(exc))
        except InvalidNumber as exc:
            return error_response(400, "invalid_number", f"{body.sender!r}: {exc.reason}")
        to = body.to.strip()
        to_modem = national_or_raw(to) in handsets.modem_numbers
        via = body.via or ("modem" if to_modem else "cmpp")
        if via == "modem":
            if not to_modem:
                return error_response(400, "invalid_field",
                                      f"{to!r} is not an emulated modem's number; the modems are "
                                      + ", ".join(sorted(handsets.modem_numbers)), field="to")
            parts = network.send_from_handset(sender, national_or_raw(to), body.text)
            out = {"from": sender, "to": to, "via": via, "parts": parts}
            return Response(status=202, body=_inbox_encoder.encode(out))
        with trio.move_on_after(MO_TIMEOUT):
            parts = await sim.inject_mo(sender, body.to, body.text)
            out = {"from": sender, "to": body.to, "via": via, "parts": parts}
            return Response(status=202, body=_inbox_encoder.encode(out))
        return error_response(503, "link_down", "the gateway did not take the message in time")

    async def inbox(request: Request, phone: str) -> Response:
        try:
            msisdn = normalize_msisdn(phone)
        except InvalidNumber as exc:
            return error_response(400, "invalid_number", f"{phone!r}: {exc.reason}")
        entries = cmpp_inbox(sim, msisdn) + [InboxEntry(m.sender, m.text, "modem", m.parts)
                                             for m in network.inbox(msisdn)]
        return Response(status=200, body=_inbox_encoder.encode(Inbox(msisdn, entries)))

    router.add("POST", "/v1/sim/mo", mo)
    router.add("GET", "/v1/sim/inbox/{phone}", inbox)


def write_ready_file(path: str, info: dict[str, object]) -> None:
    """Write the ready file atomically, so a reader never sees half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
        f.write("\n")
    os.replace(tmp, path)


async def seed_crm_demo(store) -> dict:
    """The demo merchant's staff (owner 13900000009, manager 13900000008, cashier
    13900000007, each approving the next) and a lottery taking entries now. Fresh staff API
    tokens at every start (they are stored hashed)."""
    from crm_lite.demo import seed_demo
    from crm_lite.demo_lottery import seed_demo as seed_lottery

    merchant = await store.merchant_for_number(DEMO_MERCHANT_NUMBER)
    assert merchant is not None, "the demo merchant is created at start"
    crm = await seed_demo(store, merchant)
    crm["lottery"] = (await seed_lottery(store, merchant))["lottery"]
    return crm


def instructions(running: Running, key: str, modem_numbers: list[str], crm: dict | None = None,
                 admin: str = "") -> str:
    url = running.http_url
    modems = ", ".join(modem_numbers)
    return f"""
smsgw demo is up.

  HTTP API     {url}
  metrics      {url}/metrics
  ISMG (CMPP)  China Mobile numbers go through a CMPP 3.0 link to the ISMG simulator
  modems       China Unicom / Telecom numbers go through four emulated GSM modems:
               {modems}
  account      {DEMO_ACCOUNT}
  API key      {key}

Try it:

  curl -s -X POST {url}/v1/messages \\
       -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
       -d '{{"to": "13800138000", "text": "你好，欢迎光临！"}}'

  curl -s {url}/v1/messages/<id> -H 'Authorization: Bearer {key}'

Play the consumer: text the demo merchant ({DEMO_MERCHANT}, {DEMO_MERCHANT_NUMBER}) from a handset,
read what a handset received (the merchant's help reply; TD unsubscribes from its marketing):

  curl -s -X POST {url}/v1/sim/mo -d '{{"from": "13900000001", "to": "{DEMO_MERCHANT_NUMBER}", "text": "hi"}}'
  curl -s {url}/v1/sim/inbox/13900000001
  curl -s -X POST {url}/v1/sim/mo -d '{{"from": "13900000001", "to": "{DEMO_MERCHANT_NUMBER}", "text": "TD"}}'
  curl -s -X POST {url}/v1/sim/mo -d '{{"from": "18611112222", "to": "{modem_numbers[0]}", "text": "2"}}'

Its commands: 1 join as a member, 2 points, CJ enter the lottery, TD unsubscribe. Staff
(cashier 13900000007, manager 13900000008, owner 13900000009) file and approve requests:

  curl -s -X POST {url}/v1/sim/mo -d '{{"from": "13900000007", "to": "{DEMO_MERCHANT_NUMBER}", "text": "SP 报销 500 出差"}}'
  curl -s {url}/v1/sim/inbox/13900000008     # the manager is asked: 回复Y<n>同意
  curl -s -X POST {url}/v1/sim/mo -d '{{"from": "13900000008", "to": "{DEMO_MERCHANT_NUMBER}", "text": "Y1"}}'

CRM API (/v1/crm/...) as the owner: Authorization: Bearer {(crm or {}).get("staff", {}).get("owner", {}).get("token", "")}

  curl -s {url}/v1/sim/inbox/13800138000
{admin}
Stop with Ctrl-C.
"""


async def serve_demo(options: DemoOptions, *, task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED) -> None:
    Path(options.data_dir).mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        # The operator side first: an ISMG simulator for China Mobile numbers.
        sim = IsmgSimulator(sp_id=DEMO_SP_ID, secret=DEMO_SECRET, version=VERSION_3_0, dlr_delay=DLR_DELAY)
        ismg_host, ismg_port = split_listen(options.ismg)
        ismg_port = await nursery.start(sim.serve, ismg_host, ismg_port)
        # Four emulated USB modems on pseudo-terminals for China Unicom and China Telecom.
        network = HandsetNetwork()
        modems: list[SimModem] = await nursery.start(functools.partial(
            serve_sim_modems, len(DEMO_NUMBERS), numbers=[n for n, _ in DEMO_NUMBERS],
            operators=[op for _, op in DEMO_NUMBERS], network=network))
        config = demo_config(options, ismg_port, modems)
        admin = demo_admin(options)
        config = msgspec.structs.replace(config, admin=admin)
        handsets = Handsets(sim, network, {m.number for m in modems})
        running: Running = await nursery.start(functools.partial(
            serve_gateway, config, extra_routes=lambda router, _running: sim_routes(router, handsets)))
        key, secret = await demo_credentials(running.store, options.data_dir)
        crm = await seed_crm_demo(running.store)
        info: dict[str, object] = {
            "http": running.http_url,
            "account": DEMO_ACCOUNT,
            "api_key": key,
            "webhook_secret": secret,
            "ismg": f"{ismg_host}:{ismg_port}",
            "modems": [m.device for m in modems],
            "service_number": DEMO_MERCHANT_NUMBER,
            "crm_token": crm["staff"]["owner"]["token"],
            "staff": {role: s["phone"] for role, s in crm["staff"].items()},
            "admin_token": admin.token,
            "admin_privileged_token": admin.privileged_token,
            "admin_ws": running.admin_ws_url,
        }
        if options.ready_file:
            write_ready_file(options.ready_file, info)
        print(instructions(running, key, [m.number for m in modems], crm, admin_instructions(running, admin)),
              flush=True)
        task_status.started(info)


# --- the admin page and stream (README "Operations") ---------------------------------------------


def demo_admin(options: DemoOptions) -> AdminConfig:
    """Fresh admin tokens for this run: a plain one (masked view) and a privileged one."""
    return AdminConfig(listen=options.admin_ws, token=secrets.token_urlsafe(18),
                       privileged_token=secrets.token_urlsafe(24))


def admin_instructions(running: Running, admin: AdminConfig) -> str:
    return f"""
Watch it live (tokens are new at each start):

  admin page   {running.http_url}/admin#token={admin.token}
               (numbers masked; all of it: {running.http_url}/admin#token={admin.privileged_token})
  admin stream {running.admin_ws_url}/  (Authorization: Bearer <token>, or ?token=)
"""
