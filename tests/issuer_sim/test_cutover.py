"""The issuer simulator and the business day: an acquirer's 0800/201 is answered and recorded,
field 15 is echoed, and an answer to the simulator's own request is kept, never answered."""

from __future__ import annotations

from issuer_sim.accounts import AccountBook
from issuer_sim.host import IssuerHost
from issuer_sim.server import IssuerServer
from protocols.message import Message
from tests.helpers import demo_dataset, purchase

DATA = demo_dataset()
GAMMA = "6250940000000019"  # gamma: no link MAC


def gamma_server() -> IssuerServer:
    book = AccountBook.from_cards("gamma", DATA.cards, DATA.issuer_behaviour.synthetic, None)
    return IssuerServer(IssuerHost(book), None)


def test_a_cutover_is_answered_in_kind_and_recorded() -> None:
    server = gamma_server()
    cutover = Message("0800", {"7": "1207150000", "11": "000001", "15": "1208", "70": "201"})
    served = server.serve_frame(server.codec.encode(cutover))
    assert served is not None
    answer, _ = served
    assert answer is not None
    assert answer.mti == "0810"
    assert {k: answer.fields[k] for k in ("7", "11", "15", "39", "70")} == {
        "7": "1207150000",
        "11": "000001",
        "15": "1208",
        "39": "00",
        "70": "201",
    }
    assert [fifteen for _, fifteen in server.host.cutovers] == ["1208"]
    echo = Message("0800", {"7": "1207150001", "11": "000002", "70": "301"})
    assert server.serve_frame(server.codec.encode(echo)) is not None
    assert len(server.host.cutovers) == 1  # an echo is no cutover


def test_settlement_date_is_echoed() -> None:
    server = gamma_server()
    request = purchase(GAMMA, 100, extra={"15": "1208"})
    served = server.serve_frame(server.codec.encode(request))
    assert served is not None
    answer, _ = served
    assert answer is not None
    assert (answer.fields["39"], answer.fields["15"]) == ("00", "1208")


def test_an_answer_to_our_own_request_is_kept_not_answered() -> None:
    server = gamma_server()
    ours = Message("0810", {"7": "1207150000", "11": "000001", "39": "00", "70": "201"})
    assert server.serve_frame(server.codec.encode(ours)) is None
    assert list(server.answers_received) == [ours]
