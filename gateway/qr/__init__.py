"""The QR acquirer API (SPEC "QR acquirer API"): consumer- and merchant-presented QR payments
routed through the switch's pipeline as ISO 8583 0200 with 22 = 031.

``api`` (Starlette app), ``service`` (the logic, no HTTP), ``models`` (pydantic bodies),
``problems`` (RFC 9457 documents), ``store`` (payments, idempotency keys), ``terminals`` (the
virtual terminal of each acquirer and merchant).
"""

from gateway.qr.api import qr_app
from gateway.qr.service import QrService
from gateway.qr.terminals import with_virtual_terminals

__all__ = ["QrService", "qr_app", "with_virtual_terminals"]
