"""``qr-sim``: a QR acquirer talking to the gateway's QR API (SPEC "QR acquirer API").

    qr-sim cpm    --pan 6250940000000019 --amount 1250            # consumer-presented code
    qr-sim mpm    --payer-pan 6250940000000019 --amount 1250      # dynamic merchant code
    qr-sim mpm    --payer-pan 6250940000000019 --amount 990 --static
    qr-sim cpm    --pan 6250940000000019 --amount 150000 --verification password,biometric
    qr-sim status qrp_...
    qr-sim refund qrp_... --amount 500
    qr-sim qr     --merchant M00000000000001 [--amount 1250]      # just generate a merchant code

``cpm`` builds the wallet's payload (base64 BER-TLV, CPV01), ``--cryptogram`` adds an ARQC from
the card's keys (demo IMK-AC of its issuer). ``mpm`` asks the API for the merchant's code
(POST /v1/qr/mpm), then pays it with ``--payer-pan``. The API key defaults to the first QR
acquirer of the dataset. Exit status: 0 approved (or a 2xx answer), 1 declined or a problem
document, 2 gateway unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kit.dataset import Dataset, load_dataset
from protocols import qr_cpm

DEFAULT_AID = "A000000333010101"


class ApiError(Exception):
    """The gateway could not be reached."""


class QrApiClient:
    """A blocking client of the QR API (stdlib only, so it runs anywhere the package does)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 35.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json, application/problem+json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"detail": raw.decode(errors="replace")}
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(str(getattr(exc, "reason", exc))) from None

    def pay(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.request("POST", "/v1/qr/payments", body)

    def status(self, payment_id: str) -> tuple[int, dict[str, Any]]:
        return self.request("GET", f"/v1/qr/payments/{payment_id}")

    def refund(self, payment_id: str, amount: int, key: str) -> tuple[int, dict[str, Any]]:
        body = {"amount": amount, "idempotency_key": key}
        return self.request("POST", f"/v1/qr/payments/{payment_id}/refund", body)

    def merchant_qr(
        self, merchant_id: str, amount: int | None, currency: str | None
    ) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"merchant_id": merchant_id}
        if amount is not None:
            body["amount"] = amount
        if currency is not None:
            body["currency"] = currency
        return self.request("POST", "/v1/qr/mpm", body)


def consumer_payload(
    data: Dataset | None,
    pan: str,
    expiry: str | None,
    *,
    track2: bool,
    cryptogram: bool,
    amount: int,
) -> str:
    """The wallet's consumer-presented payload for ``pan`` (expiry from the dataset if known)."""
    card = next((c for c in data.cards if c.pan == pan), None) if data else None
    expiry = expiry or (card.expiry if card else "3012")
    emv = None
    psn = None
    if cryptogram:
        from loadtest.pos_sim import card_for  # the card's side of EMV lives with pos-sim

        if data is None:
            raise KeyError("--cryptogram needs the dataset (--data) for the card's keys")
        sim = card_for(data, pan)
        emv = sim.icc_data(amount)
        psn = int(sim.psn)
    return qr_cpm.build(
        aid=DEFAULT_AID,
        pan=pan,
        expiry=expiry,
        use_track2=track2,
        pan_sequence=psn,
        emv=emv if emv is not None else (),
    )


def _report(status: int, body: dict[str, Any]) -> int:
    print(f"HTTP {status}")
    print(json.dumps(body, indent=2, ensure_ascii=False))
    if status >= 400:
        return 1
    return 0 if body.get("status", "approved") == "approved" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qr-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["cpm", "mpm", "status", "refund", "qr"])
    parser.add_argument("payment_id", nargs="?", help="for status and refund")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=os.environ.get("QR_API_KEY"))
    parser.add_argument("--data", type=Path, default=Path("conf/demo/data.toml"))
    parser.add_argument("--merchant", default="M00000000000001")
    parser.add_argument("--amount", type=int, default=None)
    parser.add_argument("--currency", default="156")
    parser.add_argument("--pan", default="6250940000000019", help="cpm: the wallet's card")
    parser.add_argument("--expiry", default=None, help="cpm: YYMM (default: from the dataset)")
    parser.add_argument("--track2", action="store_true", help="cpm: send 57 instead of 5A")
    parser.add_argument("--cryptogram", action="store_true", help="cpm: add an ARQC")
    parser.add_argument("--payer-pan", default="6250940000000019", help="mpm: card or token")
    parser.add_argument("--static", action="store_true", help="mpm: a static merchant code")
    parser.add_argument("--idempotency-key", default=None, help="default: a fresh UUID")
    parser.add_argument(
        "--verification",
        default="",
        help="cpm/mpm: payer_verification factors, comma-separated (password, biometric, "
        "device_certificate, e_signature, otp); default: none stated",
    )
    args = parser.parse_args(argv)

    data: Dataset | None = None
    try:
        data = load_dataset(args.data)
    except Exception:
        data = None
    api_key = args.api_key or (data.qr_acquirers[0].api_key if data and data.qr_acquirers else "")
    if not api_key:
        print("qr-sim: no API key (--api-key, $QR_API_KEY or a dataset)", file=sys.stderr)
        return 2
    client = QrApiClient(args.url, api_key)
    key = args.idempotency_key or str(uuid.uuid4())
    amount = 1250 if args.amount is None else args.amount
    try:
        if args.command in ("status", "refund"):
            if not args.payment_id:
                parser.error(f"{args.command} needs a payment id")
            if args.command == "status":
                return _report(*client.status(args.payment_id))
            return _report(*client.refund(args.payment_id, amount, key))
        if args.command == "qr":
            return _report(*client.merchant_qr(args.merchant, args.amount, args.currency))
        if args.command == "cpm":
            try:
                qr = consumer_payload(
                    data,
                    args.pan,
                    args.expiry,
                    track2=args.track2,
                    cryptogram=args.cryptogram,
                    amount=amount,
                )
            except Exception as exc:
                print(f"qr-sim: cannot build the payload: {exc}", file=sys.stderr)
                return 2
            body = {"qr": qr, "amount": amount}
        else:
            status, generated = client.merchant_qr(
                args.merchant, None if args.static else amount, args.currency
            )
            if status != 200:
                return _report(status, generated)
            print(f"merchant QR: {generated['qr']}")
            body = {"qr": generated["qr"], "amount": amount, "payer_pan": args.payer_pan}
        factors = [f for f in args.verification.split(",") if f]
        if factors:
            body["payer_verification"] = factors
        body |= {
            "currency": args.currency,
            "merchant_id": args.merchant,
            "idempotency_key": key,
        }
        return _report(*client.pay(body))
    except ApiError as exc:
        print(f"qr-sim: cannot reach the QR API at {args.url}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
