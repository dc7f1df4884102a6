"""gateway.upstream.hsm_client.HsmClient against the real hsm_sim server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import anyio.abc
import pytest
from prometheus_client import CollectorRegistry, Histogram

from gateway.upstream.hsm_client import HsmClient, HsmCommandError, HsmEndpoint, HsmUnavailableError
from hsm_sim import emv, pinblock, pinverify, terminal
from hsm_sim.config import TlsConfig
from hsm_sim.core import HsmCore
from hsm_sim.cvv import generate_cvv
from protocols import hsm as proto
from protocols.framing import Framer, encode_frame
from tests.hsm.helpers import DATA, LMK_HEX, closed_port, fake_peer, make_pki, running_server, u

pytestmark = pytest.mark.anyio

ALPHA, BETA = DATA["issuers"][0], DATA["issuers"][1]
TPK = DATA["terminals"][0]["tpk"]["key"]
BDK = DATA["terminals"][1]["bdk"]["key"]
TAK = DATA["terminals"][1]["tak"]["key"]
AES_BDK = next(t for t in DATA["terminals"] if t["id"] == "T0000003")["bdk"]["key"]
PAN, PIN = "4761730000000011", "1234"


def zpk_pin(block: bytes, zpk_hex: str, pan: str = PAN) -> str:
    return pinblock.decrypt_pin_block(bytes.fromhex(zpk_hex), "01", block, pan)


async def test_every_command_through_the_client() -> None:
    async with running_server() as server, HsmClient([("127.0.0.1", server.port or 0)]) as hsm:
        nc = await hsm.diagnostics()
        assert nc.lmk_check_value.startswith("666EA8")
        key, kcv = await hsm.generate_key("001")
        assert await hsm.key_check_value(key) == kcv

        tpk_block = terminal.pin_block_under_tpk(TPK, PIN, PAN)
        zpk_a, zpk_b = u(ALPHA["zpk"]["key"]), u(BETA["zpk"]["key"])
        ca = await hsm.translate_pin_tpk_to_zpk(u(TPK), zpk_a, tpk_block, PAN)
        assert ca.pin_length == 4
        assert zpk_pin(ca.pin_block, ALPHA["zpk"]["key"]) == PIN
        cc = await hsm.translate_pin_zpk_to_zpk(zpk_a, zpk_b, ca.pin_block, PAN)
        assert zpk_pin(cc.pin_block, BETA["zpk"]["key"]) == PIN

        ksn = "FFFF9876543210E00001"
        dukpt_block = terminal.pin_block_under_dukpt(BDK, ksn, PIN, PAN)
        g0 = await hsm.translate_pin_dukpt_to_zpk(u(BDK), zpk_a, ksn, dukpt_block, PAN)
        assert zpk_pin(g0.pin_block, ALPHA["zpk"]["key"]) == PIN

        aes_ksn = "123456789012345600000001"
        aes_block = terminal.pin_block_under_aes_dukpt(AES_BDK, aes_ksn, PIN, PAN)
        z0 = await hsm.translate_pin_aes_dukpt_to_zpk(u(AES_BDK), zpk_a, aes_ksn, aes_block, PAN)
        assert (z0.pin_length, z0.pin_block_format) == (4, "01")
        assert zpk_pin(z0.pin_block, ALPHA["zpk"]["key"]) == PIN
        with pytest.raises(HsmCommandError) as info:  # the next counter's key: not this block
            await hsm.translate_pin_aes_dukpt_to_zpk(
                u(AES_BDK), zpk_a, aes_ksn[:-1] + "2", aes_block, PAN
            )
        assert (info.value.command, info.value.error_code) == ("Z0", "20")

        pvk = ALPHA["pvk"]["key"]
        pvv = pinverify.visa_pvv(bytes.fromhex(pvk), PAN, PIN)
        assert await hsm.verify_pin_pvv(zpk_a, u(pvk), ca.pin_block, PAN, pvv)
        assert not await hsm.verify_pin_pvv(zpk_a, u(pvk), ca.pin_block, PAN, "0000")

        data = pinverify.ibm3624_validation_data("0000000N", PAN)
        offset = pinverify.ibm3624_offset(bytes.fromhex(pvk), data, "0123456789012345", PIN)
        assert await hsm.verify_pin_ibm_offset(
            zpk_a, u(pvk), ca.pin_block, PAN, offset, "0000000NFFFF"
        )
        assert await hsm.verify_pin_ibm_offset(
            u(TPK), u(pvk), tpk_block, PAN, offset, "0000000NFFFF", under="tpk"
        )

        cvk = u(ALPHA["cvk"]["key"])
        cvv = await hsm.generate_cvv(cvk, PAN, "2812", "101")
        assert await hsm.verify_cvv(cvk, PAN, "2812", "101", cvv)

        message = b"0200" + bytes(20)
        mac = await hsm.generate_mac(u(TAK), message)
        assert mac == terminal.retail_mac(TAK, message)
        assert await hsm.verify_mac(u(TAK), message, mac)
        assert not await hsm.verify_mac(u(TAK), message + b"x", mac)
        assert not await hsm.verify_mac(u(TAK), message, mac[:4])
        cmac = await hsm.generate_mac(u(TAK), message, algorithm="cmac")
        assert await hsm.verify_mac(u(TAK), message, cmac, algorithm="cmac")

        imk = BETA["imk_ac"]["key"]
        pan, atc, txn = "5413330000000019", b"\x00\x09", bytes(range(37))
        arqc = terminal.compute_arqc(imk, pan, "001", atc, txn)
        arpc = await hsm.verify_arqc_generate_arpc(u(imk), pan, "001", atc, txn, arqc)
        sk = emv.derive_session_key(emv.derive_icc_master_key(bytes.fromhex(imk), pan, "01"), atc)
        assert arpc == emv.generate_arpc_method_1(sk, arqc, b"00")
        assert await hsm.verify_arqc(u(imk), pan, "01", atc, txn, arqc)
        assert await hsm.verify_arqc_generate_arpc(u(imk), pan, "01", atc, txn + b"!", arqc) is None

        with pytest.raises(HsmCommandError) as info:
            await hsm.translate_pin_tpk_to_zpk(zpk_a, zpk_a, tpk_block, PAN)
        assert info.value.error_code == "20"
        stats = hsm.statistics()
        assert stats.by_command["CA"] == 2
        assert stats.by_error_code["20"] == 2  # Z0 with the wrong KSN, CA with the wrong key
        assert stats.answered == stats.requests
        assert stats.latency_max_ms >= stats.latency_p50_ms > 0


async def test_pin_format_arguments_through_the_client() -> None:
    """CA/G0/Z0 to ISO format 1 (05) with one PAN, CC 05 -> 01 with another (a token's PIN)."""
    token = "4895370000000015"
    zpk_hex = ALPHA["zpk"]["key"]
    zpk = u(zpk_hex)
    expected = pinblock.encrypt_pin_block(bytes.fromhex(zpk_hex), "01", PIN, PAN)
    async with running_server() as server, HsmClient([("127.0.0.1", server.port or 0)]) as hsm:
        tpk_block = terminal.pin_block_under_tpk(TPK, PIN, token)
        ca = await hsm.translate_pin_tpk_to_zpk(
            u(TPK), zpk, tpk_block, token, dst_format=proto.FORMAT_ISO1
        )
        ksn = "FFFF9876543210E00002"
        dukpt_block = terminal.pin_block_under_dukpt(BDK, ksn, PIN, token)
        g0 = await hsm.translate_pin_dukpt_to_zpk(
            u(BDK), zpk, ksn, dukpt_block, token, dst_format=proto.FORMAT_ISO1
        )
        aes_ksn = "123456789012345600000002"
        aes_block = terminal.pin_block_under_aes_dukpt(AES_BDK, aes_ksn, PIN, token)
        z0 = await hsm.translate_pin_aes_dukpt_to_zpk(
            u(AES_BDK), zpk, aes_ksn, aes_block, token, dst_format=proto.FORMAT_ISO1
        )
        for first in (ca, g0, z0):
            assert (first.pin_length, first.pin_block_format) == (4, "05")
            cc = await hsm.translate_pin_zpk_to_zpk(
                zpk,
                zpk,
                first.pin_block,
                PAN,
                src_format=proto.FORMAT_ISO1,
                dst_format=proto.FORMAT_ISO0,
            )
            assert (cc.pin_block_format, cc.pin_block) == ("01", expected)
        with pytest.raises(HsmCommandError) as info:  # a format 1 block read as format 0
            await hsm.translate_pin_zpk_to_zpk(zpk, zpk, ca.pin_block, PAN)
        assert (info.value.command, info.value.error_code) == ("CC", "20")


async def test_pipelined_concurrent_requests_with_histogram() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("hsm_latency_seconds", "HSM latency", ["command"], registry=registry)
    tpk, zpk = u(TPK), u(ALPHA["zpk"]["key"])
    pins = [f"{i:04d}" for i in range(300)]
    results: dict[str, bytes] = {}
    async with (
        running_server() as server,
        HsmClient([f"127.0.0.1:{server.port}"], connections=2, histogram=histogram) as hsm,
    ):

        async def one(pin: str) -> None:
            block = terminal.pin_block_under_tpk(TPK, pin, PAN)
            results[pin] = (await hsm.translate_pin_tpk_to_zpk(tpk, zpk, block, PAN)).pin_block

        async with anyio.create_task_group() as tg:
            for pin in pins:
                tg.start_soon(one, pin)
        stats = hsm.statistics()
        assert stats.connections == 2
        assert stats.connects == 2
        assert server.statistics().frames == 300
    assert {zpk_pin(b, ALPHA["zpk"]["key"]) for b in results.values()} == set(pins)
    assert all(zpk_pin(results[p], ALPHA["zpk"]["key"]) == p for p in pins)
    assert registry.get_sample_value("hsm_latency_seconds_count", {"command": "CA"}) == 300


async def test_answers_out_of_order_are_matched_by_header() -> None:
    core = HsmCore(LMK_HEX)

    async def reversing(stream: anyio.abc.SocketStream) -> None:
        framer = Framer()
        frames: list[bytes] = []
        while len(frames) < 3:
            framer.feed(await stream.receive())
            while (frame := framer.next_frame()) is not None:
                frames.append(frame)
        # First an answer nobody asked for (counted, not fatal), then the answers reversed.
        answers = [encode_frame(core.process(f)) for f in reversed(frames)]
        await stream.send(encode_frame(b"ZZZZND00") + b"".join(answers))
        await anyio.sleep_forever()

    async with fake_peer(reversing) as port, HsmClient([("127.0.0.1", port)], connections=1) as hsm:
        cvk = u(ALPHA["cvk"]["key"])
        got: dict[str, str] = {}

        async def cvv(exp: str) -> None:
            got[exp] = await hsm.generate_cvv(cvk, PAN, exp, "101")

        async with anyio.create_task_group() as tg:
            for exp in ("2812", "2901", "3002"):
                tg.start_soon(cvv, exp)
        clear = bytes.fromhex(ALPHA["cvk"]["key"])
        assert got == {e: generate_cvv(clear, PAN, e, "101") for e in got}
        assert hsm.statistics().unmatched_responses == 1


async def test_failover_when_first_endpoint_is_down() -> None:
    dead = closed_port()
    async with (
        running_server() as server,
        HsmClient([f"127.0.0.1:{dead}", f"127.0.0.1:{server.port}"], timeout=2.0) as hsm,
    ):
        assert (await hsm.diagnostics()).firmware == "0007-E000"
        assert (await hsm.diagnostics()).firmware == "0007-E000"
        stats = hsm.statistics()
        assert stats.connect_failures >= 1
        assert stats.failovers == 1
        assert stats.active_endpoint == f"127.0.0.1:{server.port}"


async def test_failover_on_timeout_and_unavailable_when_all_fail() -> None:
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async for _ in stream:  # read and never answer
            pass

    async with fake_peer(silent) as mute, running_server() as server:
        async with HsmClient(
            [("127.0.0.1", mute), ("127.0.0.1", server.port or 0)], timeout=0.3
        ) as hsm:
            assert (await hsm.diagnostics()).lmk_check_value.startswith("666EA8")
            stats = hsm.statistics()
            assert stats.timeouts == 1
            assert stats.failovers == 1
            assert stats.active_endpoint == f"127.0.0.1:{server.port}"
        async with HsmClient([("127.0.0.1", mute)], timeout=0.2) as alone:
            with pytest.raises(HsmUnavailableError):
                await alone.diagnostics()
            assert alone.statistics().timeouts == 1
    async with HsmClient([("127.0.0.1", closed_port())], connect_timeout=0.5) as nowhere:
        with pytest.raises(HsmUnavailableError):
            await nowhere.diagnostics()


async def test_connection_lost_under_a_request_is_retried_on_a_new_connection() -> None:
    core = HsmCore(LMK_HEX)
    accepted = 0

    async def first_drops(stream: anyio.abc.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        framer = Framer()
        if accepted == 1:
            await stream.receive()  # the request arrives; the connection dies under it
            return
        async for data in stream:
            framer.feed(data)
            while (frame := framer.next_frame()) is not None:
                await stream.send(encode_frame(core.process(frame)))

    async with (
        fake_peer(first_drops) as port,
        HsmClient([("127.0.0.1", port)], connections=1) as hsm,
    ):
        assert (await hsm.diagnostics()).lmk_check_value.startswith("666EA8")
        stats = hsm.statistics()
        assert stats.connects == 2
        assert stats.timeouts == 0
        assert stats.in_flight == 0


async def test_timeouts_of_pipelined_requests_and_late_answers() -> None:
    core = HsmCore(LMK_HEX)

    async def late(stream: anyio.abc.SocketStream) -> None:
        framer = Framer()
        frames: list[bytes] = []
        while len(frames) < 3:
            framer.feed(await stream.receive())
            while (frame := framer.next_frame()) is not None:
                frames.append(frame)
        await anyio.sleep(0.4)  # after the client's timeout: unmatched, counted, not fatal
        await stream.send(b"".join(encode_frame(core.process(f)) for f in frames))
        async for data in stream:
            framer.feed(data)
            while (frame := framer.next_frame()) is not None:
                await stream.send(encode_frame(core.process(frame)))

    async with (
        fake_peer(late) as port,
        HsmClient([("127.0.0.1", port)], connections=1, timeout=0.2) as hsm,
    ):
        failed = 0

        async def one() -> None:
            nonlocal failed
            with pytest.raises(HsmUnavailableError):
                await hsm.diagnostics()
            failed += 1

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert failed == 3
        assert 0.15 < anyio.current_time() - started < 1.5  # one timer, not one per command
        assert hsm.statistics().timeouts == 3
        assert hsm.statistics().in_flight == 0
        await anyio.sleep(0.4)
        assert hsm.statistics().unmatched_responses == 3
        # The connection stays usable (one endpoint: never marked down for a timeout).
        assert (await hsm.diagnostics()).firmware == "0007-E000"


async def test_a_cancelled_caller_leaves_nothing_in_flight() -> None:
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async for _ in stream:
            pass

    async with fake_peer(silent) as mute, HsmClient([("127.0.0.1", mute)], timeout=5) as hsm:
        with anyio.move_on_after(0.1) as scope:
            await hsm.diagnostics()
        assert scope.cancelled_caught
        stats = hsm.statistics()
        assert stats.in_flight == 0
        assert stats.timeouts == 0
        assert stats.connections == 2


async def test_run_inside_a_task_group() -> None:
    async with running_server() as first:
        port = first.port or 0
        hsm = HsmClient([("127.0.0.1", port)])
        async with anyio.create_task_group() as tg:
            await tg.start(hsm.run)
            await hsm.diagnostics()
            assert hsm.statistics().connections == 2
            tg.cancel_scope.cancel()
    with pytest.raises(HsmUnavailableError):
        await hsm.diagnostics()  # not running any more


async def test_tls_with_client_allow_list(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, ["gateway", "intruder"])
    tls = TlsConfig(
        cert_file=str(pki["server.crt"]),
        key_file=str(pki["server.key"]),
        ca_file=str(pki["ca"]),
        allowed_clients=("gateway",),
    )

    def client_ctx(name: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        ctx.load_cert_chain(str(pki[f"{name}.crt"]), str(pki[f"{name}.key"]))
        return ctx

    async with running_server(tls=tls) as server:
        endpoint = HsmEndpoint("127.0.0.1", server.port or 0)
        async with HsmClient([endpoint], ssl_context=client_ctx("gateway")) as hsm:
            assert (await hsm.diagnostics()).lmk_check_value.startswith("666EA8")
        async with HsmClient([endpoint], ssl_context=client_ctx("intruder"), timeout=2) as bad:
            with pytest.raises(HsmUnavailableError):
                await bad.diagnostics()
        assert server.statistics().connections_refused >= 1


def test_endpoint_parsing() -> None:
    assert HsmEndpoint.parse("127.0.0.1:1500") == HsmEndpoint("127.0.0.1", 1500)
    assert HsmEndpoint.parse("[::1]:1500") == HsmEndpoint("::1", 1500)
    with pytest.raises(ValueError, match="host:port"):
        HsmEndpoint.parse("localhost")
    with pytest.raises(ValueError, match="endpoint"):
        HsmClient([])


async def test_not_running_is_an_error() -> None:
    with pytest.raises(HsmUnavailableError):
        await HsmClient(["127.0.0.1:1"]).diagnostics()
    assert proto.response_code("CA") == "CB"


async def test_key_block_exchange_through_the_client() -> None:
    """A0 with export, A6 and A8 in key-block form over a real socket; refusals are
    HsmCommandError with payShield's key-block codes (A4 tampered, AA not exportable)."""
    async with running_server() as server, HsmClient([("127.0.0.1", server.port or 0)]) as hsm:
        zmk, _, _ = await hsm.generate_key_block("K0", mode_of_use="B")
        zpk, kcv, under_zmk = await hsm.generate_key_block("P0", zmk=zmk)
        assert zpk.startswith("SD")
        assert under_zmk is not None
        assert under_zmk.startswith("SB")
        assert await hsm.key_check_value(zpk) == kcv
        imported, imported_kcv = await hsm.import_key(zmk, under_zmk, key_type="001")
        assert imported_kcv == kcv
        exported, exported_kcv = await hsm.export_key(zmk, zpk)
        assert exported_kcv == kcv
        assert exported.startswith("SB")
        tampered = under_zmk[:20] + ("0" if under_zmk[20] != "0" else "1") + under_zmk[21:]
        with pytest.raises(HsmCommandError) as info:
            await hsm.import_key(zmk, tampered)
        assert info.value.error_code == "A4"
        with pytest.raises(HsmCommandError) as info:
            await hsm.export_key(zmk, imported)  # received keys are not exportable again
        assert info.value.error_code == "AA"
        with pytest.raises(HsmCommandError) as info:
            await hsm.generate_mac(imported, b"data")  # a PIN key computes no MAC
        assert info.value.error_code == "A6"
