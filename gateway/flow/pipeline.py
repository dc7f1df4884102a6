"""The transaction pipeline: participants in order, in the spirit of jPOS's TransactionManager.

Each participant's ``prepare`` returns ``None`` to go on or a response code to stop (declines
are codes, not exceptions). Once the response is built, every participant that prepared gets
``commit`` (approved) or ``abort`` (anything else), in reverse order; both are idempotent.

The switch resolves each participant's hooks once (:func:`resolve_hooks`): the no-op defaults
of :class:`BaseParticipant` are not called at all, and a hook a stage also offers as a plain
method (``prepare_now``, ``commit_now``, ``abort_now``) is called without a coroutine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from kit.dataset import Merchant, Terminal
from protocols.emv import Tlv
from protocols.message import Message

if TYPE_CHECKING:
    from gateway.flow.recent import TxnEntry
    from gateway.risk import RiskDecision
    from gateway.risk.verification import QrVerification
    from gateway.upstream.links import IssuerPool
    from kit.keys import IssuerKeys


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
    business_date: dt.date | None = None
    """The business (settlement) date, fixed when the request is received (the switch's
    cutover calendar); a reversal or completion takes its original's (FindOriginal)."""
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
    link_keys: IssuerKeys | None = field(default=None, repr=False)
    """The issuer link's key generation this transaction uses (taken at its first PIN or MAC
    operation): a key change meanwhile does not move it to the new keys half-way."""
    entry: TxnEntry | None = None
    original: TxnEntry | None = None
    replay: Message | None = None
    risk: RiskDecision | None = None
    qr: QrVerification | None = None
    icc: Tlv | None = field(default=None, repr=False)
    """Field 55 as CheckEmv decoded it (decoded once: the risk stage reads the CVM in it)."""
    """A QR payment's verification, from the QR API (the risk stage writes a step-up back)."""
    reversed_amount: int = 0
    """Amount this reversal gave back at the issuer (0: nothing was reversed now)."""
    rc: str | None = None
    issuer_request: Message | None = None
    """What went to the issuer, once journaled as sent (a timeout reverses it)."""
    issuer_failure: str | None = None
    """``timeout`` or ``unavailable`` when the issuer gave no answer."""
    answer_rejected: str | None = None
    """Why an issuer answer was not used (``bad_mac``, ``mac_unverified``): the issuer may have
    acted on the request, so the journal stage reverses it as after a timeout."""
    stood_in: bool = False
    """Approved by stand-in processing (gateway.flow.standin); ``advice`` is its 0120."""
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
    """Defaults: nothing to prepare, commit or abort (the switch does not call these).

    A stage that usually decides without waiting may also define ``prepare_now`` (and
    ``commit_now`` / ``abort_now``): a plain method the switch calls instead of the async hook,
    as long as no subclass overrides the async hook. ``prepare_now`` returns :data:`WAIT` when
    it has to wait after all (before changing anything): the switch then awaits ``prepare``.
    """

    name = "participant"

    async def prepare(self, ctx: Context) -> str | None:
        return None

    async def commit(self, ctx: Context) -> None:
        return None

    async def abort(self, ctx: Context) -> None:
        return None


WAIT: Final = "wait"
"""``prepare_now``'s answer when the async ``prepare`` must run instead."""

Prepare = Callable[[Context], Awaitable[str | None]]
Finish = Callable[[Context], Awaitable[None]]
PrepareNow = Callable[[Context], str | None]
FinishNow = Callable[[Context], None]


def _owner(cls: type, name: str) -> type | None:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass
    return None


def _resolve(participant: object, hook: str) -> tuple[Any, Any]:
    """(plain, async) callables of one hook: ``(None, None)`` for BaseParticipant's no-op;
    ``plain`` only when the ``*_now`` method is at least as specific as the async one."""
    if hook in getattr(participant, "__dict__", ()):
        return None, getattr(participant, hook)  # set on the instance: call what was set
    cls = type(participant)
    owner = _owner(cls, hook)
    if owner is BaseParticipant:
        return None, None
    plain = _owner(cls, f"{hook}_now")
    if plain is not None and owner is not None and issubclass(plain, owner):
        return getattr(participant, f"{hook}_now"), getattr(participant, hook)
    return None, getattr(participant, hook)


@dataclass(frozen=True, slots=True)
class Hooks:
    """One participant's hooks as the switch calls them: a plain method when there is one,
    else the async hook; both ``None`` when there is nothing to call."""

    index: int
    name: str
    prepare_now: PrepareNow | None
    prepare: Prepare | None
    commit_now: FinishNow | None
    commit: Finish | None
    abort_now: FinishNow | None
    abort: Finish | None


def resolve_hooks(participants: tuple[Participant, ...]) -> tuple[Hooks, ...]:
    return tuple(
        Hooks(
            index,
            participant.name,
            *_resolve(participant, "prepare"),
            *_resolve(participant, "commit"),
            *_resolve(participant, "abort"),
        )
        for index, participant in enumerate(participants)
    )
