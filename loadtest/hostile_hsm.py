"""An HSM that answers the switch with mutated bytes, for ``loadtest fuzz-live --hostile-hsm``:
the switch's HSM client meets a peer's garbage (matching by header, response codes, fields).

It is the HSM simulator (``hsm_sim``, the profile's hsm.toml and LMK) with one change: each
response but the diagnostics' (``NC``: the switch's readiness check) is, with probability
``ratio``, mutated before it is framed (``loadtest.mutate``). It runs in a thread of its own,
beside the stack ``loadtest.bench.start_stack(hsm=False)`` starts.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections import Counter
from pathlib import Path

import anyio

from hsm_sim.core import HsmCore
from hsm_sim.lmk import Lmk
from loadtest.mutate import mutate

_MAX = 8000


class HostileHsmCore(HsmCore):
    def __init__(
        self,
        lmk: Lmk,
        *,
        firmware: str,
        disabled_commands: tuple[str, ...],
        ratio: float,
        seed: int,
    ) -> None:
        super().__init__(lmk, firmware=firmware, disabled_commands=disabled_commands)
        self.rnd = random.Random(seed)
        self.ratio = ratio
        self.answers: Counter[str] = Counter()

    def process(self, payload: bytes) -> bytes:
        answer = super().process(payload)
        if payload[4:6] == b"NC" or self.rnd.random() >= self.ratio:
            self.answers["intact"] += 1
            return answer
        self.answers["mutated"] += 1
        return mutate(answer, self.rnd)[:_MAX]


class HostileHsmThread:
    """The profile's HSM on ``port``, mutating its responses, in a thread until :meth:`stop`."""

    def __init__(self, conf: Path, port: int, *, ratio: float, seed: int) -> None:
        from hsm_sim.config import HsmConfig
        from hsm_sim.server import HsmServer
        from kit.conf import load
        from kit.logs import configure

        configure("critical")  # its complaints about the switch are not this run's findings
        config = dataclasses.replace(load(HsmConfig, conf / "hsm.toml"), port=port)
        self.core = HostileHsmCore(
            config.load_lmk(),
            firmware=config.firmware,
            disabled_commands=config.disabled_commands,
            ratio=ratio,
            seed=seed,
        )
        self.server = HsmServer(config, core=self.core)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile-hsm", daemon=True)

    @property
    def answers(self) -> Counter[str]:
        return self.core.answers

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the hostile HSM did not start")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(self.server.serve)
                self._started.set()
                await anyio.to_thread.run_sync(self._stop.wait)  # set from another thread
                tg.cancel_scope.cancel()

        anyio.run(main, backend="asyncio")
