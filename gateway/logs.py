"""structlog JSON logs (orjson) behind a redaction processor that runs before rendering."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
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
