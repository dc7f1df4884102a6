"""The switch with every dataset key held as a TR-31 key block under the LMK (``[hsm]
key_blocks``), on real sockets: each PIN, MAC and DUKPT path works under the headers the HSM
enforces, and a key in the wrong role is refused by the HSM (96), never used."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hsm_sim import terminal as pinpad
from loadtest.pos_sim import INITIAL_AES_KSN, INITIAL_KSN
from tests.helpers import running_stack, terminal
from tests.integration.test_security import (
    AES_TERMINAL,
    ALPHA,
    DUKPT_TERMINAL,
    PAN,
    PIN,
    TPK_TERMINAL,
    checks,
    ksns,
    pin_purchase,
    spy,
)

pytestmark = pytest.mark.anyio


async def test_every_key_path_under_key_blocks(pki_dir: Path) -> None:
    async with running_stack(pki_dir, key_blocks=True, risk="") as stack:
        keys = stack.gateway.keys
        alpha = keys.issuer("alpha")
        assert alpha is not None
        held = [alpha.zpk, alpha.zak]
        for terminal_id in ("T0000001", "T0000002", "T0000003"):
            found = keys.terminal(terminal_id)
            assert found is not None
            held += [k for k in (found.tpk, found.bdk, found.tak) if k is not None]
        assert len(held) == 6
        # Version D under the LMK's AES key-block key, header per role.
        assert all(k is not None and k.startswith("SD") for k in held)
        seen = spy(stack.issuers["alpha"])
        dukpt, aes = ksns(INITIAL_KSN), ksns(INITIAL_AES_KSN)
        async with terminal(stack.port) as term:
            assert (await term.exchange(pin_purchase(TPK_TERMINAL, PAN, PIN, 100)))["39"] == "00"
            wrong = await term.exchange(pin_purchase(TPK_TERMINAL, PAN, "9999", 100))
            assert wrong["39"] == "55"
            req = pin_purchase(DUKPT_TERMINAL, PAN, PIN, 100, ksn=dukpt())
            assert (await term.exchange(req))["39"] == "00"  # G0 and the TAK's M8
            req = pin_purchase(AES_TERMINAL, PAN, PIN, 100, ksn=aes())
            assert (await term.exchange(req))["39"] == "00"  # Z0 with an AES B0 block
        sent = [m for m, _ in seen if m.mti == "0200"]
        assert ALPHA.zpk is not None
        assert sent[0]["52"] == pinpad.pin_block_under_tpk(ALPHA.zpk.key, PIN, PAN).hex().upper()
        assert checks(stack, "issuer_mac", "verified") == 4
        assert checks(stack, "terminal_mac", "ok") == 1
        assert stack.gateway.hsm is not None
        assert stack.gateway.hsm.statistics().by_error_code == {}

        # A key in the wrong role: the PIN key given as the link's MAC key. The HSM refuses
        # (A6), the transaction gets 96, and nothing unMACed reaches the issuer.
        keys.install(dataclasses.replace(alpha, zak=alpha.zpk))
        before = len(seen)
        async with terminal(stack.port) as term:
            refused = await term.exchange(pin_purchase(TPK_TERMINAL, PAN, PIN, 100))
        assert refused["39"] == "96"
        assert len(seen) == before
        assert stack.gateway.hsm.statistics().by_error_code == {"A6": 1}
