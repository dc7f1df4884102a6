"""Dynamic key exchange on an issuer link: new ZPK/ZAK as key blocks under the link's ZMK.

Wire form in :mod:`protocols.keychange` (0800, field 70 ``161``/``162``, key block in 48, KCV and
generation in 53). The switch changes keys when the link signs on (its first connection up),
on an operator's demand (``POST /admin/links/{issuer}/rotate-keys``) and, if configured, every
``key_rotation_interval`` seconds; the issuer may send the same 0800 at any time.

Switch-initiated, for each key the link has (ZPK, then ZAK if the link MACs):

1. HSM ``A0`` in key-block form: a new key under the LMK (``S`` + block) and the same key under
   the ZMK (a key block), with its KCV; no clear key leaves the HSM.
2. 0800/161 (or 162) with the block and KCV; the issuer imports it through its HSM, compares the
   KCV and answers 0810 ``00`` (it keeps its previous key too, for our messages in flight).
3. On ``00`` the new key becomes the current generation (:meth:`KeyStore.install`); anything
   else (``63``, a timeout, the link down) leaves the old key in use, counted and logged.

Issuer-initiated: the block is imported through the HSM (``A6``, ``A4`` when it does not
authenticate under the ZMK), its KCV compared with field 53's; a match is installed and
answered ``00``, anything else ``63`` (refused: logged, counted, the old key stays).

New messages take the new generation; a transaction holds the generation it started with
(``Context.link_keys``) and finishes under it, so both generations live as long as a message
in flight uses the old one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.upstream.hsm_client import HsmClient, HsmCommandError, HsmUnavailableError
from gateway.upstream.links import IssuerPool, IssuerTimeout, LinkUnavailable
from kit.keys import IssuerKeys, KeyStore
from kit.logs import get_logger
from protocols import keychange
from protocols.errors import ProtocolError
from protocols.message import Message
from protocols.translate import LinkCodec

log = get_logger("gateway.upstream.link_keys")

#: What each key is in the key block's header (TR-31 usage, mode of use) and HSM type code.
_USAGE = {"zpk": ("P0", "B", "001"), "zak": ("M3", "C", "008")}


class LinkKeyMetrics:
    """Key changes and refusals on issuer links, and each link's key generation."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.changes = Counter(
            "switch_link_key_changes",
            "Working keys changed on an issuer link (key: zpk|zak; initiator: switch|issuer)",
            ["issuer", "key", "initiator"],
            registry=registry,
        )
        self.refusals = Counter(
            "switch_link_key_refusals",
            "Key changes refused or failed, old key kept (by: issuer refused ours | switch"
            " refused theirs; reason: kcv_mismatch, block_refused, timeout, ...)",
            ["issuer", "key", "by", "reason"],
            registry=registry,
        )
        self.generation = Gauge(
            "switch_link_key_generation",
            "Current working-key generation of an issuer link (0: the configured keys)",
            ["issuer"],
            registry=registry,
        )


@dataclasses.dataclass(slots=True)
class _History:
    changes: int = 0
    refusals: int = 0
    last_refusal: str | None = None
    last_refusal_at: dt.datetime | None = None


class LinkKeyExchange:
    """Key changes on one issuer link (see the module doc)."""

    def __init__(
        self,
        pool: IssuerPool,
        keys: KeyStore,
        hsm: HsmClient | None,
        metrics: LinkKeyMetrics,
        *,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.pool = pool
        self.keys = keys
        self.hsm = hsm
        self.metrics = metrics
        self.clock = clock
        self.interval = pool.cfg.key_rotation_interval
        self._lock = anyio.Lock()
        self._history = _History()
        self._next_at: float | None = None
        self._next_wall: dt.datetime | None = None
        current = keys.issuer(pool.issuer)
        metrics.generation.labels(pool.issuer).set(current.generation if current else 0)
        self.supported = _dialect_carries_key_changes(pool)
        if not self.supported and current is not None and current.zmk is not None:
            log.warning(
                "link_keys_unsupported_dialect", issuer=pool.issuer, dialect=pool.cfg.dialect
            )

    @property
    def issuer(self) -> str:
        return self.pool.issuer

    @property
    def enabled(self) -> bool:
        current = self.keys.issuer(self.issuer)
        return (
            self.supported
            and self.hsm is not None
            and current is not None
            and current.zmk is not None
            and (current.zpk is not None or current.zak is not None)
        )

    # -- switch-initiated -------------------------------------------------------------

    async def rotate(self, reason: str) -> dict[str, Any]:
        """New ZPK and ZAK (those the link has) to the issuer; the result per key."""
        if not self.enabled:
            return {"issuer": self.issuer, "rotated": False, "reason": self.why_not()}
        async with self._lock:
            current = self.keys.issuer(self.issuer)
            assert current is not None
            generation = current.generation + 1
            results: dict[str, str] = {}
            for kind in ("zpk", "zak"):
                if getattr(current, kind) is None:
                    continue
                results[kind] = await self._send_key(kind, generation)
            self._schedule()
        changed = any(r == "changed" for r in results.values())
        summary = [f"{kind}: {result}" for kind, result in results.items()]
        log.info("link_keys_rotated", issuer=self.issuer, reason=reason, results=summary)
        return {
            "issuer": self.issuer,
            "rotated": changed,
            "generation": self.status()["generation"],
            "results": summary,
        }

    async def _send_key(self, kind: str, generation: int) -> str:
        hsm = self.hsm
        current = self.keys.issuer(self.issuer)
        assert hsm is not None
        assert current is not None
        assert current.zmk is not None
        usage, mode, _ = _USAGE[kind]
        try:
            key, kcv, under_zmk = await hsm.generate_key_block(
                usage, mode_of_use=mode, zmk=current.zmk
            )
        except (HsmUnavailableError, HsmCommandError) as exc:
            return self._refused(kind, "issuer", "hsm_" + _hsm_reason(exc))
        assert under_zmk is not None
        msg = self.pool.network_message(keychange.KINDS[kind])
        msg.fields.update(keychange.request(kind, under_zmk[1:], kcv, generation))
        answer = None
        # The issuer may have installed the key and its answer be lost: the same 0800 again
        # (same STAN and time) is answered from its first answer, and imports nothing twice.
        for _ in range(2):
            try:
                answer = await self.pool.request(msg, self.pool.cfg.timeout)
                break
            except IssuerTimeout:
                continue
            except (LinkUnavailable, ProtocolError):
                return self._refused(kind, "issuer", "link_unavailable")
        if answer is None:
            return self._refused(kind, "issuer", "timeout")
        rc = answer.fields.get("39", "")
        if rc != keychange.ACCEPTED:
            return self._refused(kind, "issuer", f"rc_{rc or 'missing'}")
        self._install(kind, key, kcv, generation, "switch")
        return "changed"

    # -- issuer-initiated -------------------------------------------------------------

    async def answer(self, msg: Message) -> Message:
        """The 0810 to an issuer's key-change 0800 (imported and installed, or refused)."""
        try:
            change = keychange.parse(msg)
        except keychange.KeyChangeError as exc:
            kind = keychange.CODES.get(msg.fields.get("70", ""), "unknown")
            self._refused(kind, "switch", "malformed", detail=str(exc))
            return keychange.answer(msg, keychange.REFUSED)
        if not self.enabled or self.hsm is None:
            self._refused(change.kind, "switch", "no_zmk")
            return keychange.answer(msg, keychange.REFUSED)
        async with self._lock:
            current = self.keys.issuer(self.issuer)
            assert current is not None
            assert current.zmk is not None
            _, _, key_type = _USAGE[change.kind]
            try:
                key, kcv = await self.hsm.import_key(
                    current.zmk, "S" + change.key_block, key_type=key_type
                )
            except HsmCommandError as exc:
                self._refused(change.kind, "switch", "block_refused", hsm_error=exc.error_code)
                return keychange.answer(msg, keychange.REFUSED)
            except HsmUnavailableError:
                self._refused(change.kind, "switch", "hsm_unavailable")
                return keychange.answer(msg, keychange.REFUSED)
            if kcv != change.kcv.upper():
                self._refused(change.kind, "switch", "kcv_mismatch")
                return keychange.answer(msg, keychange.REFUSED)
            generation = max(current.generation + 1, change.generation)
            self._install(change.kind, key, kcv, generation, "issuer")
        return keychange.answer(msg, keychange.ACCEPTED)

    # -- bookkeeping ------------------------------------------------------------------

    def _install(self, kind: str, key: str, kcv: str, generation: int, initiator: str) -> None:
        current = self.keys.issuer(self.issuer)
        assert current is not None
        new: IssuerKeys = dataclasses.replace(
            current,
            **{kind: key, f"{kind}_kcv": kcv},
            generation=max(generation, current.generation),
            changed_at=self.clock(),
        )
        self.keys.install(new)
        self._history.changes += 1
        self.metrics.changes.labels(self.issuer, kind, initiator).inc()
        self.metrics.generation.labels(self.issuer).set(new.generation)
        log.info(
            "link_key_changed",
            issuer=self.issuer,
            key_kind=kind,
            kcv=kcv,
            generation=new.generation,
            initiator=initiator,
        )

    def _refused(self, kind: str, by: str, reason: str, **info: Any) -> str:
        """Count and log a key change that did not happen (the old key stays in use)."""
        self._history.refusals += 1
        self._history.last_refusal = f"{kind}: {reason} (by {by})"
        self._history.last_refusal_at = self.clock()
        self.metrics.refusals.labels(self.issuer, kind, by, reason).inc()
        log.warning(
            "link_key_change_refused",
            issuer=self.issuer,
            key_kind=kind,
            by=by,
            reason=reason,
            **info,
        )
        return f"refused: {reason}"

    def _schedule(self) -> None:
        if self.interval > 0:
            self._next_at = time.monotonic() + self.interval
            self._next_wall = self.clock() + dt.timedelta(seconds=self.interval)

    def why_not(self) -> str:
        """Why this link cannot change keys ("" when it can)."""
        if not self.supported:
            return "the link's dialect cannot carry a key change (fields 48 and 53 as text)"
        return "" if self.enabled else "no ZMK for this issuer, or no HSM"

    def on_signed_on(self) -> bool:
        """Whether the link's sign-on should change keys now (the caller runs :meth:`rotate`)."""
        return self.enabled and self.pool.cfg.key_exchange_on_sign_on

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Scheduled key changes every ``key_rotation_interval`` (none when 0)."""
        task_status.started()
        if self.interval <= 0 or not self.enabled:
            return
        self._schedule()
        while True:
            assert self._next_at is not None
            await anyio.sleep(max(self._next_at - time.monotonic(), 0.0))
            if self.pool.ready:
                await self.rotate("scheduled")
            else:
                self._schedule()  # the link is down: its sign-on changes keys anyway

    def status(self) -> dict[str, Any]:
        """Generation, KCVs (never keys), last and next change, counts: /status and the
        dashboard."""
        current = self.keys.issuer(self.issuer)
        history = self._history
        return {
            "exchange": self.enabled,
            "generation": current.generation if current else 0,
            "zpk_kcv": (current.zpk_kcv or None) if current and current.zpk else None,
            "zak_kcv": (current.zak_kcv or None) if current and current.zak else None,
            "last_change": _iso(current.changed_at if current else None),
            "next_change": _iso(self._next_wall) if self.interval > 0 else None,
            "rotation_interval": self.interval or None,
            "changes": history.changes,
            "refusals": history.refusals,
            "last_refusal": history.last_refusal,
            "last_refusal_at": _iso(history.last_refusal_at),
        }


def _dialect_carries_key_changes(pool: IssuerPool) -> bool:
    """Whether the link's dialect carries a key-change 0800 whole (48 and 53 as text, 70):
    encoded then decoded, the fields come back unchanged. A translated (1993) link does not:
    the table has no key-change row (70 means something else there), and trying it would
    log and count translation fallbacks for a message never sent."""
    if isinstance(pool.codec, LinkCodec) and pool.codec.translator is not None:
        return False
    sample = Message(
        "0800",
        {
            "7": "0101000000",
            "11": "000001",
            **keychange.request("zpk", "B0096P0TB00N0000" + "0" * 80, "ABC123", 1),
        },
    )
    try:
        back = pool.codec.decode(pool.codec.encode(sample))
    except ProtocolError:
        return False
    return all(back.fields.get(f) == sample.fields[f] for f in ("48", "53", "70"))


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _hsm_reason(exc: Exception) -> str:
    if isinstance(exc, HsmCommandError):
        return f"error_{exc.error_code}"
    return "unavailable"
