"""PIN and MAC security on the transaction path, every operation through the HSM.

Participants (see ``Gateway`` for their place in the pipeline):

* :class:`VerifyMac` (after the duplicate check): terminals with ``mac_required`` must send a
  MAC; ISO 9797-1 MAC algorithm 3 (padding method 1) under the terminal's TAK over the message
  as received without its last 8 bytes. A missing or wrong MAC is declined ``63``.
* :class:`TranslatePin` (after the risk stage, before the issuer): field 52 is re-encrypted by
  the HSM from the terminal's TPK (``CA``) or from the DUKPT key of the KSN in field 53 (``G0``)
  to the issuer's ZPK, ISO format 0; an AES DUKPT terminal's field 123 (KSN and ISO format 4
  block) goes the same way through ``Z0``. Only the translated block goes on
  (``Context.pin_block``); fields 53 and 123 never leave the switch. A token's PIN block
  (formed with the token) goes through ISO format 1 and a ``CC`` to format 0 with the funding
  PAN.
* :class:`IssuerLinkMac`, the issuer-message hook of ``QueryIssuer``: on the links of issuers
  with a ZAK, the MAC is added to each request once it is complete, and checked on answers that
  carry one. An answer whose MAC is wrong, or that the HSM could not verify, is not used
  (``96``) and is treated like no answer: the issuer may have approved and debited, so the
  journal stage reverses it with a 0420 through store-and-forward, as after a timeout
  (``Context.answer_rejected``). Without a journal nothing can reverse it: logged as an error.

Where the MAC goes: field 64 when the message has no secondary bitmap; with fields 65-128
present (a reversal's field 90, for example) ISO 8583:1987 puts it in field 128 instead. Either
way it is the last 8 bytes of the encoded message, and the MAC covers everything before them.

Response codes: ``63`` for a terminal MAC that is missing or wrong. When the HSM cannot be
reached or refuses a command (a PIN block that does not decrypt, a key parity error, ...), the
switch cannot do its own part of the transaction: ``96`` (system malfunction), with the cause
logged. ``91`` is kept for what SPEC gives it, an issuer that is unavailable or timed out. A
gateway without HSM (empty ``[hsm] endpoints``) answers ``96`` to whatever needs one, so that
no untranslated PIN block and no un-MACed message can ever be sent on.

Nothing logged here carries a PAN, a PIN block, a MAC or a key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.flow.pipeline import BaseParticipant, Context
from gateway.flow.tokens import presented
from gateway.upstream.hsm_client import (
    HsmClient,
    HsmCommandError,
    HsmUnavailableError,
    PinTranslation,
)
from kit.keys import IssuerKeys, KeyStore, TerminalKeys
from kit.logs import get_logger
from protocols.bounded import BoundedFifo
from protocols.errors import ProtocolError
from protocols.hsm import FORMAT_ISO0, FORMAT_ISO1
from protocols.mac import MAC_LENGTH, mac_field, mac_input
from protocols.message import Message
from protocols.validate import card_of

if TYPE_CHECKING:
    from gateway.upstream.links import IssuerPool

log = get_logger("gateway.flow.security")

PIN_MTIS = frozenset({"0100", "0200"})
"""Requests whose PIN block is translated and sent on (advices and reversals carry none)."""
BAD_MAC = "bad_mac"
UNVERIFIED = "mac_unverified"
"""``Context.answer_rejected`` of an issuer answer whose MAC is wrong / could not be checked
(the journal's note is ``issuer_`` + this)."""
HSM_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def received_mac(raw: bytes, msg: Message) -> tuple[bytes, bytes] | None:
    """(data, MAC) of a message as received, or ``None`` when it carries no MAC where it must.

    The MAC field must be the last 8 bytes of ``raw``; anything else counts as no MAC.
    """
    value = msg.fields.get(mac_field(msg.fields))
    if value is None or len(value) != 2 * MAC_LENGTH or len(raw) <= MAC_LENGTH:
        return None
    try:
        mac = bytes.fromhex(value)
    except ValueError:
        return None
    if raw[-MAC_LENGTH:] != mac:
        return None
    return raw[:-MAC_LENGTH], mac


# ----------------------------------------------------------------------------- metrics


class SecurityMetrics:
    """HSM latency by command and the outcome of each security check."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.hsm_latency = Histogram(
            "switch_hsm_seconds",
            "HSM command round trip",
            ["command"],
            buckets=HSM_BUCKETS,
            registry=registry,
        )
        self.checks = Counter(
            "switch_security_checks",
            "Security checks on the transaction path by outcome",
            ["check", "outcome"],
            registry=registry,
        )

        self.untrusted_answers = Counter(
            "switch_issuer_answers_untrusted",
            "Issuer answers not used (MAC wrong or not verifiable); reversal: queued (a 0420"
            " is queued, or an advice stays queued) | none (no journal: nothing reverses it)",
            ["issuer", "reason", "reversal"],
            registry=registry,
        )

        self._children: dict[tuple[str, str], Any] = {}

    def count(self, check: str, outcome: str) -> None:
        # labels() costs more than inc(): keep each child (a handful of check/outcome pairs).
        child = self._children.get((check, outcome))
        if child is None:
            child = self._children[check, outcome] = self.checks.labels(check, outcome)
        child.inc()


# ----------------------------------------------------------------------------- participants


class _HsmStage(BaseParticipant):
    check = "hsm"

    def __init__(
        self, hsm: HsmClient | None, keys: KeyStore, metrics: SecurityMetrics | None = None
    ) -> None:
        self.hsm = hsm
        self.keys = keys
        self.metrics = metrics or SecurityMetrics()

    def _fail(self, ctx: Context, rc: str, outcome: str, reason: str, **info: Any) -> str:
        """Decline with ``rc``, count the outcome and log why (``info`` must be harmless)."""
        self.metrics.count(self.check, outcome)
        level = log.warning if rc == "96" else log.info
        level(
            f"{self.check}_declined",
            rc=rc,
            reason=reason,
            rrn=ctx.rrn,
            terminal=ctx.request.fields.get("41"),
            **info,
        )
        return ctx.decline(rc, f"{self.check}: {reason}")

    def _hsm_failed(self, ctx: Context, exc: Exception) -> str:
        if isinstance(exc, HsmCommandError):
            return self._fail(
                ctx,
                "96",
                "hsm_error",
                "HSM refused the command",
                command=exc.command,
                hsm_error=exc.error_code,
            )
        return self._fail(ctx, "96", "hsm_unavailable", "HSM unavailable")


class VerifyMac(_HsmStage):
    """SPEC: field 64 of ``mac_required`` terminals; missing or wrong -> 63."""

    name = "verify-mac"
    check = "terminal_mac"

    async def prepare(self, ctx: Context) -> str | None:
        terminal = ctx.terminal
        if terminal is None or not terminal.mac_required:
            return None
        keys = self.keys.terminal(terminal.id)
        if keys is None or keys.tak is None:
            return self._fail(ctx, "96", "no_key", "no TAK for this terminal")
        found = received_mac(ctx.raw, ctx.request)
        if found is None:
            return self._fail(ctx, "63", "missing", "MAC missing")
        if self.hsm is None:
            return self._fail(ctx, "96", "hsm_disabled", "no HSM configured")
        data, mac = found
        try:
            ok = await self.hsm.verify_mac(keys.tak, data, mac)
        except (HsmUnavailableError, HsmCommandError) as exc:
            return self._hsm_failed(ctx, exc)
        if not ok:
            return self._fail(ctx, "63", "wrong", "MAC does not verify")
        self.metrics.count(self.check, "ok")
        return None


KSN_MEMORY = 500_000
"""DUKPT KSNs remembered per BDK to refuse a second use (oldest forgotten first); also the
AES DUKPT devices (BDK, initial key ID) whose last counter is remembered."""
AES_KSN_BYTES = 12
"""Field 123: the AES DUKPT KSN (8-byte initial key ID, 4-byte counter), then the 16-byte
format 4 block, 56 hex in all."""

First = Callable[[str], Awaitable[PinTranslation]]
"""The terminal-to-ZPK translation, given the destination format."""


class TranslatePin(_HsmStage):
    """The terminal's PIN to the issuer's ZPK (TPK: ``CA``; DUKPT: ``G0``; AES DUKPT: ``Z0``).

    A DUKPT device never uses a KSN twice (its counter advances with every PIN entry), so a
    KSN seen before under the same BDK is a replayed PIN block: ``63``. An AES DUKPT terminal
    (SPEC "AES DUKPT terminals") sends its KSN and ISO format 4 block in field 123; its
    counter must rise for each (BDK, initial key ID), and one that does not is refused the
    same way. Repeats of one request (same 41/11/7) are answered from the duplicate check
    before they get here.

    The terminal formed its PIN block with the PAN it read; for a wallet that is the
    token, while the issuer checks the PIN with the funding PAN. Then the PIN goes to the
    issuer's ZPK in ISO format 1 (``05``, no PAN in it) with the token, and ``CC`` reformats it
    under that ZPK to ISO format 0 with the funding PAN: the clear PIN stays in the HSM. Either
    step failing is one failed translation (same answer, and a DUKPT KSN is not consumed)."""

    name = "translate-pin"
    check = "pin_translation"

    def __init__(
        self,
        hsm: HsmClient | None,
        keys: KeyStore,
        metrics: SecurityMetrics | None = None,
        *,
        memory: int = KSN_MEMORY,
    ) -> None:
        super().__init__(hsm, keys, metrics)
        self._ksns: BoundedFifo[tuple[str, str], None] = BoundedFifo(memory)
        self._aes_counters: BoundedFifo[tuple[str, str], int] = BoundedFifo(memory)

    async def prepare(self, ctx: Context) -> str | None:
        req = ctx.request
        block_hex = req.fields.get("52")
        aes_data = req.fields.get("123")
        if (block_hex is None and aes_data is None) or req.mti not in PIN_MTIS:
            return None
        if ctx.issuer is None:
            return None
        hsm = self.hsm
        if hsm is None:
            return self._fail(ctx, "96", "hsm_disabled", "PIN block but no HSM configured")
        terminal = self.keys.terminal(req.fields.get("41", ""))
        issuer = link_keys(ctx, self.keys, ctx.issuer)
        if terminal is None:
            return self._fail(ctx, "96", "no_key", "no keys for this terminal")
        if issuer is None or issuer.zpk is None:
            return self._fail(ctx, "96", "no_key", "no ZPK for this issuer", issuer=ctx.issuer)
        if (aes_data is not None) != (terminal.key_mode == "aes_dukpt"):
            # SPEC: an AES DUKPT terminal's PIN is in 123, never in 52; nobody else's is.
            return self._fail(ctx, "30", "format", "PIN field not the terminal's key mode's")
        zpk = issuer.zpk
        try:
            if aes_data is not None:
                raw = bytes.fromhex(aes_data)
                if len(raw) != AES_KSN_BYTES + 16:
                    raise ValueError
                ksn, block = raw[:AES_KSN_BYTES], raw[AES_KSN_BYTES:]
            else:
                ksn, block = b"", bytes.fromhex(block_hex or "")
            # The PIN block was formed with the PAN the terminal read (the token, if any);
            # the issuer verifies the PIN with the PAN it is sent (the funding PAN).
            shown = presented(req)
            pan, _ = card_of(shown)
            funding = pan if shown is req else card_of(req)[0]
        except (ValueError, ProtocolError, KeyError):
            return self._fail(ctx, "30", "format", "PIN block or PAN unusable")
        try:
            if aes_data is not None:
                return await self._aes_dukpt(ctx, terminal, zpk, ksn, block, pan, funding)
            if terminal.key_mode == "dukpt":
                ksn53 = req.fields.get("53")
                if ksn53 is None:
                    return self._fail(ctx, "30", "format", "DUKPT PIN block without KSN (53)")
                if terminal.bdk is None:
                    return self._fail(ctx, "96", "no_key", "no BDK for this terminal")
                used = (terminal.bdk, ksn53.upper())
                if used in self._ksns:
                    return self._fail(ctx, "63", "ksn_reused", "DUKPT KSN used before")
                self._ksns[used] = None  # taken now: a concurrent twin is refused too
                bdk = terminal.bdk
                try:
                    result = await _to_issuer(
                        hsm,
                        zpk,
                        lambda fmt: hsm.translate_pin_dukpt_to_zpk(
                            bdk, zpk, ksn53, block, pan, dst_format=fmt
                        ),
                        pan,
                        funding,
                    )
                except BaseException:
                    self._ksns.pop(used, None)  # not translated: the KSN was not consumed
                    raise
            else:
                if terminal.tpk is None:
                    return self._fail(ctx, "96", "no_key", "no TPK for this terminal")
                tpk = terminal.tpk
                result = await _to_issuer(
                    hsm,
                    zpk,
                    lambda fmt: hsm.translate_pin_tpk_to_zpk(tpk, zpk, block, pan, dst_format=fmt),
                    pan,
                    funding,
                )
        except (HsmUnavailableError, HsmCommandError) as exc:
            return self._hsm_failed(ctx, exc)
        self._translated(ctx, result)
        return None

    async def _aes_dukpt(
        self,
        ctx: Context,
        terminal: TerminalKeys,
        zpk: str,
        ksn: bytes,
        block: bytes,
        pan: str,
        funding: str,
    ) -> str | None:
        """Field 123 through ``Z0``: the KSN's counter must rise for its device."""
        hsm = self.hsm
        assert hsm is not None
        if terminal.bdk is None:
            return self._fail(ctx, "96", "no_key", "no BDK for this terminal")
        bdk = terminal.bdk
        device = (bdk, ksn[:8].hex().upper())
        counter = int.from_bytes(ksn[8:], "big")
        last = self._aes_counters.get(device)
        if last is not None and counter <= last:
            return self._fail(ctx, "63", "ksn_reused", "AES DUKPT counter did not rise")
        self._aes_counters[device] = counter  # taken now: a concurrent twin is refused too
        try:
            result = await _to_issuer(
                hsm,
                zpk,
                lambda fmt: hsm.translate_pin_aes_dukpt_to_zpk(
                    bdk, zpk, ksn.hex(), block, pan, dst_format=fmt
                ),
                pan,
                funding,
            )
        except BaseException:
            # Not translated: the counter was not consumed. Put the last one back unless a
            # later counter has been taken meanwhile.
            if self._aes_counters.get(device) == counter:
                if last is None:
                    self._aes_counters.pop(device, None)
                else:
                    self._aes_counters[device] = last
            raise
        self._translated(ctx, result)
        return None

    def _translated(self, ctx: Context, result: PinTranslation) -> None:
        ctx.pin_block = result.pin_block.hex().upper()
        self.metrics.count(self.check, "ok")


def link_keys(ctx: Context, keys: KeyStore, issuer: str) -> IssuerKeys | None:
    """The issuer link's keys for this transaction: the generation it took first, else the
    current one (which it then keeps: its answer is checked with the key its request used)."""
    held = ctx.link_keys
    if held is not None and held.issuer == issuer:
        return held
    current = keys.issuer(issuer)
    ctx.link_keys = current
    return current


async def _to_issuer(
    hsm: HsmClient, zpk: str, first: First, pan: str, funding_pan: str
) -> PinTranslation:
    """ISO format 0 under the issuer's ZPK with the funding PAN: ``first`` straight to format 0
    for a card; for a token, ``first`` to format 1 then ``CC`` to format 0 with the funding PAN."""
    if funding_pan == pan:
        return await first(FORMAT_ISO0)
    return await hsm.translate_pin_zpk_to_zpk(
        zpk,
        zpk,
        (await first(FORMAT_ISO1)).pin_block,
        funding_pan,
        src_format=FORMAT_ISO1,
        dst_format=FORMAT_ISO0,
    )


class IssuerLinkMac(_HsmStage):
    """QueryIssuer's issuer-message hook: MAC (ZAK, via ``M6``/``M8``) on links that use one.

    Requests get the MAC once complete; answers are checked when they carry one (re-encoding
    a decoded answer gives its bytes back exactly, so the MAC covers what the issuer sent).
    """

    name = "issuer-mac"
    check = "issuer_mac"

    def _zak(self, ctx: Context, issuer: str) -> str | None:
        keys = link_keys(ctx, self.keys, issuer)
        return keys.zak if keys is not None else None

    async def seal(self, ctx: Context, pool: IssuerPool, msg: Message) -> str | None:
        """Add the MAC to ``msg``; a response code when it cannot be done (nothing is sent)."""
        zak = self._zak(ctx, pool.issuer)
        if zak is None:
            return None
        if self.hsm is None:
            return self._fail(ctx, "96", "hsm_disabled", "issuer link MAC but no HSM configured")
        field = mac_field(msg.fields)
        try:
            mac = await self.hsm.generate_mac(zak, mac_input(pool.codec, msg, field))
        except (HsmUnavailableError, HsmCommandError) as exc:
            return self._hsm_failed(ctx, exc)
        msg.fields[field] = mac.hex().upper()
        self.metrics.count(self.check, "generated")
        return None

    async def check_answer(self, ctx: Context, pool: IssuerPool, answer: Message) -> str | None:
        """``None`` when the answer may be used; ``96`` when its MAC does not verify or could
        not be verified (then ``ctx.answer_rejected`` says why, and the answer is reversed)."""
        zak = self._zak(ctx, pool.issuer)
        if zak is None:
            return None
        field = mac_field(answer.fields)
        value = answer.fields.get(field)
        if value is None:
            # On a MACed link an answer without a MAC is as untrusted as one with a wrong
            # MAC (SPEC's rule for terminals: missing or wrong is a security violation):
            # otherwise stripping the MAC would be the way around it.
            rc = self._fail(ctx, "96", "answer_missing", "issuer answer without a MAC")
            return self._untrusted(ctx, pool, answer, rc, BAD_MAC)
        if self.hsm is None:
            rc = self._fail(ctx, "96", "hsm_disabled", "issuer answer MAC but no HSM")
            return self._untrusted(ctx, pool, answer, rc, UNVERIFIED)
        try:
            mac = bytes.fromhex(value)
            data = mac_input(pool.codec, answer, field)
        except (ValueError, ProtocolError):
            rc = self._fail(ctx, "96", "answer_wrong", "issuer answer MAC unusable")
            return self._untrusted(ctx, pool, answer, rc, BAD_MAC)
        try:
            ok = await self.hsm.verify_mac(zak, data, mac)
        except (HsmUnavailableError, HsmCommandError) as exc:
            # The answer may have been an approval: not knowing is as bad as a wrong MAC.
            rc = self._hsm_failed(ctx, exc)
            return self._untrusted(ctx, pool, answer, rc, UNVERIFIED)
        if not ok:
            rc = self._fail(
                ctx, "96", "answer_wrong", "issuer answer MAC does not verify", issuer=pool.issuer
            )
            return self._untrusted(ctx, pool, answer, rc, BAD_MAC)
        self.metrics.count(self.check, "verified")
        return None

    def _untrusted(
        self, ctx: Context, pool: IssuerPool, answer: Message, rc: str, reason: str
    ) -> str:
        """An answer that cannot be trusted counts as no answer: whatever the issuer did is
        reversed (journal stage, 0420 store-and-forward). That needs the journal: it is on
        when the request was journaled as sent (``ctx.issuer_request``)."""
        ctx.answer_rejected = reason
        queued = ctx.issuer_request is not None
        self.metrics.untrusted_answers.labels(
            pool.issuer, reason, "queued" if queued else "none"
        ).inc()
        if not queued:  # when queued, the journal stage logs it
            log.error(
                "issuer_answer_untrusted_not_reversed",
                issuer=pool.issuer,
                rrn=ctx.rrn,
                reason=reason,
                mti=answer.mti,
                issuer_rc=_rc_of(answer),
                reversal="none: no journal, so no store-and-forward; the issuer may hold it",
            )
        return rc


def _rc_of(answer: Message) -> str | None:
    """The answer's field 39 when it is a plausible response code (fit for a log line)."""
    value = answer.fields.get("39")
    return value if value is not None and len(value) == 2 and value.isalnum() else None
