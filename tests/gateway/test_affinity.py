"""Card affinity between workers (gateway/edge/affinity.py): each card's requests run in the
worker owning it, over real Unix sockets, with fake switches that say who answered."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.edge.affinity import CardAffinity, card_number, owner_of, private_dir
from gateway.flow.tokens import PanCipher, TokenVault
from gateway.risk.verification import QrVerification
from protocols.codec import MessageFormatError
from protocols.message import Message

pytestmark = pytest.mark.anyio


class FakeSwitch:
    """Answers 00 with the worker's index in field 44; remembers what it handled."""

    def __init__(self, index: int, *, fail: bool = False, delay: float = 0.0) -> None:
        self.index = index
        self.fail = fail
        self.delay = delay
        self.seen: list[tuple[Message, bytes, QrVerification | None]] = []

    async def handle(
        self, req: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None:
        self.seen.append((req, raw, qr))
        if self.delay:
            await anyio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        if req.mti == "0210":
            return None  # a response sent as a request: no answer
        if qr is not None:
            qr.step_up = "otp"
        return Message("0210", {**req.fields, "39": "00", "44": str(self.index)})

    def format_error_response(self, exc: MessageFormatError) -> Message | None:
        return None

    def refuse(self, req: Message, rc: str) -> Message | None:
        return Message("0210", {"11": req.fields.get("11", ""), "39": rc})


def pan_owned_by(index: int, workers: int = 2) -> str:
    """A Luhn-free test card number whose owner is ``index``."""
    for n in range(1000):
        pan = f"47617300000{n:05d}"
        if owner_of(pan, workers) == index:
            return pan
    raise AssertionError("no such card")


@pytest.fixture
def sockets() -> Iterator[Path]:
    # AF_UNIX paths are short (108 bytes): not under pytest's long tmp_path.
    with tempfile.TemporaryDirectory(prefix="aff-") as d:
        yield Path(d) / "s"


def facades(
    directory: Path, switches: list[FakeSwitch], vault: TokenVault | None = None
) -> list[CardAffinity]:
    registry = CollectorRegistry()
    requests = Counter("affinity", "test", ["route"], registry=registry)
    return [
        CardAffinity(
            sw,
            index=i,
            workers=len(switches),
            directory=directory,
            vault=vault,
            timeout=2.0,
            requests=requests,
        )
        for i, sw in enumerate(switches)
    ]


def purchase(pan: str, stan: str = "000001") -> Message:
    return Message("0200", {"2": pan, "3": "000000", "4": "000000001000", "11": stan})


def test_card_number_from_field_2_track_2_and_none() -> None:
    assert card_number(Message("0200", {"2": "4761730000000011"})) == "4761730000000011"
    assert card_number(Message("0200", {"35": "4761730000000011=2512101"})) == "4761730000000011"
    assert card_number(Message("0200", {"35": "4761730000000011D2512101"})) == "4761730000000011"
    assert card_number(Message("0800", {"70": "301"})) is None


def test_a_token_routes_by_its_funding_card() -> None:
    vault = TokenVault(PanCipher(bytes(32)))
    vault.add("4895370000000013", "4761730000000011", expiry="2912")
    assert card_number(Message("0200", {"2": "4895370000000013"}), vault) == "4761730000000011"


def test_owner_is_stable_and_spreads() -> None:
    pans = [f"4761730000{n:06d}" for n in range(2000)]
    owners = [owner_of(p, 2) for p in pans]
    assert owners == [owner_of(p, 2) for p in pans]  # crc32: the same in every process
    assert 900 < owners.count(0) < 1100


def test_private_dir_refuses_a_shared_directory(tmp_path: Path) -> None:
    d = private_dir(tmp_path / "x")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    os.chmod(d, 0o755)
    with pytest.raises(PermissionError, match="0700"):
        private_dir(d)


async def test_each_card_runs_in_its_owner(sockets: Path) -> None:
    switches = [FakeSwitch(0), FakeSwitch(1)]
    f0, f1 = facades(sockets, switches)
    async with anyio.create_task_group() as tg:
        await tg.start(f0.run)
        await tg.start(f1.run)
        mine, theirs = pan_owned_by(0), pan_owned_by(1)
        # Worker 0 took both connections: its own card stays, the other goes to worker 1.
        a = await f0.handle(purchase(mine), b"raw-a")
        b = await f0.handle(purchase(theirs), b"raw-b")
        c = await f1.handle(purchase(mine), b"raw-c")
        assert a is not None
        assert b is not None
        assert c is not None
        assert (a["44"], b["44"], c["44"]) == ("0", "1", "0")
        assert b.fields["2"] == theirs
        assert b.mti == "0210"
        # The owner saw the raw bytes (the terminal MAC is checked over them).
        assert [raw for _, raw, _ in switches[1].seen] == [b"raw-b"]
        assert [raw for _, raw, _ in switches[0].seen] == [b"raw-a", b"raw-c"]
        # No card (network management): wherever it arrived.
        d = await f1.handle(Message("0800", {"70": "301", "11": "000009"}))
        assert d is not None
        assert d["44"] == "1"
        tg.cancel_scope.cancel()


async def test_many_concurrent_requests_are_matched_to_their_answers(sockets: Path) -> None:
    switches = [FakeSwitch(0, delay=0.01), FakeSwitch(1, delay=0.01)]
    f0, f1 = facades(sockets, switches)
    theirs = pan_owned_by(1)
    answers: dict[str, str] = {}

    async def one(stan: str) -> None:
        resp = await f0.handle(purchase(theirs, stan))
        assert resp is not None
        answers[stan] = resp["11"]

    async with anyio.create_task_group() as tg:
        await tg.start(f0.run)
        await tg.start(f1.run)
        async with anyio.create_task_group() as calls:
            for n in range(200):
                calls.start_soon(one, f"{n:06d}")
        tg.cancel_scope.cancel()
    assert answers == {f"{n:06d}": f"{n:06d}" for n in range(200)}
    assert len(switches[1].seen) == 200
    assert not switches[0].seen


async def test_qr_verification_and_no_answer_travel(sockets: Path) -> None:
    switches = [FakeSwitch(0), FakeSwitch(1)]
    f0, f1 = facades(sockets, switches)
    theirs = pan_owned_by(1)
    async with anyio.create_task_group() as tg:
        await tg.start(f0.run)
        await tg.start(f1.run)
        qr = QrVerification(dynamic=False, factors=frozenset({"device"}))
        resp = await f0.handle(purchase(theirs), qr=qr)
        assert resp is not None
        assert resp["44"] == "1"
        seen_qr = switches[1].seen[0][2]
        assert seen_qr is not None
        assert seen_qr.factors == {"device"}
        assert not seen_qr.dynamic
        assert qr.step_up == "otp"  # what the owner's engine wrote back
        assert await f0.handle(Message("0210", {"2": theirs})) is None
        tg.cancel_scope.cancel()


async def test_owner_failure_and_absence_answer_96(sockets: Path) -> None:
    switches = [FakeSwitch(0), FakeSwitch(1, fail=True)]
    f0, f1 = facades(sockets, switches)
    theirs = pan_owned_by(1)
    async with anyio.create_task_group() as tg:
        await tg.start(f0.run)
        with anyio.CancelScope() as owner_scope:
            tg.start_soon(f1.run)
            await anyio.sleep(0.05)
            resp = await f0.handle(purchase(theirs, "000002"))
            assert resp is not None
            assert resp["39"] == "96"
            owner_scope.cancel()
        await anyio.sleep(0.05)
        # The owner is gone (restarting): refused with 96, not hung, not crashed.
        resp = await f0.handle(purchase(theirs, "000003"))
        assert resp is not None
        assert (resp["39"], resp["11"]) == ("96", "000003")
        # A local card is still served.
        mine = await f0.handle(purchase(pan_owned_by(0)))
        assert mine is not None
        assert mine["39"] == "00"
        tg.cancel_scope.cancel()
