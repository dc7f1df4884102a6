"""The issuer's side of dynamic key exchange (wire form in :mod:`protocols.keychange`).

Through the HSM core, as the issuer's host would through its HSM: a received key block is
imported under the link's ZMK (``A6``), its check value compared with field 53's, and the key
becomes the current one (the replaced key is still accepted for
``issuer_sim.pin.PREVIOUS_KEY_GRACE`` seconds); anything wrong is answered ``63`` and the old
key stays. The issuer can start a change too (:func:`offer`): a new key under its LMK and under
the ZMK (``A0`` in key-block form), made current at once (the acquirer's messages made with the
old one are still accepted), and put back by the returned undo if the acquirer refuses it.
Faults for tests: ``tamper`` (one character of the key block changed: it no longer
authenticates) and ``wrong_kcv``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hsm_sim.core import HsmCore
from issuer_sim.pin import PREVIOUS_KEY_GRACE, IssuerSecurity
from kit.logs import get_logger
from protocols import hsm as proto
from protocols import keychange
from protocols.message import Message

log = get_logger("issuer_sim")

_TYPES = {"zpk": "001", "zak": "008"}
FAULTS = frozenset({"tamper", "wrong_kcv"})


def _core(security: IssuerSecurity) -> HsmCore:
    return HsmCore(security.lmk)


def _install(security: IssuerSecurity, kind: str, key: str, generation: int) -> None:
    if kind == "zpk":
        security.previous_zpk, security.zpk = security.zpk, key
    else:
        security.previous_zak, security.zak = security.zak, key
    security.previous_until = time.monotonic() + PREVIOUS_KEY_GRACE
    security.generation = max(generation, security.generation)


def accept(security: IssuerSecurity, msg: Message) -> Message:
    """The 0810 to the acquirer's key-change 0800: ``00`` installed, ``63`` refused."""
    try:
        change = keychange.parse(msg)
    except keychange.KeyChangeError as exc:
        log.warning("issuer_sim_key_change_refused", issuer=security.issuer, reason=str(exc))
        return keychange.answer(msg, keychange.REFUSED)
    if security.zmk is None or getattr(security, change.kind) is None:
        log.warning("issuer_sim_key_change_refused", issuer=security.issuer, reason="no key")
        return keychange.answer(msg, keychange.REFUSED)
    error, body = _core(security).execute(
        proto.ImportKey(security.zmk, "S" + change.key_block, _TYPES[change.kind], "U")
    )
    if error != proto.OK or not isinstance(body, proto.ImportedKey):
        log.warning(
            "issuer_sim_key_change_refused",
            issuer=security.issuer,
            key_kind=change.kind,
            reason="key block refused",
            hsm_error=error,
        )
        return keychange.answer(msg, keychange.REFUSED)
    if body.kcv != change.kcv.upper():
        log.warning(
            "issuer_sim_key_change_refused",
            issuer=security.issuer,
            key_kind=change.kind,
            reason="kcv mismatch",
        )
        return keychange.answer(msg, keychange.REFUSED)
    _install(security, change.kind, body.key, change.generation)
    log.info(
        "issuer_sim_key_changed",
        issuer=security.issuer,
        key_kind=change.kind,
        kcv=body.kcv,
        generation=security.generation,
        initiator="acquirer",
    )
    return keychange.answer(msg, keychange.ACCEPTED)


def offer(
    security: IssuerSecurity, kind: str, *, fault: str | None = None
) -> tuple[dict[str, str], Callable[[bool], None]]:
    """Fields 70, 48, 53 of the issuer's key-change 0800 for a new ``kind`` key, installed now;
    and the undo that puts the old key back: ``undo(False)`` when the acquirer refused it,
    ``undo(True)`` when no answer came (the acquirer may have installed it: the new key is
    then still accepted, as the previous one, for the grace period)."""
    if security.zmk is None or getattr(security, kind, None) is None:
        raise LookupError(f"issuer {security.issuer} has no ZMK or no {kind}")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"key change fault must be one of {sorted(FAULTS)}")
    error, body = _core(security).execute(
        proto.GenerateKey(_TYPES[kind], "1", "U", security.zmk, "S")
    )
    if error != proto.OK or not isinstance(body, proto.GeneratedKey) or not body.key_under_zmk:
        raise RuntimeError(f"HSM refused the key generation: {error}")
    block, kcv = body.key_under_zmk[1:], body.kcv
    if fault == "tamper":
        i = len(block) - 5
        block = block[:i] + ("0" if block[i] != "0" else "1") + block[i + 1 :]
    elif fault == "wrong_kcv":
        kcv = f"{int(kcv, 16) ^ 1:06X}"
    saved = (
        security.zpk,
        security.zak,
        security.previous_zpk,
        security.previous_zak,
        security.previous_until,
        security.generation,
    )
    generation = security.generation + 1
    _install(security, kind, body.key, generation)

    new_key = body.key

    def undo(maybe_installed: bool) -> None:
        (
            security.zpk,
            security.zak,
            security.previous_zpk,
            security.previous_zak,
            security.previous_until,
            security.generation,
        ) = saved
        if maybe_installed:
            setattr(security, f"previous_{kind}", new_key)
            security.previous_until = time.monotonic() + PREVIOUS_KEY_GRACE

    return keychange.request(kind, block, kcv, generation), undo
