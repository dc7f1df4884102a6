"""structlog JSON logs (orjson) behind a redaction processor that runs before rendering."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, BinaryIO, cast

import orjson
import structlog

from protocols.redact import mask_pan, redact_fields

# A PAN in free text: 13-19 digits standing alone (not inside an id like M00000000000001).
_PAN_RUN = re.compile(r"(?<![0-9A-Za-z])\d{13,19}(?![0-9A-Za-z])")
_SECRET_KEYS = frozenset(
    {
        "pin",
        "pin_block",
        "cvv",
        "cvv2",
        "track2",
        "track",
        "key",
        "keys",
        "tpk",
        "zpk",
        "bdk",
        "tak",
        "zak",
        "zmk",
        "pvk",
        "cvk",
        "imk_ac",
        "lmk",
        "api_key",
        "authorization",
        "password",
    }
)


def _mask_text(text: str) -> str:
    return _PAN_RUN.sub(lambda m: mask_pan(m.group(0)), text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value) if len(value) >= 13 else value
    if isinstance(value, Mapping):
        return {k: ("<hidden>" if k in _SECRET_KEYS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask PANs, hide secrets and ISO fields that must never be shown."""
    for key in list(event):
        value = event[key]
        if key in _SECRET_KEYS:
            event[key] = "<hidden>"
        elif key == "pan" and isinstance(value, str):
            event[key] = mask_pan(value)
        elif key == "fields" and isinstance(value, Mapping):
            event[key] = redact_fields(value)
        else:
            event[key] = _scrub(value)
    return event


class _Stdout:
    """``sys.stdout`` looked up at every write: structlog caches loggers on first use, and
    stdout may be replaced later (test capture, daemonisation)."""

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)

    def flush(self) -> None:
        sys.stdout.flush()


def configure(level: str = "info", *, stream: Any = None) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.BytesLoggerFactory(stream or cast(BinaryIO, _Stdout())),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def peer_host(peer: str) -> str:
    """The address part of a ``host:port`` peer name (``[v6]:port`` too): limits are per
    sending machine, not per connection, or a peer would reset them by reconnecting."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class PeerWarnings:
    """Warnings about what a peer sent, rate-limited per peer address and event.

    Bad input is the peer's fault, not ours: a warning line without a traceback, at most one
    per (address, event) every ``interval`` seconds; the lines held back are counted in the
    next one's ``suppressed``. The volume belongs in a counter metric, which callers keep.
    At most ``max_keys`` (address, event) pairs are remembered, the least recently logged
    forgotten first (``OrderedDict``: O(1) either end), so a flood of addresses costs bounded
    memory and at worst logs a little more.
    """

    def __init__(
        self,
        logger: Any,
        *,
        interval: float = 10.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._max = max_keys
        self._clock = clock
        # (address, event) -> [time of the last line, lines held back since]
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def warning(self, event: str, peer: str, **fields: Any) -> bool:
        """Log ``event`` about ``peer`` unless logged within ``interval``; True if logged."""
        key = (peer_host(peer), event)
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return False
        suppressed = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)
        if suppressed:
            fields["suppressed"] = suppressed
        self._log.warning(event, peer=peer, **fields)
        return True
