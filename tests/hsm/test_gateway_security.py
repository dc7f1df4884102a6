"""The pure MAC helpers (protocols.mac) the HSM path leans on, against their reference rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import hsm
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.errors import LocalProtocolError
from protocols.mac import mac_field, mac_input
from protocols.message import Message
from tests.helpers import purchase

keys = st.one_of(
    st.integers(min_value=0, max_value=200).map(str),
    st.sampled_from(["t", "p", "h", "065", "0128", "７０", ""]),
)


def reference_mac_field(fields: dict[str, str]) -> str:
    return "128" if any(64 < int(k) < 128 for k in fields if k.isdigit()) else "64"


@given(st.dictionaries(keys, st.just("x"), max_size=30))
def test_mac_field_is_the_reference_rule(fields: dict[str, str]) -> None:
    assert mac_field(fields) == reference_mac_field(fields)


def test_mac_input_with_the_field_given_is_the_same() -> None:
    codec = Codec(get_dialect("terminal"))
    msg = purchase("4761730000000011", 1250)
    assert mac_input(codec, msg, "64") == mac_input(codec, msg)
    assert msg.fields.get("64") is None  # the message itself is left alone
    reversal = Message("0400", {**msg.fields, "90": "0200" + "0" * 38})
    assert mac_input(codec, reversal, mac_field(reversal.fields)) == mac_input(codec, reversal)


@pytest.mark.parametrize(
    "bad", ["U" + "0" * 31 + "G", "Z" + "0" * 32, "U" + "0" * 31, 42, b"U" + b"0" * 32]
)
def test_remembered_encodings_never_let_a_bad_value_through(bad: object) -> None:
    good = "U" + "0" * 32
    assert hsm.encode_request("0001", hsm.KeyCheckValue(key=good)).endswith(good.encode())
    with pytest.raises(LocalProtocolError):
        hsm.encode_request("0001", hsm.KeyCheckValue(key=bad))  # type: ignore[arg-type]


def test_a_value_checked_in_one_layout_is_checked_again_in_another() -> None:
    assert hsm.encode_request("0001", hsm.GenerateKey(key_type="009"))
    with pytest.raises(LocalProtocolError):  # BU's key type is 2 characters, A0's 3
        hsm.encode_request("0001", hsm.KeyCheckValue(key="U" + "0" * 32, key_type="009"))
