"""What the locust users do, without importing locust (which monkey-patches the process with
gevent on import): a blocking terminal session that reports each exchange through a locust-style
``request`` event callback, and the QR answer check. Tested directly with a stub callback.

Every answer whose field 39 is not ``00`` is reported as a failure
``ResponseCodeError('51')``, so locust's failure table counts declines per code; a request with
no usable answer is reported with the transport error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from loadtest.mix import DEFAULT_DATA, Txn, TxnFactory, load_data
from loadtest.terminal_client import TerminalClient
from protocols.errors import ProtocolError
from protocols.framing import encode_frame

FireRequest = Callable[..., None]
REQUEST_TYPE = "ISO8583"


class ResponseCodeError(Exception):
    """A decline or error answer: field 39 (or the QR ``response_code``) was not ``00``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class AnswerMismatchError(Exception):
    """The answer did not carry the request's STAN (field 11)."""


def factory_from_env(env: dict[str, str]) -> TxnFactory:
    """A factory on ``$PAYSWITCH_DATA`` (default conf/demo/data.toml), fresh random state."""
    path = Path(env.get("PAYSWITCH_DATA", "") or DEFAULT_DATA)
    return TxnFactory(load_data(path), rnd=random.Random())


class TerminalSession:
    """One terminal connection, one request at a time (a locust user is one terminal)."""

    def __init__(
        self,
        host: str,
        port: int,
        fire: FireRequest,
        factory: TxnFactory,
        *,
        tls_ca: Path | None = None,
        timeout: float = 10.0,
        reversal_share: float = 0.0,
    ) -> None:
        self.host, self.port, self.tls_ca, self.timeout = host, port, tls_ca, timeout
        self.fire = fire
        self.factory = factory
        self.reversal_share = reversal_share
        self._client: TerminalClient | None = None

    def _connection(self) -> TerminalClient:
        if self._client is None:
            self._client = TerminalClient(
                self.host, self.port, tls_ca=self.tls_ca, timeout=self.timeout
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def transact(self, kind: str) -> str | None:
        """Send one ``kind`` (see loadtest.mix), and a reversal of it for ``reversal_share``
        of approvals. The response code, or ``None`` when no answer came."""
        txn = self.factory.build(kind)
        rc = self.exchange(txn)
        share = self.reversal_share
        if rc == "00" and txn.original is not None and self.factory.rnd.random() < share:
            self.exchange(self.factory.reversal(txn.original))
        return rc

    def exchange(self, txn: Txn) -> str | None:
        """One request and its answer, reported through ``fire``."""
        start_time = time.time()
        t0 = time.perf_counter()
        try:
            client = self._connection()
            client.sock.sendall(encode_frame(txn.payload))
            answer = client.receive()
            if answer.fields.get("11") != txn.stan:
                raise AnswerMismatchError(f"answer STAN {answer.fields.get('11')!r}")
        except (OSError, ProtocolError, AnswerMismatchError) as exc:
            self.close()  # the next request reconnects
            self._fire(txn.kind, t0, start_time, 0, exc)
            return None
        rc = answer.fields.get("39", "??")
        error = None if rc == "00" else ResponseCodeError(rc)
        self._fire(txn.kind, t0, start_time, len(txn.payload), error, rc=rc)
        return rc

    def _fire(
        self,
        name: str,
        t0: float,
        start_time: float,
        length: int,
        exception: Exception | None,
        **context: Any,
    ) -> None:
        self.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=length,
            response=None,
            context=context,
            exception=exception,
            start_time=start_time,
        )


def qr_outcome(status: int, body: bytes) -> Exception | None:
    """``None`` for an approved QR payment, else what locust should record as the failure."""
    if status not in (200, 201):
        return ResponseCodeError(f"HTTP {status}")
    try:
        rc = orjson.loads(body).get("response_code")
    except (orjson.JSONDecodeError, AttributeError):
        rc = None
    if not isinstance(rc, str):
        return ValueError("QR answer without response_code")
    return None if rc == "00" else ResponseCodeError(rc)
