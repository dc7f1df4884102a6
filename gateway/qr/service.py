"""The QR acquirer API's logic, without HTTP: authenticate, decode the QR code, route the payment
through the switch as an ISO 8583 0200 with 22 = 031, keep the result, refund.

A payment passes through exactly the pipeline a card does (``Switch.handle``: field checks,
duplicate check, detokenization, routing, risk and limits, issuer), from the virtual terminal of
its acquirer and merchant (:mod:`gateway.qr.terminals`). Once a request is handed to the switch
it runs to its end even if the HTTP client goes away, so its result is always recorded under its
idempotency key and a retry can never charge twice.

Never an approval the books do not hold: if the QR store cannot take an approved payment, the
service reverses it through the switch as the virtual terminal's 0400 of the original (field
90), the path a terminal's reversal takes (the issuer in real time, else the journal's 0420
through store-and-forward until acknowledged), and answers ``503 qr-payment-not-recorded``
with nothing stored under the key, so a retry is a fresh payment. Should the reversal not be
acknowledged either, the key is held (the same 503 again) while this process lives, and the
journal keeps the approval for reconciliation.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal, Protocol, TypeVar

import anyio
import orjson
from prometheus_client import CollectorRegistry, Counter

from gateway.edge.http import AUTH_FAILURES_DETAIL, AuthFailures
from gateway.flow.tokens import PanCipher
from gateway.qr import problems as p
from gateway.qr.models import MpmRequest, MpmView, PaymentRequest, RefundRequest, VerifyRequest
from gateway.qr.otp import OtpEnrolment
from gateway.qr.problems import Problem
from gateway.qr.store import (
    OPEN,
    Claim,
    IdempotencyConflict,
    IdempotencyStore,
    Key,
    MemoryQrStore,
    Payment,
    QrStore,
    Refund,
    StoredResponse,
)
from gateway.qr.terminals import virtual_terminals
from gateway.risk.verification import STEP_UP, QrVerification
from gateway.upstream.links import transmission_time
from kit.dataset import Dataset, Merchant, QrAcquirer
from kit.logs import get_logger
from protocols import emv, qr_cpm, qr_mpm
from protocols.bounded import BoundedFifo
from protocols.currency import is_payment_currency
from protocols.keys import original_data
from protocols.message import Message
from protocols.redact import mask_pan

log = get_logger("gateway.qr")


class Handler(Protocol):
    """The switch as the QR API calls it (``Switch.handle``)."""

    def __call__(
        self, req: Message, raw: bytes = ..., /, *, qr: QrVerification | None = ...
    ) -> Awaitable[Message | None]: ...


A = TypeVar("A")
QR_ENTRY_MODE: Final = "031"
# Attempts at reversing an approval the store did not take: a terminal repeats its reversal
# until acknowledged; ``91``/``96`` (issuer or journal briefly unavailable) are worth another.
REVERSAL_ATTEMPTS: Final = 3
RETRY_REVERSAL: Final = frozenset({"91", "96"})
# Currency of a merchant's country, for POST /v1/qr/mpm without a currency.
COUNTRY_CURRENCY: Final[Mapping[str, str]] = {
    "156": "156",  # CN: CNY
    "344": "344",  # HK: HKD
    "446": "446",  # MO: MOP
    "392": "392",  # JP: JPY
    "410": "410",  # KR: KRW
    "702": "702",  # SG: SGD
    "826": "826",  # GB: GBP
    "840": "840",  # US: USD
}


def _check_currency(currency: str) -> None:
    """The switch carries it in field 49: an ISO 4217 payment currency, as terminals' are."""
    if not is_payment_currency(currency):
        raise Problem(
            p.CURRENCY_UNKNOWN, f"currency {currency} is not an ISO 4217 payment currency"
        )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class QrService:
    def __init__(
        self,
        dataset: Dataset,
        handler: Handler,
        cipher: PanCipher,
        *,
        idempotency_window: float = 86400.0,
        max_payments: int = 1_000_000,
        store: QrStore | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        registry: CollectorRegistry | None = None,
        journaled: bool = False,
        enrolment: OtpEnrolment | None = None,
        challenge_ttl: float = 300.0,
        challenge_tries: int = 5,
        max_challenges: int = 100_000,
    ) -> None:
        """``store``: where payments and idempotency keys live (default: in memory, bounded by
        ``max_payments`` and ``idempotency_window``); ``cipher`` seals card numbers and keys
        the request fingerprints, so a durable store needs the same key at every start.
        ``registry``: the gateway's metrics registry (None: the counter is kept unexported).
        ``journaled``: the switch has a journal, so a reversal the issuer did not answer
        (``91``) is queued as a 0420 that store-and-forward repeats until acknowledged.
        ``enrolment``: payers who can answer a step-up with a one-time code (none: a payment
        over its QR tier is declined)."""
        self.handler = handler
        self.cipher = cipher
        self.clock = clock
        self.merchants: dict[str, Merchant] = {m.id: m for m in dataset.merchants}
        # API keys are looked up by digest: the clear keys are not kept.
        self._acquirers: dict[bytes, QrAcquirer] = {
            hashlib.sha256(a.api_key.encode()).digest(): a for a in dataset.qr_acquirers
        }
        self.terminals = {k: t.id for k, t in virtual_terminals(dataset).items()}
        self.store: QrStore = store or MemoryQrStore(
            window=idempotency_window, max_payments=max_payments
        )
        self.idempotency = IdempotencyStore(self.store)
        # Refunds in flight per payment, counted against what remains (so concurrent refunds
        # cannot overdraw); read-check-reserve and record-release each run under the lock.
        self._reserved: dict[str, int] = {}
        self._refund_lock = anyio.Lock()
        self._stan = itertools.count(secrets.randbelow(999_999))
        # Dynamic codes this API issued (reference in 62/05) are in the store, open or paid
        # (with the SQLite store across restarts): a dynamic code is for one payment, whatever
        # the idempotency key. Those being paid now are held here.
        self._paying: set[str] = set()
        # Approvals neither recorded nor reversed: their keys answer the same 503 (no second
        # charge) while this process lives; the journal holds them for reconciliation.
        self._unreversed: dict[Key, Problem] = {}
        self.journaled = journaled
        self.enrolment = enrolment
        self.challenge_ttl = challenge_ttl
        self.challenge_tries = challenge_tries
        # Pending and answered step-ups by payment id, in this process only (bounded): a
        # restart forgets them, which charges nothing (the wallet pays again).
        self.challenges: BoundedFifo[str, Challenge] = BoundedFifo(max_challenges)
        self.auth_failures = AuthFailures()
        self.rejected = Counter(
            "switch_qr_rejected",
            "QR API requests answered with a 4xx problem document, by problem type",
            ["problem"],
            registry=registry,
        )
        self.step_ups = Counter(
            "switch_qr_step_ups",
            "QR payments over the payer's tier answered with a challenge, by tier",
            ["tier"],
            registry=registry,
        )
        self.challenge_outcomes = Counter(
            "switch_qr_challenges",
            "Answers to step-up challenges: completed, wrong_code, locked, expired",
            ["outcome"],
            registry=registry,
        )
        self.not_recorded = Counter(
            "switch_qr_payments_not_recorded",
            "Approved QR payments the QR store could not record, by what became of them",
            ["reversal"],
            registry=registry,
        )

    # Authentication and scope ------------------------------------------------------------------

    def authenticate(self, authorization: str | None, address: str = "") -> QrAcquirer:
        """The acquirer of an API key. As for the admin API's tokens, an ``address`` with too
        many failed attempts lately gets 429 without its key being looked at: no brute force."""
        now = time.monotonic()
        blocked_for = self.auth_failures.blocked_for(address, now)
        if blocked_for > 0:
            headers = AuthFailures.retry_after(blocked_for)
            raise Problem(p.TOO_MANY_FAILURES, AUTH_FAILURES_DETAIL, headers=headers)
        try:
            return self._acquirer(authorization)
        except Problem:
            self.auth_failures.failed(address, now)
            raise

    def _acquirer(self, authorization: str | None) -> QrAcquirer:
        challenge = {"WWW-Authenticate": 'Bearer realm="payswitch-qr"'}
        if not authorization:
            raise Problem(p.UNAUTHORIZED, "send Authorization: Bearer <api key>", headers=challenge)
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Problem(p.UNAUTHORIZED, "the Bearer scheme is required", headers=challenge)
        acquirer = self._acquirers.get(hashlib.sha256(key.strip().encode()).digest())
        if acquirer is None:
            raise Problem(
                p.UNAUTHORIZED,
                "API key not recognised",
                headers={"WWW-Authenticate": 'Bearer realm="payswitch-qr", error="invalid_token"'},
            )
        return acquirer

    def merchant_in_scope(self, acquirer: QrAcquirer, merchant_id: str) -> Merchant:
        merchant = self.merchants.get(merchant_id)
        if merchant is None:
            raise Problem(p.UNKNOWN_MERCHANT, f"merchant {merchant_id} is not known to the switch")
        if merchant_id not in acquirer.merchants or (acquirer.id, merchant_id) not in (
            self.terminals
        ):
            raise Problem(
                p.MERCHANT_NOT_ALLOWED,
                f"merchant {merchant_id} is not in acquirer {acquirer.id}'s list",
            )
        return merchant

    # Payments ----------------------------------------------------------------------------------

    async def pay(self, acquirer: QrAcquirer, req: PaymentRequest) -> tuple[StoredResponse, bool]:
        """Idempotent: ``(response, replayed)``."""
        self.merchant_in_scope(acquirer, req.merchant_id)
        # Without payer_verification, the body (and so the fingerprint) is what it was before
        # the member existed: keys stored then still replay.
        left_out = {"idempotency_key"} | (
            {"payer_verification"} if req.payer_verification is None else set()
        )
        body = req.model_dump(exclude=left_out)
        fingerprint = self._fingerprint("payment", body)
        return await self._idempotent(acquirer, req.idempotency_key, fingerprint, self._pay, req)

    async def _pay(self, acquirer: QrAcquirer, req: PaymentRequest, claim: Claim) -> StoredResponse:
        _check_currency(req.currency)
        extra: dict[str, str] = {}
        if req.kind == "cpm":
            pan = self._consumer_presented(req, extra)
            reference, dynamic = None, True  # a consumer-presented code is made per payment
        else:
            reference, dynamic = await self._merchant_presented(req)  # held in _paying
            assert req.payer_pan is not None  # the model requires it for MPM
            pan = req.payer_pan
        charge = Charge(
            payment_id="qrp_" + secrets.token_hex(12),
            acquirer=acquirer.id,
            merchant_id=req.merchant_id,
            terminal_id=self.terminals[(acquirer.id, req.merchant_id)],
            kind=req.kind,
            amount=req.amount,
            currency=req.currency,
            reference=reference,
            verification=QrVerification(dynamic, frozenset(req.payer_verification or ())),
        )
        return await self._charge(charge, pan, extra, claim)

    async def _charge(
        self,
        charge: Charge,
        pan: str,
        extra: Mapping[str, str],
        claim: Claim,
        *,
        step_up: bool = True,
    ) -> StoredResponse:
        """Route the payment through the switch and record its outcome under ``claim``'s
        key; with ``step_up``, a payment over the payer's tier that an OTP would lift becomes
        a challenge instead (nothing sent to the issuer, nothing charged)."""
        reference = charge.reference
        rc = "96"
        recorded = False
        payment_id = charge.payment_id
        try:
            msg = self._request(
                "000000",
                pan,
                charge.amount,
                charge.currency,
                charge.terminal_id,
                charge.merchant_id,
                extra,
            )
            started = anyio.current_time()
            # Shielded: once the switch has it, the payment completes and is recorded with its
            # idempotency entry (durably, before the answer), even if the HTTP client goes away.
            with anyio.CancelScope(shield=True):
                verification = QrVerification(
                    charge.verification.dynamic, charge.verification.factors
                )
                answer = await self.handler(msg, qr=verification)
                rc, auth_code, rrn = _outcome(answer)
                if step_up and rc != "00" and verification.step_up is not None:
                    ref = self.enrolment.enrolled(pan) if self.enrolment is not None else None
                    if ref is not None:
                        return await self._challenge(charge, pan, extra, claim, ref)
                payment = Payment(
                    payment_id=payment_id,
                    acquirer=charge.acquirer,
                    merchant_id=charge.merchant_id,
                    terminal_id=charge.terminal_id,
                    kind=charge.kind,
                    amount=charge.amount,
                    currency=charge.currency,
                    status="approved" if rc == "00" else "declined",
                    response_code=rc,
                    auth_code=auth_code,
                    rrn=rrn,
                    created_at=_rfc3339(self.clock()),
                    sealed_pan=self.cipher.seal(pan, payment_id.encode()),
                    masked_pan=mask_pan(pan),
                )
                body = payment.view().model_dump_json().encode()
                response = StoredResponse(201, body, f"/v1/qr/payments/{payment_id}")
                # An approval marks its dynamic code paid in the same write as the payment.
                paid = reference if rc == "00" else None
                try:
                    await self.store.save_payment(
                        payment, claim.key, claim.entry(response), code=paid
                    )
                except Exception as exc:
                    if rc != "00":
                        raise  # nothing was charged: the key stays free, as for any error
                    reversed_ = await self._undo(msg, payment, claim.key, exc)
                    recorded = reversed_  # a reversed code is open again
                    raise self._not_recorded(payment, reversed_) from None
                recorded = True
        finally:
            # A code stays held when it was paid but neither recorded nor reversed: refused
            # while this process lives, rather than paid twice.
            if reference is not None and (recorded or rc != "00"):
                self._paying.discard(reference)
        log.info(
            "qr_payment",
            payment_id=payment_id,
            acquirer=charge.acquirer,
            merchant=charge.merchant_id,
            kind=charge.kind,
            pan=payment.masked_pan,
            amount=charge.amount,
            rc=rc,
            rrn=rrn,
            tier=verification.tier.value,
            ms=round((anyio.current_time() - started) * 1000, 3),
        )
        return response

    # Step-up -----------------------------------------------------------------------------------

    async def _challenge(
        self, charge: Charge, pan: str, extra: Mapping[str, str], claim: Claim, enrolment: str
    ) -> StoredResponse:
        """The payment waits for a one-time code: 403 ``verification-required`` with its id,
        stored under the key (a repeat gets the same challenge, never a second one). The card
        and its data are sealed to the payment id; the code and the secret are never kept."""
        payment_id = charge.payment_id
        now = self.clock()
        expires = now + dt.timedelta(seconds=self.challenge_ttl)
        verify = f"/v1/qr/payments/{payment_id}/verify"
        problem = Problem(
            p.VERIFICATION_REQUIRED,
            f"this payment is over the payer's {charge.verification.tier.value} limit for "
            "the day; send the payer's one-time code to verify",
            payment_id=payment_id,
            factor=STEP_UP,
            verify=verify,
            expires_at=_rfc3339(expires),
        )
        body = orjson.dumps(problem.document("/v1/qr/payments"))
        response = StoredResponse(403, body)
        sealed = self.cipher.seal(
            orjson.dumps({"pan": pan, "extra": dict(extra)}).decode(), payment_id.encode()
        )
        self.challenges[payment_id] = Challenge(charge, sealed, enrolment, claim, expires, response)
        await self.store.save_entry(claim.key, claim.entry(response))
        self.step_ups.labels(charge.verification.tier.value).inc()
        log.info(
            "qr_step_up",
            payment_id=payment_id,
            acquirer=charge.acquirer,
            merchant=charge.merchant_id,
            pan=mask_pan(pan),
            amount=charge.amount,
            tier=charge.verification.tier.value,
            factor=STEP_UP,
        )
        return response

    async def verify(
        self, acquirer: QrAcquirer, payment_id: str, req: VerifyRequest
    ) -> tuple[StoredResponse, bool]:
        """The payer's code for a challenged payment: ``(response, replayed)``. The right
        code completes the payment once (a retry, or a concurrent call, gets that same answer);
        a wrong one counts toward the lock-out."""
        challenge = self.challenges.get(payment_id)
        if challenge is None or challenge.charge.acquirer != acquirer.id:
            # answered long ago (or never challenged): the payment as it stands, if it is ours
            payment = await self.payment(acquirer, payment_id)
            view = payment.view().model_dump_json().encode()
            return StoredResponse(200, view, f"/v1/qr/payments/{payment_id}"), True
        while challenge.running is not None:
            await challenge.running.wait()
        if challenge.done is not None:
            return challenge.done, True
        if challenge.state != "open":
            raise self._closed(challenge)
        now = self.clock()
        if now >= challenge.expires:
            challenge.state = "expired"
            self.challenge_outcomes.labels("expired").inc()
            raise self._closed(challenge)
        assert self.enrolment is not None  # a challenge is only made with one
        if not self.enrolment.verify(challenge.enrolment, req.otp, now):
            challenge.failures += 1
            left = self.challenge_tries - challenge.failures
            log.info("qr_verify_failed", payment_id=payment_id, attempts_left=left)
            if left <= 0:
                challenge.state = "locked"
                self.challenge_outcomes.labels("locked").inc()
                raise self._closed(challenge)
            self.challenge_outcomes.labels("wrong_code").inc()
            raise Problem(
                p.VERIFICATION_FAILED,
                f"wrong one-time code; {left} more tries before the payment is abandoned",
                attempts_left=left,
            )
        challenge.running = anyio.Event()
        try:
            response = await self._complete(challenge)
            challenge.done = response
            self.challenge_outcomes.labels("completed").inc()
        finally:
            challenge.running.set()
            challenge.running = None
        return response, False

    async def _complete(self, challenge: Challenge) -> StoredResponse:
        """Pay the challenged payment with the code's factor added, under its first key."""
        charge = challenge.charge
        payment_id = charge.payment_id
        opened = orjson.loads(self.cipher.open(challenge.sealed, payment_id.encode()))
        reference = charge.reference
        if reference is not None:
            # the dynamic code may have been paid while the payer looked for the code
            if await self.store.code(reference) != OPEN or reference in self._paying:
                raise Problem(p.QR_ALREADY_PAID, "a dynamic QR code pays once; ask for a new one")
            self._paying.add(reference)
        stepped = replace(charge, verification=charge.verification.with_factor(STEP_UP))
        return await self._charge(
            stepped, opened["pan"], opened["extra"], challenge.claim, step_up=False
        )

    @staticmethod
    def _closed(challenge: Challenge) -> Problem:
        if challenge.state == "expired":
            return Problem(
                p.VERIFICATION_EXPIRED,
                "the challenge has expired; nothing was charged: start a new payment",
            )
        return Problem(
            p.VERIFICATION_LOCKED,
            "too many wrong codes; nothing was charged: start a new payment",
        )

    async def _undo(self, original: Message, payment: Payment, key: Key, exc: Exception) -> bool:
        """Reverses an approval the store did not take (the virtual terminal's 0400 of
        ``original``); True once the switch acknowledged it (done at the issuer, or queued
        in the journal as a 0420 that store-and-forward delivers)."""
        where = {
            "payment_id": payment.payment_id,
            "acquirer": payment.acquirer,
            "merchant": payment.merchant_id,
            "pan": payment.masked_pan,
            "amount": payment.amount,
            "rrn": payment.rrn,
            "error": f"{type(exc).__name__}: {exc}",
        }
        rc = "96"
        for _ in range(REVERSAL_ATTEMPTS):
            try:
                answer = await self.handler(self._reversal(original))
            except Exception as failure:
                log.error("qr_reversal_failed", error=f"{type(failure).__name__}: {failure}")
                answer = None
            rc = answer.fields.get("39", "96") if answer is not None else "96"
            if rc not in RETRY_REVERSAL or (rc == "91" and self.journaled):
                break
        # 00: reversed at the issuer, or acknowledged by stand-in and queued as a 0420; 91
        # with a journal: the issuer did not answer, the journal queued the 0420 (same commit).
        if rc == "00" or (rc == "91" and self.journaled):
            outcome = "reversed" if rc == "00" else "queued"
            self.not_recorded.labels(outcome).inc()
            log.error("qr_payment_not_recorded_reversed", reversal=outcome, **where)
            return True
        self.not_recorded.labels("failed").inc()
        self._unreversed[key] = self._not_recorded(payment, False)
        log.critical("qr_payment_not_recorded_reversal_failed", reversal_rc=rc, **where)
        return False

    def _reversal(self, original: Message) -> Message:
        """The terminal's 0400 of ``original`` (field 90: its MTI, STAN and time)."""
        now = self.clock()
        f = original.fields
        kept: tuple[str, ...] = ("2", "3", "4", "22", "41", "42", "49")
        fields = {k: f[k] for k in kept if k in f}
        fields |= {
            "7": transmission_time(now),
            "11": f"{next(self._stan) % 999_999 + 1:06d}",
            "12": now.strftime("%H%M%S"),
            "13": now.strftime("%m%d"),
            "90": original_data(original.mti, f["11"], f["7"]),
        }
        return Message("0400", fields)

    @staticmethod
    def _not_recorded(payment: Payment, reversed_: bool) -> Problem:
        if reversed_:
            detail = (
                "the approved payment could not be recorded, so it was reversed: nothing is "
                "charged; retry it (the same idempotency key makes a new payment)"
            )
        else:
            detail = (
                "the approved payment could not be recorded and its reversal is not yet "
                "acknowledged; it is held for reconciliation: do not pay it again"
            )
        # Reversed: a retry may come at once; held: the same answer until reconciled.
        headers = {"Retry-After": "1"} if reversed_ else {}
        return Problem(p.PAYMENT_NOT_RECORDED, detail, headers=headers, rrn=payment.rrn or None)

    def _consumer_presented(self, req: PaymentRequest, extra: dict[str, str]) -> str:
        text = req.qr.strip()
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise Problem(p.QR_NOT_BASE64, "the consumer-presented payload is not base64") from None
        try:
            qr = qr_cpm.decode(text)
        except qr_cpm.CpmError as exc:
            raise Problem(p.for_qr_code(exc.code), exc.reason) from None
        if qr.expiry is not None:
            extra["14"] = qr.expiry
        if qr.pan_sequence is not None:
            extra["23"] = f"{qr.pan_sequence:03d}"
        if len(qr.emv):
            if "9F26" in qr.emv:
                missing = emv.missing_tags(qr.emv, ("9F27", *emv.ARQC_TAGS))
                if missing:
                    raise Problem(p.QR_MISSING, f"cryptogram data lacks tags {' '.join(missing)}")
            extra["55"] = qr.emv.encode().hex().upper()
        return qr.pan

    async def _merchant_presented(self, req: PaymentRequest) -> tuple[str | None, bool]:
        """Checks the code against the request: the reference of a dynamic code we issued,
        then held in ``_paying`` (the caller lets it go), and whether the code is dynamic
        (EMVCo MPM ID 01: 12; 11 is static)."""
        try:
            qr = qr_mpm.decode(req.qr)
        except qr_mpm.MpmError as exc:
            raise Problem(p.for_qr_code(exc.code), exc.reason) from None
        named = qr.merchant_id()
        if named != req.merchant_id:
            raise Problem(
                p.MERCHANT_MISMATCH,
                "the QR code does not name this merchant"
                if named is not None
                else "the QR code carries no merchant account of this switch",
            )
        if qr.currency != req.currency:
            raise Problem(
                p.CURRENCY_MISMATCH, f"the QR code is in currency {qr.currency}, not {req.currency}"
            )
        if qr.amount_minor is not None and qr.amount_minor != req.amount:
            raise Problem(
                p.AMOUNT_MISMATCH,
                f"the dynamic QR code is for {qr.amount_minor}, the request for {req.amount}",
            )
        reference = qr.additional_data.get("05") if qr.dynamic else None
        if reference is None:
            return None, qr.dynamic
        state = await self.store.code(reference)
        if state is None:
            return None, qr.dynamic  # not a code this API issued (or one long forgotten)
        # Checked and held with no await in between: one payment of a code at a time.
        if state != OPEN or reference in self._paying:
            raise Problem(p.QR_ALREADY_PAID, "a dynamic QR code pays once; ask for a new one")
        self._paying.add(reference)
        return reference, qr.dynamic

    # Status and refunds ------------------------------------------------------------------------

    async def payment(self, acquirer: QrAcquirer, payment_id: str) -> Payment:
        payment = await self.store.payment(payment_id)
        if payment is None or payment.acquirer != acquirer.id:  # others' are not disclosed
            raise Problem(p.NOT_FOUND, f"no payment {payment_id}")
        return payment

    async def refund(
        self, acquirer: QrAcquirer, payment_id: str, req: RefundRequest
    ) -> tuple[StoredResponse, bool]:
        await self.payment(acquirer, payment_id)
        fingerprint = self._fingerprint(f"refund:{payment_id}", {"amount": req.amount})
        return await self._idempotent(
            acquirer, req.idempotency_key, fingerprint, self._refund, (payment_id, req)
        )

    async def _refund(
        self, acquirer: QrAcquirer, args: tuple[str, RefundRequest], claim: Claim
    ) -> StoredResponse:
        payment_id, req = args
        async with self._refund_lock:
            payment = await self.payment(acquirer, payment_id)
            if payment.status != "approved":
                raise Problem(p.NOT_REFUNDABLE, f"payment {payment_id} was declined")
            remaining = payment.remaining - self._reserved.get(payment_id, 0)
            if req.amount > remaining:
                raise Problem(
                    p.REFUND_EXCEEDS, f"{remaining} is left to refund", remaining=remaining
                )
            self._reserve(payment_id, req.amount)
        reserved = True
        try:
            with anyio.CancelScope(shield=True):  # as for a payment: completes and is recorded
                pan = self.cipher.open(payment.sealed_pan, payment_id.encode())
                msg = self._request(
                    "200000",
                    pan,
                    req.amount,
                    payment.currency,
                    payment.terminal_id,
                    payment.merchant_id,
                    {},
                )
                answer = await self.handler(msg)
                rc, auth_code, rrn = _outcome(answer)
                refund = Refund(
                    refund_id="qrr_" + secrets.token_hex(12),
                    payment_id=payment_id,
                    amount=req.amount,
                    currency=payment.currency,
                    status="approved" if rc == "00" else "declined",
                    response_code=rc,
                    auth_code=auth_code,
                    rrn=rrn,
                    created_at=_rfc3339(self.clock()),
                )
                response = StoredResponse(201, refund.view().model_dump_json().encode())
                # Recorded and released together: a concurrent refund sees one or the other.
                async with self._refund_lock:
                    reserved = False
                    try:
                        await self.store.save_refund(refund, claim.key, claim.entry(response))
                    finally:
                        self._reserve(payment_id, -req.amount)
        finally:
            if reserved:
                self._reserve(payment_id, -req.amount)
        log.info(
            "qr_refund",
            payment_id=payment_id,
            refund_id=refund.refund_id,
            acquirer=acquirer.id,
            amount=req.amount,
            rc=rc,
            rrn=rrn,
        )
        return response

    def _reserve(self, payment_id: str, amount: int) -> None:
        left = self._reserved.get(payment_id, 0) + amount
        if left:
            self._reserved[payment_id] = left
        else:
            self._reserved.pop(payment_id, None)

    # Merchant-presented QR generation ----------------------------------------------------------

    async def generate_mpm(self, acquirer: QrAcquirer, req: MpmRequest) -> MpmView:
        merchant = self.merchant_in_scope(acquirer, req.merchant_id)
        currency = req.currency or COUNTRY_CURRENCY.get(merchant.country)
        if currency is None:
            raise Problem(
                p.CURRENCY_UNKNOWN, f"give a currency: none known for country {merchant.country}"
            )
        _check_currency(currency)
        reference = secrets.token_hex(5).upper() if req.amount is not None else None
        if reference is not None:
            await self.store.issue_code(reference, self.clock().timestamp())
        payload = qr_mpm.build(
            merchant_id=merchant.id,
            name=merchant.name[:25],
            city=merchant.city[:15],
            mcc=merchant.mcc,
            currency=currency,
            country=merchant.country,
            amount_minor=req.amount,
            reference_label=reference,
        )
        return MpmView(
            qr=payload,
            crc=payload[-4:],
            merchant_id=merchant.id,
            dynamic=req.amount is not None,
            amount=req.amount,
            currency=currency,
            reference=reference,
        )

    # Helpers -----------------------------------------------------------------------------------

    def _fingerprint(self, operation: str, body: Mapping[str, object]) -> bytes:
        # Keyed: the body may hold a card number, and a plain hash of one is easy to reverse.
        # UTF-8 bytes as they are: the body may hold any text (a QR code in Chinese).
        canonical = orjson.dumps({"op": operation, "body": body}, option=orjson.OPT_SORT_KEYS)
        return self.cipher.lookup_key_of(canonical)

    async def _idempotent(
        self,
        acquirer: QrAcquirer,
        key: str,
        fingerprint: bytes,
        operation: Callable[[QrAcquirer, A, Claim], Awaitable[StoredResponse]],
        arg: A,
    ) -> tuple[StoredResponse, bool]:
        held = self._unreversed.get((acquirer.id, key))
        if held is not None:
            raise Problem(held.kind, held.detail, headers=held.headers, **held.extensions)
        try:
            return await self.idempotency.run(
                (acquirer.id, key), fingerprint, lambda claim: operation(acquirer, arg, claim)
            )
        except IdempotencyConflict:
            raise Problem(
                p.IDEMPOTENCY_CONFLICT,
                "this idempotency key was used with a different request",
            ) from None

    def _request(
        self,
        processing: str,
        pan: str,
        amount: int,
        currency: str,
        terminal: str,
        merchant: str,
        extra: Mapping[str, str],
    ) -> Message:
        now = self.clock()
        fields = {
            "2": pan,
            "3": processing,
            "4": f"{amount:012d}",
            "7": transmission_time(now),
            "11": f"{next(self._stan) % 999_999 + 1:06d}",
            "12": now.strftime("%H%M%S"),
            "13": now.strftime("%m%d"),
            "22": QR_ENTRY_MODE,
            "41": terminal,
            "42": merchant,
            "49": currency,
            **extra,
        }
        return Message("0200", fields)


def _outcome(answer: Message | None) -> tuple[str, str | None, str]:
    if answer is None:
        return "96", None, ""
    rc = answer.fields.get("39", "96")
    auth = answer.fields.get("38") if rc == "00" else None
    return rc, auth, answer.fields.get("37", "")


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Charge:
    """A payment as the QR API routes it (what a challenge keeps to pay it later)."""

    payment_id: str
    acquirer: str
    merchant_id: str
    terminal_id: str
    kind: Literal["mpm", "cpm"]
    amount: int
    currency: str
    reference: str | None
    """the dynamic code this API issued that the payment pays, if any"""
    verification: QrVerification


@dataclass(slots=True, eq=False)
class Challenge:
    """A payment waiting for the payer's one-time code."""

    charge: Charge
    sealed: bytes = field(repr=False)
    """card number and ISO extras (14, 23, 55), sealed to the payment id"""
    enrolment: str
    """the payer's enrolment reference (no card, no secret)"""
    claim: Claim
    """the first request's idempotency key: the completed payment replaces the 403 there"""
    expires: dt.datetime
    challenge: StoredResponse
    state: Literal["open", "locked", "expired"] = "open"
    failures: int = 0
    running: anyio.Event | None = None
    """set while the right code's payment runs: concurrent calls wait for its answer"""
    done: StoredResponse | None = None
    """the completed payment's answer, replayed to every later call"""
