"""The AnyIO Redis client: replies, errors, EVALSHA fallback, timeouts, broken servers."""

from __future__ import annotations

import contextlib
import uuid

import anyio
import anyio.abc
import pytest

from gateway.risk.resp import (
    LuaScript,
    RedisAddress,
    RedisClient,
    RedisConnectionError,
    RedisReplyError,
    RedisTimeoutError,
    encode_command,
    parse_reply,
)

pytestmark = pytest.mark.anyio


def test_encode_and_parse_url() -> None:
    assert encode_command(("SET", "k", 12, b"\x00")) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$1\r\n\x00\r\n"
    )
    addr = RedisAddress.parse("rediss://user:p%40ss@redis.example:6380/15")
    assert (addr.host, addr.port, addr.db, addr.username, addr.password, addr.tls) == (
        "redis.example",
        6380,
        15,
        "user",
        "p@ss",
        True,
    )
    assert RedisAddress.parse("redis://localhost").db == 0
    with pytest.raises(ValueError, match="redis://"):
        RedisAddress.parse("http://localhost")
    with pytest.raises(ValueError, match="database"):
        RedisAddress.parse("redis://localhost/x")


async def test_commands_and_pool_reuse(redis_url: str) -> None:
    key = f"test:risk:resp:{uuid.uuid4().hex}"
    client = RedisClient(redis_url, pool_size=2, timeout=5.0)
    try:
        assert await client.execute("PING") == "PONG"
        assert await client.execute("SET", key, "v", "EX", 60) == "OK"
        assert await client.execute("GET", key) == b"v"
        assert await client.execute("INCRBY", f"{key}:n", 5) == 5
        assert await client.execute("MGET", key, f"{key}:none") == [b"v", None]
        with pytest.raises(RedisReplyError, match="WRONGTYPE"):
            await client.execute("LPUSH", key, "x")
        assert await client.execute("DEL", key, f"{key}:n") == 2
        assert client.connects == 1  # an error reply does not spoil the connection
    finally:
        await client.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.execute("PING")


async def test_evalsha_falls_back_to_eval(redis_url: str) -> None:
    # a script the server cannot have cached yet: its text is unique
    script = LuaScript(f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1]}}")
    client = RedisClient(redis_url, timeout=5.0)
    try:
        assert await client.run_script(script, ("k",), ("a",)) == [b"k", b"a"]
        assert client.eval_fallbacks == 1
        assert await client.run_script(script, ("k",), ("b",)) == [b"k", b"b"]
        assert client.eval_fallbacks == 1  # cached by the EVAL
        broken = LuaScript(f"-- {uuid.uuid4().hex}\nreturn redis.call('NOPE')")
        with pytest.raises(RedisReplyError):
            await client.run_script(broken, (), ())
    finally:
        await client.aclose()


async def _fake_server() -> tuple[anyio.abc.Listener[anyio.abc.SocketStream], int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    return listener, listener.extra(anyio.abc.SocketAttribute.local_port)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, RedisTimeoutError),  # says nothing: timeout
        (b"?garbage\r\n", RedisConnectionError),
        (b":12x\r\n", RedisConnectionError),
        (b"$5\r\nab", RedisConnectionError),  # closes mid-reply
    ],
)
async def test_broken_servers(reply: bytes | None, error: type[Exception]) -> None:
    listener, port = await _fake_server()

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            if reply is None:
                await anyio.sleep_forever()
            else:
                await stream.send(reply)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        client = RedisClient(f"redis://127.0.0.1:{port}", timeout=0.3)
        with pytest.raises(error):
            await client.execute("PING")
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_connection_refused() -> None:
    listener, port = await _fake_server()
    await listener.aclose()
    client = RedisClient(f"redis://127.0.0.1:{port}", timeout=2.0)
    with pytest.raises(RedisConnectionError, match="PING"):
        await client.execute("PING")


REPLIES: list[tuple[bytes, object]] = [
    (b"+OK\r\n", "OK"),
    (b":-12\r\n", -12),
    (b"$-1\r\n", None),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n$1\r\nk\r\n*2\r\n:1\r\n$0\r\n\r\n$-1\r\n", [b"k", [1, b""], None]),
]


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_parse_reply_whole_or_incomplete(wire: bytes, value: object) -> None:
    for cut in range(len(wire)):  # every split a read can make: incomplete until the end
        assert parse_reply(wire[:cut]) is None
    assert parse_reply(wire + b"+next\r\n") == (value, len(wire))
    error = parse_reply(b"-ERR no\r\n")
    assert error is not None
    assert isinstance(error[0], RedisReplyError)
    assert str(error[0]) == "ERR no"
    with pytest.raises(RedisConnectionError, match="malformed"):
        parse_reply(b"?x\r\n")
    with pytest.raises(ValueError, match="invalid literal"):
        parse_reply(b":12x\r\n")


async def test_pooled_connection_times_out_and_is_replaced() -> None:
    """A pooled connection's command is bounded too (on asyncio by the connection's timer)."""
    listener, port = await _fake_server()
    answered = 0

    async def handle(stream: anyio.abc.SocketStream) -> None:
        nonlocal answered
        async with stream:
            with contextlib.suppress(anyio.EndOfStream):  # the client closes first
                await stream.receive()
                answered += 1
                await stream.send(b"+PONG\r\n")
                await stream.receive()  # the next command on this connection: never answered
                await anyio.sleep_forever()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        client = RedisClient(f"redis://127.0.0.1:{port}", pool_size=1, timeout=0.3)
        assert await client.execute("PING") == "PONG"
        with anyio.fail_after(5):
            with pytest.raises(RedisTimeoutError, match="PING timed out"):
                await client.execute("PING")
            assert await client.execute("PING") == "PONG"  # a new connection
        assert (client.connects, answered) == (2, 2)
        await client.aclose()
        tg.cancel_scope.cancel()
