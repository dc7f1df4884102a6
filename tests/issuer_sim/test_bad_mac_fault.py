"""The issuer simulator's ``bad_mac_ratio`` fault: the request is processed (the account is
debited) but its answer goes out with a wrong link MAC; the answer the host keeps for a
retransmission stays right."""

from __future__ import annotations

import datetime as dt

from issuer_sim.accounts import AccountBook
from issuer_sim.host import IssuerHost
from issuer_sim.pin import IssuerSecurity
from issuer_sim.server import IssuerServer, LiveFaults, corrupt_mac
from protocols.message import Message
from tests.helpers import demo_dataset, purchase

DATA = demo_dataset()
PAN = "4761730000000011"  # alpha: the issuer with a ZAK (MACed link)


def alpha_server(faults: LiveFaults) -> tuple[IssuerServer, IssuerSecurity]:
    security = IssuerSecurity.from_dataset(DATA, "alpha")
    assert security is not None
    assert security.zak is not None
    book = AccountBook.from_cards("alpha", DATA.cards, DATA.issuer_behaviour.synthetic, security)
    return IssuerServer(IssuerHost(book), None, faults=faults), security


def sealed(security: IssuerSecurity, msg: Message) -> bytes:
    """``msg`` as the switch sends it on a MACed link (MAC in field 64)."""
    security.seal(msg)
    frame = security.take_encoded(msg)
    assert frame is not None
    return frame


def balance(server: IssuerServer) -> int:
    account = server.host.book.find(PAN)
    assert account is not None
    return account.balance


def test_bad_mac_fault_processes_the_request_but_corrupts_the_answer_mac() -> None:
    faults = LiveFaults(bad_mac_ratio=1.0)
    server, security = alpha_server(faults)
    before = balance(server)
    frame = sealed(security, purchase(PAN, 700))
    served = server.serve_frame(frame)
    assert served is not None
    answer, delay = served
    assert answer is not None
    assert delay == 0.0
    assert answer["39"] == "00"
    assert balance(server) == before - 700  # applied at the issuer
    assert security.check_mac(answer) == "63"  # ...but the answer's MAC is wrong
    wire = server.codec.decode(server.encode(answer))
    assert wire["64"] == answer["64"]  # the corrupted MAC is what goes out
    # The host's own copy (replayed to a retransmission) keeps its right MAC.
    faults.bad_mac_ratio = 0.0
    served = server.serve_frame(frame)
    assert served is not None
    assert served[0] is not None
    assert security.check_mac(served[0]) is None
    assert served[0]["38"] == answer["38"]
    assert balance(server) == before - 700  # not applied twice


def test_bad_mac_fault_off_and_unmaced_answers() -> None:
    server, security = alpha_server(LiveFaults())
    served = server.serve_frame(sealed(security, purchase(PAN, 5)))
    assert served is not None
    assert served[0] is not None
    assert security.check_mac(served[0]) is None
    plain = Message("0810", {"11": "000001", "39": "00"})
    assert corrupt_mac(plain) is plain  # nothing to corrupt
    network = Message("0800", {"7": dt.datetime.now(dt.UTC).strftime("%m%d%H%M%S")})
    network.fields.update({"11": "000002", "70": "301"})
    server.faults.bad_mac_ratio = 1.0
    served = server.serve_frame(server.codec.encode(network))
    assert served is not None
    assert served[0] is not None
    assert "64" not in served[0]  # network messages carry no MAC
