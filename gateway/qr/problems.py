"""RFC 9457 problem documents for the QR acquirer API: one stable ``type`` URI per problem.

Every error the API answers is a :class:`Problem` rendered as ``application/problem+json`` with
``type``, ``title``, ``status``, ``detail`` and ``instance`` (the request path), plus extension
members where they help (``errors`` for validation, ``remaining`` for refunds). Details name
fields and reasons, never a card number, an API key or the payload itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.responses import Response

PROBLEM_BASE: Final = "https://payswitch.example/problems/"
MEDIA_TYPE: Final = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    slug: str
    title: str
    status: int

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


UNAUTHORIZED: Final = ProblemType("unauthorized", "Missing or unknown API key", 401)
TOO_MANY_FAILURES: Final = ProblemType(
    "too-many-failures", "Too many failed authentications from this address", 429
)
MERCHANT_NOT_ALLOWED: Final = ProblemType(
    "merchant-not-allowed", "Merchant not served by this acquirer", 403
)
NOT_FOUND: Final = ProblemType("not-found", "Resource not found", 404)
METHOD_NOT_ALLOWED: Final = ProblemType("method-not-allowed", "Method not allowed", 405)
INVALID_JSON: Final = ProblemType("invalid-json", "Request body is not valid JSON", 400)
UNSUPPORTED_MEDIA_TYPE: Final = ProblemType(
    "unsupported-media-type", "Request body must be application/json", 415
)
PAYLOAD_TOO_LARGE: Final = ProblemType("payload-too-large", "Request body too large", 413)
VALIDATION: Final = ProblemType("validation-error", "Request body failed validation", 422)
QR_NOT_BASE64: Final = ProblemType("qr-not-base64", "QR payload is not base64", 422)
QR_FORMAT: Final = ProblemType("qr-format", "QR payload is malformed", 422)
QR_CRC: Final = ProblemType("qr-crc", "QR payload fails its CRC check", 422)
QR_LENGTH: Final = ProblemType("qr-length", "QR payload has a bad length", 422)
QR_MISSING: Final = ProblemType("qr-missing-data", "QR payload lacks mandatory data", 422)
QR_VERSION: Final = ProblemType("qr-version", "QR payload format not supported", 422)
QR_CURRENCY: Final = ProblemType("qr-currency", "QR payload currency not supported", 422)
UNKNOWN_MERCHANT: Final = ProblemType("unknown-merchant", "Unknown merchant", 422)
MERCHANT_MISMATCH: Final = ProblemType(
    "merchant-mismatch", "QR code belongs to another merchant", 422
)
AMOUNT_MISMATCH: Final = ProblemType(
    "amount-mismatch", "Amount differs from the dynamic QR code's amount", 422
)
CURRENCY_MISMATCH: Final = ProblemType(
    "currency-mismatch", "Currency differs from the QR code's currency", 422
)
CURRENCY_UNKNOWN: Final = ProblemType("currency-unknown", "No currency known for this use", 422)
IDEMPOTENCY_CONFLICT: Final = ProblemType(
    "idempotency-key-reused", "Idempotency key already used with a different request", 409
)
NOT_REFUNDABLE: Final = ProblemType(
    "payment-not-refundable", "Only an approved payment can be refunded", 409
)
REFUND_EXCEEDS: Final = ProblemType(
    "refund-exceeds-remaining", "Refund exceeds the amount left to refund", 422
)
QR_ALREADY_PAID: Final = ProblemType(
    "qr-already-paid", "This dynamic QR code is paid or being paid", 409
)
PAYMENT_NOT_RECORDED: Final = ProblemType(
    "qr-payment-not-recorded", "The approved payment could not be recorded", 503
)
VERIFICATION_REQUIRED: Final = ProblemType(
    "verification-required", "The payer must prove one more factor for this payment", 403
)
VERIFICATION_FAILED: Final = ProblemType(
    "verification-failed", "The one-time code is not right", 422
)
VERIFICATION_LOCKED: Final = ProblemType(
    "verification-locked", "Too many wrong codes: the payment was not made", 403
)
VERIFICATION_EXPIRED: Final = ProblemType(
    "verification-expired", "The verification window has passed: the payment was not made", 410
)
INTERNAL: Final = ProblemType("internal-error", "Internal error", 500)

ALL: Final[tuple[ProblemType, ...]] = tuple(
    v for v in list(globals().values()) if isinstance(v, ProblemType)
)
# The codecs' stable error codes (protocols.qr_cpm / qr_mpm ``code``) -> problem types.
_BY_QR_CODE: Final[dict[str, ProblemType]] = {
    "qr-format": QR_FORMAT,
    "qr-crc": QR_CRC,
    "qr-length": QR_LENGTH,
    "qr-missing": QR_MISSING,
    "qr-version": QR_VERSION,
    "qr-currency": QR_CURRENCY,
}


def for_qr_code(code: str) -> ProblemType:
    """The problem type of a QR codec error code (a test checks every code has one)."""
    return _BY_QR_CODE.get(code, QR_FORMAT)


def known_qr_codes() -> frozenset[str]:
    return frozenset(_BY_QR_CODE)


class Problem(Exception):
    """An API error; raising it anywhere in a handler answers its problem document."""

    def __init__(
        self,
        kind: ProblemType,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(f"{kind.slug}: {detail}")
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions

    @property
    def status(self) -> int:
        return self.kind.status

    def document(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.kind.uri,
            "title": self.kind.title,
            "status": self.kind.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extensions)
        return doc

    def response(self, instance: str | None = None) -> Response:
        return Response(
            orjson.dumps(self.document(instance)),
            status_code=self.kind.status,
            media_type=MEDIA_TYPE,
            headers=self.headers,
        )
