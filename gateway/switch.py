"""The switch core: runs a decoded terminal request through the pipeline, builds the answer."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence

from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.pipeline import Context, Participant
from gateway.rrn import RrnGenerator
from protocols.codec import MessageFormatError
from protocols.message import Message
from protocols.mti import is_request, response_mti
from protocols.redact import mask_pan

log = get_logger("gateway.switch")

# SPEC: the response echoes these request fields.
ECHO = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")
ECHO_REVERSAL = (*ECHO, "90")
ECHO_NETWORK = ("7", "11", "41", "70")
FROM_ISSUER = ("54", "55")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    ) -> None:
        self.participants = tuple(participants)
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.log_transactions = log_transactions
        self.clock = clock
        self._rrn = RrnGenerator(node, time.time_ns() // 1000)

    async def handle(self, req: Message, raw: bytes = b"") -> Message | None:
        """The answer to a terminal request, or ``None`` for what has no answer.

        ``raw`` is the request as received, for the terminal MAC check."""
        mti = req.mti
        if not is_request(mti):
            log.warning("terminal_sent_response", mti=mti)
            return None
        started = time.monotonic()
        if mti == "0800":
            resp = self._network(req)
        else:
            resp = await self._transaction(req, started, raw)
        self.metrics.observe_transaction(mti, resp.fields.get("39", ""), time.monotonic() - started)
        return resp

    def format_error_response(self, exc: MessageFormatError) -> Message | None:
        """A decodable message with a bad field: its response MTI with the error's code."""
        try:
            mti = response_mti(exc.mti)
        except Exception:
            return None
        resp = Message(mti, dict(exc.echo))
        resp["39"] = exc.rc
        self.metrics.observe_transaction(exc.mti, exc.rc, 0.0)
        log.info("format_error", mti=exc.mti, field=exc.field, reason=exc.reason, rc=exc.rc)
        return resp

    def _network(self, req: Message) -> Message:
        resp = Message(
            response_mti(req.mti), {k: req.fields[k] for k in ECHO_NETWORK if k in req.fields}
        )
        resp["39"] = "00" if req.fields.get("70") in ("001", "002", "301") else "12"
        return resp

    async def _transaction(self, req: Message, started: float, raw: bytes = b"") -> Message:
        now = self.clock()
        ctx = Context(
            request=req,
            received=started,
            deadline=started + self.request_timeout,
            now=now,
            rrn=self._rrn.next(int(now.timestamp() * 1_000_000)),
            raw=raw,
        )
        ran: list[Participant] = []
        rc: str | None = None
        try:
            for participant in self.participants:
                ran.append(participant)
                rc = await participant.prepare(ctx)
                if rc is not None:
                    break
        except Exception:
            log.exception("participant_failed", participant=ran[-1].name, rrn=ctx.rrn)
            rc = "96"
        if rc == "replay" and ctx.replay is not None:
            log.info("duplicate_replayed", terminal=req.fields.get("41"), stan=req.fields.get("11"))
            return ctx.replay
        ctx.rc = rc or ctx.rc or "96"
        ctx.response = self._build_response(ctx)
        for participant in reversed(ran):
            try:
                if ctx.approved:
                    await participant.commit(ctx)
                else:
                    await participant.abort(ctx)
            except Exception:
                log.exception("participant_finish_failed", participant=participant.name)
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
        resp = Message(response_mti(req.mti), {k: src[k] for k in echo if k in src})
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
