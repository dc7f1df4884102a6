"""The transaction pipeline: participants in order, in the spirit of jPOS's TransactionManager.

Each participant's ``prepare`` returns ``None`` to go on or a response code to stop (declines
are codes, not exceptions). Once the response is built, every participant that prepared gets
``commit`` (approved) or ``abort`` (anything else), in reverse order; both are idempotent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gateway.dataset import Merchant, Terminal
from protocols.message import Message

if TYPE_CHECKING:
    from gateway.links import IssuerPool
    from gateway.recent import TxnEntry
    from gateway.risk import RiskDecision


@dataclass(slots=True)
class Context:
    request: Message
    received: float
    """time.monotonic() when the request was decoded (one clock on every backend: no
    async-library lookup on the hot path)."""
    deadline: float
    now: dt.datetime
    """Wall-clock time of the request, UTC."""
    rrn: str
    raw: bytes = field(default=b"", repr=False)
    """The request as received (the terminal's MAC covers these bytes)."""
    pin_block: str | None = field(default=None, repr=False)
    """Field 52 re-encrypted under the issuer's ZPK (hex); the only PIN block sent on."""
    terminal: Terminal | None = None
    merchant: Merchant | None = None
    pan: str = field(default="", repr=False)
    expiry: str | None = None
    issuer: str | None = None
    pool: IssuerPool | None = None
    entry: TxnEntry | None = None
    original: TxnEntry | None = None
    replay: Message | None = None
    risk: RiskDecision | None = None
    reversed_amount: int = 0
    """Amount this reversal gave back at the issuer (0: nothing was reversed now)."""
    rc: str | None = None
    issuer_request: Message | None = None
    """What went to the issuer, once journaled as sent (a timeout reverses it)."""
    issuer_failure: str | None = None
    """``timeout`` or ``unavailable`` when the issuer gave no answer."""
    stood_in: bool = False
    """Approved by stand-in processing (gateway.standin); ``advice`` is its 0120."""
    advice: Message | None = None
    """An advice to store and forward with this transaction's journal record (0120 of a
    stand-in, 0420 of a reversal acknowledged locally)."""
    issuer_response: Message | None = None
    response: Message | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.rc == "00"

    def decline(self, rc: str, reason: str) -> str:
        self.reasons.append(reason)
        return rc


class Participant(Protocol):
    name: str

    async def prepare(self, ctx: Context) -> str | None: ...

    async def commit(self, ctx: Context) -> None: ...

    async def abort(self, ctx: Context) -> None: ...


class BaseParticipant:
    """Defaults: nothing to commit or abort."""

    name = "participant"

    async def prepare(self, ctx: Context) -> str | None:
        return None

    async def commit(self, ctx: Context) -> None:
        return None

    async def abort(self, ctx: Context) -> None:
        return None
