"""Block-cipher primitives: TDES (always as a 24-byte K1K2K1 key) and AES, on `cryptography`.

TDES goes through ``cryptography.hazmat.decrepit`` so nothing here depends on the deprecated
``primitives.ciphers.algorithms.TripleDES`` path (psec and pyemv still use it; they serve as
independent cross-checks in the tests, not on the hot path). Single DES is TDES with K1K1K1.
"""

from __future__ import annotations

import threading
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from hsm_sim.errors import InvalidInputError, KeyLengthError

ZERO_BLOCK = bytes(8)


def expand_tdes_key(key: bytes) -> bytes:
    """8 -> K1K1K1, 16 -> K1K2K1, 24 unchanged; anything else is a KeyLengthError."""
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return key
    if len(key) == 8:
        return key * 3
    raise KeyLengthError("DES key must be 8, 16 or 24 bytes")


# Per-thread cache of live ECB contexts per key. ECB has no chaining state, so one encryptor and
# one decryptor per key can serve every later call through update() (whole blocks in, the same
# blocks out, never finalized): about 1 us per call instead of ~8 us to build a context.
# cryptography's contexts are not thread-safe, hence one cache per thread. Clear keys in this
# process memory are what an HSM keeps in its secure memory anyway.
_local = threading.local()
_MAX_CACHED_KEYS = 2048


def _ecb_contexts(key24: bytes) -> tuple[CipherContext, CipherContext]:
    cache: dict[bytes, tuple[CipherContext, CipherContext]] | None = getattr(_local, "tdes", None)
    if cache is None:
        cache = _local.tdes = {}
    contexts = cache.get(key24)
    if contexts is None:
        if len(cache) >= _MAX_CACHED_KEYS:
            cache.clear()
        cipher = Cipher(TripleDES(key24), modes.ECB())  # noqa: S305 - single-block algorithms
        contexts = cache[key24] = (cipher.encryptor(), cipher.decryptor())
    return contexts


def _check_blocks(data: bytes, size: int) -> None:
    if len(data) % size:
        raise InvalidInputError(f"data length must be a multiple of {size} bytes")


def tdes_ecb_encrypt(key: bytes, data: bytes, *, cache: bool = True) -> bytes:
    """TDES-ECB encrypt ``data`` (a multiple of 8 bytes) with an 8/16/24-byte key.

    ``cache=False`` for one-off keys (DUKPT derivation) so they do not crowd out working keys.
    """
    _check_blocks(data, 8)
    key24 = expand_tdes_key(key)
    if not cache:
        enc = Cipher(TripleDES(key24), modes.ECB()).encryptor()  # noqa: S305
        return enc.update(data) + enc.finalize()
    return _ecb_contexts(key24)[0].update(data)


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB decrypt ``data`` (a multiple of 8 bytes) with an 8/16/24-byte key."""
    _check_blocks(data, 8)
    return _ecb_contexts(expand_tdes_key(key))[1].update(data)


def des_encrypt(key8: bytes, block: bytes, *, cache: bool = True) -> bytes:
    """Single DES encrypt of one block (TDES with K1K1K1)."""
    return tdes_ecb_encrypt(key8[:8], block, cache=cache)


def des_decrypt(key8: bytes, block: bytes) -> bytes:
    """Single DES decrypt of one block (TDES with K1K1K1)."""
    return tdes_ecb_decrypt(key8[:8], block)


def tdes_cbc_last_block(key: bytes, data: bytes) -> bytes:
    """The last block of TDES-CBC encrypting ``data`` (whole blocks, at least one) from a zero
    IV: the chaining value of a CBC-MAC.

    One encryptor per key and thread lives on (as the ECB contexts above): a CBC context
    carries on from its last output block, so XOR-ing that block into the first input block
    makes each call start from a zero IV again. ~2 us for a 200-byte message instead of ~8 us
    to build a context.
    """
    if not data:
        raise InvalidInputError("CBC-MAC of no data")
    _check_blocks(data, 8)
    key24 = expand_tdes_key(key)
    cache: dict[bytes, list[Any]] | None = getattr(_local, "cbc", None)
    if cache is None:
        cache = _local.cbc = {}
    entry = cache.get(key24)
    if entry is None:
        if len(cache) >= _MAX_CACHED_KEYS:
            cache.clear()
        cipher = Cipher(TripleDES(key24), modes.CBC(ZERO_BLOCK))
        entry = cache[key24] = [cipher.encryptor(), 0]
    context, chain = entry
    first = (int.from_bytes(data[:8], "big") ^ chain).to_bytes(8, "big")
    last: bytes = context.update(first + data[8:])[-8:]
    entry[1] = int.from_bytes(last, "big")
    return last


def tdes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """TDES-CBC encrypt ``data`` (a multiple of 8 bytes)."""
    _check_blocks(data, 8)
    enc = Cipher(TripleDES(expand_tdes_key(key)), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB encrypt ``data`` (a multiple of 16 bytes)."""
    _check_aes_key(key)
    _check_blocks(data, 16)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    return enc.update(data) + enc.finalize()


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB decrypt ``data`` (a multiple of 16 bytes)."""
    _check_aes_key(key)
    _check_blocks(data, 16)
    dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305
    return dec.update(data) + dec.finalize()


def _check_aes_key(key: bytes) -> None:
    if len(key) not in (16, 24, 32):
        raise KeyLengthError("AES key must be 16, 24 or 32 bytes")


def xor(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of two equally long byte strings."""
    if len(a) != len(b):
        raise InvalidInputError("xor operands differ in length")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# Byte-translation tables keep parity work in C: even-parity bytes map to 0 / get bit 0 flipped.
_ODD_FLAGS = bytes(b.bit_count() & 1 for b in range(256))
_TO_ODD = bytes(b if b.bit_count() & 1 else b ^ 1 for b in range(256))


def has_odd_parity(key: bytes) -> bool:
    """True when every byte of the DES key has an odd number of set bits."""
    return 0 not in key.translate(_ODD_FLAGS)


def adjust_odd_parity(key: bytes) -> bytes:
    """Set each byte's low bit so the byte has odd parity."""
    return key.translate(_TO_ODD)


def key_check_value(key: bytes, length: int = 3) -> bytes:
    """KCV: the first ``length`` bytes of TDES-encrypting 8 zero bytes (AES: 16 zero bytes)."""
    return tdes_ecb_encrypt(key, ZERO_BLOCK)[:length]
