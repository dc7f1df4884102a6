"""hsm_sim's server, configuration and CLI, over real sockets on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import cli
from hsm_sim.config import HsmConfig, HsmConfigError, load_config, parse_config
from hsm_sim.core import HsmCore
from hsm_sim.lmk import kcv_hex
from kit.pki import certificate_identity, client_allowed
from protocols import hsm as proto
from protocols.framing import Framer, encode_frame
from tests.hsm.helpers import LMK_HEX, make_pki, running_server

ROOT = Path(__file__).resolve().parents[2]


async def _exchange(port: int, data: bytes, count: int) -> list[bytes]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        framer = Framer()
        frames: list[bytes] = []
        with anyio.fail_after(5):
            while len(frames) < count:
                framer.feed(await stream.receive())
                while (frame := framer.next_frame()) is not None:
                    frames.append(frame)
        return frames


@pytest.mark.anyio
async def test_garbage_and_valid_frames_pipelined() -> None:
    frames = [
        b"",
        b"junk",
        b"0001QQ",
        b"\xff" * 40,
        proto.encode_request("0009", proto.Diagnostics()),
    ]
    data = b"".join(encode_frame(f) for f in frames if f)
    async with running_server() as server:
        answers = await _exchange(server.port or 0, data, 4)
        assert answers[0] == b"junkZZ15"  # a readable header is echoed even without a command
        assert answers[1] == b"0001QR68"
        assert answers[2] == b"0000ZZ15"
        assert proto.decode_response(answers[3]).body == proto.DiagnosticsResult(
            server.core.lmk.check_value(8), "0007-E000"
        )
        # The connection is still good after the garbage.
        again = await _exchange(server.port or 0, encode_frame(b"0010NC"), 1)
        assert again[0].startswith(b"0010ND00")


@pytest.mark.anyio
async def test_many_concurrent_clients() -> None:
    async with running_server() as server:
        results: list[bytes] = []

        async def client(i: int) -> None:
            header = f"{i:04d}"
            payload = encode_frame(proto.encode_request(header, proto.Diagnostics()))
            answers = await _exchange(server.port or 0, payload * 5, 5)
            results.extend(a[:4] for a in answers)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(client, i)
        assert sorted(results) == sorted(f"{i:04d}".encode() for i in range(40) for _ in range(5))
        assert server.statistics().connections_total == 40


@pytest.mark.anyio
async def test_oversized_frame_and_stalled_partial_frame_close_only_that_connection() -> None:
    async with running_server(max_frame=64, partial_frame_timeout=0.2) as server:
        port = server.port or 0
        async with await anyio.connect_tcp("127.0.0.1", port) as big:
            await big.send((1000).to_bytes(2, "big") + b"x" * 10)
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await big.receive()
        async with await anyio.connect_tcp("127.0.0.1", port) as stalled:
            await stalled.send(b"\x00\x10" + b"0001")
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stalled.receive()
        assert (await _exchange(port, encode_frame(b"0002NC"), 1))[0][:8] == b"0002ND00"


@pytest.mark.anyio
async def test_max_connections() -> None:
    async with running_server(max_connections=1) as server:
        port = server.port or 0
        async with await anyio.connect_tcp("127.0.0.1", port) as first:
            await first.send(encode_frame(b"0001NC"))
            assert (await first.receive())[2:10] == b"0001ND00"
            async with await anyio.connect_tcp("127.0.0.1", port) as second:
                await second.send(encode_frame(b"0002NC"))
                with (
                    anyio.fail_after(5),
                    pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)),
                ):
                    await second.receive()
        assert server.statistics().connections_refused == 1


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=8))
def test_random_frames_always_answered(chunks: list[bytes]) -> None:
    async def main() -> None:
        async with running_server() as server:
            data = b"".join(encode_frame(c) for c in chunks)
            answers = await _exchange(server.port or 0, data, len(chunks))
            assert all(a[6:8].isdigit() for a in answers)

    anyio.run(main)


def test_demo_config_loads() -> None:
    config = load_config(ROOT / "conf" / "demo" / "hsm.toml")
    assert config.port == 1500
    assert config.host == "127.0.0.1"
    assert config.load_lmk().check_value() == "666EA8"
    assert LMK_HEX not in repr(config)


def test_config_errors_name_no_values(tmp_path: Path) -> None:
    with pytest.raises(HsmConfigError) as info:
        parse_config({"lmkk": LMK_HEX})
    assert LMK_HEX not in str(info.value)
    assert "lmkk" in str(info.value)
    with pytest.raises(HsmConfigError):
        HsmConfig().load_lmk()
    with pytest.raises(HsmConfigError):
        HsmConfig(lmk_env="HSM_TEST_LMK").load_lmk({})
    assert (
        HsmConfig(lmk_env="HSM_TEST_LMK").load_lmk({"HSM_TEST_LMK": LMK_HEX}).check_value()
        == "666EA8"
    )
    with pytest.raises(HsmConfigError) as bad:
        HsmConfig(lmk=LMK_HEX[:-1] + "4").load_lmk()
    assert "parity" in str(bad.value)
    (tmp_path / "bad.toml").write_text("port = [", encoding="utf-8")
    with pytest.raises(HsmConfigError):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(HsmConfigError):
        load_config(tmp_path / "missing.toml")
    cfg = parse_config({"lmk": LMK_HEX, "tls": {"cert_file": "a.crt"}}, tmp_path)
    assert cfg.tls is not None
    assert cfg.tls.cert_file == str(tmp_path / "a.crt")


def test_allow_list_by_cn_and_fingerprint(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pki = make_pki(tmp_path, ["gateway"])
    der = x509.load_pem_x509_certificate(pki["gateway.crt"].read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    cn, fingerprint = certificate_identity(der)
    assert cn == "gateway"
    assert client_allowed((), None)
    assert client_allowed(("gateway",), der)
    assert client_allowed((fingerprint.lower(),), der)
    colons = "sha256:" + ":".join(fingerprint[7:][i : i + 2] for i in range(0, 64, 2))
    assert client_allowed((colons,), der)
    assert not client_allowed(("other",), der)
    assert not client_allowed(("gateway",), None)


def test_cli_encrypt_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["encrypt-key", "--lmk", LMK_HEX, "6D61BA0EAED6548F1A86086208A886AB"]) == 0
    key, kcv = capsys.readouterr().out.split()
    assert key.startswith("U")
    assert kcv == "26777F"
    assert cli.main(["encrypt-key", "--lmk", LMK_HEX, "zz"]) == 2


def test_cli_encrypt_key_as_a_key_block(capsys: pytest.CaptureFixture[str]) -> None:
    key = "6D61BA0EAED6548F1A86086208A886AB"
    assert cli.main(["encrypt-key", "--lmk", LMK_HEX, "--block", "p0:d", key]) == 0
    block, kcv = capsys.readouterr().out.split()
    header, clear = HsmCore(LMK_HEX).blocks.unwrap(block)
    assert (header.key_usage, header.mode_of_use, header.exportability) == ("P0", "D", "N")
    assert (clear.hex().upper(), kcv) == (key, kcv_hex(clear))
    assert cli.main(["encrypt-key", "--lmk", LMK_HEX, "--block", "P0:?", key]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cli_run_serves_and_stops_on_sigterm(backend: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hsm_sim.cli",
            "run",
            "--conf",
            str(ROOT / "conf/demo/hsm.toml"),
            "--port",
            "0",
            "--backend",
            backend,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("hsm-sim listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        answers = anyio.run(_exchange, port, encode_frame(b"0001NC"), 1)
        assert answers[0].startswith(b"0001ND00666EA8")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        logs = proc.stderr.read().decode()
        assert "hsm.stopped" in logs
        assert LMK_HEX not in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


async def _closed_by_server(stream: anyio.abc.ByteStream) -> bool:
    with anyio.fail_after(5):
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


@pytest.mark.anyio
async def test_idle_connections_are_closed_and_one_client_cannot_take_every_slot() -> None:
    """Issue 15: idle connections held every slot and locked new clients out. Now a client
    address has at most max_connections_per_client, and a silent connection is closed."""
    config = {"max_connections": 3, "max_connections_per_client": 2, "idle_timeout": 0.3}
    async with running_server(**config) as server:
        port = server.port or 0
        one = await anyio.connect_tcp("127.0.0.1", port)
        two = await anyio.connect_tcp("127.0.0.1", port)
        async with one, two, await anyio.connect_tcp("127.0.0.1", port) as three:
            assert await _closed_by_server(three)  # a third from the same address
            answer = await _exchange_from("127.0.0.2", port, encode_frame(b"0001NC"))
            assert answer[:8] == b"0001ND00"  # another client is served
            assert await _closed_by_server(one)  # idle
            assert await _closed_by_server(two)
        stats = server.statistics()
    assert stats.closed_by_limit == {"max_per_address": 1, "idle": 2}


async def _exchange_from(source: str, port: int, data: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port, local_host=source) as stream:
        await stream.send(data)
        framer = Framer()
        with anyio.fail_after(5):
            while (frame := framer.next_frame()) is None:
                framer.feed(await stream.receive())
        return frame


@pytest.mark.anyio
async def test_plain_tcp_clients_outside_the_allow_list_are_refused() -> None:
    async with running_server(allowed_addresses=("127.0.0.2/32",)) as server:
        port = server.port or 0
        assert (await _exchange_from("127.0.0.2", port, encode_frame(b"0001NC")))[:4] == b"0001"
        async with await anyio.connect_tcp("127.0.0.1", port, local_host="127.0.0.1") as other:
            await other.send(encode_frame(b"0002NC"))
            assert await _closed_by_server(other)
        stats = server.statistics()
    assert (stats.frames, stats.closed_by_limit) == (1, {"address_not_allowed": 1})


def test_plain_tcp_outside_loopback_needs_an_allow_list() -> None:
    with pytest.raises(HsmConfigError, match="allowed_addresses"):
        parse_config({"lmk": LMK_HEX, "host": "0.0.0.0", "allowed_addresses": ["0.0.0.0/0"]})
    assert parse_config({"lmk": LMK_HEX, "host": "0.0.0.0"}).allowed_addresses == (
        "127.0.0.0/8",
        "::1/128",
    )
    with pytest.raises(HsmConfigError, match="allowed_addresses"):
        parse_config({"lmk": LMK_HEX, "allowed_addresses": ["not an address"]})
