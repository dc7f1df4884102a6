"""ISO 8583:1987 as jPOS's ``ISO87APackagerBBitmap`` sends it: iso87-ascii with the 8-byte
binary fields 52, 64 and 128 as 16 ASCII hex characters (jPOS's ``IFA_BINARY``; the standard
and SPEC send 8 raw bytes). The value is the same hex text either way. README, "How to add a
dialect", builds this one as its worked example."""

from __future__ import annotations

from typing import Any

from protocols.dialects import iso87_ascii

_HEX_TEXT = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 16}

SPEC: dict[str, dict[str, Any]] = {
    **iso87_ascii.SPEC,
    "52": {**_HEX_TEXT, "desc": "PIN Data (16 hex characters)"},
    "64": {**_HEX_TEXT, "desc": "MAC (16 hex characters)"},
    "128": {**_HEX_TEXT, "desc": "MAC (16 hex characters)"},
}
