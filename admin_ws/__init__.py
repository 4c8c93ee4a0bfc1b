"""Live operations: the admin websocket stream and the admin page.

:class:`AdminServer` streams snapshots and live events to authenticated viewers
(SPEC.md "Admin websocket"); :func:`admin_routes` adds ``/admin`` and its JSON look-up to the
gateway's HTTP router. The gateway starts both in :func:`gateway.app.serve_gateway` when an
admin token is configured.
"""

from admin_ws.frames import BadClientFrame, Criteria, FilterRequest, decode_client_frame, matches, to_frame
from admin_ws.hub import Hub
from admin_ws.page import admin_routes
from admin_ws.server import AdminServer

__all__ = [
    "AdminServer",
    "BadClientFrame",
    "Criteria",
    "FilterRequest",
    "Hub",
    "admin_routes",
    "decode_client_frame",
    "matches",
    "to_frame",
]
