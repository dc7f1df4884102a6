"""Connection caps of a listener: in all and per source address.

Each open connection costs a file descriptor and buffers; without a cap, one machine holding
idle connections exhausts them for everyone (issue 15: 10,000 idle connections were held, and
an HSM's 256 slots locked out its clients). The cap per address keeps one source from taking
the whole listener, so the others keep being served.
"""

from __future__ import annotations

from collections.abc import Callable

from kit.logs import peer_host

Refused = Callable[[str, str], object]
"""Called with (peer, reason) for each connection refused: ``max_connections`` (the listener
is full) or ``max_per_address`` (that source address is)."""


class Admission:
    """Counts a listener's connections; ``admit`` at accept, ``release`` once closed (O(1))."""

    __slots__ = ("_by_address", "_on_refused", "_total", "max_per_address", "max_total")

    def __init__(self, max_total: int, max_per_address: int, on_refused: Refused) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._on_refused = on_refused
        self._total = 0
        self._by_address: dict[str, int] = {}

    @property
    def open(self) -> int:
        return self._total

    def admit(self, peer: str) -> bool:
        """Count ``peer``'s new connection; False (and ``on_refused`` told) when over a cap:
        the caller closes it at once."""
        if self._total >= self.max_total:
            self._on_refused(peer, "max_connections")
            return False
        host = peer_host(peer)
        count = self._by_address.get(host, 0)
        if count >= self.max_per_address:
            self._on_refused(peer, "max_per_address")
            return False
        self._by_address[host] = count + 1
        self._total += 1
        return True

    def release(self, peer: str) -> None:
        """An admitted connection of ``peer`` has closed."""
        host = peer_host(peer)
        count = self._by_address.get(host, 0)
        if count <= 1:
            self._by_address.pop(host, None)  # the map holds open sources only
        else:
            self._by_address[host] = count - 1
        self._total -= 1
