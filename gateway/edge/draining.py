"""Graceful shutdown support: a :class:`~gateway.flow.switch.Switch` that counts requests in flight
and, once draining, answers new transactions ``91`` at once instead of starting them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from gateway.flow.switch import ECHO, ECHO_REVERSAL, Switch
from protocols.message import Message
from protocols.mti import is_request, response_mti

if TYPE_CHECKING:
    from gateway.risk.verification import QrVerification


class DrainingSwitch(Switch):
    in_flight: int = 0
    draining: bool = False
    _idle: anyio.Event | None = None

    async def handle(
        self, req: Message, raw: bytes = b"", *, qr: QrVerification | None = None
    ) -> Message | None:
        if self.draining and req.mti != "0800" and is_request(req.mti):
            return self._refused(req)
        self.in_flight += 1
        try:
            return await super().handle(req, raw, qr=qr)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    def _refused(self, req: Message) -> Message:
        echo = ECHO_REVERSAL if req.mti[1] == "4" else ECHO
        resp = Message(response_mti(req.mti), {k: req.fields[k] for k in echo if k in req})
        resp["39"] = "91"
        self.metrics.observe_transaction(req.mti, "91", 0.0)
        return resp

    async def drain(self, grace: float) -> int:
        """Refuse new transactions and wait (at most ``grace`` s) for the ones in flight;
        returns how many were still running when the grace period ended."""
        self.draining = True
        with anyio.move_on_after(grace):
            while self.in_flight:
                self._idle = anyio.Event()
                await self._idle.wait()
        return self.in_flight
