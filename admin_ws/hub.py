"""Fan-out of the event bus to any number of viewers at the cost of one subscriber.

The hub holds one bus subscription, and only while at least one viewer is connected (so the
gateway builds no events when nobody watches). Events go into a ring of ``size`` slots with
absolute positions; each viewer keeps its own read position. Publishing an event costs one
slot write whatever the number of viewers; a viewer that falls more than ``size`` events
behind loses the oldest and learns how many from the gap in positions. This is each viewer's
bounded buffer: a stalled viewer costs nothing, and never slows the gateway or other viewers.
"""

from __future__ import annotations

import trio

from gateway.events import Event, EventBus

HUB_SUBSCRIPTION = 50_000
"""Events the hub's own bus subscription may hold before the hub drains it (it drains at once;
this only absorbs a burst while the hub task waits for its turn to run)."""
HUB_BATCH = 5_000
"""Events moved from the subscription into the ring at a time."""


class Hub:
    """See the module docstring."""

    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self.size = size
        self._ring: list[Event | None] = [None] * size
        self.head = 0
        """Position the next event is written at; events ``head - size .. head - 1`` are kept."""
        self.board_version = 0
        self.board: object | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self._viewers = 0
        self._wanted = trio.Event()
        self._scope: trio.CancelScope | None = None
        self.lost = 0
        """Events the hub itself missed (its subscription overflowed)."""

    @property
    def viewers(self) -> int:
        return self._viewers

    def attach(self) -> int:
        """A viewer joins; returns its starting read position (it sees events from now on)."""
        self._viewers += 1
        self._wanted.set()
        return self.head

    def detach(self) -> None:
        self._viewers -= 1
        if self._viewers == 0:
            self._wanted = trio.Event()
            if self._scope is not None:
                self._scope.cancel()

    def read(self, position: int, limit: int) -> tuple[list[Event | None], int, int]:
        """Events from ``position`` on (at most ``limit``): ``(events, next position, lost)``;
        ``lost`` counts events overwritten before this viewer got to them. ``None`` entries stand
        for events the hub missed: they count as lost too."""
        oldest = self.head - self.size
        lost = 0
        if position < oldest:
            lost = oldest - position
            position = oldest
        end = min(self.head, position + limit)
        ring, size = self._ring, self.size
        events = [ring[i % size] for i in range(position, end)]
        return events, end, lost

    def tail(self, position: int, limit: int) -> tuple[list[Event], int, int]:
        """The newest ``limit`` events past ``position``: ``(events, next position, skipped)``;
        ``skipped`` counts the older ones passed over, lost ones included. Costs ``limit``,
        not the number of events waiting, which a viewer over its budget must not pay."""
        start = max(position, self.head - self.size, self.head - max(0, limit))
        ring, size = self._ring, self.size
        events = [e for e in (ring[i % size] for i in range(start, self.head)) if e is not None]
        return events, self.head, self.head - position - len(events)

    async def wait(self, position: int, board_version: int) -> None:
        """Until there is an event past ``position`` or a board newer than ``board_version``."""
        while self.head == position and self.board_version == board_version:
            await self._lot.park()

    def publish_board(self, board: object) -> None:
        self.board = board
        self.board_version += 1
        self._lot.unpark_all()

    def _append(self, events: list[Event], lost: int) -> None:
        ring, size = self._ring, self.size
        if lost:
            self.lost += lost
            for i in range(self.head, self.head + min(lost, size)):
                ring[i % size] = None
            self.head += lost
        head = self.head
        for event in events:
            ring[head % size] = event
            head += 1
        self.head = head
        self._lot.unpark_all()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to the bus while anyone watches; move events into the ring."""
        task_status.started()
        while True:
            await self._wanted.wait()
            with trio.CancelScope() as scope, self._bus.subscribe(HUB_SUBSCRIPTION) as sub:
                self._scope = scope
                if self._viewers == 0:  # the last viewer left before we got here
                    scope.cancel()
                while True:
                    events, lost = await sub.receive(HUB_BATCH)
                    self._append(events, lost)
            self._scope = None
            await trio.sleep(0)  # a checkpoint between rounds, also when cancelled at once

    def statistics(self) -> dict[str, int | float]:
        return {"viewers": self._viewers, "head": self.head, "lost": self.lost,
                "size": self.size, "subscribed": int(self._scope is not None)}
