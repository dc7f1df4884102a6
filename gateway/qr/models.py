"""Request and response bodies of the QR acquirer API (SPEC "QR acquirer API"), as pydantic
models: strict types (``"1250"`` is not an amount, ``true`` is not an integer), unknown members
refused, so every defect comes back as a 422 problem that names the member."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols import qr_cpm

MPM_PREFIX = "000201"
"""Every merchant-presented payload starts with ID 00, length 02, value 01; no base64 text of a
consumer-presented payload can (its first byte, tag 85, encodes as ``h``)."""

Amount = Annotated[int, Field(gt=0, le=999_999_999_999, description="minor units")]
Currency = Annotated[str, Field(pattern=r"^[0-9]{3}$", description="ISO 4217 numeric")]
MerchantId = Annotated[str, Field(pattern=r"^[0-9A-Za-z]{1,15}$")]
IdempotencyKey = Annotated[str, Field(pattern=r"^[!-~]{1,128}$", description="printable ASCII")]
Pan = Annotated[str, Field(pattern=r"^[0-9]{12,19}$")]
PayerFactor = Literal["password", "biometric", "device_certificate", "e_signature", "otp"]
"""What a wallet may state it verified (gateway.risk.verification.Factor); another is a 422."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PaymentRequest(_Body):
    qr: Annotated[str, Field(min_length=1, max_length=qr_cpm.MAX_PAYLOAD)]
    amount: Amount
    currency: Currency
    merchant_id: MerchantId
    idempotency_key: IdempotencyKey
    payer_pan: Pan | None = Field(default=None, repr=False)
    """The wallet's funding card or token; merchant-presented payloads only."""
    payer_verification: list[PayerFactor] | None = Field(default=None, max_length=5)
    """What the wallet verified before paying; absent: nothing. With the code's kind
    (static or dynamic) it makes the payment's tier of the payer's daily QR limit."""

    @property
    def kind(self) -> Literal["mpm", "cpm"]:
        return "mpm" if self.qr.startswith(MPM_PREFIX) else "cpm"

    @model_validator(mode="after")
    def _payer_matches_kind(self) -> PaymentRequest:
        if self.kind == "mpm" and self.payer_pan is None:
            raise ValueError("payer_pan is required with a merchant-presented QR code")
        if self.kind == "cpm" and self.payer_pan is not None:
            raise ValueError("payer_pan is only for merchant-presented QR codes")
        return self


class VerifyRequest(_Body):
    otp: str = Field(pattern=r"^[0-9]{6}$", repr=False)
    """The payer's one-time code (RFC 6238 TOTP, 6 digits); never logged or stored."""


class RefundRequest(_Body):
    amount: Amount
    idempotency_key: IdempotencyKey


class MpmRequest(_Body):
    merchant_id: MerchantId
    amount: Amount | None = None
    """Given: a dynamic QR code for exactly this amount; absent: a static one."""
    currency: Currency | None = None
    """Default: the currency of the merchant's country."""


class RefundView(BaseModel):
    refund_id: str
    payment_id: str
    status: Literal["approved", "declined"]
    response_code: str
    auth_code: str | None
    rrn: str
    amount: int
    currency: str
    created_at: str


class PaymentView(BaseModel):
    payment_id: str
    status: Literal["approved", "declined"]
    response_code: str
    auth_code: str | None
    rrn: str
    amount: int
    currency: str
    created_at: str
    merchant_id: str
    kind: Literal["mpm", "cpm"]
    masked_pan: str
    refunded_amount: int
    refunds: list[RefundView]


class MpmView(BaseModel):
    qr: str
    crc: str
    merchant_id: str
    dynamic: bool
    amount: int | None
    currency: str
    reference: str | None
