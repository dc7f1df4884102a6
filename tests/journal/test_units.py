"""Pure parts of the journal: stripping, encryption, chain, backoff, config."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.journal import JournalConfigError, JournalValueError, backoff_delay, next_attempt
from gateway.journal.chain import GENESIS, Chain, ChainVerifier
from gateway.journal.config import config_from_mapping, resolve_keys
from gateway.journal.protect import DataProtector, DecryptionError
from gateway.journal.sensitive import mask_pan, strip_emv, strip_sensitive

# --- what is never stored --------------------------------------------------------------------


def test_strip_sensitive_drops_track_pin_and_ksn() -> None:
    fields = {"2": "4761730000000011", "35": "x", "36": "y", "45": "z", "52": "AB", "53": "0"}
    fields["123"] = "0" * 56  # AES DUKPT: KSN and PIN block
    assert strip_sensitive({**fields, "39": "00"}) == {"2": "4761730000000011", "39": "00"}


def test_strip_sensitive_rejects_field_aliases_and_non_strings() -> None:
    with pytest.raises(JournalValueError):
        strip_sensitive({"035": "track"})  # would otherwise dodge the "35" rule
    with pytest.raises(JournalValueError):
        strip_sensitive({"4": 100})  # type: ignore[dict-item]


def test_strip_emv_removes_track_equivalents_at_any_depth() -> None:
    arqc = "9F2608" + "11" * 8
    track2 = "5708" + "47617300000000D2"
    nested = "7006" + "5704" + "DEADBEEF"  # 57 inside a constructed template
    contactless_track = "9F6B03" + "ABCDEF"
    arpc = "910A" + "22" * 8 + "3030"
    cleaned = strip_emv(arqc + track2 + nested + contactless_track + arpc)
    assert cleaned == (arqc + "7000" + arpc).upper()


def test_strip_emv_drops_what_it_cannot_parse() -> None:
    assert strip_emv("9F26FF00") is None  # length beyond the data
    assert strip_emv("zz") is None
    assert strip_sensitive({"55": "9F26"}) == {}


@given(st.binary(max_size=64))
def test_strip_emv_never_raises_and_is_idempotent(data: bytes) -> None:
    result = strip_emv(data.hex())
    if result is not None:  # what it keeps is valid TLV with nothing left to strip
        assert strip_emv(result) == result


def test_mask_pan() -> None:
    assert mask_pan("4761730000000011") == "476173******0011"
    assert mask_pan("6250941000000000019") == "625094*********0019"
    with pytest.raises(JournalValueError):
        mask_pan("4761")


# --- encryption --------------------------------------------------------------------------------


def test_aes_gcm_blob_matches_the_published_vector() -> None:
    """GCM spec (McGrew & Viega) test case 14: AES-256, zero key, zero IV, 16 zero bytes."""
    protector = DataProtector({"z": bytes(32)}, "z", os.urandom(32))
    sealed = bytes.fromhex("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919")
    blob = bytes([1, 1]) + b"z" + bytes(12) + sealed
    assert protector.decrypt(blob, b"") == bytes(16)


def test_key_rotation_and_binding() -> None:
    k1, k2, lookup = os.urandom(32), os.urandom(32), os.urandom(32)
    old = DataProtector({"k1": k1}, "k1", lookup)
    blob = old.encrypt(b"secret", b"pan|t1")
    assert DataProtector.key_id_of(blob) == "k1"
    rotated = DataProtector({"k1": k1, "k2": k2}, "k2", lookup)
    assert rotated.decrypt(blob, b"pan|t1") == b"secret"  # old data still readable
    assert DataProtector.key_id_of(rotated.encrypt(b"x", b"")) == "k2"  # new data, new key
    with pytest.raises(DecryptionError, match="authentication"):
        rotated.decrypt(blob, b"pan|t2")  # a blob moved to another row
    with pytest.raises(DecryptionError, match="no key"):
        DataProtector({"k2": k2}, "k2", lookup).decrypt(blob, b"pan|t1")
    assert old.pan_hash("4761730000000011") == rotated.pan_hash("4761730000000011")
    assert "k1" in repr(rotated)
    assert k1.hex() not in repr(rotated)


def test_bad_key_configuration() -> None:
    with pytest.raises(JournalConfigError, match="32 bytes"):
        DataProtector({"k": bytes(16)}, "k", bytes(32))
    with pytest.raises(JournalConfigError, match="active"):
        DataProtector({"k": bytes(32)}, "other", bytes(32))


# --- chain -------------------------------------------------------------------------------------


def _rows(chain: Chain, n: int) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    mac = GENESIS
    for seq in range(1, n + 1):
        values = (seq, f"t{seq}", "received", seq * 1000, None, b"\x01\x02")
        mac = chain.mac(mac, values)
        rows.append((*values, mac))
    return rows


def test_chain_verifier_finds_first_bad_link() -> None:
    chain = Chain(os.urandom(32))
    rows = _rows(chain, 5)
    good = ChainVerifier(chain, 0, GENESIS)
    assert all(good.feed(r) for r in rows)
    last_mac = rows[-1][-1]
    assert isinstance(last_mac, bytes)
    assert good.finish(5, last_mac).ok

    edited = list(rows)
    edited[2] = (3, "t3", "answered", *rows[2][3:])
    bad = ChainVerifier(chain, 0, GENESIS)
    assert not all(bad.feed(r) for r in edited)
    assert (bad.broken_seq, bad.count) == (3, 2)

    other_key = ChainVerifier(Chain(os.urandom(32)), 0, GENESIS)
    assert not other_key.feed(rows[0])


def test_chain_tags_bind_name_and_position() -> None:
    chain = Chain(os.urandom(32))
    tag = chain.tag("head", 5, b"m" * 32)
    assert chain.tag_ok("head", 5, b"m" * 32, tag)
    assert not chain.tag_ok("anchor", 5, b"m" * 32, tag)
    assert not chain.tag_ok("head", 4, b"m" * 32, tag)


# --- backoff -----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff_delay(n).total_seconds() for n in range(12)]
    assert delays[:5] == [0, 1, 2, 4, 8]
    assert delays[-1] == 300
    assert backoff_delay(10_000).total_seconds() == 300
    assert backoff_delay(3, draw=0.0).total_seconds() == pytest.approx(3.6)
    assert backoff_delay(3, draw=0.999).total_seconds() == pytest.approx(4.4, rel=1e-2)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_attempt(now, 2) == now + timedelta(seconds=2)
    with pytest.raises(ValueError, match="draw"):
        backoff_delay(1, draw=1.0)


# --- config ------------------------------------------------------------------------------------


def test_config_keys_from_environment() -> None:
    env = {"JK1": os.urandom(32).hex(), "JL": os.urandom(32).hex(), "JC": os.urandom(32).hex()}
    config = config_from_mapping(
        {
            "journal": {
                "keys": [{"id": "k1", "env": "JK1"}],
                "lookup_key": {"env": "JL"},
                "chain_key": {"env": "JC"},
            }
        }
    )
    keys = resolve_keys(config, env)
    assert keys.protector.active_key_id == "k1"
    with pytest.raises(JournalConfigError, match="JK1 is not set"):
        resolve_keys(config, {})


def test_config_rejects_unknown_keys_and_hides_key_material() -> None:
    with pytest.raises(JournalConfigError, match=r"journal\.colour: unknown key"):
        config_from_mapping({"journal": {"colour": "blue"}})
    with pytest.raises(JournalConfigError, match="dsn"):
        config_from_mapping({"journal": {"backend": "postgres"}})
    secret = os.urandom(32).hex()
    config = config_from_mapping({"keys": [{"id": "k1", "hex": secret}]})
    assert secret not in repr(config)
    two = config_from_mapping(
        {
            "keys": [{"id": "a", "hex": secret}, {"id": "b", "hex": secret}],
            "lookup_key": {"hex": secret},
            "chain_key": {"hex": secret},
        }
    )
    with pytest.raises(JournalConfigError, match="active_key_id"):
        resolve_keys(two, {})


def test_demo_configuration_loads() -> None:
    from pathlib import Path

    from gateway.journal import load_config

    conf = Path(__file__).resolve().parents[2] / "conf" / "demo" / "journal.toml"
    config = load_config(conf)
    assert config.backend == "sqlite"
    assert config.retention_days == 1826
    assert resolve_keys(config, {}).protector.active_key_id == "demo-2026a"
