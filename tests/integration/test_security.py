"""PINs, MACs and the HSM end to end over real sockets (issue 3, items 4-6).

Terminals -> gateway -> HSM simulator (in-process, port 0) -> issuer simulators, with the demo
keys. The terminal side is built with pos-sim's own PIN pad functions.
"""

from __future__ import annotations

import io
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest
import structlog

from hsm_sim import terminal as pinpad
from hsm_sim.lmk import Lmk
from issuer_sim.pin import IssuerSecurity, field48_cvv2
from issuer_sim.server import IssuerServer
from kit.dataset import Terminal
from kit.logs import configure
from loadtest.pos_sim import INITIAL_AES_KSN, INITIAL_KSN, add_mac, add_pin_block, terminal_of
from protocols.message import Message
from protocols.validate import luhn_ok
from tests.helpers import (
    ROOT,
    Stack,
    demo_dataset,
    purchase,
    reversal_of,
    running_stack,
    terminal,
)

pytestmark = pytest.mark.anyio

DATA = demo_dataset()
TPK_TERMINAL = terminal_of(DATA, "T0000001")
DUKPT_TERMINAL = terminal_of(DATA, "T0000002")  # DUKPT and mac_required
AES_TERMINAL = terminal_of(DATA, "T0000003")  # AES DUKPT: KSN and format 4 block in field 123
PAN, PIN = "4761730000000011", "1234"  # alpha, the issuer link with a ZAK
BETA_PAN, BETA_PIN = "5413330000000019", "4321"  # beta: no link MAC
ALPHA = DATA.issuer("alpha")
BIN = Path(sys.executable).parent


def synthetic_cards(prefix: str = "4761739", seed: int = 3) -> Callable[[], str]:
    """Fresh Luhn-valid cards of a synthetic range (PIN 0000): per-card risk rules stay quiet."""
    rnd = random.Random(seed)

    def fresh() -> str:
        while True:
            pan = prefix + "".join(rnd.choice("0123456789") for _ in range(16 - len(prefix)))
            if luhn_ok(pan):
                return pan

    return fresh


def ksns(start: str = INITIAL_KSN) -> Callable[[], str]:
    """The PIN pad's KSN sequence (counters 1, 2, ...; AES DUKPT from a 24-hex start)."""
    state = [start]
    step = pinpad.next_aes_ksn if len(start) == 24 else pinpad.next_ksn

    def following() -> str:
        state[0] = step(state[0])
        return state[0]

    return following


def pin_purchase(
    term: Terminal,
    pan: str,
    pin: str | None,
    amount: int = 100,
    *,
    ksn: str | None = None,
    mac: str = "auto",
) -> Message:
    """A purchase as the terminal's PIN pad sends it: PIN block, KSN, MAC as configured."""
    req = purchase(pan, amount, terminal_id=term.id, merchant=term.merchant)
    if pin is not None:
        add_pin_block(req, term, pin, pan, ksn)
    if term.mac_required and mac != "none":
        assert term.tak is not None
        add_mac(req, term.tak.key, wrong=mac == "bad")
    return req


def spy(server: IssuerServer) -> list[tuple[Message, Message]]:
    """Every (request, answer) the issuer host sees from now on."""
    seen: list[tuple[Message, Message]] = []
    host = server.host
    handle = host.handle

    def spying(msg: Message, now: object) -> Message:
        answer = handle(msg, now)  # type: ignore[arg-type]
        seen.append((Message(msg.mti, dict(msg.fields)), answer))
        return answer

    host.handle = spying  # type: ignore[method-assign]
    return seen


def checks(stack: Stack, check: str, outcome: str) -> float:
    value = stack.gateway.security_metrics.checks.labels(check, outcome)._value.get()
    return float(value)


@pytest.fixture
async def stack(pki_dir: Path) -> AsyncIterator[Stack]:
    async with running_stack(pki_dir) as s:
        yield s


async def test_tpk_pin_purchase_translated_to_the_zpk_and_link_maced(stack: Stack) -> None:
    seen = spy(stack.issuers["alpha"])
    before = stack.account_balance("alpha", PAN)
    req = pin_purchase(TPK_TERMINAL, PAN, PIN, 1250)
    async with terminal(stack.port) as term:
        resp = await term.exchange(req)
    assert resp["39"] == "00"
    assert stack.account_balance("alpha", PAN) == before - 1250
    [(sent, answer)] = [(m, a) for m, a in seen if m.mti == "0200"]
    # ISO format 0 is deterministic: the issuer got the same PIN block under its ZPK.
    assert ALPHA.zpk is not None
    assert sent["52"] == pinpad.pin_block_under_tpk(ALPHA.zpk.key, PIN, PAN).hex().upper()
    assert sent["52"] != req["52"]
    assert "53" not in sent
    assert "64" in sent
    assert "64" in answer
    assert checks(stack, "issuer_mac", "generated") == 1
    assert checks(stack, "issuer_mac", "verified") == 1
    assert checks(stack, "pin_translation", "ok") == 1
    assert {"CA", "M6", "M8"} <= set(stack.gateway.hsm.statistics().by_command)  # type: ignore[union-attr]


async def test_dukpt_mac_terminal_consecutive_counters_and_a_jump(stack: Stack) -> None:
    seen = spy(stack.issuers["alpha"])
    next_ksn = ksns()
    fresh = synthetic_cards()
    async with terminal(stack.port) as term:
        resp = await term.exchange(pin_purchase(DUKPT_TERMINAL, PAN, PIN, 1250, ksn=next_ksn()))
        assert resp["39"] == "00"
        for _ in range(10):  # ten consecutive counters from the same terminal
            req = pin_purchase(DUKPT_TERMINAL, fresh(), "0000", ksn=next_ksn())
            assert (await term.exchange(req))["39"] == "00"
        jump = pinpad.next_ksn(INITIAL_KSN[:-5] + "00400")  # counter 0x400 -> 0x401
        req = pin_purchase(DUKPT_TERMINAL, fresh(), "0000", ksn=jump)
        assert (await term.exchange(req))["39"] == "00"
    assert len(seen) == 12
    assert all("52" in m and "53" not in m and "64" in m for m, _ in seen)
    assert checks(stack, "terminal_mac", "ok") == 12


async def test_reversal_from_a_mac_terminal_carries_the_mac_in_field_128(stack: Stack) -> None:
    seen = spy(stack.issuers["alpha"])
    before = stack.account_balance("alpha", PAN)
    assert DUKPT_TERMINAL.tak is not None
    async with terminal(stack.port) as term:
        original = pin_purchase(DUKPT_TERMINAL, PAN, PIN, 700, ksn=ksns()())
        assert (await term.exchange(original))["39"] == "00"
        reversal = reversal_of(original)
        reversal.fields.pop("53", None)
        reversal.fields.pop("52", None)
        add_mac(reversal, DUKPT_TERMINAL.tak.key)
        assert "128" in reversal  # field 90 brings the secondary bitmap: the MAC goes last
        assert (await term.exchange(reversal))["39"] == "00"
    assert stack.account_balance("alpha", PAN) == before
    [to_issuer] = [m for m, _ in seen if m.mti == "0400"]
    assert "128" in to_issuer  # the alpha link MACs the reversal the same way
    assert "64" not in to_issuer


async def test_replayed_pin_block_under_another_ksn_fails(stack: Stack) -> None:
    next_ksn = ksns()
    first, second = next_ksn(), next_ksn()
    seen = spy(stack.issuers["beta"])
    async with terminal(stack.port) as term:
        original = pin_purchase(DUKPT_TERMINAL, BETA_PAN, BETA_PIN, ksn=first)
        replay = pin_purchase(DUKPT_TERMINAL, BETA_PAN, None, mac="none")
        replay.fields.update({"52": original["52"], "53": second})
        assert DUKPT_TERMINAL.tak is not None
        add_mac(replay, DUKPT_TERMINAL.tak.key)
        resp = await term.exchange(replay)
    # Under the wrong KSN's key the block is garbage: either not a PIN block at all (HSM error
    # 20 -> 96) or a PIN the issuer refuses (55). Never an approval.
    assert resp["39"] in ("55", "96")
    assert all(a["39"] != "00" for _, a in seen)


async def test_replayed_pin_block_under_its_own_ksn_is_63(stack: Stack) -> None:
    """A captured PIN block sent again with its KSN (a new STAN, so no duplicate): 63, and
    the issuer never sees it; the device's next KSN still works."""
    next_ksn = ksns()
    first = next_ksn()
    seen = spy(stack.issuers["beta"])
    async with terminal(stack.port) as term:
        original = pin_purchase(DUKPT_TERMINAL, BETA_PAN, BETA_PIN, 300, ksn=first)
        assert (await term.exchange(original))["39"] == "00"
        replay = pin_purchase(DUKPT_TERMINAL, BETA_PAN, None, 300, mac="none")
        replay.fields.update({"52": original["52"], "53": first.lower()})
        assert DUKPT_TERMINAL.tak is not None
        add_mac(replay, DUKPT_TERMINAL.tak.key)
        assert replay["11"] != original["11"]
        assert (await term.exchange(replay))["39"] == "63"
        after = pin_purchase(DUKPT_TERMINAL, BETA_PAN, BETA_PIN, 300, ksn=next_ksn())
        assert (await term.exchange(after))["39"] == "00"
    assert len(seen) == 2  # the original and the next one; never the replay


async def test_aes_dukpt_right_pin_00_wrong_pin_55_replay_63(stack: Stack) -> None:
    """SPEC "AES DUKPT terminals": field 123 translated through Z0 to the issuer's ZPK, which
    gets format 0 in 52 and never 123; a counter that does not rise is 63 and never sent on."""
    seen = spy(stack.issuers["alpha"])
    before = stack.account_balance("alpha", PAN)
    next_ksn = ksns(INITIAL_AES_KSN)
    first = next_ksn()
    async with terminal(stack.port) as term:
        right = pin_purchase(AES_TERMINAL, PAN, PIN, 1250, ksn=first)
        assert not {"52", "53"} & right.fields.keys()
        assert (await term.exchange(right))["39"] == "00"
        wrong = await term.exchange(pin_purchase(AES_TERMINAL, PAN, "9999", ksn=next_ksn()))
        assert wrong["39"] == "55"
        assert "38" not in wrong
        replay = pin_purchase(AES_TERMINAL, PAN, None, 1250)
        replay.fields["123"] = right["123"]  # captured, sent again under a new STAN
        assert replay["11"] != right["11"]
        assert (await term.exchange(replay))["39"] == "63"
        assert (await term.exchange(pin_purchase(AES_TERMINAL, PAN, PIN, ksn=first)))["39"] == "63"
        later = await term.exchange(pin_purchase(AES_TERMINAL, PAN, PIN, 50, ksn=next_ksn()))
        assert later["39"] == "00"
        bad = pin_purchase(AES_TERMINAL, PAN, PIN, ksn=next_ksn())
        bad.fields["123"] = bad["123"].lower()  # SPEC: upper-case hex
        assert (await term.exchange(bad))["39"] == "30"
    assert stack.account_balance("alpha", PAN) == before - 1250 - 50
    sent = [m for m, _ in seen if m.mti == "0200"]
    assert len(sent) == 3  # right, wrong, later: never a replay, never the malformed one
    assert ALPHA.zpk is not None
    assert sent[0]["52"] == pinpad.pin_block_under_tpk(ALPHA.zpk.key, PIN, PAN).hex().upper()
    assert all("52" in m and not {"53", "123"} & m.fields.keys() for m in sent)
    assert checks(stack, "pin_translation", "ksn_reused") == 2
    assert stack.gateway.hsm.statistics().by_command["Z0"] == 3  # type: ignore[union-attr]


async def test_wrong_pin_55_tpk_and_dukpt(stack: Stack) -> None:
    async with terminal(stack.port) as term:
        resp = await term.exchange(pin_purchase(TPK_TERMINAL, BETA_PAN, "9999"))
        assert resp["39"] == "55"
        resp = await term.exchange(pin_purchase(DUKPT_TERMINAL, PAN, "4321", ksn=ksns()()))
        assert resp["39"] == "55"
        assert "38" not in resp


@pytest.fixture
async def stack_without_risk(pki_dir: Path) -> AsyncIterator[Stack]:
    # The lockout takes more attempts on one card than the switch's velocity rule allows.
    async with running_stack(pki_dir, risk="") as s:
        yield s


async def test_pin_tries_exceeded_75_until_reset(stack_without_risk: Stack) -> None:
    stack = stack_without_risk
    fresh = synthetic_cards(seed=11)
    card, other = fresh(), fresh()
    book = stack.issuers["alpha"].host.book
    async with terminal(stack.port) as term:

        async def rc(pan: str, pin: str) -> str:
            return (await term.exchange(pin_purchase(TPK_TERMINAL, pan, pin)))["39"]

        assert [await rc(card, "1111") for _ in range(3)] == ["55", "55", "55"]
        assert await rc(card, "1111") == "75"  # the fourth wrong PIN in a row
        assert await rc(card, "0000") == "75"  # blocked: even the right PIN, until reset
        assert book.reset_pin_tries(card)
        assert await rc(card, "0000") == "00"
        # A right PIN resets the count: two wrong, one right, two wrong is never 75.
        answers = [await rc(other, p) for p in ("1111", "2222", "0000", "1111", "2222")]
        assert answers == ["55", "55", "00", "55", "55"]


async def test_mac_missing_or_wrong_63(stack: Stack) -> None:
    seen = spy(stack.issuers["beta"])
    async with terminal(stack.port) as term:
        missing = await term.exchange(pin_purchase(DUKPT_TERMINAL, BETA_PAN, None, mac="none"))
        wrong = await term.exchange(pin_purchase(DUKPT_TERMINAL, BETA_PAN, None, mac="bad"))
        tampered = pin_purchase(DUKPT_TERMINAL, BETA_PAN, None, 100)
        tampered["4"] = f"{1:012d}"  # changed after the MAC was computed
        altered = await term.exchange(tampered)
        right = await term.exchange(pin_purchase(DUKPT_TERMINAL, BETA_PAN, None))
    assert (missing["39"], wrong["39"], altered["39"]) == ("63", "63", "63")
    assert right["39"] == "00"
    assert len(seen) == 1  # the declined ones never reached the issuer
    assert checks(stack, "terminal_mac", "missing") == 1
    assert checks(stack, "terminal_mac", "wrong") == 2


async def test_hsm_down_96_fast_other_traffic_flows_and_pool_recovers(stack: Stack) -> None:
    assert stack.hsm is not None
    async with terminal(stack.port) as term:
        assert (await term.exchange(pin_purchase(TPK_TERMINAL, BETA_PAN, BETA_PIN)))["39"] == "00"
        stack.hsm.stop()
        with anyio.fail_after(3):  # refused at once: no timeout to wait for
            resp = await term.exchange(pin_purchase(TPK_TERMINAL, BETA_PAN, BETA_PIN))
        assert resp["39"] == "96"
        mac_terminal = await term.exchange(pin_purchase(DUKPT_TERMINAL, BETA_PAN, None))
        assert mac_terminal["39"] == "96"  # the MAC cannot be checked: not 63, not approved
        # Without PIN or MAC nothing needs the HSM (beta's link uses no MAC; alpha's does).
        assert (await term.exchange(purchase(BETA_PAN, 5)))["39"] == "00"
        assert (await term.exchange(purchase(PAN, 5)))["39"] == "96"
        await stack.hsm.start(stack.task_group)  # same port, as after a restart
        with anyio.fail_after(5):
            resp = await term.exchange(pin_purchase(TPK_TERMINAL, BETA_PAN, BETA_PIN))
        assert resp["39"] == "00"
        assert (await term.exchange(purchase(PAN, 5)))["39"] == "00"
    assert checks(stack, "pin_translation", "hsm_unavailable") == 1


async def test_manual_entry_cvv2_in_field_48(stack: Stack) -> None:
    security = stack.issuers["alpha"].host.book.security
    assert security is not None
    cvv2 = security.card_cvv2(PAN, "2812")
    wrong = f"{(int(cvv2) + 1) % 1000:03d}"
    async with terminal(stack.port) as term:

        async def rc(**fields: str) -> str:
            return (await term.exchange(purchase(PAN, 10, extra=fields)))["39"]

        assert await rc(**{"22": "011", "48": field48_cvv2(cvv2)}) == "00"
        assert await rc(**{"22": "011", "48": field48_cvv2(wrong)}) == "05"
        assert await rc(**{"22": "011"}) == "05"


async def test_without_an_hsm_only_what_needs_one_is_refused(pki_dir: Path) -> None:
    async with running_stack(pki_dir, hsm=False) as stack:
        assert stack.gateway.hsm is None
        async with terminal(stack.port) as term:
            assert (await term.exchange(purchase(BETA_PAN, 5)))["39"] == "00"
            pin = await term.exchange(pin_purchase(TPK_TERMINAL, BETA_PAN, BETA_PIN))
            assert pin["39"] == "96"  # never sent on untranslated
            mac = await term.exchange(pin_purchase(DUKPT_TERMINAL, BETA_PAN, None))
            assert mac["39"] == "96"
            assert (await term.exchange(purchase(PAN, 5)))["39"] == "96"  # alpha's link MACs
        assert stack.issuers["beta"].by_mti.get("0200") == 1


async def test_issuer_answer_with_a_wrong_mac_is_not_used(stack: Stack) -> None:
    security = stack.issuers["alpha"].host.book.security
    assert isinstance(security, IssuerSecurity)
    beta_zpk = DATA.issuer("beta").zpk
    assert beta_zpk is not None
    assert DATA.hsm is not None
    security.zak = Lmk(DATA.hsm.lmk.key).encrypt(bytes.fromhex(beta_zpk.key))  # a wrong ZAK
    before = stack.account_balance("alpha", PAN)
    seen = spy(stack.issuers["alpha"])
    async with terminal(stack.port) as term:
        resp = await term.exchange(purchase(PAN, 100))
    [(_, answer)] = seen
    assert answer["39"] == "63"  # the issuer refused the switch's MAC (under its wrong key)...
    assert resp["39"] == "96"  # ...and the switch refused the issuer's MAC
    assert stack.account_balance("alpha", PAN) == before
    assert checks(stack, "issuer_mac", "answer_wrong") == 1


async def test_untrusted_issuer_answer_without_a_journal_is_logged_not_reversed(
    pki_dir: Path,
) -> None:
    """No journal, no store-and-forward: the issuer keeps what it approved (the journaled
    gateway reverses it: test_journal_pipeline), and the switch says so loudly."""
    out = io.BytesIO()
    configure("info", stream=out)
    structlog.configure(cache_logger_on_first_use=False)
    try:
        async with running_stack(pki_dir) as stack:
            alpha = stack.issuers["alpha"]
            before = stack.account_balance("alpha", PAN)
            alpha.faults.bad_mac_ratio = 1.0
            async with terminal(stack.port) as term:
                resp = await term.exchange(purchase(PAN, 100))
            assert resp["39"] == "96"
            assert stack.account_balance("alpha", PAN) == before - 100  # nothing undoes it
            assert alpha.by_mti.get("0420", 0) == 0
            metric = stack.gateway.security_metrics.untrusted_answers
            assert metric.labels("alpha", "bad_mac", "none")._value.get() == 1
            assert checks(stack, "issuer_mac", "answer_wrong") == 1
    finally:
        structlog.reset_defaults()
    text = out.getvalue().decode()
    [line] = [x for x in text.splitlines() if '"issuer_answer_untrusted_not_reversed"' in x]
    assert '"level":"error"' in line.replace(" ", "")
    assert resp["37"] in line
    assert PAN not in text


async def test_no_pan_pin_block_key_or_mac_in_logs(pki_dir: Path) -> None:
    out = io.BytesIO()
    configure("debug", stream=out)
    structlog.configure(cache_logger_on_first_use=False)  # other tests log elsewhere later
    sent: list[Message] = []
    try:
        async with running_stack(pki_dir) as stack:
            next_ksn, next_aes_ksn = ksns(), ksns(INITIAL_AES_KSN)
            async with terminal(stack.port) as term:
                for req in (
                    pin_purchase(TPK_TERMINAL, PAN, PIN),
                    pin_purchase(TPK_TERMINAL, BETA_PAN, "9999"),
                    pin_purchase(DUKPT_TERMINAL, PAN, PIN, ksn=next_ksn()),
                    pin_purchase(DUKPT_TERMINAL, BETA_PAN, BETA_PIN, ksn=next_ksn(), mac="bad"),
                    pin_purchase(AES_TERMINAL, PAN, PIN, ksn=next_aes_ksn()),
                    pin_purchase(AES_TERMINAL, BETA_PAN, "9999", ksn=next_aes_ksn()),
                ):
                    sent.append(req)
                    await term.exchange(req)
                assert stack.hsm is not None
                stack.hsm.stop()
                req = pin_purchase(TPK_TERMINAL, BETA_PAN, BETA_PIN)
                sent.append(req)
                assert (await term.exchange(req))["39"] == "96"
    finally:
        structlog.reset_defaults()
    text = out.getvalue().decode()
    for event in ("txn", "terminal_mac_declined", "pin_translation_declined", "hsm.connected"):
        assert f'"{event}"' in text, f"log capture missed {event}"
    assert DATA.hsm is not None
    lmk = Lmk(DATA.hsm.lmk.key)
    secrets: set[str] = {PAN, BETA_PAN, DATA.hsm.lmk.key}
    for owner in (*DATA.terminals, *DATA.issuers):
        for spec in (getattr(owner, k, None) for k in ("tpk", "bdk", "tak", "zpk", "zak", "pvk")):
            if spec is not None:
                secrets |= {spec.key, lmk.encrypt(bytes.fromhex(spec.key))[1:]}
    for req in sent:
        secrets |= {req.fields[k] for k in ("52", "64", "123") if k in req.fields}
        if "123" in req.fields:
            secrets.add(req.fields["123"][24:])  # the format 4 block alone
    assert ALPHA.zpk is not None
    secrets.add(pinpad.pin_block_under_tpk(ALPHA.zpk.key, PIN, PAN).hex().upper())
    leaked = [s for s in secrets if s.upper() in text.upper()]
    assert not leaked, f"{len(leaked)} secret values found in the logs"


def test_fixture_helpers_are_deterministic() -> None:
    first = [synthetic_cards(seed=1)() for _ in range(1)]
    cards = synthetic_cards(seed=1)
    three = [cards() for _ in range(3)]
    assert three[:1] == first
    assert all(luhn_ok(p) and p.startswith("4761739") for p in three)
    following = ksns()
    assert [following()[-6:] for _ in range(3)] == ["E00001", "E00002", "E00003"]
    aes = ksns(INITIAL_AES_KSN)
    assert [aes()[-8:] for _ in range(2)] == ["00000001", "00000002"]


# ------------------------------------------------------------------ the demo, real processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _demo_conf_on_free_ports(tmp: Path) -> tuple[int, int]:
    """conf/demo copied with every port moved to a free one (a running demo is not disturbed)."""
    ports = {p: _free_port() for p in (8583, 8584, 9090, 8080, 9583, 9584, 9585, 1500)}
    certs = (ROOT / "var" / "certs").resolve()
    for src in (ROOT / "conf" / "demo").glob("*.toml"):
        text = src.read_text().replace("../../var/certs", str(certs))
        text = text.replace("../../var/audit.log", str(tmp / "audit.log"))
        for old, new in ports.items():
            text = re.sub(rf"(?<!\d){old}(?!\d)", str(new), text)
        (tmp / src.name).write_text(text)
    return ports[8583], ports[9090]


@pytest.mark.slow
def test_demo_starts_the_hsm_and_pos_sim_sends_pin_purchases(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    port, admin = _demo_conf_on_free_ports(conf)
    demo = subprocess.Popen(
        [str(BIN / "gateway"), "demo", "--conf", str(conf)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert demo.poll() is None, "demo exited early"
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "demo not ready within 60 s"
            time.sleep(0.2)

        def pos_sim(*args: str) -> str:
            out = subprocess.run(
                [str(BIN / "pos-sim"), "purchase", "--port", str(port), "--amount", "1250",
                 "--data", str(ROOT / "conf" / "demo" / "data.toml"), *args],
                cwd=tmp_path, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            return out.stdout + out.stderr

        card = ("--pan", PAN)
        assert "response_code        00" in pos_sim("--terminal", "T0000001", *card, "--pin", PIN)
        for _ in range(2):  # two KSNs in a row from the state file under var/
            out = pos_sim("--terminal", "T0000002", *card, "--pin", PIN)
            assert "response_code        00" in out
        assert "E00002" in out
        assert "response_code        63" in pos_sim("--terminal", "T0000002", *card, "--mac", "bad")
        for _ in range(2):  # AES DUKPT: field 123, its 24-hex KSN in the same state file
            out = pos_sim("--terminal", "T0000003", *card, "--pin", PIN)
            assert "response_code        00" in out
        assert "KSN 123456789012345600000002" in out
        viewer = {"Authorization": "Bearer demo-viewer-TEST-ONLY"}  # conf/demo test token
        status = httpx.get(f"http://127.0.0.1:{admin}/status", headers=viewer, timeout=5).json()
        assert status["hsm"]["requests"] >= 9
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            output, _ = demo.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            output, _ = demo.communicate()
    text = output.decode(errors="replace")
    assert "hsm-sim listening" in text
    assert '"hsm_ready"' in text  # the gateway reached it and it holds the dataset's LMK
    assert PAN not in text.replace(f"--pan {PAN}", "")  # only the banner's example shows it
    assert "Traceback" not in text, text[-3000:]
