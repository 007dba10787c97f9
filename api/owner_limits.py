"""How much of a shared resource each owner holds at once, with a ceiling: so that one owner cannot take every slot
(the generation threads, say) and make everyone else wait. Refused, not queued: a client over its limit hears so
at once (429) instead of holding a connection while it waits behind its own work."""

from __future__ import annotations

import threading


class OwnerBusy(Exception):
    """``owner`` already holds ``limit`` slots."""

    def __init__(self, owner: str, limit: int) -> None:
        super().__init__(f"{owner} already holds {limit}")
        self.owner, self.limit = owner, limit


class Slot:
    """One slot of one owner, given back by :meth:`release` (once; later calls do nothing)."""

    def __init__(self, limits: OwnerLimits, owner: str) -> None:
        self._limits, self.owner = limits, owner
        self.released = False  # set under the limits' lock

    def release(self) -> None:
        self._limits._give_back(self)


class OwnerLimits:
    """``take(owner)`` -> a :class:`Slot`, or :class:`OwnerBusy` while the owner already holds ``limit``.

    Thread-safe: slots are taken on the event loop and may be released from any thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def held(self, owner: str) -> int:
        """The slots ``owner`` holds now."""
        with self._lock:
            return self._held.get(owner, 0)

    def take(self, owner: str) -> Slot:
        """A slot for ``owner``; OwnerBusy when it already holds ``limit``."""
        with self._lock:
            held = self._held.get(owner, 0)
            if held >= self.limit:
                raise OwnerBusy(owner, self.limit)
            self._held[owner] = held + 1
        return Slot(self, owner)

    def _give_back(self, slot: Slot) -> None:
        with self._lock:
            if slot.released:
                return
            slot.released = True
            left = self._held.pop(slot.owner) - 1
            if left:
                self._held[slot.owner] = left  # owners holding nothing leave no entry: the dict stays small
