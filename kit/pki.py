"""Demo PKI: a private CA and the certificates of every process, made with ``cryptography``.

Test material only: generated into a git-ignored directory, never committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "ca"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "payswitch demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / f"{CA_NAME}.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (directory / f"{CA_NAME}.key").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _make_ca(directory: Path, now: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("payswitch demo CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / f"{CA_NAME}.key", key)
    (directory / f"{CA_NAME}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _make_leaf(directory: Path, name: str, now: dt.datetime) -> None:
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName(name),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(directory / f"{name}.key", key)
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(directory: Path, names: Iterable[str]) -> Path:
    """Create the CA and a certificate for each name unless they already exist."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    if not (directory / f"{CA_NAME}.pem").exists():
        _make_ca(directory, now)
    for name in names:
        if not (directory / f"{name}.pem").exists():
            _make_leaf(directory, name, now)
    return directory


def not_after(directory: Path, name: str) -> dt.datetime:
    """When ``name``'s certificate expires (UTC): exported so operators see it coming."""
    cert = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
    return cert.not_valid_after_utc


AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites allowed: forward secrecy and AEAD only (CBC suites have a history of padding
oracles, Lucky 13). TLS 1.3 suites are AEAD by definition and not affected by this list."""


def policy_context(purpose: ssl.Purpose, cafile: Path | str | None = None) -> ssl.SSLContext:
    """A TLS context with the project's policy: TLS 1.2 minimum, AEAD ciphers only. Every TLS
    context of the project (terminals, issuer links, HSM, both sides) starts from here."""
    ctx = ssl.create_default_context(purpose, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(AEAD_CIPHERS)
    return ctx


def server_context(directory: Path, name: str, *, require_client_cert: bool) -> ssl.SSLContext:
    ctx = policy_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
    if require_client_cert:
        ctx.load_verify_locations(directory / f"{CA_NAME}.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(directory: Path, name: str | None) -> ssl.SSLContext:
    """Verifies the server against the demo CA; presents ``name``'s certificate (mutual TLS)."""
    ctx = policy_context(ssl.Purpose.SERVER_AUTH, directory / f"{CA_NAME}.pem")
    if name is not None:
        ctx.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
    return ctx


def certificate_identity(der: bytes) -> tuple[str | None, str]:
    """(subject CN or None, ``sha256:`` + upper-case hex fingerprint) of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else None
    return cn, "sha256:" + hashlib.sha256(der).hexdigest().upper()


def client_allowed(allowed: tuple[str, ...], der: bytes | None) -> bool:
    """True when the allow-list is empty or names the certificate's CN or fingerprint."""
    if not allowed:
        return True
    if der is None:
        return False
    cn, fingerprint = certificate_identity(der)
    wanted = {a.replace(":", "").upper() if a.lower().startswith("sha256") else a for a in allowed}
    return cn in wanted or fingerprint.replace(":", "").upper() in wanted
