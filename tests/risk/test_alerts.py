"""Alert events: sinks, Prometheus counter, bounded ring, webhook; counter store failures."""

from __future__ import annotations

import socket
from datetime import timedelta

import anyio
import anyio.abc
import orjson
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client import CollectorRegistry

from gateway.risk import AlertEvent, RiskEngine, WebhookSink
from gateway.risk.redis_counters import RedisCounterStore
from tests.risk.conftest import CARD, T0, Stores, base_config, txn

pytestmark = pytest.mark.anyio


async def test_events_reach_sinks_counter_and_ring(stores: Stores) -> None:
    seen: list[AlertEvent] = []

    def broken(event: AlertEvent) -> None:
        raise RuntimeError("sink down")

    registry = CollectorRegistry()
    engine = RiskEngine(
        base_config(alerts={"ring_size": 3}, velocity=None),
        store=stores.new(),
        sinks=(seen.append, broken),
        registry=registry,
    )
    async with engine:
        for i in range(5):
            assert (await engine.assess(txn(i, mcc="7995"))).rc == "57"
        assert (await engine.assess(txn(9))).rc is None  # nothing fired: no event
        assert len(seen) == 5
        assert engine.alerts.sink_errors == 5
        recent = engine.recent_alerts()
        assert len(recent) == 3
        assert [e["txn_id"] for e in recent] == [e.txn_id for e in seen[:-4:-1]]
        event = recent[0]
        assert event["event"] == "risk.decline"
        assert event["rc"] == "57"
        assert event["masked_pan"] == "476173******0011"
        assert event["rules"] == ["blocked_mcc"]
        assert event["hits"] == [
            {
                "name": "blocked_mcc",
                "kind": "rule",
                "action": "decline",
                "value": "7995",
                "threshold": "blocked_mccs",
                "rc": "57",
            }
        ]
        blob = orjson.dumps(recent)
        assert CARD.encode() not in blob
        assert b"4761730000000011" not in blob
        assert engine.recent_alerts(limit=1) == recent[:1]
        value = registry.get_sample_value(
            "payswitch_risk_events_total", {"rule": "blocked_mcc", "action": "decline"}
        )
        assert value == 5
        assert (
            registry.get_sample_value("payswitch_risk_decisions_total", {"result": "approve"}) == 1
        )


async def test_decision_log_is_json_and_masked(stores: Stores) -> None:
    async with stores.engine(base_config(score={"enabled": True})) as engine:
        decision = await engine.assess(txn(now=T0.replace(hour=18)))
        log = decision.to_log()
        assert log["masked_pan"] == "476173******0011"
        assert log["hits"] == [
            {
                "name": "night_time",
                "kind": "signal",
                "action": "signal",
                "value": "02:00",
                "threshold": "00-06",
                "points": 10,
            }
        ]
        orjson.dumps(log)


async def _serve_http(
    stream: anyio.abc.SocketStream, bodies: list[bytes], got: anyio.Event
) -> None:
    async with stream:
        reader = BufferedByteReceiveStream(stream)
        head = await reader.receive_until(b"\r\n\r\n", 65536)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        bodies.append(await reader.receive_exactly(length))
        await stream.send(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        got.set()


async def test_webhook_posts_events_in_background(stores: Stores) -> None:
    bodies: list[bytes] = []
    got = anyio.Event()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    config = base_config(alerts={"webhook_url": f"http://127.0.0.1:{port}/hook"})
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, lambda s: _serve_http(s, bodies, got))
        async with stores.engine(config) as engine:
            await tg.start(engine.run)
            assert engine.webhook is not None
            assert (await engine.assess(txn(mcc="7995"))).rc == "57"
            with anyio.fail_after(10):
                await got.wait()
            tg.cancel_scope.cancel()
    (body,) = bodies
    event = orjson.loads(body)
    assert event["rules"] == ["blocked_mcc"]
    assert event["masked_pan"] == "476173******0011"


async def test_webhook_full_queue_and_failed_post_are_counted() -> None:
    registry = CollectorRegistry()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    sink = WebhookSink(
        f"http://127.0.0.1:{closed_port}/", timeout=1.0, queue_size=1, registry=registry
    )
    decision_event = AlertEvent(
        event="risk.alert",
        txn_id="t",
        rc=None,
        masked_pan="476173******0011",
        score=None,
        hits=(),
        merchant_id="M",
        terminal_id="T",
        amount=1,
        currency="156",
        at=T0,
    )
    sink(decision_event)
    sink(decision_event)  # queue of one is full: dropped, never blocks
    assert (
        registry.get_sample_value("payswitch_risk_webhook_dropped_total", {"reason": "queue_full"})
        == 1
    )
    sink.close()
    with anyio.fail_after(10):
        await sink.run()  # drains the one queued event, whose POST fails, then returns
    assert (sink.sent, sink.failed) == (0, 1)
    assert (
        registry.get_sample_value("payswitch_risk_webhook_dropped_total", {"reason": "post_failed"})
        == 1
    )
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://x", registry=None)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


async def test_store_down_fails_closed_with_96() -> None:
    store = RedisCounterStore.from_url(_closed_port_url(), prefix="x:", timeout=1.0)
    registry = CollectorRegistry()
    async with RiskEngine(base_config(), store=store, registry=registry) as engine:
        decision = await engine.assess(txn())
        assert decision.rc == "96"
        assert [(h.name, h.kind, h.action) for h in decision.hits] == [
            ("counter_store", "error", "decline")
        ]
        # list rules still decide when they decline: their code is more telling
        assert (await engine.assess(txn(mcc="7995"))).rc == "57"
        await engine.reverse(CARD, 100, T0, currency="156")  # counted, never raises
        assert (
            registry.get_sample_value("payswitch_risk_store_errors_total", {"op": "reverse"}) == 1
        )


async def test_store_down_fails_open_when_configured() -> None:
    store = RedisCounterStore.from_url(_closed_port_url(), prefix="x:", timeout=1.0)
    config = base_config(fail_mode="open")
    async with RiskEngine(config, store=store, registry=CollectorRegistry()) as engine:
        decision = await engine.assess(txn(now=T0 + timedelta(seconds=1)))
        assert decision.rc is None
        assert decision.reservation is None
        assert decision.hits[0].action == "alert"
        assert engine.recent_alerts()[0]["rules"] == ["counter_store"]


async def test_webhook_never_started_closes_cleanly(stores: Stores) -> None:
    config = base_config(alerts={"webhook_url": "http://127.0.0.1:9/hook", "webhook_queue_size": 2})
    async with stores.engine(config) as engine:
        for i in range(3):
            assert (await engine.assess(txn(i, mcc="7995"))).rc == "57"
        assert engine.webhook is not None
    assert len(engine.recent_alerts()) == 3
