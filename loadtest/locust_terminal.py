"""Locust users for the terminal interface (ISO 8583 over TCP, or TLS with ``tls://``).

    .venv/bin/locust -f loadtest/locust_terminal.py --headless -u 20 -r 10 -t 30s \\
        --host tcp://127.0.0.1:8583 --csv var/locust-terminal --html var/locust-terminal.html

Each user is one connection of terminal T0000001 (fixed TPK, no MAC): magstripe purchases and
PIN purchases (format-0 PIN block under the TPK) three to one, on fresh synthetic cards, and a
0400 reversal for 5 % of approvals. Every answer other than ``00`` is a failure named by its
code (``ResponseCodeError('51')``). ``$PAYSWITCH_DATA`` names another dataset;
``$PAYSWITCH_TLS_CA`` the CA for ``tls://`` hosts (default var/certs/ca.pem).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from locust import User, constant, task

from loadtest.locust_support import TerminalSession, factory_from_env


class TerminalUser(User):
    host = "tcp://127.0.0.1:8583"
    wait_time = constant(0)
    reversal_share = 0.05

    def on_start(self) -> None:
        url = urlsplit(self.host or TerminalUser.host)
        tls = url.scheme == "tls"
        ca = Path(os.environ.get("PAYSWITCH_TLS_CA", "var/certs/ca.pem")) if tls else None
        self.session = TerminalSession(
            url.hostname or "127.0.0.1",
            url.port or (8584 if tls else 8583),
            self.environment.events.request.fire,
            factory_from_env(dict(os.environ)),
            tls_ca=ca,
            reversal_share=self.reversal_share,
        )

    def on_stop(self) -> None:
        self.session.close()

    @task(3)
    def magstripe_purchase(self) -> None:
        self.session.transact("magstripe")

    @task(1)
    def pin_purchase(self) -> None:
        self.session.transact("pin_tpk")
