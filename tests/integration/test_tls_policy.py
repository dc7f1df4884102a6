"""TLS policy as tested fact (issue 15 item 4), on every TLS port the project serves: the
terminal TLS listener, an issuer simulator (the issuer links' server side) and the HSM
simulator's TLS listener. (The QR and admin APIs serve plain HTTP only.)

A client forcing TLS 1.1, or offering only CBC ciphers, is refused in the handshake by the
server: the client reads the server's alert (a local failure would prove nothing). Where mutual
TLS is configured, a client without a certificate, or with one of another CA (same name), is
refused before a byte it sends is read. A modern client is served on each port (the control).
The clients are blocking sockets in a worker thread: the servers run on the backend under test.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from hsm_sim.config import TlsConfig
from kit import pki
from protocols.framing import encode_frame
from protocols.message import Message
from tests.helpers import (
    CODEC,
    LINK_CLIENT,
    InProcessHsm,
    demo_dataset,
    issuer_server,
    running_stack,
)

pytestmark = pytest.mark.anyio

Tweak = Callable[[ssl.SSLContext], None]

# The server's alerts, as the client's OpenSSL names them. A server may close before its alert
# is out (asyncio's native TLS does): the client then reads an EOF, in the handshake or, for a
# TLS 1.3 client certificate refused after the client's side of the handshake ended, after it.
OLD_VERSION = "TLSV1_ALERT_PROTOCOL_VERSION"
NO_SHARED_CIPHER = "SSLV3_ALERT_HANDSHAKE_FAILURE"
NO_CERTIFICATE = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
UNKNOWN_CA = "TLSV1_ALERT_UNKNOWN_CA"
EOF_IN_HANDSHAKE = "UNEXPECTED_EOF_WHILE_READING"


def tls_1_1(ctx: ssl.SSLContext) -> None:
    with warnings.catch_warnings():  # deprecated versions: which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")


def cbc_only(ctx: ssl.SSLContext) -> None:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 has AEAD suites only
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA")


def client(ca_dir: Path, cert_dir: Path | None, tweak: Tweak | None = None) -> ssl.SSLContext:
    """Trusts ``ca_dir``'s CA; presents ``switch``'s certificate from ``cert_dir`` (none: no
    certificate)."""
    ctx = pki.client_context(ca_dir, None)
    if cert_dir is not None:
        ctx.load_cert_chain(cert_dir / f"{LINK_CLIENT}.pem", cert_dir / f"{LINK_CLIENT}.key")
    if tweak is not None:
        tweak(ctx)
    return ctx


def _exchange(port: int, ctx: ssl.SSLContext, hostname: str, frame: bytes) -> bytes | str:
    """The server's first answer bytes to ``frame``, or why there is none: the SSL error's
    reason, or ``closed``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                tls.sendall(frame)
                return tls.recv(4096) or "closed"
        except ssl.SSLError as exc:
            return str(exc.reason)
        except (ConnectionResetError, BrokenPipeError):
            return "closed"


async def exchanges(
    port: int, hostname: str, frame: bytes, clients: dict[str, ssl.SSLContext]
) -> dict[str, bytes | str]:
    return {
        name: await anyio.to_thread.run_sync(_exchange, port, ctx, hostname, frame)
        for name, ctx in clients.items()
    }


def answered(result: bytes | str) -> bool:
    return isinstance(result, bytes) and len(result) > 2


def refused(got: dict[str, bytes | str], expected: dict[str, str]) -> bool:
    """Each client got its expected alert, or the server closed on it."""
    return got.keys() == expected.keys() and all(
        got[name] in (alert, EOF_IN_HANDSHAKE, "closed") for name, alert in expected.items()
    )


MUTUAL_TLS_REFUSALS = {
    "tls1.1": OLD_VERSION,
    "cbc": NO_SHARED_CIPHER,
    "no certificate": NO_CERTIFICATE,
    "another CA": UNKNOWN_CA,
}


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA with a certificate named like the gateway's link client."""
    return pki.ensure_pki(tmp_path_factory.mktemp("other-ca"), [LINK_CLIENT])


async def test_terminal_tls_port(pki_dir: Path) -> None:
    echo = Message("0800", {"7": "1127101500", "11": "000001", "70": "301"})
    async with running_stack(pki_dir, hsm=False) as stack:
        got = await exchanges(
            stack.gateway.tls_port or 0,
            "localhost",
            encode_frame(CODEC.encode(echo)),
            {
                "modern": client(pki_dir, None),
                "tls1.1": client(pki_dir, None, tls_1_1),
                "cbc": client(pki_dir, None, cbc_only),
            },
        )
    assert answered(got.pop("modern"))
    assert refused(got, {"tls1.1": OLD_VERSION, "cbc": NO_SHARED_CIPHER}), got


async def test_issuer_link_port(pki_dir: Path, other_ca: Path) -> None:
    sign_on = Message("0800", {"7": "1127101500", "11": "000001", "70": "001"})
    server = issuer_server("beta", demo_dataset(), pki_dir)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            got = await exchanges(
                server.port,
                "issuer-beta",
                encode_frame(CODEC.encode(sign_on)),
                {
                    "modern": client(pki_dir, pki_dir),
                    "tls1.1": client(pki_dir, pki_dir, tls_1_1),
                    "cbc": client(pki_dir, pki_dir, cbc_only),
                    "no certificate": client(pki_dir, None),
                    "another CA": client(pki_dir, other_ca),
                },
            )
        finally:
            server.stop()
    assert answered(got.pop("modern"))
    assert refused(got, MUTUAL_TLS_REFUSALS), got
    assert server.received == 1  # the modern client's only


async def test_hsm_tls_port(pki_dir: Path, other_ca: Path) -> None:
    keys = demo_dataset().hsm
    assert keys is not None
    tls = TlsConfig(
        cert_file=str(pki_dir / "hsm.pem"),
        key_file=str(pki_dir / "hsm.key"),
        ca_file=str(pki_dir / "ca.pem"),
        allowed_clients=(LINK_CLIENT,),
    )
    hsm = InProcessHsm(keys.lmk.key, tls)
    async with anyio.create_task_group() as tg:
        port = await hsm.start(tg)
        got = await exchanges(
            port,
            "hsm",
            encode_frame(b"0001NC"),
            {
                "modern": client(pki_dir, pki_dir),
                "tls1.1": client(pki_dir, pki_dir, tls_1_1),
                "cbc": client(pki_dir, pki_dir, cbc_only),
                "no certificate": client(pki_dir, None),
                "another CA": client(pki_dir, other_ca),
            },
        )
        tg.cancel_scope.cancel()
    assert answered(got.pop("modern"))
    assert refused(got, MUTUAL_TLS_REFUSALS), got
    assert hsm.server is not None
    assert hsm.server.statistics().frames == 1  # the modern client's only
