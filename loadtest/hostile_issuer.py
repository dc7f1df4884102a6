"""An issuer host that answers the switch with mutated bytes, for ``loadtest fuzz-live
--hostile-issuer ID``: the other side of the issuer link, where the switch decodes a peer's
answers (its link codec, matching by STAN and time, MAC check, SAF retries).

It is the issuer simulator (``issuer_sim``: same accounts, dialect, framing, TLS and pinned
client) with one change: each answer other than a network management one (08xx, so sign-on
and echo keep the link up) is, with probability ``ratio``, mutated before it is framed
(``loadtest.mutate``: bit flips, truncation, a duplicated slice, random bytes or digits). It
runs in a thread of its own, beside the stack ``loadtest.bench.start_stack`` starts.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import anyio

from issuer_sim.server import IssuerServer
from loadtest.mutate import mutate
from protocols.codec import Codec
from protocols.message import Message

_MAX = 8000
"""Mutated answers stay within the link's 8 KiB frames (an oversized one would only fail our
own framing, not reach the switch)."""


class HostileAnswers:
    """Mutates the answers of one :class:`IssuerServer` (its ``encode``, replaced on the
    instance: the server keeps its dialect, framing, MAC keys and pinned client)."""

    def __init__(self, server: IssuerServer, *, ratio: float, seed: int) -> None:
        self.server = server
        self.rnd = random.Random(seed)
        self.ratio = ratio
        self.answers: Counter[str] = Counter()
        """Answers sent, ``mutated`` or ``intact``."""
        self._encode = server.encode
        server.encode = self.encode  # type: ignore[method-assign]

    def encode(self, answer: Message, codec: Codec | None = None) -> bytes:
        raw = self._encode(answer, codec)
        if answer.mti.startswith("08") or self.rnd.random() >= self.ratio:
            self.answers["intact"] += 1
            return raw
        self.answers["mutated"] += 1
        return mutate(raw, self.rnd)[:_MAX]


class HostileThread:
    """A :class:`HostileIssuer` for ``issuer`` on ``port``, served in a thread until
    :meth:`stop`."""

    def __init__(self, conf: Path, issuer: str, port: int, *, ratio: float, seed: int) -> None:
        from issuer_sim.cli import build_server
        from issuer_sim.config import IssuerSimConfig
        from kit.conf import load
        from kit.logs import configure

        configure("critical")  # its complaints about the switch are not this run's findings
        cfg = load(IssuerSimConfig, conf / "issuer-sim.toml")
        self.server = build_server(cfg, conf, issuer, port)
        # Signals reach the main thread only: no SIGUSR1 postings, SIGUSR2 cutover or SIGHUP
        # key change here.
        self.server.postings_file = None
        self.server.cutover_signal = False
        self.server.key_change_signal = False
        self.hostile = HostileAnswers(self.server, ratio=ratio, seed=seed)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hostile-{issuer}", daemon=True)

    @property
    def answers(self) -> Counter[str]:
        return self.hostile.answers

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the hostile issuer did not start")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(self.server.run)
                self._started.set()
                await anyio.to_thread.run_sync(self._stop.wait)  # set from another thread
                tg.cancel_scope.cancel()

        anyio.run(main, backend="asyncio")
