"""Payers enrolled for one-time codes (RFC 6238 TOTP: SHA-1, 6 digits, 30-second steps, one
step either side), the enrolment store of the QR API's step-up.

A payer is the card its wallet pays with. Enrolled cards are kept under a keyed hash of the
PAN (never the PAN); synthetic load-test ranges by prefix. :meth:`OtpEnrolment.enrolled` gives
a reference a challenge can hold instead of the card or the secret; secrets stay in here and
are never in a ``repr``, a log line or an error.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

import pyotp

from kit.conf import ConfigError

Keyed = Callable[[bytes], bytes]
"""The keyed hash of a card number (the QR store's: ``PanCipher.lookup_key_of``)."""


class OtpEnrolment:
    def __init__(
        self,
        keyed: Keyed,
        payers: Mapping[str, str] | None = None,
        ranges: Mapping[str, str] | None = None,
    ) -> None:
        """``payers``: PAN -> base32 secret (hashed here, the PAN not kept); ``ranges``: PAN
        prefix -> secret shared by the range's synthetic cards."""
        self._keyed = keyed
        self._totp: dict[str, pyotp.TOTP] = {}
        for pan, secret in (payers or {}).items():
            self._totp[self._ref(pan)] = _totp(secret)
        # longest prefix first
        for prefix in sorted(ranges or {}, key=len, reverse=True):
            self._totp[f"range:{prefix}"] = _totp((ranges or {})[prefix])
        self._prefixes = tuple(sorted(ranges or {}, key=len, reverse=True))

    @classmethod
    def load(cls, path: Path, keyed: Keyed) -> OtpEnrolment:
        """From a TOML file; :class:`ConfigError` names the file and entry, never a value."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"{path}: cannot read the OTP enrolment ({type(exc).__name__})"
            ) from None
        payers: dict[str, str] = {}
        ranges: dict[str, str] = {}
        for table, key, into in (("payers", "pan", payers), ("synthetic", "prefix", ranges)):
            for i, entry in enumerate(data.get(table, [])):
                who, secret = entry.get(key), entry.get("totp_secret")
                if not isinstance(who, str) or not who.isdigit() or not isinstance(secret, str):
                    raise ConfigError(f"{path}: {table}[{i}] needs {key} (digits), totp_secret")
                into[who] = secret
        try:
            return cls(keyed, payers, ranges)
        except ValueError:
            raise ConfigError(f"{path}: a totp_secret is not base32") from None

    def _ref(self, pan: str) -> str:
        return self._keyed(pan.encode()).hex()

    def __len__(self) -> int:
        return len(self._totp)

    def __repr__(self) -> str:
        return f"OtpEnrolment(<{len(self._totp)} enrolments>)"

    def enrolled(self, pan: str) -> str | None:
        """The payer's enrolment reference (no card number, no secret), None if not enrolled."""
        ref = self._ref(pan)
        if ref in self._totp:
            return ref
        for prefix in self._prefixes:
            if pan.startswith(prefix):
                return f"range:{prefix}"
        return None

    def verify(self, ref: str, code: str, at: dt.datetime) -> bool:
        """The code is the enrolment's at ``at`` or one 30-second step either side."""
        totp = self._totp.get(ref)
        return totp is not None and totp.verify(code, for_time=at, valid_window=1)


def _totp(secret: str) -> pyotp.TOTP:
    totp = pyotp.TOTP(secret)  # SHA-1, 6 digits, 30 s: RFC 6238's and the apps' defaults
    totp.byte_secret()  # a secret that is not base32 fails here, at load, not at a payment
    return totp
