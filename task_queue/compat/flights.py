"""Single flight: an identical cacheable task added while one is in flight waits for it.

The first task of a cache key is the leader and runs. A task added with the same key
while the leader is pending or running is a follower: it is stored in the broker (so it
has its own id, metadata and futures, and nothing is lost if this process dies) but
parked, due only after a long delay, and takes the leader's outcome the moment the
leader ends: the same result, or the same error. When the leader is cancelled, the first
follower is made due at once and leads the others. A parked follower whose producer
died runs after its delay on its own, and usually finds the result in the cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..broker.base import AbstractBroker
from ..errors import TaskNotFoundError, TaskStateError
from ..models import Task, TaskError
from ..models import TaskStatus as CoreStatus
from .tracking import TaskTracker

__all__ = ["PARK_SECONDS", "Flight", "Flights"]

logger = logging.getLogger(__name__)

PARK_SECONDS = 3600.0
"""How long a follower stays parked if nobody hands it the leader's outcome."""

_UNPARKED = TaskError("Rescheduled", "the identical task it waited for was cancelled")


@dataclass(slots=True)
class Flight:
    """The leader of one cache key and the followers waiting for it."""

    key: str
    leader: str
    followers: list[str] = field(default_factory=list)
    outcome: Task | None = None


class Flights:
    """The flights of one worker, by cache key."""

    def __init__(self, broker: AbstractBroker, tracker: TaskTracker) -> None:
        self.broker = broker
        self.tracker = tracker
        self._by_key: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def current(self, key: str) -> Flight | None:
        """The flight in progress for `key`, or None."""
        return self._by_key.get(key)

    def lead(self, key: str, leader: str) -> Flight:
        """Start a flight for `key` led by the task `leader` (about to be enqueued)."""
        flight = Flight(key, leader)
        self._by_key[key] = flight
        return flight

    async def abandon(self, flight: Flight) -> None:
        """The leader could not be enqueued: hand the lead on, or end the flight."""
        await self._promote(flight)

    async def follow(self, flight: Flight, follower: str) -> None:
        """`follower` (parked in the broker) waits for `flight`'s leader."""
        if self._by_key.get(flight.key) is flight:
            flight.followers.append(follower)
            self.tracker.set_follows(follower, flight.leader)
            return
        # The leader ended while the follower was being stored.
        if flight.outcome is not None:
            await self._hand_outcome(flight.outcome, follower)

    async def ended(self, task: Task, key: str) -> bool:
        """React to `task` (of cache key `key`) being final; True when it led a flight."""
        flight = self._by_key.get(key)
        if flight is None:
            return False
        if flight.leader != task.id:
            if task.id in flight.followers:
                flight.followers.remove(task.id)  # cancelled while it waited
            return False
        if task.status is CoreStatus.CANCELLED:
            await self._promote(flight)
            return True
        del self._by_key[key]
        flight.outcome = task
        for follower in flight.followers:
            await self._hand_outcome(task, follower)
        return True

    async def _promote(self, flight: Flight) -> None:
        while flight.followers:
            leader = flight.followers.pop(0)
            flight.leader = leader
            self.tracker.set_follows(leader, None)
            for follower in flight.followers:
                self.tracker.set_follows(follower, leader)
            if await self._unpark(leader):
                return
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]

    async def _hand_outcome(self, leader: Task, follower: str) -> None:
        if leader.status is CoreStatus.CANCELLED:
            self.tracker.set_follows(follower, None)
            await self._unpark(follower)
            return
        try:
            if leader.status is CoreStatus.COMPLETED:
                await self.broker.mark_complete(follower, leader.result)
            else:
                self.tracker.share_exception(follower, leader.id)
                error = leader.error or TaskError(
                    "Failed", "the identical task it waited for failed"
                )
                await self.broker.mark_failed(follower, error)
        except (TaskStateError, TaskNotFoundError):
            pass  # the follower was cancelled (or has expired) meanwhile

    async def _unpark(self, task_id: str) -> bool:
        """Make a parked task due now; False when it is no longer pending."""
        task = await self.broker.get_task(task_id)
        if task is None or task.status is not CoreStatus.PENDING:
            return task is not None and task.status is CoreStatus.PROCESSING
        try:
            # An administrative retry of a pending task makes it due at once.
            return await self.broker.mark_failed(task_id, _UNPARKED, retry_in=0.0)
        except (TaskStateError, TaskNotFoundError):
            return False
