"""Assembly: the one place that knows every part and starts them in order.

``serve_gateway`` opens the database (starting the embedded server when no URL is set), applies
migrations, and runs the intake, the dispatcher with its channels, and the HTTP API under one
nursery. It reports a :class:`Running` handle through ``task_status`` once the API listens.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import msgspec
import trio
import trio_asyncio

from .admin_api import AdminApi
from .api import Api
from .channel import Channel
from .compliance import ComplianceScreen, MerchantDirectory, SigningOutbox, configured_blocklist
from .config import Config, split_listen
from .dispatcher import Dispatcher
from .events import EventBus
from .outbox import IntakeOutbox
from .http import Router, serve_http
from .http.server import HttpLimits
from .intake import Intake
from .metrics import MeteredBus, Metrics
from .mo_api import MoApi
from .mo_dispatch import MoDispatcher
from .pgserver import EmbeddedPostgres
from .retention import serve_retention
from .router.commands import CommandHandler
from .store import Store, open_store
from .webhooks import WebhookSender

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0
"""Seconds the embedded database gets to stop on exit."""


class Running(msgspec.Struct, kw_only=True):
    """What a started gateway tells its starter."""

    http_url: str
    http_port: int
    database_url: str
    store: Store
    dispatcher: Dispatcher
    metrics: Metrics
    bus: EventBus
    intake: Intake
    outbox: SigningOutbox
    """Sends as the gateway (MO replies, CRM notices); marketing texts get the merchant's signature."""
    merchants: MerchantDirectory | None = None
    mo_dispatcher: MoDispatcher | None = None
    admin_ws_url: str = ""
    """``ws://HOST:PORT`` of the admin stream; empty when no admin token is configured."""


@asynccontextmanager
async def open_database(config: Config) -> AsyncIterator[tuple[Store, str]]:
    """The configured database, or the embedded one in ``data_dir``; migrated, inside a loop."""
    embedded = None
    url = config.database_url
    if not url:
        embedded = EmbeddedPostgres(config.data_dir)
        url = await embedded.start()
    try:
        async with trio_asyncio.open_loop():
            async with open_store(url, pool_size=config.database.pool_size,
                                  connect_timeout=config.database.connect_timeout) as store:
                await store.migrate()
                yield store, url
    finally:
        if embedded is not None:
            with trio.move_on_after(STOP_TIMEOUT) as scope:
                scope.shield = True
                await embedded.stop()


def build_channels(config: Config) -> list[Channel]:
    """The channels the configuration names: one per ``[[cmpp]]`` account, and one for the
    pool of ``[[modems]]``."""
    from .cmpp_channel import CmppChannel
    from .modem_channel import ModemChannel

    channels: list[Channel] = [CmppChannel(c) for c in config.cmpp]
    if config.modems:
        channels.append(ModemChannel(config.modems, timezone=config.dispatcher.timezone))
    return channels


async def serve_gateway(
    config: Config,
    *,
    channels: Sequence[Channel] | None = None,
    extra_routes: Callable[[Router, Running], None] | None = None,
    handlers: Sequence[CommandHandler] = (),
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until cancelled; ``channels`` default to those the configuration names.

    ``handlers`` answer consumers' commands in MO dispatch, asked in order (crm_lite is one)."""
    if channels is None:
        channels = build_channels(config)
    async with open_database(config) as (store, url):
        for account in config.accounts:
            await store.ensure_account(account.name)
        for merchant in config.merchants:
            owner = await store.ensure_account(merchant.account)
            made = await store.ensure_merchant(merchant.name, owner.id, merchant.service_number, merchant.signature)
            await store.set_merchant_accounts(made.id, [(await store.ensure_account(name)).id
                                                        for name in merchant.accounts])
        for channel in channels:
            attach = getattr(channel, "attach_quota_store", None)
            if attach is not None:  # SIM daily counts survive restarts
                attach(store)
        await store.seed_blocklist(configured_blocklist(config.compliance.blocklist))
        metrics = Metrics()
        bus: EventBus = MeteredBus(metrics)
        store.events = bus
        merchants = MerchantDirectory(store)
        handlers = list(handlers)
        if config.crm.enabled:
            # The assembly point is the one place in gateway that knows crm_lite.
            from crm_lite.assembly import build_handler

            handlers.append(build_handler(store, timezone=config.dispatcher.timezone,
                                          approval_timeout_s=config.crm.approval_timeout))
        dispatcher = Dispatcher(store, channels, config.dispatcher, metrics, bus=bus,
                                screen=ComplianceScreen(store, metrics), limits=config.limits)
        await dispatcher.load_routes(config.routes)
        intake = Intake(store, config.intake, metrics, on_commit=dispatcher.wake)
        api = Api(config=config, store=store, intake=intake, metrics=metrics,
                  channels=lambda: dispatcher.channels, merchants=merchants, bus=bus)
        metrics.watch_links(lambda: dispatcher.channels)
        router = api.router()
        MoApi(api=api, store=store, config=config).add_routes(router)
        AdminApi(config=config, store=store, dispatcher=dispatcher).register(router)
        webhooks = WebhookSender(store, metrics, bus=bus)
        mo_dispatcher = MoDispatcher(store, intake, metrics, merchants, bus=bus, handlers=handlers,
                                     base_numbers=[c.service_number for c in config.cmpp], node=dispatcher.node,
                                     max_parts=config.http.max_parts, on_callbacks=webhooks.wake)
        dispatcher.mo_listeners.append(mo_dispatcher.listener)
        host, port = split_listen(config.http.listen)
        async with trio.open_nursery() as nursery:
            await nursery.start(intake.run)
            await nursery.start(webhooks.run)
            # MO dispatch before the channels: MOs stored before a crash are answered now.
            await nursery.start(mo_dispatcher.run)
            await nursery.start(dispatcher.run)
            await nursery.start(serve_retention, store, config.retention, metrics)
            running = Running(http_url="", http_port=0, database_url=url, store=store,
                              dispatcher=dispatcher, metrics=metrics, bus=bus, intake=intake,
                              outbox=SigningOutbox(IntakeOutbox(intake, max_parts=config.http.max_parts), merchants),
                              merchants=merchants, mo_dispatcher=mo_dispatcher)
            if config.crm.enabled:
                from crm_lite.assembly import register_all, serve_crm

                register_all(router, running, approval_timeout_s=config.crm.approval_timeout)
                await nursery.start(functools.partial(serve_crm, store, running.outbox,
                                                      escalation_interval=config.crm.escalation_interval,
                                                      expiry_interval=config.crm.expiry_interval,
                                                      timezone=config.dispatcher.timezone, metrics=metrics))
            if config.admin.enabled:
                running.admin_ws_url = await start_admin(nursery, config, running, router)
            if extra_routes is not None:
                extra_routes(router, running)
            limits = HttpLimits(max_body=config.http.max_body)
            if config.http.workers > 1:  # the accept path in worker processes too (gateway/workers.py)
                from .workers import serve_with_workers

                bound = await nursery.start(functools.partial(
                    serve_with_workers, config, router, store=store, database_url=url, metrics=metrics,
                    on_wake=dispatcher.wake, limits=limits))
            else:
                bound = await nursery.start(functools.partial(serve_http, router, host, port, limits=limits))
            shown = f"[{host}]" if ":" in host else host
            running.http_url = f"http://{shown}:{bound}"
            running.http_port = bound
            log.info("gateway up http=%s channels=%d node=%s", running.http_url, len(channels), dispatcher.node)
            task_status.started(running)


async def start_admin(nursery: trio.Nursery, config: Config, running: Running, router: Router) -> str:
    """Start the admin stream and add the admin page to ``router``; returns the stream's URL."""
    from admin_ws import AdminServer, admin_routes

    admin = AdminServer(config.admin, store=running.store, bus=running.bus, metrics=running.metrics,
                        channels=lambda: running.dispatcher.channels)
    port = await nursery.start(admin.run)
    admin_routes(router, admin, running.store, running.metrics)
    host, _ = split_listen(config.admin.listen)
    return f"ws://{f'[{host}]' if ':' in host else host}:{port}"
