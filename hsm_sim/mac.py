"""Message authentication codes.

* ISO 9797-1 MAC algorithm 3 ("retail MAC", ANSI X9.19) with a double-length TDES key:
  single-DES CBC-MAC under K1, then the last block decrypted under K2 and encrypted under K1.
  Padding method 1 (zeros, none when already a whole number of blocks; an empty message is one
  zero block) for terminal messages as SPEC fixes, padding method 2 (0x80 then zeros) for EMV.
* AES-CMAC (NIST SP 800-38B / RFC 4493), via ``cryptography``.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from hsm_sim.errors import InvalidInputError, KeyLengthError
from hsm_sim.tdes import des_decrypt, des_encrypt, tdes_cbc_last_block


def pad_method_1(data: bytes, block: int = 8) -> bytes:
    """ISO 9797-1 padding method 1: zeros up to a block boundary (one zero block if empty)."""
    if not data:
        return bytes(block)
    return data + bytes(-len(data) % block)


def pad_method_2(data: bytes, block: int = 8) -> bytes:
    """ISO 9797-1 padding method 2: 0x80 then zeros up to a block boundary."""
    data += b"\x80"
    return data + bytes(-len(data) % block)


def retail_mac(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ISO 9797-1 MAC algorithm 3 (8 bytes) with padding method 1 or 2."""
    if len(key) != 16:
        raise KeyLengthError("retail MAC needs a double-length key")
    if padding == 1:
        padded = pad_method_1(data)
    elif padding == 2:
        padded = pad_method_2(data)
    else:
        raise InvalidInputError("padding method must be 1 or 2")
    k1, k2 = key[:8], key[8:]
    # CBC-MAC of every block with single DES K1 (TDES-CBC with K1K1K1 is exactly that), then
    # the final output transformation: decrypt under K2, encrypt under K1.
    chain = tdes_cbc_last_block(k1, padded)
    return des_encrypt(k1, des_decrypt(k2, chain))


def verify_retail_mac(key: bytes, data: bytes, mac: bytes, padding: int = 1) -> bool:
    """True when ``mac`` (4 to 8 bytes, left part of the MAC) matches (constant-time)."""
    if not 4 <= len(mac) <= 8:
        raise InvalidInputError("MAC must be 4 to 8 bytes")
    return hmac.compare_digest(retail_mac(key, data, padding)[: len(mac)], mac)


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """The 16-byte AES-CMAC of ``data``."""
    if len(key) not in (16, 24, 32):
        raise KeyLengthError("AES-CMAC needs a 16, 24 or 32 byte key")
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def verify_aes_cmac(key: bytes, data: bytes, mac: bytes) -> bool:
    """True when ``mac`` (8 to 16 bytes, left part of the CMAC) matches (constant-time)."""
    if not 8 <= len(mac) <= 16:
        raise InvalidInputError("CMAC must be 8 to 16 bytes")
    return hmac.compare_digest(aes_cmac(key, data)[: len(mac)], mac)
