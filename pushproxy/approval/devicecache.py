"""Devices by id in memory, so that a device's requests (long-poll, list, answer) are
authenticated without a store round trip each (issue 16: the store off the hot path).

Only where every revocation is heard: in cluster mode on PostgreSQL, the store
announces ``device <id>`` with ``pg_notify`` in the very statement that revokes
it (from a node or from ``pushproxy revoke``), and every node drops the entry.
Over SQLite (one process, or workers) ``pushproxy revoke`` writes the file from
another process without telling anyone; there an entry carries the file's
``data_version`` read before the device was (`ThreadRunner.data_version`), and
is served only while the store thread, at most a second ago, still saw that
version: any commit by another process (a revoke, an enrollment, another
worker's login) makes every entry a miss.

Never trusted more than the bus is:

- while the bus is disconnected the cache is not read, and at every (re)connect
  it is emptied (notifications sent meanwhile are lost);
- a read that started before an invalidation is not cached (``generation``): a
  row read just before a revoke cannot outlive the event that revoked it;
- an entry lives ``ttl`` seconds at most, a bound should an event still be lost;
- and it decides nothing alone: the answer's compare-and-set refuses a revoked
  device in the store (`ClusterMethods.answer_transaction`), and the devices a
  push goes to are read with the transaction, never from here.
"""

from __future__ import annotations

from collections import OrderedDict

from pushproxy.approval.store import Device

TTL = 60.0  # seconds an entry is served at most
MAX_ENTRIES = 10_000  # bounded memory: the least recently stored go first


class DeviceCache:
    """Active devices by id; see the module docstring."""

    def __init__(self, ttl: float = TTL, max_entries: int = MAX_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0  # changes at every invalidation
        self._entries: OrderedDict[str, tuple[Device, float, int | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._entries

    def get(self, device_id: str, now: float, version: int | None = None) -> Device | None:
        """The cached active device, or None (unknown, expired, or stored under another
        ``version`` of the file: read the store)."""
        entry = self._entries.get(device_id)
        if entry is None:
            return None
        device, stored, stored_version = entry
        if not stored <= now < stored + self.ttl or stored_version != version:
            del self._entries[device_id]
            return None
        return device

    def put(self, device: Device, now: float, generation: int,
            version: int | None = None) -> None:
        """Keep an active ``device`` read from the store when the cache had ``generation``
        (and the file ``version``, read before the device); not kept if something was
        invalidated since (the read may predate it)."""
        if generation != self.generation or device.revoked is not None:
            return
        self._entries[device.id] = (device, now, version)
        self._entries.move_to_end(device.id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def keep(self, device: Device | None, now: float, generation: int,
             version: int | None = None) -> Device | None:
        """`put` a device just read (None: nothing to keep), and return it: a callback
        on the store's read."""
        if device is not None:
            self.put(device, now, generation, version)
        return device

    def refresh(self, device: Device) -> None:
        """Replace a cached device by a newer copy of itself (its last_seen moved)."""
        entry = self._entries.get(device.id)
        if entry is not None:
            self._entries[device.id] = (device, entry[1], entry[2])

    def forget(self, device_id: str) -> None:
        """``device <id>`` was announced: the device changed (revoked)."""
        self.generation += 1
        self._entries.pop(device_id, None)

    def clear(self) -> None:
        """Forget everything (the bus (re)connected: events may have been lost)."""
        self.generation += 1
        self._entries.clear()
