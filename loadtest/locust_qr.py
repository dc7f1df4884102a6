"""Locust users for the QR acquirer API (POST /v1/qr/payments, SPEC "QR acquirer API").

    .venv/bin/locust -f loadtest/locust_qr.py --headless -u 20 -r 10 -t 30s \\
        --host http://127.0.0.1:8080 --csv var/locust-qr --html var/locust-qr.html

Each payment is a consumer-presented QR (EMVCo CPM, base64 BER-TLV) for a fresh synthetic card,
with the demo acquirer's bearer key and merchant and a new idempotency key. A payment whose
``response_code`` is not ``00`` is a failure named by its code (``ResponseCodeError('51')``);
an HTTP error by its status (``ResponseCodeError('HTTP 401')``).
"""

from __future__ import annotations

import os

from locust import HttpUser, constant, task

from loadtest.locust_support import factory_from_env, qr_outcome


class QrUser(HttpUser):
    host = "http://127.0.0.1:8080"
    wait_time = constant(0)

    def on_start(self) -> None:
        self.factory = factory_from_env(dict(os.environ))
        self.headers = {"Authorization": f"Bearer {self.factory.qr_api_key}"}

    @task
    def qr_payment(self) -> None:
        body = self.factory.qr_body()
        with self.client.post(
            "/v1/qr/payments",
            json=body,
            headers=self.headers,
            name="qr payment",
            catch_response=True,
        ) as resp:
            failure = qr_outcome(resp.status_code, resp.content or b"")
            if failure is None:
                resp.success()
            else:
                resp.failure(failure)
