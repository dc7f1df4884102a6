"""Payment tokens (NFC wallets): the vault and the pipeline participant that detokenizes.

The vault holds no clear PAN and no clear token. Entries are keyed by HMAC-SHA256 of the token;
the funding PAN is sealed with AES-256-GCM (the lookup key is the associated data, so a sealed
PAN cannot be moved to another entry) and opened only when a transaction uses the token. Both
keys come from one master key by HKDF; the master key comes from the environment (see
:class:`gateway.config.TokenVaultConfig`) or, unset, is random per process: the vault is rebuilt
from the dataset at every start, so nothing sealed outlives the process.

:class:`Detokenize` runs right after the duplicate check: a PAN found in the vault is replaced
by its funding PAN for every later participant (risk, routing, the issuer), while the terminal's
answer echoes the token it sent. A PAN that is not a token goes on unchanged.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.flow.pipeline import BaseParticipant, Context
from kit.conf import ConfigError
from kit.dataset import Token
from kit.logs import get_logger
from protocols.message import Message
from protocols.redact import mask_pan

log = get_logger("gateway.flow.tokens")

_NONCE = 12
# Requests where the token's own status and expiry matter: purchases, cash, pre-auths and
# balance inquiries. Reversals, completions and refunds give money back or settle what was
# already authorised, so a token suspended since then must not block them.
_CHECKED_MTIS = frozenset({"0100", "0200"})
_UNCHECKED_PROCESSING = frozenset({"20"})


class VaultKeyError(ConfigError):
    """The vault key in the environment is not 64 hex characters."""


class PanCipher:
    """AES-256-GCM sealing and HMAC-SHA256 lookup keys for card numbers, from one master key."""

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise VaultKeyError("the vault master key must be 32 bytes (64 hex)")
        okm = HKDF(hashes.SHA256(), 64, salt=None, info=b"payswitch pan vault v1").derive(master)
        self._aead = AESGCM(okm[:32])
        self._mac_key = okm[32:]

    @classmethod
    def from_env(cls, name: str) -> PanCipher:
        """The key in environment variable ``name`` (64 hex), or a random one when unset."""
        value = os.environ.get(name, "").strip() if name else ""
        if not value:
            return cls(secrets.token_bytes(32))
        try:
            master = bytes.fromhex(value)
        except ValueError:
            raise VaultKeyError(f"environment variable {name} is not hex") from None
        return cls(master)

    def __repr__(self) -> str:
        return "PanCipher(<keys hidden>)"

    def lookup_key(self, pan: str) -> bytes:
        """Keyed hash of a card number or token: a dictionary key that reveals nothing."""
        return hmac.digest(self._mac_key, pan.encode("ascii"), "sha256")  # one-shot, in C

    def lookup_key_of(self, data: bytes) -> bytes:
        """:meth:`lookup_key` of any bytes (a request's canonical UTF-8 body, which may hold
        any text): for ASCII the same key as ``lookup_key(text)``, so stored ones still match."""
        return hmac.digest(self._mac_key, data, "sha256")

    def seal(self, pan: str, aad: bytes = b"") -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, pan.encode("ascii"), aad)

    def open(self, sealed: bytes, aad: bytes = b"") -> str:
        """The card number sealed by :meth:`seal`; ``ValueError`` if tampered or misplaced."""
        try:
            clear = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)
        except InvalidTag:
            raise ValueError("sealed card number does not authenticate") from None
        return clear.decode("ascii")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One vault entry: what the switch may know of a token without holding it in clear."""

    sealed_pan: bytes = field(repr=False)
    expiry: str
    """YYMM of the token (not of the funding card)."""
    status: str
    masked_token: str
    masked_pan: str


class TokenVault:
    def __init__(self, cipher: PanCipher, tokens: Iterable[Token] = ()) -> None:
        self.cipher = cipher
        self._records: dict[bytes, TokenRecord] = {}
        # (length, first six digits) of every token: a card number of another shape is not
        # looked up (the keyed hash costs more than the rest of this stage). The first six
        # digits are no more than each record's masked token shows.
        self._shapes: set[tuple[int, str]] = set()
        for token in tokens:
            self.add(token.token, token.pan, expiry=token.expiry, status=token.status)

    def add(self, token: str, pan: str, *, expiry: str, status: str = "active") -> None:
        key = self.cipher.lookup_key(token)
        self._shapes.add((len(token), token[:6]))
        self._records[key] = TokenRecord(
            sealed_pan=self.cipher.seal(pan, key),
            expiry=expiry,
            status=status,
            masked_token=mask_pan(token),
            masked_pan=mask_pan(pan),
        )

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"TokenVault(<{len(self._records)} tokens>)"

    def lookup(self, pan: str) -> TokenRecord | None:
        """The entry when ``pan`` is a token, else ``None``."""
        if (len(pan), pan[:6]) not in self._shapes:
            return None
        return self._records.get(self.cipher.lookup_key(pan))

    def funding_pan(self, token: str, record: TokenRecord) -> str:
        return self.cipher.open(record.sealed_pan, self.cipher.lookup_key(token))


@dataclass(slots=True, repr=False, eq=False)
class DetokenizedMessage(Message):
    """The request as later participants see it (funding PAN), holding what the terminal sent."""

    presented: Message | None = None


def presented(msg: Message) -> Message:
    """The request as the terminal sent it (token in field 2), also once detokenized: what a
    PIN block was formed with and a MAC computed over."""
    if isinstance(msg, DetokenizedMessage) and msg.presented is not None:
        return msg.presented
    return msg


class Detokenize(BaseParticipant):
    """Token -> funding PAN before risk and routing; the answer echoes the token."""

    name = "detokenize"

    def __init__(self, vault: TokenVault) -> None:
        self.vault = vault

    async def prepare(self, ctx: Context) -> str | None:
        return self.prepare_now(ctx)

    def prepare_now(self, ctx: Context) -> str | None:
        token = ctx.pan
        if not token:
            return None
        record = self.vault.lookup(token)
        if record is None:
            return None
        req = ctx.request
        fields = req.fields
        if req.mti in _CHECKED_MTIS and fields.get("3", "")[:2] not in _UNCHECKED_PROCESSING:
            if record.status != "active":
                return ctx.decline("14", f"token {record.status}")
            if record.expiry < ctx.now.strftime("%y%m"):
                return ctx.decline("54", "token expired")
            if ctx.expiry is not None and ctx.expiry != record.expiry:
                return ctx.decline("54", "expiry date does not match the token")
        try:
            funding = self.vault.funding_pan(token, record)
        except ValueError:
            log.error("token_vault_corrupt", token=record.masked_token)
            return ctx.decline("96", "token vault entry does not open")
        forwarded = dict(fields)
        forwarded.pop("35", None)  # the token's track data; the issuer gets the funding PAN
        forwarded.pop("14", None)  # the token's expiry, not the card's: the issuer keeps its own
        forwarded["2"] = funding
        ctx.request = DetokenizedMessage(req.mti, forwarded, presented=req)
        ctx.pan = funding
        ctx.expiry = None
        if ctx.entry is not None:
            ctx.entry.pan = funding  # reversals find the funding card (risk gives back to it)
        log.info(
            "detokenized",
            rrn=ctx.rrn,
            token=record.masked_token,
            funding_pan=record.masked_pan,
        )
        return None

    async def commit(self, ctx: Context) -> None:
        self._restore(ctx)

    async def abort(self, ctx: Context) -> None:
        self._restore(ctx)

    def commit_now(self, ctx: Context) -> None:
        self._restore(ctx)

    def abort_now(self, ctx: Context) -> None:
        self._restore(ctx)

    @staticmethod
    def _restore(ctx: Context) -> None:
        """Put back the request as sent, and make the answer echo the token (idempotent)."""
        req = ctx.request
        if not isinstance(req, DetokenizedMessage) or req.presented is None:
            return
        presented = req.presented
        ctx.request = presented
        resp = ctx.response
        if resp is not None:
            resp.fields.pop("2", None)
            if "2" in presented.fields:
                resp.fields["2"] = presented.fields["2"]
