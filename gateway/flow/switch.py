"""The switch core: runs a decoded terminal request through the pipeline, builds the answer."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.flow.pipeline import WAIT, Context, Hooks, Participant, resolve_hooks
from gateway.flow.rrn import RrnGenerator
from gateway.metrics import Metrics
from kit.logs import get_logger
from protocols.business_day import BusinessCalendar
from protocols.codec import MessageFormatError
from protocols.message import Message
from protocols.mti import is_request, response_mti
from protocols.redact import mask_pan
from protocols.validate import check_request

if TYPE_CHECKING:
    from gateway.risk.verification import QrVerification

log = get_logger("gateway.flow.switch")

# SPEC: the response echoes these request fields.
ECHO = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")
ECHO_REVERSAL = (*ECHO, "90")
ECHO_NETWORK = ("7", "11", "41", "70")
# Every field an answer may copy from its request.
ECHOED = frozenset((*ECHO_REVERSAL, *ECHO_NETWORK))
FROM_ISSUER = ("54", "55")
# Response MTI of each request MTI seen (at most the few requests that pass is_request).
_RESPONSE_MTI: dict[str, str] = {}


_now = dt.datetime.now
_UTC = dt.UTC


def utcnow() -> dt.datetime:
    return _now(_UTC)


class Switch:
    def __init__(
        self,
        participants: Sequence[Participant],
        metrics: Metrics,
        *,
        node: int = 0,
        request_timeout: float = 30.0,
        log_transactions: bool = True,
        clock: Callable[[], dt.datetime] = utcnow,
        calendar: BusinessCalendar | None = None,
    ) -> None:
        self.participants = tuple(participants)
        hooks = resolve_hooks(self.participants)
        # Resolved once: no-op hooks are never called, plain ones without a coroutine.
        self._prepares = tuple(h for h in hooks if h.prepare is not None)
        self._finishes = tuple(
            h for h in reversed(hooks) if h.commit is not None or h.abort is not None
        )
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.log_transactions = log_transactions
        self.clock = clock
        self.calendar = calendar or BusinessCalendar.of()
        """Business dates (default: the UTC calendar date)."""
        self._rrn = RrnGenerator(node, time.time_ns() // 1000)

    async def handle(
        self, req: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None:
        """The answer to a terminal request, or ``None`` for what has no answer (a response:
        the caller logs the peer's fault).

        ``raw`` is the request as received, for the terminal MAC check; ``qr`` what the
        wallet verified, for a QR payment (its tier caps the payer's QR day)."""
        mti = req.mti
        if not is_request(mti):
            return None
        started = time.monotonic()
        if mti == "0800":
            resp = self._network(req)
        else:
            resp = await self._transaction(req, started, raw, qr)
        self.metrics.observe_transaction(mti, resp.fields.get("39", ""), time.monotonic() - started)
        return resp

    def format_error_response(self, exc: MessageFormatError) -> Message | None:
        """A decodable message with a bad field: its response MTI with the error's code
        (``None`` for a message that has no response). The caller logs the peer's fault."""
        try:
            mti = response_mti(exc.mti)
        except Exception:
            return None
        resp = Message(mti, dict(exc.echo))
        resp["39"] = exc.rc
        self.metrics.observe_transaction(exc.mti, exc.rc, 0.0)
        return resp

    def refuse(self, req: Message, rc: str) -> Message | None:
        """The answer to a request refused before the pipeline (the edge's limits): its
        response MTI, the fields it echoes, ``rc``; ``None`` for a message without answer."""
        if not is_request(req.mti):
            return None
        resp = Message(response_mti(req.mti), {k: v for k, v in req.fields.items() if k in ECHOED})
        resp["39"] = rc
        self.metrics.observe_transaction(req.mti, rc, 0.0)
        return resp

    def _network(self, req: Message) -> Message:
        resp = Message(
            response_mti(req.mti), {k: req.fields[k] for k in ECHO_NETWORK if k in req.fields}
        )
        # Not through the pipeline (whose CheckFields runs this for transactions): checked here.
        issue = check_request(req)
        resp["39"] = "00" if issue is None else issue.rc
        return resp

    async def _transaction(
        self, req: Message, started: float, raw: bytes = b"", qr: QrVerification | None = None
    ) -> Message:
        now = self.clock()
        ctx = Context(
            request=req,
            received=started,
            deadline=started + self.request_timeout,
            now=now,
            rrn=self._rrn.next(int(now.timestamp() * 1_000_000)),
            business_date=self.calendar.business_date(now),
            raw=raw,
            qr=qr,
        )
        # Participants up to ``last`` prepared (a stage whose prepare is a no-op counts as
        # prepared once the pipeline got past it); they commit or abort, in reverse.
        last = len(self.participants) - 1
        rc: str | None = None
        hooks: Hooks | None = None
        try:
            for hooks in self._prepares:
                now_ = hooks.prepare_now
                if now_ is not None:
                    rc = now_(ctx)
                    if rc == WAIT:
                        rc = await hooks.prepare(ctx)  # type: ignore[misc]
                else:
                    rc = await hooks.prepare(ctx)  # type: ignore[misc]
                if rc is not None:
                    last = hooks.index
                    break
        except Exception:
            assert hooks is not None
            last = hooks.index
            log.exception("participant_failed", participant=hooks.name, rrn=ctx.rrn)
            rc = "96"
        if rc == "replay" and ctx.replay is not None:
            log.info("duplicate_replayed", terminal=req.fields.get("41"), stan=req.fields.get("11"))
            return ctx.replay
        ctx.rc = rc or ctx.rc or "96"
        ctx.response = self._build_response(ctx)
        for hooks in self._finishes:
            if hooks.index > last:
                continue
            try:
                if ctx.rc == "00":
                    if hooks.commit_now is not None:
                        hooks.commit_now(ctx)
                    elif hooks.commit is not None:
                        await hooks.commit(ctx)
                elif hooks.abort_now is not None:
                    hooks.abort_now(ctx)
                elif hooks.abort is not None:
                    await hooks.abort(ctx)
            except Exception:
                log.exception("participant_finish_failed", participant=hooks.name)
        if self.log_transactions:
            log.info(
                "txn",
                mti=req.mti,
                rc=ctx.rc,
                rrn=ctx.rrn,
                pan=mask_pan(ctx.pan) if ctx.pan else None,
                amount=req.fields.get("4"),
                terminal=req.fields.get("41"),
                issuer=ctx.issuer,
                reasons=ctx.reasons or None,
                ms=round((time.monotonic() - started) * 1000, 3),
            )
        return ctx.response

    def _build_response(self, ctx: Context) -> Message:
        req = ctx.request
        echo = ECHO_REVERSAL if req.mti[1] == "4" else ECHO
        src = req.fields
        mti = _RESPONSE_MTI.get(req.mti)
        if mti is None:
            mti = _RESPONSE_MTI[req.mti] = response_mti(req.mti)  # raises for a bad MTI
        resp = Message(mti, {k: src[k] for k in echo if k in src})
        resp["37"] = ctx.rrn
        issuer = ctx.issuer_response
        if issuer is not None:
            auth = issuer.fields.get("38")
            if ctx.approved and auth:
                resp["38"] = auth
            for k in FROM_ISSUER:
                if k in issuer.fields:
                    resp[k] = issuer.fields[k]
        resp["39"] = ctx.rc or "96"
        return resp
