"""Single flight: an identical cacheable task added while one is in flight waits for it.

The first task of a cache key is the leader and runs. A task added with the same key
while the leader is pending or running is a follower: it is stored in the broker (so it
has its own id, metadata and futures) with the ids of the tasks ahead of it in its
payload (`"follows"`: the leader first, then earlier followers), and parked: due only
after a short delay (`PARK_SECONDS`).

The hand-off lives in the broker, not in the producer's memory:

* While the producer that added a follower lives, it hands the leader's outcome to the
  follower the moment the leader ends: the same result, or the same error. When the
  leader is cancelled, the first follower leads the others in its place.
* Whenever a follower is leased, by any worker process, that worker looks at the tasks
  ahead of it (`await_ahead`): the first one not cancelled decides. Completed: the
  follower completes with its result. Failed: the follower fails with the same error.
  Running: the worker waits for it to end, then decides again. Pending (not started),
  or none left: the follower runs the function itself; it never waits for a task that
  has not started, as that one may need the very slot the follower holds.

So a follower whose producer went away is settled a few seconds after its leader ends,
no outcome is handed over twice, and no task runs its function twice.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from ..broker.base import AbstractBroker
from ..errors import TaskNotFoundError, TaskStateError
from ..models import Task, TaskError
from ..models import TaskStatus as CoreStatus
from .calls import cache_key_of
from .tracking import TaskTracker

__all__ = [
    "CHAIN_LENGTH",
    "PARK_SECONDS",
    "RECHECK_SECONDS",
    "Flight",
    "Flights",
    "ReplayedFailure",
    "await_ahead",
    "replay_failure",
]

logger = logging.getLogger(__name__)

PARK_SECONDS = 10.0
"""How long a follower stays parked before any worker may lease it and settle it."""

RECHECK_SECONDS = 2.0
"""How often a worker waiting for a running leader looks whether it is still running."""

CHAIN_LENGTH = 4
"""How many tasks ahead of it (the leader first) a follower records."""

_REPLAY_TYPES_MAX = 256


@dataclass(slots=True)
class Flight:
    """The leader of one cache key and the followers waiting for it."""

    key: str
    leader: str
    followers: list[str] = field(default_factory=list)
    outcome: Task | None = None

    def chain(self) -> list[str]:
        """The ids a new follower waits for, in order: the leader, then the followers."""
        return [self.leader, *self.followers][:CHAIN_LENGTH]


class Flights:
    """The flights of one worker, by cache key: the fast hand-off while it lives."""

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
        self._promote(flight)

    async def follow(self, flight: Flight, follower: str) -> None:
        """`follower` (parked in the broker) waits for `flight`'s leader."""
        if self._by_key.get(flight.key) is flight:
            flight.followers.append(follower)
            self.tracker.set_follows(follower, flight.leader)
            return
        # The leader ended while the follower was being stored.
        if flight.outcome is not None:
            await self._hand_outcome(flight.outcome, follower)
        else:
            self.tracker.set_follows(follower, None)

    async def ended(self, task: Task, key: str) -> bool:
        """React to `task` (of cache key `key`) being final; True when it led a flight."""
        flight = self._by_key.get(key)
        if flight is None:
            return False
        if flight.leader != task.id:
            if task.id in flight.followers:
                flight.followers.remove(task.id)  # cancelled (or settled) while it waited
            return False
        if task.status is CoreStatus.CANCELLED:
            self._promote(flight)
            return True
        del self._by_key[key]
        flight.outcome = task
        for follower in flight.followers:
            await self._hand_outcome(task, follower)
        return True

    def _promote(self, flight: Flight) -> None:
        """The first follower leads in place of the leader. It runs once its park ends,
        as a worker that leases it finds no live task ahead of it."""
        if flight.followers:
            leader = flight.followers.pop(0)
            flight.leader = leader
            self.tracker.set_follows(leader, None)
            for follower in flight.followers:
                self.tracker.set_follows(follower, leader)
            return
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]

    async def _hand_outcome(self, leader: Task, follower: str) -> None:
        try:
            if leader.status is CoreStatus.COMPLETED:
                await self.broker.mark_complete(follower, leader.result)
            else:
                self.tracker.share_exception(follower, leader.id)
                error = leader.error or _LEADER_FAILED
                await self.broker.mark_failed(follower, error)
        except (TaskStateError, TaskNotFoundError):
            pass  # the follower was cancelled, settled by a worker, or has expired


_LEADER_FAILED = TaskError("Failed", "the identical task it waited for failed")


async def await_ahead(
    broker: AbstractBroker, follower: Task, chain: list[str], key: str | None
) -> Task | None:
    """Wait for the first live task of `chain` (the ids ahead of `follower`) to end.

    Returns that task once it is completed or failed, or None when the follower must
    run on its own: every task ahead was cancelled, is gone or is of another cache key,
    or the first live one is pending (not started). Tasks of another cache key are
    skipped, so a follower never takes an unrelated task's outcome.
    """
    waited: str | None = None
    while True:
        ahead: Task | None = None
        for task_id in chain:
            task = await broker.get_task(task_id)
            if task is None or task.status is CoreStatus.CANCELLED:
                continue
            if cache_key_of(task) != key:
                continue
            ahead = task
            break
        if ahead is None or ahead.status is CoreStatus.PENDING:
            return None
        if ahead.is_final:
            return ahead
        if waited != ahead.id:
            waited = ahead.id
            logger.info(
                "task %s [%s]: waits for the identical task %s, running",
                follower.id,
                follower.name,
                ahead.id,
                extra={"task_id": follower.id, "task_name": follower.name},
            )
        # Then look again: it may have ended, been handed back, or have expired.
        with contextlib.suppress(TimeoutError, TaskNotFoundError):
            await broker.wait_for(ahead.id, timeout=RECHECK_SECONDS)


class ReplayedFailure(Exception):
    """The failure of the identical task a follower waited for, as the follower's own.

    `replay_failure` makes a subclass named like the original exception type, so the
    follower's stored error has the same type and message as the leader's.
    """


_replay_types: dict[str, type[ReplayedFailure]] = {}


def replay_failure(error: TaskError | None) -> ReplayedFailure:
    """An exception that a task stores as `error` (its type name and message)."""
    error = error or _LEADER_FAILED
    cls = _replay_types.get(error.type)
    if cls is None:
        bases: tuple[type, ...] = (ReplayedFailure,)
        if error.type == "TimeoutError":
            bases = (ReplayedFailure, TimeoutError)  # still caught as a timeout
        cls = type(error.type, bases, {"__module__": __name__, "__doc__": ReplayedFailure.__doc__})
        if len(_replay_types) < _REPLAY_TYPES_MAX:
            _replay_types[error.type] = cls
    return cls(error.message)
