"""Which waiting requests join an engine's running batch next: fair between councils.

Pure bookkeeping, no vLLM: :class:`~swe_fleet.llm.engine_actor.VLLMEngine`'s step thread asks
:meth:`FairAdmission.admit` before every engine step. A request runs when the engine has room
(fewer than ``capacity`` running: vLLM's own ``max_num_seqs``, beyond which it would queue them
first come, first served) and its client (a council: its submission id) is under its own bound
on requests running at once. When several clients wait, they take turns, one request each.

So a council that sends 500 requests first cannot starve one that sends 5 a moment later: the
latecomer's requests go in at the next free places, alternating with the big one's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairAdmission(Generic[T]):
    """Round-robin admission across clients, bounded per client and in total.

    Items are opaque (the engine uses ``(call, position)`` pairs); the caller reports each
    admitted item's end with :meth:`finished`. Safe to read from another thread (the actor's
    ``status`` while its step thread admits).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        #: Clients with waiting items, in turn order (the next to admit first).
        self._waiting: OrderedDict[str, deque[T]] = OrderedDict()
        self._running: dict[str, int] = {}
        self._limits: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, client: str, items: Iterable[T], limit: int | None = None) -> None:
        """Queue ``items`` of ``client``; ``limit`` (when given) bounds its running requests
        from now on (at least 1). A new client takes its turn after those already waiting."""
        with self._lock:
            self._add(client, items, limit)

    def _add(self, client: str, items: Iterable[T], limit: int | None) -> None:
        if limit is not None:
            self._limits[client] = max(1, limit)
        queued = self._waiting.get(client)
        if queued is None:
            queued = self._waiting[client] = deque()
        queued.extend(items)
        if not queued:
            del self._waiting[client]
            self._forget(client)

    def admit(self) -> list[tuple[str, T]]:
        """The items to start now, as ``(client, item)``, each client in turn while there is room."""
        with self._lock:
            return self._admit()

    def _admit(self) -> list[tuple[str, T]]:
        admitted: list[tuple[str, T]] = []
        running = sum(self._running.values())
        while self._waiting and running < self.capacity:
            progressed = False
            for client in list(self._waiting):
                if running >= self.capacity:
                    break
                if self._running.get(client, 0) >= self._limits.get(client, self.capacity):
                    continue  # at its own bound: the others go on
                queued = self._waiting.pop(client)
                admitted.append((client, queued.popleft()))
                self._running[client] = self._running.get(client, 0) + 1
                running += 1
                progressed = True
                if queued:
                    self._waiting[client] = queued  # to the back of the turn order
            if not progressed:
                break
        return admitted

    def finished(self, client: str, count: int = 1) -> None:
        """``count`` of ``client``'s admitted items left the engine (done or aborted)."""
        with self._lock:
            left = self._running.get(client, 0) - count
            if left > 0:
                self._running[client] = left
            else:
                self._running.pop(client, None)
                self._forget(client)

    def _forget(self, client: str) -> None:
        """A client with nothing running or waiting: its bound goes (its next items bring it)."""
        if client not in self._running and client not in self._waiting:
            self._limits.pop(client, None)

    def withdraw(self, client: str, which: Callable[[T], bool]) -> int:
        """Drop ``client``'s waiting items for which ``which`` is true; how many were dropped."""
        with self._lock:
            queued = self._waiting.get(client)
            if not queued:
                return 0
            kept = deque(item for item in queued if not which(item))
            dropped = len(queued) - len(kept)
            if kept:
                self._waiting[client] = kept
            else:
                del self._waiting[client]
                self._forget(client)
            return dropped

    def drain(self) -> list[T]:
        """Every waiting item, taken out (the engine failed: they all get its error)."""
        with self._lock:
            items = [item for queued in self._waiting.values() for item in queued]
            self._waiting.clear()
            return items

    @property
    def waiting(self) -> int:
        """Items waiting for their turn."""
        with self._lock:
            return sum(len(items) for items in self._waiting.values())

    @property
    def running(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def running_by_client(self) -> dict[str, int]:
        with self._lock:
            return dict(self._running)

    def waiting_by_client(self) -> dict[str, int]:
        with self._lock:
            return {client: len(items) for client, items in self._waiting.items()}
