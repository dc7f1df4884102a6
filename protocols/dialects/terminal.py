"""The terminal dialect of SPEC: pyiso8583's ``default`` spec with field 53 as 20 ASCII hex
characters (the DUKPT KSN). Issuer links use it too unless conf names another dialect."""

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
