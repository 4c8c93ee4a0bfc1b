"""The gateway's one error base.

Every package translates the errors of the layer below it (serial, asyncpg, OS) into a
subclass of :class:`GatewayError` where they enter it; protocols add a ``ProtocolError``
with ``Local``/``Remote`` subclasses (we misbehaved / the peer did), after h11.
"""


class GatewayError(Exception):
    """Base of every error smsgw raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is wrong; the message names the key."""


class StoreError(GatewayError):
    """The database could not do what was asked (unreachable, constraint, timeout)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached; the API answers 503."""


class StoreConflict(StoreError):
    """A write broke a constraint (unique key, check, foreign key): the caller's input clashes
    with what is stored. ``constraint`` names the constraint when PostgreSQL said which."""

    def __init__(self, message: str, constraint: str = "") -> None:
        super().__init__(message)
        self.constraint = constraint
