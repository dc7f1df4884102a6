"""Statistics against hand-computed values; the mix's requests against the real codec and the
HSM simulator's crypto (PIN blocks, DUKPT, MAC, ARQC)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from hsm_sim import dukpt, emv, mac, pinblock
from loadtest.mix import MixError, TxnFactory, fresh_pan, load_data, parse_mix
from loadtest.stats import Progress, RunStats, format_report, percentile
from loadtest.wire import LeanCodec
from protocols import emv as tlv
from protocols.codec import Codec
from protocols.dialects import get_dialect
from protocols.validate import luhn_ok

CODEC = Codec(get_dialect("terminal"))


def test_nearest_rank_percentiles_by_hand() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == 5.0  # rank ceil(5.0) = 5
    assert percentile(values, 90) == 9.0
    assert percentile(values, 99) == 10.0  # rank ceil(9.9) = 10
    assert percentile(values, 0) == 1.0
    thousand = [float(v) for v in range(1, 1001)]
    assert percentile(thousand, 99.9) == 999.0
    assert math.isnan(percentile([], 50))


def test_summary_tables_and_report() -> None:
    stats = RunStats(elapsed=2.0)
    for ms, rc, kind in [(1, "00", "magstripe"), (2, "00", "magstripe"), (3, "51", "pin_tpk"),
                         (4, "00", "pin_tpk"), (10, "05", "magstripe")]:  # fmt: skip
        stats.record(ms / 1000, rc, kind)
    stats.error("timeout", "pin_tpk")
    stats.error("timeout", "magstripe")
    stats.unavailable["qr"] = "QR API not reachable"
    s = stats.summary()
    assert s["transactions"] == 5
    assert s["tps"] == 2.5
    assert s["latency_ms"] == {
        "p50": 3.0, "p90": 10.0, "p99": 10.0, "p99.9": 10.0, "max": 10.0, "mean": 4.0,
    }  # fmt: skip
    assert s["response_codes"] == {"00": 3, "05": 1, "51": 1}
    assert s["errors"] == {"timeout": 2}
    assert s["error_count"] == 2
    assert s["by_kind"]["pin_tpk"]["response_codes"] == {"00": 1, "51": 1}
    assert s["by_kind"]["pin_tpk"]["errors"] == {"timeout": 1}
    assert s["by_kind"]["magstripe"]["latency_ms"]["p50"] == 2.0
    report = format_report(s)
    assert "TPS 2.5" in report
    assert "  00                   3  60.00%" in report
    assert "timeout" in report
    assert "unavailable: qr: QR API not reachable" in report


def test_progress_line_counts_the_last_second() -> None:
    stats = RunStats()
    meter = Progress(stats, last_time=10.0)
    for _ in range(300):
        stats.record(0.002, "00")
    line = meter.line(11.0, in_flight=7, label="1s")
    assert "300 TPS" in line
    assert "in flight      7" in line
    assert "2.00 ms" in line


def test_parse_mix() -> None:
    assert parse_mix("plain") == {"magstripe": 1.0}
    assert parse_mix("magstripe=3, pin_tpk=1,reversal=0.5") == {
        "magstripe": 3.0, "pin_tpk": 1.0, "reversal": 0.5,
    }  # fmt: skip
    for bad in ("bogus=1", "magstripe=x", "magstripe=-1", "reversal=1", ""):
        with pytest.raises(MixError):
            parse_mix(bad)


def test_pans_are_fresh_luhn_valid_and_in_range() -> None:
    rnd = random.Random(1)
    pans = {fresh_pan("4761739", rnd) for _ in range(1000)}
    assert len(pans) == 1000
    assert all(luhn_ok(p) and p.startswith("4761739") and len(p) == 16 for p in pans)


def test_a_card_population_is_reused_and_fresh_cards_are_not() -> None:
    codec = Codec(get_dialect("terminal"))

    def pans(factory: TxnFactory) -> list[str]:
        out = []
        for _ in range(300):
            msg = codec.decode(factory.build("magstripe").payload)
            out.append(msg.fields["35"].split("=")[0])
        return out

    pool = pans(TxnFactory(load_data(), rnd=random.Random(3), cards=5))
    ranges = len(TxnFactory(load_data()).ranges)
    assert len(set(pool)) <= 5 * ranges
    assert all(luhn_ok(p) for p in pool)
    assert len(set(pans(TxnFactory(load_data(), rnd=random.Random(3))))) == 300


def test_a_reused_chip_card_sends_a_rising_atc() -> None:
    # The soak's card population once shared one ATC counter: it wrapped at 65535 and the
    # issuer declined each lower ATC (05, "ATC not above the last used").
    codec = Codec(get_dialect("terminal"))
    factory = TxnFactory(load_data(), rnd=random.Random(5), cards=2)
    factory._atc = itertools.count(0xFFFE)  # the shared counter, about to wrap
    last: dict[str, int] = {}
    for _ in range(40):
        msg = codec.decode(factory.build("contactless").payload)
        raw = tlv.decode(bytes.fromhex(msg.fields["55"])).get("9F36")
        assert raw is not None
        atc = int.from_bytes(raw, "big")
        assert atc > last.get(msg.fields["2"], 0)
        last[msg.fields["2"]] = atc


@pytest.fixture
def factory() -> TxnFactory:
    return TxnFactory(load_data(), rnd=random.Random(11))


def test_requests_encode_like_the_codec_and_carry_valid_crypto(factory: TxnFactory) -> None:
    data = load_data()
    terminals = {t.id: t for t in data.terminals}
    lean = LeanCodec(get_dialect("terminal"))
    ksns = []
    for kind in ("magstripe", "pin_tpk", "pin_dukpt", "contactless"):
        txn = factory.build(kind)
        msg = CODEC.decode(txn.payload)
        assert CODEC.encode(msg) == txn.payload
        assert lean.peek(txn.payload, msg.fields) == (msg.mti, msg.fields)
        f = msg.fields
        pan = f["2"] if "2" in f else f["35"].split("=")[0]
        if kind == "pin_tpk":
            tpk = terminals["T0000001"].tpk
            assert tpk is not None
            block = bytes.fromhex(f["52"])
            assert pinblock.decrypt_pin_block(bytes.fromhex(tpk.key), "01", block, pan) == "0000"
        if kind == "pin_dukpt":
            t = terminals["T0000002"]
            assert t.bdk is not None
            assert t.tak is not None
            ksns.append(f["53"])
            bdk = bytes.fromhex(t.bdk.key)
            assert dukpt.decrypt_pin_block(bdk, f["53"], bytes.fromhex(f["52"]), pan) == "0000"
            expected = mac.retail_mac(bytes.fromhex(t.tak.key), txn.payload[:-8], padding=1)
            assert txn.payload[-8:] == expected
        if kind == "contactless":
            issuer = "alpha" if pan.startswith("476173") else "beta"
            imk = data.issuer(issuer).imk_ac
            assert imk is not None
            icc = tlv.decode(bytes.fromhex(f["55"]))
            arqc = icc.get("9F26")
            atc = icc.get("9F36")
            assert arqc is not None
            assert atc is not None
            assert f["22"] == "071"
            assert emv.verify_arqc(
                bytes.fromhex(imk.key), pan, f["23"], atc, tlv.arqc_input(icc), arqc
            )
    second = CODEC.decode(factory.build("pin_dukpt").payload).fields["53"]
    assert int(second, 16) > int(ksns[0], 16)


def test_reversal_of_an_approved_purchase(factory: TxnFactory) -> None:
    txn = factory.build("magstripe")
    assert txn.original is not None
    rev = CODEC.decode(factory.reversal(txn.original).payload)
    o = txn.original.fields
    assert rev.mti == "0400"
    assert rev.fields["90"] == f"0200{o['11']}{o['7']}" + "0" * 22
    assert rev.fields["4"] == o["4"]
    assert rev.fields["11"] != o["11"]
    # A MAC terminal's purchase is never offered for reversal (see loadtest.mix).
    assert factory.build("pin_dukpt").original is None


def test_qr_body(factory: TxnFactory) -> None:
    from protocols import qr_cpm

    body = factory.qr_body()
    qr = qr_cpm.decode(body["qr"])
    assert qr.pan.startswith(("5413339", "4761739"))
    assert body["merchant_id"] == "M00000000000001"
    assert body["currency"] == "156"
    assert len(body["idempotency_key"]) == 32


def test_contactless_over_the_no_cvm_cap_carries_a_device_cvm() -> None:
    """Load taps must not turn into 65 "PIN required": over the cap a tap is a phone wallet's
    (9F6C consumer-device CVM), as the switch reads it; its ARQC stays valid."""
    from gateway.risk.verification import Cvm, card_cvm

    def tap(amount: int) -> dict[str, str]:
        factory = TxnFactory(load_data(), amount=(amount, amount), rnd=random.Random(3))
        return CODEC.decode(factory.build("contactless").payload).fields

    assert card_cvm(tap(100_000)) is Cvm.NONE  # at the demo cap: no CVM needed
    over = tap(100_001)
    assert card_cvm(over) is Cvm.DEVICE
    icc = tlv.decode(bytes.fromhex(over["55"]))
    imk = load_data().issuer("alpha" if over["2"].startswith("476173") else "beta").imk_ac
    assert imk is not None
    atc, arqc = icc.get("9F36"), icc.get("9F26")
    assert atc is not None
    assert arqc is not None
    key = bytes.fromhex(imk.key)
    assert emv.verify_arqc(key, over["2"], over["23"], atc, tlv.arqc_input(icc), arqc)
    from gateway.risk import load_config
    from loadtest.mix import DEMO_NO_CVM_MAX, ROOT

    demo = load_config(ROOT / "conf" / "demo" / "risk.toml", env={})
    assert demo.contactless.no_cvm_max_amount == DEMO_NO_CVM_MAX
    never = TxnFactory(load_data(), amount=(100_001, 100_001), no_cvm_max=None)
    assert card_cvm(CODEC.decode(never.build("contactless").payload).fields) is Cvm.NONE


def test_qr_body_states_the_payer_verification() -> None:
    factors = ("password", "biometric")
    body = TxnFactory(load_data(), qr_verification=factors).qr_body()
    assert body["payer_verification"] == ["password", "biometric"]
    assert "payer_verification" not in TxnFactory(load_data()).qr_body()
