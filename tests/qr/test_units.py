"""QR API units without sockets: problem types, the ISO messages a payment becomes, virtual
terminals, the idempotency store, and the property that no input makes the API answer 500."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import anyio
import httpx
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.edge.http import AUTH_FAILURES_LIMIT, AUTH_FAILURES_WINDOW, DrainBody
from gateway.flow.tokens import PanCipher
from gateway.qr import problems
from gateway.qr.api import _SwallowErrors, qr_app
from gateway.qr.models import MPM_PREFIX
from gateway.qr.service import QrService
from gateway.qr.terminals import virtual_terminals, with_virtual_terminals
from gateway.risk.verification import QrVerification
from kit.dataset import Terminal
from protocols import qr_cpm, qr_mpm
from protocols.message import Message
from tests.helpers import demo_dataset

KEY = "demo-qr-acquirer-key-0001"
WALLET = "6250940000000019"
JSON = "application/json"
CPM = qr_cpm.build(aid="A000000333010101", pan=WALLET, expiry="3012")


class FakeSwitch:
    """Approves everything and remembers what it was asked."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def handle(
        self, msg: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None:
        self.seen.append(msg)
        fields: dict[str, str] = {
            k: msg.fields[k] for k in ("2", "3", "4", "11", "41") if k in msg.fields
        }
        fields.update({"37": "RRN000000001", "38": "123456", "39": "00"})
        return Message("0210", fields)


def service(switch: FakeSwitch | None = None) -> QrService:
    fake = switch or FakeSwitch()
    return QrService(with_virtual_terminals(demo_dataset()), fake.handle, PanCipher(bytes(32)))


def client(svc: QrService, address: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=qr_app(svc), client=(address, 123)),
        base_url="http://qr",
        headers={"Authorization": f"Bearer {KEY}"},
    )


def body(qr: str, **extra: Any) -> dict[str, Any]:
    return {
        "qr": qr,
        "amount": 1250,
        "currency": "156",
        "merchant_id": "M00000000000001",
        "idempotency_key": "k1",
    } | extra


# Problem types -------------------------------------------------------------------------------


def _subclasses(cls: type[Any]) -> set[type[Any]]:
    out: set[type[Any]] = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def test_every_codec_error_code_has_a_problem_type() -> None:
    codes = {c.code for c in _subclasses(qr_cpm.CpmError) | _subclasses(qr_mpm.MpmError)}
    assert codes <= problems.known_qr_codes()
    for code in codes:
        assert problems.for_qr_code(code).status == 422


def test_problem_types_are_unique_and_documented() -> None:
    slugs = [t.slug for t in problems.ALL]
    assert len(slugs) == len(set(slugs))
    assert all(t.uri.startswith(problems.PROBLEM_BASE) and t.title for t in problems.ALL)
    doc = problems.Problem(problems.REFUND_EXCEEDS, "5 left", remaining=5).document("/x")
    assert doc == {
        "type": problems.PROBLEM_BASE + "refund-exceeds-remaining",
        "title": problems.REFUND_EXCEEDS.title,
        "status": 422,
        "detail": "5 left",
        "instance": "/x",
        "remaining": 5,
    }


# Payments become ISO 8583 0200 with 22 = 031 -------------------------------------------------


@pytest.mark.anyio
async def test_payment_and_refund_messages() -> None:
    switch = FakeSwitch()
    svc = service(switch)
    qr = qr_cpm.build(aid="A000000333010101", pan=WALLET, expiry="3012", pan_sequence=2)
    async with client(svc) as http:
        paid = await http.post("/v1/qr/payments", json=body(qr))
        assert paid.status_code == 201
        pid = paid.json()["payment_id"]
        refund = await http.post(
            f"/v1/qr/payments/{pid}/refund", json={"amount": 50, "idempotency_key": "r"}
        )
        assert refund.status_code == 201
    pay_msg, refund_msg = switch.seen
    assert pay_msg.mti == refund_msg.mti == "0200"
    assert pay_msg.fields["22"] == refund_msg.fields["22"] == "031"
    assert pay_msg.fields["41"] == refund_msg.fields["41"] == "Q0100001"
    assert pay_msg.fields["42"] == "M00000000000001"
    assert (pay_msg.fields["3"], pay_msg.fields["4"]) == ("000000", "000000001250")
    assert (refund_msg.fields["3"], refund_msg.fields["4"]) == ("200000", "000000000050")
    assert pay_msg.fields["2"] == refund_msg.fields["2"] == WALLET
    assert (pay_msg.fields["14"], pay_msg.fields["23"]) == ("3012", "002")
    assert pay_msg.fields["11"] != refund_msg.fields["11"]
    # What the service keeps: sealed and masked card numbers only.
    stored = await svc.store.payment(pid)
    assert stored is not None
    assert WALLET not in repr(stored)
    assert WALLET.encode() not in stored.sealed_pan
    assert stored.masked_pan == "625094******0019"


def test_fingerprints_take_any_text_and_keep_their_ascii_values() -> None:
    """A stored fingerprint (SQLite store) of an ASCII body still matches after the switch to
    UTF-8 bytes; a body in Chinese has one too."""
    cipher = PanCipher(bytes(32))
    ascii_body = json.dumps(body("hQVDUFYwMQ==")).encode()
    assert cipher.lookup_key_of(ascii_body) == cipher.lookup_key(ascii_body.decode())
    chinese = json.dumps(body("北京烤鸭店"), ensure_ascii=False).encode()
    assert cipher.lookup_key_of(chinese) != cipher.lookup_key_of(chinese + b" ")


def test_virtual_terminals() -> None:
    data = demo_dataset()
    terminals = virtual_terminals(data)
    assert {k: t.id for k, t in terminals.items()} == {
        ("QRACQ01", "M00000000000001"): "Q0100001",
        ("QRACQ01", "M00000000000009"): "Q0100002",
    }
    extended = with_virtual_terminals(data)
    assert with_virtual_terminals(extended) == extended
    assert {t.id for t in extended.terminals} >= {"Q0100001", "Q0100002", "T0000001"}
    clash = Terminal(id="Q0100001", merchant="M00000000000003")
    with pytest.raises(ValueError, match="reserved"):
        with_virtual_terminals(dataclasses.replace(data, terminals=(*data.terminals, clash)))


# Wrong API keys are throttled per address, as the admin API's tokens -----------------------


@pytest.mark.anyio
async def test_an_address_with_too_many_wrong_keys_gets_429() -> None:
    """Past AUTH_FAILURES_LIMIT wrong keys in a window, the address gets 429 (Retry-After)
    without its key being looked at, a right one too; other addresses are not affected."""
    svc = service()
    wrong = {"Authorization": "Bearer guess"}
    async with client(svc, "10.0.0.1") as http:
        for _ in range(AUTH_FAILURES_LIMIT):
            assert (await http.get("/v1/qr/payments/qrp_x", headers=wrong)).status_code == 401
        blocked = await http.post("/v1/qr/payments", json=body(CPM))
        assert blocked.status_code == 429
        assert blocked.headers["content-type"] == problems.MEDIA_TYPE
        assert blocked.json()["type"] == problems.TOO_MANY_FAILURES.uri
        assert 1 <= int(blocked.headers["retry-after"]) <= AUTH_FAILURES_WINDOW
    async with client(svc, "10.0.0.2") as http:
        assert (await http.post("/v1/qr/payments", json=body(CPM))).status_code == 201
    assert svc.rejected.labels(problems.TOO_MANY_FAILURES.slug)._value.get() == 1


@pytest.mark.anyio
async def test_bad_requests_are_counted_and_warned_about_once_per_address() -> None:
    """A peer sending bad requests at any rate: each is counted by problem type, and its
    address gets one warning line (no traceback) per interval, not one per request."""
    svc = service()
    bad: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/qr/payments", {"headers": {"Authorization": "Bearer guess"}}),
        ("POST", "/v1/qr/payments", {"content": b"{nope", "headers": {"content-type": JSON}}),
        ("POST", "/v1/qr/payments", {"content": b"x", "headers": {"content-type": "text/plain"}}),
        ("POST", "/v1/qr/payments", {"json": body("\u00e9") | {"amount": 0}}),
        ("GET", "/v1/qr/nothing", {}),
    ]
    with structlog.testing.capture_logs() as logs:
        async with client(svc, "10.0.0.3") as http:
            for _ in range(10):
                for method, path, kw in bad:
                    assert 400 <= (await http.request(method, path, **kw)).status_code < 500
        async with client(svc, "10.0.0.4") as http:
            assert (await http.get("/v1/qr/payments/qrp_x")).status_code == 404
    assert [(e["event"], e["log_level"], e["peer"]) for e in logs] == [
        ("qr_request_rejected", "warning", "10.0.0.3:123"),
        ("qr_request_rejected", "warning", "10.0.0.4:123"),
    ]
    assert logs[0]["problem"] == "unauthorized"
    assert not any("exc_info" in e for e in logs)
    counted = {
        slug: svc.rejected.labels(slug)._value.get()
        for slug in ("unauthorized", "invalid-json", "unsupported-media-type", "validation-error")
    }
    assert counted == dict.fromkeys(counted, 10.0)
    assert svc.rejected.labels("not-found")._value.get() == 11


# Never a 500 for bad input -------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_fields = st.sampled_from(
    ["qr", "amount", "currency", "merchant_id", "idempotency_key", "payer_pan", "x"]
)
_values = st.one_of(
    _json,
    st.sampled_from(["000201", "hQVDUFYwMQ==", "156", "M00000000000001", WALLET, "", "0" * 600]),
)


# Valid bodies but for ``qr``: any text (non-ASCII, astral, surrogates), bare or after the
# MPM prefix, as JSON escapes or raw UTF-8, so the request reaches the fingerprint and codecs.
_qr_text = st.text(max_size=40) | st.text(max_size=40).map(lambda t: MPM_PREFIX + t)
_valid_but_qr = st.builds(
    lambda qr, raw: json.dumps(
        body(qr, payer_pan=WALLET) if qr.startswith(MPM_PREFIX) else body(qr),
        ensure_ascii=not raw,
    ).encode("utf-8", "surrogatepass"),
    _qr_text,
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.one_of(
        st.dictionaries(_fields, _values, max_size=7).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=64),
        _json.map(lambda v: json.dumps(v).encode()),
        _valid_but_qr,
    ),
    path=st.sampled_from(["/v1/qr/payments", "/v1/qr/mpm", "/v1/qr/payments/qrp_x/refund"]),
)
def test_no_input_gives_a_500(payload: bytes, path: str) -> None:
    async def main() -> None:
        async with client(service()) as http:
            resp = await http.post(path, content=payload)
        assert resp.status_code < 500, resp.text
        if resp.status_code >= 400:
            assert resp.headers["content-type"] == problems.MEDIA_TYPE

    anyio.run(main)


async def _answer_early(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _drained(
    chunks: list[bytes], *, chunked: bool = False, stalls: bool = False, timeout: float = 5.0
) -> Any:
    """The headers DrainBody (limit 100) sends for an app answering at once, the body coming
    as ``chunks`` (``stalls``: then nothing more, ever), and the chunks it did not read."""
    sent: list[Any] = []
    left = list(chunks)

    async def receive() -> dict[str, Any]:
        if not left:
            await anyio.sleep_forever()  # a client that stopped sending mid-body
        return {"type": "http.request", "body": left.pop(0), "more_body": bool(left) or stalls}

    async def send(message: Any) -> None:
        sent.append(message)

    declared = [] if chunked else [(b"content-length", b"%d" % len(b"".join(chunks)))]
    scope = {"type": "http", "headers": declared}
    await DrainBody(_answer_early, limit=100, timeout=timeout)(scope, receive, send)
    return sent[0]["headers"], left


@pytest.mark.anyio
async def test_an_early_answer_drains_the_body_or_closes_the_connection() -> None:
    close = (b"connection", b"close")
    assert await _drained([b"a" * 40, b"b" * 40]) == ([], [])  # read: the connection stays
    assert await _drained([b""]) == ([], [])  # no body
    assert await _drained([b"a" * 200]) == ([close], [b"a" * 200])  # declared too large
    # A body past the limit is read up to the limit only.
    assert await _drained([b"a" * 80] * 3, chunked=True) == ([close], [b"a" * 80])
    # ...and a body that stops coming is not waited for past the timeout.
    assert await _drained([b"a" * 10], stalls=True, timeout=0.01) == ([close], [])


@pytest.mark.anyio
async def test_errors_escaping_starlette_still_answer_a_problem() -> None:
    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("before any byte was sent")

    async def half_sent(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("after the start")

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_SwallowErrors(crashing)), base_url="http://qr"
    ) as http:
        resp = await http.get("/anything")
    assert resp.status_code == 500
    assert resp.json()["type"] == problems.INTERNAL.uri
    assert "before" not in resp.text
    # An answer cut short is not passed off as whole: the server gets the error (and aborts).
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_SwallowErrors(half_sent)), base_url="http://qr"
    ) as http:
        with pytest.raises(RuntimeError, match="after the start"):
            await http.get("/anything")
