"""The admin HTTP endpoints: the MT routing table, read and changed at run time.

``GET /v1/admin/routes`` answers ``{"version": n, "source": "config" | "api", "routes": [...]}``;
``PUT /v1/admin/routes`` takes the rule list (a JSON array of rules shaped as ``[[routes]]``
in the configuration, or ``{"routes": [...]}``), checks it against this node's channels and
the accounts, stores it (every node picks it up) and routes with it from the next claim on;
``DELETE /v1/admin/routes`` goes back to the configuration's ``[[routes]]``.

Authentication: ``Authorization: Bearer <admin.token>``; a missing or wrong token is a 401.
With no ``admin.token`` configured the admin endpoints are disabled: every request is a 403.
A rule set that does not check is a 400 naming the field (``routes[1].channels[0]``) and
leaves the table in force unchanged.
"""

from __future__ import annotations

import hmac
import logging

import msgspec

from .api import ApiError, _encoder, error_response
from .config import Config
from .dispatcher import Dispatcher
from .errors import StoreError, StoreUnavailable
from .http import Request, Response, Router
from .router import RouteRule, RoutingError
from .router.routing import RouteTable, decode_rules, encode_rules
from .store import Store

log = logging.getLogger(__name__)

ROUTES_PATH = "/v1/admin/routes"


class RoutesOut(msgspec.Struct, frozen=True):
    version: int
    source: str
    routes: list[RouteRule]


class AdminApi:
    """Handlers of the admin endpoints; :meth:`register` adds them to the API's router."""

    def __init__(self, *, config: Config, store: Store, dispatcher: Dispatcher) -> None:
        self._config = config
        self._store = store
        self._dispatcher = dispatcher

    def register(self, router: Router) -> None:
        router.add("GET", ROUTES_PATH, self._wrap(self.get_routes))
        router.add("PUT", ROUTES_PATH, self._wrap(self.put_routes))
        router.add("DELETE", ROUTES_PATH, self._wrap(self.reset_routes))

    def _wrap(self, handler):
        async def wrapped(request: Request, **params: str) -> Response:
            try:
                self._authorize(request)
                return await handler(request, **params)
            except ApiError as exc:
                return exc.response()
            except StoreUnavailable as exc:
                log.warning("database unavailable route=admin error=%s", exc)
                return error_response(503, "database_unavailable", "the database is unreachable; retry later",
                                      headers=[("Retry-After", "5")])
            except StoreError as exc:
                log.error("store error route=admin error=%s", exc)
                return error_response(503, "storage_error", "the store failed; retry later",
                                      headers=[("Retry-After", "5")])

        return wrapped

    def _authorize(self, request: Request) -> None:
        token = self._config.admin.token
        if not token:
            raise ApiError(403, "admin_disabled", "the admin endpoints are disabled: set [admin] token to enable them")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "send the admin token as `Authorization: Bearer <token>`",
                           headers=[("WWW-Authenticate", 'Bearer realm="smsgw-admin"')])

    async def _table(self) -> Response:
        stored = await self._store.routing_table()
        if stored is None:
            out = RoutesOut(version=0, source="config", routes=[])
        else:
            rules, version, source = stored
            out = RoutesOut(version=version, source=source, routes=decode_rules(rules))
        return Response(status=200, body=_encoder.encode(out))

    async def get_routes(self, request: Request) -> Response:
        return await self._table()

    async def put_routes(self, request: Request) -> Response:
        body = request.body.strip()
        if not body:
            raise ApiError(400, "invalid_json", "the request body is empty; send the rule list as a JSON array")
        if body.startswith(b"{"):  # {"routes": [...]}, the shape GET answers with
            try:
                wrapper = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
            except msgspec.DecodeError as exc:
                raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None
            if "routes" not in wrapper:
                raise ApiError(400, "invalid_field", "expected a JSON array of rules or {\"routes\": [...]}",
                               field="routes")
            body = bytes(wrapper["routes"])
        try:
            rules = decode_rules(body)
            table = self._dispatcher.compile_routes(rules, await self._store.account_ids())
        except RoutingError as exc:
            code = "invalid_json" if exc.reason.startswith("malformed JSON") else "invalid_field"
            raise ApiError(400, code, str(exc), field=exc.field) from None
        return await self._save(rules, "api", table)

    async def reset_routes(self, request: Request) -> Response:
        rules = list(self._config.routes)
        try:
            table = self._dispatcher.compile_routes(rules, await self._store.account_ids())
        except RoutingError as exc:
            raise ApiError(409, "config_routes_unusable", f"the configuration's routes do not check: {exc}",
                           field=exc.field) from None
        return await self._save(rules, "config", table)

    async def _save(self, rules: list[RouteRule], source: str, table: RouteTable) -> Response:
        version = await self._store.save_routing_table(encode_rules(rules), source)
        table.version = version
        self._dispatcher.use_routes(table)
        log.info("routing table changed version=%d source=%s rules=%d", version, source, len(rules))
        return Response(status=200, body=_encoder.encode(RoutesOut(version=version, source=source, routes=rules)))
