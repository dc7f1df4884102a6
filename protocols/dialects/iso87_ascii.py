"""ISO 8583:1987, character form: the terminal dialect of SPEC, unchanged on the wire (also
registered as ``terminal``): pyiso8583's ``default`` spec with field 53 as 20 ASCII hex
characters (the DUKPT KSN); field 123 stays its LLLVAR ASCII, which SPEC gives AES DUKPT
terminals (KSN and format 4 PIN block, 56 hex: checked by ``protocols.validate``, so that a
wrong length is a ``30`` and not an undecodable message). Issuer links use it too unless conf
names another dialect.

Against jPOS's ``ISO87APackagerBBitmap``: the same bytes but for 52, 64 and 128, which jPOS
sends as 16 ASCII hex characters and SPEC (like the standard's b64) as 8 raw bytes."""

from __future__ import annotations

import copy
from typing import Any

from iso8583.specs import default

SPEC: dict[str, dict[str, Any]] = copy.deepcopy(dict(default))
SPEC["53"] = {
    "data_enc": "ascii",
    "len_enc": "ascii",
    "len_type": 0,
    "max_len": 20,
    "desc": "Security Related Control Information (DUKPT KSN, 20 hex)",
}
SPEC["123"] = {**SPEC["123"], "desc": "AES DUKPT PIN data (24 hex KSN, 32 hex format 4 block)"}
