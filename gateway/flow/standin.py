"""Stand-in processing: answer for an issuer that is down or failing, within limits, and tell
it afterwards (0120 advices through store-and-forward).

:class:`StandIn` sits right before ``QueryIssuer``. For each issuer it keeps a
:class:`~gateway.upstream.breaker.CircuitBreaker` fed with the outcome of every issuer
attempt. When the issuer has no signed-on link or the breaker is open:

* purchases, cash and authorizations (0100/0200, processing code 00/01) are approved if the
  card stays within the stand-in limits of its issuer (count and amount per card per UTC day,
  ``[[standin.limits]]``; counted from the journal, so a restart does not reset them; amounts
  in one currency: the risk engine's ``limit_currency``, other currencies converted with its
  rates, or without the risk stage ``[standin] limit_currency`` only), the card
  is not expired, and a PIN, when there is one, verifies at the HSM (Visa PVV with the
  issuer's PVK and the PVV of track 2). A PIN that cannot be verified (no PVK, no track 2, no
  HSM) is declined ``91``; a wrong one ``55``. A chip or contactless cryptogram (field 55 with
  9F26) is verified at the HSM (``KQ``) with the issuer's IMK-AC, as the issuer would: a wrong
  ARQC, an amount or currency the card did not sign, or an ATC not above the last one this
  switch saw for the card (in memory; after a restart, from field 55 in the journal: the 0120
  carries it) is ``05``; one that cannot be verified (no IMK-AC, no HSM, field
  55 that does not parse) ``91``. Beyond the limits, for an issuer without limits, or in a
  currency that cannot be converted (no rate), ``91``.
  The approval carries tag 91 (ARPC, ARC ``3030``) and is journaled ``stood_in`` together
  with its 0120;
* a reversal of an approved original is acknowledged ``00`` and forwarded as a 0420 advice —
  as is any reversal of a stood-in original, which must reach the issuer after its 0120.

Everything else goes to ``QueryIssuer`` as before (which answers ``91`` when it cannot send).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal

import anyio

from gateway.config import StandInConfig, StandInLimit
from gateway.flow.journal_stage import STAND_IN_NOTE, JournalRuntime
from gateway.flow.participants import REVERSALS, QueryIssuer, reversal_amount
from gateway.flow.pipeline import BaseParticipant, Context
from gateway.journal import JournalError, TxnState
from gateway.risk import RiskConfig, RiskEngine
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.hsm_client import HsmClient, HsmError
from gateway.upstream.links import IssuerPool
from kit.conf import ConfigError
from kit.dataset import Dataset
from kit.keys import KeyLoadError, KeyStore, dataset_lmk, key_under_lmk_as
from kit.logs import get_logger
from protocols import emv
from protocols.bounded import BoundedFifo
from protocols.keys import original_data
from protocols.message import Message
from protocols.redact import mask_pan
from protocols.validate import card_of

log = get_logger("gateway.flow.standin")

STAND_IN_MTIS = frozenset({"0100", "0200"})
STAND_IN_KINDS = frozenset({"00", "01"})
# The 0120 keeps field 55 (the journal and SAF strip its sensitive tags): the issuer learns
# the ATC the card used in stand-in, and the journal holds it for the replay guard's restart.
_NOT_IN_ADVICE = ("35", "52", "53", "64", "128")
_CHIP_ENTRY_MODES = frozenset({"051", "071"})
_ARC_APPROVED = b"00"  # 3030
_ATC_CARDS = 100_000  # cards whose last stood-in ATC is remembered (oldest forgotten first)
_ATC_LOOKBACK = timedelta(days=7)  # journal history read for a card the process has not seen
_ATC_HISTORY = 1000


def pvv_from_track2(track2: str | None) -> tuple[str, str] | None:
    """(PVKI, PVV) from Visa track 2 discretionary data: ``PAN=YYMM SSS K PPPP ...``."""
    if not track2:
        return None
    for separator in ("=", "D", "d"):
        if separator in track2:
            rest = track2.split(separator, 1)[1]
            break
    else:
        return None
    data = rest[7:12]  # after expiry (4) and service code (3)
    if len(data) != 5 or not data.isdigit():
        return None
    return data[0], data[1:]


@dataclass(slots=True)
class _Usage:
    count: int = 0
    amount: int = 0


@dataclass(frozen=True, slots=True)
class _Cryptogram:
    """What KQ needs from field 55 (parsed before the HSM is asked)."""

    arqc: bytes
    atc: bytes
    data: bytes
    amount: int
    currency: int


def _issuer_keys(
    dataset: Dataset, kind: Literal["pvk", "imk_ac"], event: str, *, key_blocks: bool = False
) -> dict[str, str]:
    """One kind of issuer key under the LMK (as key blocks with ``key_blocks``), by issuer. An
    unusable key is logged and ends the loading (the issuers read before it keep theirs):
    stand-in then declines what needs it."""
    keys: dict[str, str] = {}
    try:
        lmk = dataset_lmk(dataset)
        for issuer in dataset.issuers:
            key = key_under_lmk_as(
                lmk,
                getattr(issuer, kind),
                f"issuer {issuer.id} {kind}",
                kind,
                key_blocks=key_blocks,
            )
            if key is not None:
                keys[issuer.id] = key
    except KeyLoadError as exc:
        log.warning(event, reason=str(exc))
    return keys


def check_limit_currency(cfg: StandInConfig, risk: RiskConfig | None) -> None:
    """Stand-in amounts are in one currency: with the risk stage on, its rates convert into
    its ``limit_currency``, so ``max_amount`` must be meant in that one (ConfigError)."""
    if risk is not None and risk.limit_currency != cfg.limit_currency:
        raise ConfigError(
            f"[standin] limit_currency {cfg.limit_currency} differs from the risk config's "
            f'limit_currency "{risk.limit_currency}": stand-in limits are counted in it with '
            f'its rates; set [standin] limit_currency = "{risk.limit_currency}" (and '
            "max_amount in it)"
        )


class StandIn(BaseParticipant):
    name = "stand-in"

    def __init__(
        self,
        cfg: StandInConfig,
        runtime: JournalRuntime,
        query: QueryIssuer,
        dataset: Dataset,
        *,
        hsm: HsmClient | None = None,
        keys: KeyStore | None = None,
        acquirer_id: str = "00000000001",
        risk: RiskEngine | None = None,
        key_blocks: bool = False,
    ) -> None:
        check_limit_currency(cfg, risk.config if risk is not None else None)
        self.cfg = cfg
        # asked at use time, never copied: a reload of its rates applies at once
        self.risk = risk
        self.runtime = runtime
        self.query = query
        self.hsm = hsm
        self.keys = keys
        self.acquirer_id = acquirer_id
        self.limits: Mapping[str, StandInLimit] = {lim.issuer: lim for lim in cfg.limits}
        self.breakers: dict[str, CircuitBreaker] = {}
        # Without them, stand-in answers 91 to PINs (PVK) and to cryptograms (IMK-AC).
        self.pvks = _issuer_keys(dataset, "pvk", "standin_no_pvk", key_blocks=key_blocks)
        self.imk_acs = _issuer_keys(dataset, "imk_ac", "standin_no_imk_ac", key_blocks=key_blocks)
        self._usage: dict[tuple[str, bytes], _Usage] = {}
        self._last_atc: BoundedFifo[bytes, int] = BoundedFifo(_ATC_CARDS)
        self._card_key = os.urandom(32)
        self._lock = anyio.Lock()
        self._auth = itertools.count(1)
        self._attempts: set[str] = set()
        self.approved = 0
        self.arqc_verified = 0
        self.arqc_failed = 0

    def breaker(self, issuer: str) -> CircuitBreaker:
        breaker = self.breakers.get(issuer)
        if breaker is None:
            breaker = self.breakers[issuer] = CircuitBreaker(
                self.cfg.failure_threshold, self.cfg.cooldown
            )
        return breaker

    def status(self) -> dict[str, object]:
        now = anyio.current_time()
        return {
            issuer: {"state": b.state(now), "failures": b.failures, "opens": b.opens}
            for issuer, b in self.breakers.items()
        }

    # -- pipeline ---------------------------------------------------------------------------

    async def prepare(self, ctx: Context) -> str | None:
        pool, issuer = ctx.pool, ctx.issuer
        if pool is None or issuer is None or self.runtime.journal is None:
            return None
        breaker = self.breaker(issuer)
        now = anyio.current_time()
        mti = ctx.request.mti
        if mti in REVERSALS:
            down = not pool.ready or breaker.state(now) == "open"
            return self._reversal(ctx, pool, down)
        if mti not in STAND_IN_MTIS:
            return None
        if pool.ready and breaker.allow(now):
            self._attempts.add(ctx.rrn)
            return None
        return await self._stand_in(ctx, pool, issuer)

    async def commit(self, ctx: Context) -> None:
        self._observe(ctx)

    async def abort(self, ctx: Context) -> None:
        self._observe(ctx)

    def commit_now(self, ctx: Context) -> None:
        self._observe(ctx)

    def abort_now(self, ctx: Context) -> None:
        self._observe(ctx)

    def _observe(self, ctx: Context) -> None:
        """Feed the breaker with what the issuer attempt (if any) showed."""
        issuer = ctx.issuer
        if issuer is None:
            return
        attempted = ctx.rrn in self._attempts
        self._attempts.discard(ctx.rrn)
        breaker = self.breaker(issuer)
        if ctx.issuer_failure is not None:
            before = breaker.opens
            breaker.failure(anyio.current_time())
            if breaker.opens != before:
                log.warning("issuer_breaker_open", issuer=issuer, failures=breaker.failures)
        elif ctx.issuer_response is not None and not ctx.stood_in:
            if breaker.opened_at is not None:
                log.info("issuer_breaker_closed", issuer=issuer)
            breaker.success()
        elif attempted:
            breaker.release_probe()

    # -- reversals --------------------------------------------------------------------------

    def _reversal(self, ctx: Context, pool: IssuerPool, down: bool) -> str | None:
        original = ctx.original
        if original is None or not original.approved or original.issuer is None:
            return None  # QueryIssuer acknowledges it locally
        if original.reversed:
            return None
        if not down and original.issuer_mti != "0120":
            return None  # the issuer is there: a real-time 0400
        msg = self.query._issuer_request(ctx, pool)
        msg.mti = "0420"
        for k in _NOT_IN_ADVICE:
            msg.fields.pop(k, None)
        if "2" not in msg.fields and original.pan:
            msg.fields["2"] = original.pan
        ctx.advice = msg
        ctx.reversed_amount = reversal_amount(ctx.request, original.amount)
        original.amount -= ctx.reversed_amount
        original.reversed = original.amount == 0
        log.info("reversal_forwarded_as_advice", issuer=original.issuer, rrn=ctx.rrn)
        return "00"

    # -- stand-in approvals -----------------------------------------------------------------

    async def _stand_in(self, ctx: Context, pool: IssuerPool, issuer: str) -> str | None:
        limit = self.limits.get(issuer)
        fields = ctx.request.fields
        if not self.cfg.enabled or limit is None:
            return ctx.decline("91", "issuer unavailable, no stand-in for it")
        if fields.get("3", "")[:2] not in STAND_IN_KINDS:
            return ctx.decline("91", "issuer unavailable, not a stand-in transaction")
        amount = int(fields.get("4", "0"))
        currency = fields.get("49", "")
        counted = self._to_limit(amount, currency)
        if counted is None:
            log.info(
                "stand_in_declined",
                issuer=issuer,
                pan=mask_pan(ctx.pan),
                currency=currency,
                reason=f"no rate to the stand-in limit currency {self.cfg.limit_currency}",
            )
            return ctx.decline("91", "issuer unavailable, no stand-in in this currency")
        if ctx.expiry is not None and ctx.expiry < ctx.now.strftime("%y%m"):
            return ctx.decline("54", "stand-in: expired card")
        issuer_auth: str | None = None
        if "55" in fields:
            rc, issuer_auth = await self._verify_arqc(ctx, issuer)
            if rc is not None:
                return rc
        if "52" in fields or "123" in fields:  # 123: an AES DUKPT terminal's PIN
            rc = await self._verify_pin(ctx, issuer)
            if rc is not None:
                return rc
        async with self._lock:
            try:
                usage = await self._usage_of(ctx.pan, ctx.now)
            except JournalError as exc:
                log.error("journal_read_failed", stage="stand-in", error=str(exc))
                return ctx.decline("91", "issuer unavailable, stand-in limits unknown")
            if usage is None:
                log.warning(
                    "stand_in_declined",
                    issuer=issuer,
                    pan=mask_pan(ctx.pan),
                    reason="a stand-in approval of the day is in a currency without a rate",
                )
                return ctx.decline("91", "issuer unavailable, stand-in limits unknown")
            if usage.count + 1 > limit.max_count or usage.amount + counted > limit.max_amount:
                log.info(
                    "stand_in_declined",
                    issuer=issuer,
                    pan=mask_pan(ctx.pan),
                    count=usage.count,
                    amount=usage.amount,
                    reason="beyond the stand-in limits",
                )
                return ctx.decline("91", "issuer unavailable, beyond stand-in limits")
            usage.count += 1
            usage.amount += counted
        advice = self.query._issuer_request(ctx, pool)
        advice.mti = "0120"
        for k in _NOT_IN_ADVICE:
            advice.fields.pop(k, None)
        advice.fields["2"] = ctx.pan
        # Field 90 of the advice: the MTI it stands for, then its own STAN and time (the key
        # the issuer posts it under, and a later reversal names).
        advice.fields["90"] = original_data(
            ctx.request.mti, advice.fields["11"], advice.fields["7"], self.acquirer_id
        )
        auth = f"S{next(self._auth) % 100000:05d}"
        ctx.stood_in = True
        ctx.advice = advice
        ctx.issuer_response = Message("0210", {"38": auth, "39": "00"})
        if issuer_auth is not None:
            ctx.issuer_response.fields["55"] = issuer_auth
        entry = ctx.entry
        if entry is not None:
            entry.issuer = issuer
            entry.issuer_mti = "0120"
            entry.issuer_stan = advice.fields["11"]
            entry.issuer_time = advice.fields["7"]
            entry.rrn = ctx.rrn
            entry.amount = amount
        self.approved += 1
        log.warning("stand_in_approved", issuer=issuer, rrn=ctx.rrn, pan=mask_pan(ctx.pan))
        return "00"

    def _to_limit(self, amount: int, currency: str) -> int | None:
        """``amount`` in the stand-in limit currency, rounded up (the risk engine's rates of
        the moment); None when it cannot be (no rate, or no risk stage to convert)."""
        if currency == self.cfg.limit_currency:
            return amount
        return self.risk.to_limit(amount, currency) if self.risk is not None else None

    async def _usage_of(self, pan: str, now: datetime) -> _Usage | None:
        """The card's stand-in usage of the UTC day, amounts in the limit currency; None
        when a day's approval cannot be converted (its usage is unknown: not cached)."""
        day = now.astimezone(UTC).date()
        key = (day.isoformat(), hmac.new(self._card_key, pan.encode(), hashlib.sha256).digest())
        usage = self._usage.get(key)
        if usage is not None:
            return usage
        usage = _Usage()
        journal = self.runtime.journal
        if journal is not None:
            start = datetime.combine(day, time(0), tzinfo=UTC)
            for txn in await journal.find_by_pan(pan, start, start + timedelta(days=1), limit=1000):
                if (
                    txn.note == STAND_IN_NOTE
                    and txn.response_code == "00"
                    and txn.state != TxnState.REVERSED
                ):
                    counted = self._to_limit(txn.amount or 0, txn.currency or "")
                    if counted is None:
                        return None
                    usage.count += 1
                    usage.amount += counted
        for old in [k for k in self._usage if k[0] != key[0]]:
            del self._usage[old]  # yesterday's counters
        self._usage[key] = usage
        return usage

    async def _verify_pin(self, ctx: Context, issuer: str) -> str | None:
        pvk = self.pvks.get(issuer)
        # The ZPK the PIN block was translated under (a key change meanwhile does not matter).
        held = ctx.link_keys
        issuer_keys = (
            held
            if held is not None and held.issuer == issuer
            else (self.keys.issuer(issuer) if self.keys is not None else None)
        )
        zpk = issuer_keys.zpk if issuer_keys is not None else None
        found = pvv_from_track2(ctx.request.fields.get("35"))
        block = ctx.pin_block
        if self.hsm is None or pvk is None or zpk is None or found is None or block is None:
            return ctx.decline("91", "issuer unavailable, PIN cannot be verified in stand-in")
        pvki, pvv = found
        try:
            pan, _ = card_of(ctx.request)
            ok = await self.hsm.verify_pin_pvv(zpk, pvk, bytes.fromhex(block), pan, pvv, pvki=pvki)
        except (HsmError, ValueError) as exc:
            log.warning("stand_in_pin_unverified", issuer=issuer, error=type(exc).__name__)
            return ctx.decline("91", "issuer unavailable, PIN cannot be verified in stand-in")
        if not ok:
            return ctx.decline("55", "stand-in: incorrect PIN")
        return None

    # -- chip and contactless cryptograms --------------------------------------------------

    async def _verify_arqc(self, ctx: Context, issuer: str) -> tuple[str | None, str | None]:
        """(decline code or ``None``, field 55 of the approval: tag 91 = ARPC || ARC ``3030``).

        The issuer's check (SPEC; ``issuer_sim/emv.py``) done at the HSM with its IMK-AC: the
        cryptogram is the only proof the card is there, and stand-in is exactly when nobody
        else can check it.
        """
        fields = ctx.request.fields
        try:
            found = _cryptogram(fields["55"])
        except (ValueError, emv.TlvError) as exc:
            return self._unverified(ctx, issuer, type(exc).__name__), None
        if found is None:
            if fields.get("22") in _CHIP_ENTRY_MODES:
                return self._unverified(ctx, issuer, "no ARQC"), None
            return None, None  # field 55 without a cryptogram (e.g. a QR payload): as the issuer
        imk = self.imk_acs.get(issuer)
        if self.hsm is None or imk is None:
            return self._unverified(ctx, issuer, "no HSM" if imk else "no IMK-AC"), None
        if found.amount != int(fields.get("4", "0")):
            return self._arqc_declined(ctx, issuer, "amount (9F02) differs from field 4"), None
        if fields.get("49", "").isdigit() and found.currency != int(fields["49"]):
            return self._arqc_declined(ctx, issuer, "currency (5F2A) differs from field 49"), None
        psn = fields.get("23")
        try:
            pan, _ = card_of(ctx.request)
            arpc = await self.hsm.verify_arqc_generate_arpc(
                imk, pan, psn, found.atc, found.data, found.arqc, _ARC_APPROVED
            )
        except (HsmError, ValueError) as exc:
            return self._unverified(ctx, issuer, type(exc).__name__), None
        if arpc is None:
            return self._arqc_declined(ctx, issuer, "ARQC verification failed"), None
        # Replay guard: the highest ATC this card application used, from memory, or (first
        # time this process sees the card) from the journal, so a restart does not forget it.
        # The check and the update run with no await in between.
        psn2 = (psn or "00")[-2:]  # "001" and "01" are one card application
        card = hmac.new(self._card_key, f"{pan}/{psn2}".encode(), hashlib.sha256).digest()
        if card not in self._last_atc:
            seen = await self._journal_atc(pan, psn2, ctx)
            if seen is None:
                return self._unverified(ctx, issuer, "journal unreadable (ATC)"), None
            self._last_atc[card] = max(seen, self._last_atc.get(card, -1))
        atc = int.from_bytes(found.atc, "big")
        last = self._last_atc.pop(card, -1)
        self._last_atc[card] = max(atc, last)  # most recently used last: forgotten last
        if atc <= last:
            return self._arqc_declined(ctx, issuer, f"ATC {atc} not above the last ({last})"), None
        self.arqc_verified += 1
        return None, emv.encode_issuer_auth(arpc, _ARC_APPROVED).hex().upper()

    async def _journal_atc(self, pan: str, psn2: str, ctx: Context) -> int | None:
        """The highest ATC of this card application in the journal's last days (field 55 of
        what the issuer got, or of the 0120 of a stand-in approval); -1 when none, ``None``
        when the journal cannot be read."""
        journal = self.runtime.journal
        if journal is None:
            return -1
        try:
            txns = await journal.find_by_pan(
                pan, ctx.now - _ATC_LOOKBACK, ctx.now + timedelta(seconds=1), limit=_ATC_HISTORY
            )
        except JournalError as exc:
            log.error("journal_read_failed", stage="stand-in-atc", error=str(exc))
            return None
        highest = -1
        for txn in txns:
            sent = txn.request or {}
            if txn.txn_id == ctx.rrn or "55" not in sent or (sent.get("23") or "00")[-2:] != psn2:
                continue
            try:
                atc = emv.decode(bytes.fromhex(sent["55"])).get("9F36")
            except (ValueError, emv.TlvError):
                continue
            if atc:
                highest = max(highest, int.from_bytes(atc, "big"))
        return highest

    def _unverified(self, ctx: Context, issuer: str, why: str) -> str:
        log.warning("stand_in_arqc_unverified", issuer=issuer, rrn=ctx.rrn, error=why)
        return ctx.decline("91", "issuer unavailable, ARQC cannot be verified in stand-in")

    def _arqc_declined(self, ctx: Context, issuer: str, reason: str) -> str:
        self.arqc_failed += 1
        log.warning(
            "stand_in_arqc_declined",
            issuer=issuer,
            rrn=ctx.rrn,
            pan=mask_pan(ctx.pan),
            reason=reason,
        )
        return ctx.decline("05", f"stand-in: {reason}")


def _cryptogram(field55: str) -> _Cryptogram | None:
    """The ARQC and its input from field 55 (hex); ``None`` without 9F26. Raises ValueError or
    :class:`~protocols.emv.TlvError` when the data does not parse."""
    tlv = emv.decode(bytes.fromhex(field55))
    arqc = tlv.get("9F26")
    if arqc is None:
        return None
    if len(arqc) != 8:
        raise ValueError("ARQC (9F26) must be 8 bytes")
    return _Cryptogram(
        arqc=bytes(arqc),
        atc=bytes(tlv.get("9F36") or b""),
        data=emv.arqc_input(tlv),
        amount=emv.bcd_decode(tlv.get("9F02") or b"", tag="9F02"),
        currency=emv.bcd_decode(tlv.get("5F2A") or b"", tag="5F2A"),
    )
