"""The business day's cutover: at the configured instant, every issuer link is told.

The business date itself needs no event: each request computes it from the clock when it is
received (``Switch``), so it changes at the cutover instant whether or not any message goes
out. This task only announces the change: at each cutover instant (``[switch] cutover`` in
its time zone) every link gets the network management message 0800 with field 70 ``201``
(field 15 the new business date on links that send settlement dates), all links at once. A
link that is down, refuses or does not answer is logged and counted; the date moves on
regardless, and the issuer learns it from field 15 of the next request.

The clock is injected (tests move it): the task sleeps towards the next cutover in steps of at
most ``poll`` seconds and reads the clock again after each, so a stepped wall clock (NTP, or a
test) is followed.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Mapping

import anyio
from anyio.abc import TaskStatus

from gateway.upstream.links import IssuerPool
from kit.logs import get_logger
from protocols.business_day import BusinessCalendar

log = get_logger("gateway.upstream.cutover")


class CutoverAnnouncer:
    def __init__(
        self,
        calendar: BusinessCalendar,
        pools: Mapping[str, IssuerPool],
        *,
        clock: Callable[[], dt.datetime],
        timeout: float = 5.0,
        poll: float = 1.0,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.calendar = calendar
        self.pools = pools
        self.clock = clock
        self.timeout = timeout
        self.poll = poll
        self.on_outcome = on_outcome
        """Called with (issuer, outcome): ``ok``, ``refused``, ``no_answer``."""
        self.announced: deque[tuple[dt.date, dict[str, str | None]]] = deque(maxlen=32)
        """The latest cutovers announced: the new business date and each issuer's field 39."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._sleep_until(self.calendar.next_cutover(self.clock()))
            # The date now (a clock stepped over several cutovers announces today's), and
            # never one announced already (a clock stepped back crosses a cutover again).
            day = self.calendar.business_date(self.clock())
            if self.announced and day <= self.announced[-1][0]:
                continue
            await self.announce(day)

    async def _sleep_until(self, at: dt.datetime) -> None:
        # Polls on purpose: what it waits for is the wall clock, which no event signals.
        while (left := (at - self.clock()).total_seconds()) > 0:  # noqa: ASYNC110
            await anyio.sleep(min(left, self.poll))

    async def announce(self, day: dt.date) -> dict[str, str | None]:
        """0800/201 to every link at once; each issuer's answer code (None: no answer)."""
        answers: dict[str, str | None] = {}

        async def one(pool: IssuerPool) -> None:
            rc = answers[pool.issuer] = await pool.cutover(day, self.timeout)
            outcome = "ok" if rc == "00" else "no_answer" if rc is None else "refused"
            if outcome == "ok":
                log.info("cutover_sent", issuer=pool.issuer, business_date=day.isoformat())
            else:
                log.warning(
                    "cutover_not_acknowledged",
                    issuer=pool.issuer,
                    business_date=day.isoformat(),
                    rc=rc,
                )
            if self.on_outcome is not None:
                self.on_outcome(pool.issuer, outcome)

        async with anyio.create_task_group() as tg:
            for pool in self.pools.values():
                tg.start_soon(one, pool)
        self.announced.append((day, answers))
        log.info("business_day_started", business_date=day.isoformat(), links=len(answers))
        return answers
