"""The HSM's command processor: decoded host commands in, payShield error codes and results out.

Pure and synchronous (no I/O, no clock): the server feeds it payloads, tests call it directly.
``process`` never raises; whatever goes wrong becomes an error response. Clear keys and PINs
live only in local variables here and are never logged.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from hsm_sim import aes_dukpt, dukpt, emv, keyblock, mac, pinblock, pinverify
from hsm_sim import cvv as cvv_mod
from hsm_sim.errors import (
    HsmCryptoError,
    InvalidInputError,
    KeyLengthError,
    KeyParityError,
    KeySchemeError,
    KeyTypeError,
    PinBlockFormatError,
    PinLengthError,
)
from hsm_sim.keyblock import Attributes, LmkBlocks, Use
from hsm_sim.lmk import ZMK_SCHEMES, Lmk, kcv_hex, parse_hex
from hsm_sim.tdes import has_odd_parity, tdes_ecb_decrypt, tdes_ecb_encrypt
from protocols import hsm as proto
from protocols.errors import LocalProtocolError

log = structlog.get_logger("hsm_sim.core")

DEFAULT_FIRMWARE: Final = "0007-E000"
#: payShield key type codes the simulator accepts in A0/A6/A8 (the LMK scheme has no variants,
#: so the type is checked for validity only).
KEY_TYPES: Final = frozenset(
    {"000", "001", "002", "003", "008", "009", "109", "209", "309", "402", "509"}
)
MAC_KEY_TYPES: Final = frozenset({"003", "008"})
#: Z0's length flags: 1 AES-128, 2 AES-256.
AES_KEY_TYPES: Final = {proto.AES_128: aes_dukpt.AES128, proto.AES_256: aes_dukpt.AES256}

Result = tuple[str, proto.Message | None]


@dataclass(frozen=True, slots=True)
class CoreStatistics:
    """Commands processed, by command code and by error code (no data, counts only)."""

    commands: dict[str, int]
    errors: dict[str, int]


class HsmCore:
    """Executes host commands with the keys under one LMK."""

    def __init__(
        self,
        lmk: str | bytes | Lmk,
        *,
        firmware: str = DEFAULT_FIRMWARE,
        disabled_commands: Iterable[str] = (),
    ) -> None:
        self.lmk = lmk if isinstance(lmk, Lmk) else Lmk(lmk)
        self.blocks = LmkBlocks(self.lmk)
        self.firmware = firmware[:9].ljust(9)
        self.disabled = frozenset(disabled_commands)
        self._commands: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._handlers: dict[type[Any], Callable[[Any], Result]] = {
            proto.Diagnostics: self._nc,
            proto.GenerateKey: self._a0,
            proto.KeyCheckValue: self._bu,
            proto.ImportKey: self._a6,
            proto.ExportKey: self._a8,
            proto.TranslatePinTpkToZpk: self._ca,
            proto.TranslatePinZpkToZpk: self._cc,
            proto.TranslatePinDukptToZpk: self._g0,
            proto.TranslatePinAesDukptToZpk: self._z0,
            proto.VerifyPinPvv: self._ec,
            proto.VerifyPinIbmTpk: self._da,
            proto.VerifyPinIbmZpk: self._ea,
            proto.GenerateCvv: self._cw,
            proto.VerifyCvv: self._cy,
            proto.GenerateMac: self._m6,
            proto.VerifyMac: self._m8,
            proto.VerifyArqc: self._kq,
        }

    def statistics(self) -> CoreStatistics:
        return CoreStatistics(dict(self._commands), dict(self._errors))

    # ------------------------------------------------------------------ entry points

    def process(self, payload: bytes) -> bytes:
        """One command payload in, one response payload out; never raises."""
        try:
            header, request = proto.decode_request(payload)
        except proto.HsmProtocolError as exc:
            self._count(exc.command, exc.error_code)
            log.info(
                "hsm.bad_command", command=exc.command, error_code=exc.error_code, reason=exc.reason
            )
            return proto.encode_error(exc.header, exc.command, exc.error_code)
        error_code, body = self.execute(request)
        code = proto.response_code(request.CODE)
        try:
            return proto.encode_response(header, code, error_code, body)
        except LocalProtocolError as exc:  # a bug of ours: answer, do not crash
            log.error("hsm.encode_failed", command=request.CODE, reason=str(exc))
            return proto.encode_response(header, code, proto.INVALID_INPUT)

    def execute(self, request: proto.Request) -> Result:
        """``(error code, response body or None)`` for a decoded request."""
        code = request.CODE
        if code in self.disabled:
            self._count(code, proto.COMMAND_DISABLED)
            return proto.COMMAND_DISABLED, None
        try:
            error_code, body = self._handlers[type(request)](request)
        except HsmCryptoError as exc:
            error_code, body = exc.error_code, None
        except Exception as exc:  # a bug of ours must not take the HSM down
            log.error("hsm.command_failed", command=code, error=type(exc).__name__)
            error_code, body = proto.INVALID_INPUT, None
        self._count(code, error_code)
        return error_code, body

    def _count(self, command: str, error_code: str) -> None:
        self._commands[command] += 1
        if error_code != proto.OK:
            self._errors[error_code] += 1

    # ------------------------------------------------------------------ helpers

    def _key(
        self,
        key: str,
        parity_error_code: str | None = proto.KEY_PARITY_ERROR,
        use: Use | None = None,
    ) -> bytes:
        """The clear key of a key under the LMK. A key block (``S``) must authenticate and its
        header allow ``use`` (payShield's A codes otherwise); the variant form (``U``) carries
        no usage, so only its parity is checked, as before key blocks."""
        if key[:1] == keyblock.KEY_BLOCK_SCHEME:
            header, clear = self.blocks.unwrap(key)
            if use is not None:
                use.check(header)
            if header.algorithm == keyblock.TDES and len(clear) != 16:
                raise KeyLengthError("TDES keys must be double length")
            return clear
        if key[:1] != "U":
            raise KeySchemeError("keys must be under the LMK (scheme U or S)")
        return self.lmk.decrypt(key, parity_error_code=parity_error_code)

    def _kek(self, zmk: str, *, export: bool) -> tuple[bytes, str]:
        """(clear ZMK, its algorithm) for exporting or importing under it."""
        if keyblock.is_key_block(zmk):
            header, _ = self.blocks.unwrap(zmk)
            aes = header.algorithm == keyblock.AES
            if export:
                use = keyblock.AES_KEK_EXPORT if aes else keyblock.KEK_EXPORT
            else:
                use = keyblock.AES_KEK_IMPORT if aes else keyblock.KEK_IMPORT
            return self._key(zmk, use=use), header.algorithm
        return self._key(zmk), keyblock.TDES

    def _export(self, zmk: str, scheme: str, clear: bytes, attributes: Attributes) -> str:
        """A clear key under a ZMK: a key block (scheme ``S``, B or D after the ZMK's
        algorithm, not exportable again by the receiver) or the variant form (``X``/``U``)."""
        if attributes.exportability not in keyblock.EXPORTABLE:
            raise keyblock.KeyExportError("key is not exportable")
        kek, algorithm = self._kek(zmk, export=True)
        if scheme == keyblock.KEY_BLOCK_SCHEME:
            sent = dataclasses.replace(attributes, exportability=keyblock.NON_EXPORTABLE)
            version = keyblock.version_for(algorithm)
            return scheme + keyblock.wrap(kek, version, sent, clear)
        if scheme not in ZMK_SCHEMES:
            raise KeySchemeError("key scheme under ZMK must be 'U', 'X' or 'S'")
        if algorithm != keyblock.TDES or attributes.algorithm != keyblock.TDES:
            raise KeySchemeError("the variant form under a ZMK is for TDES keys only")
        return scheme + tdes_ecb_encrypt(kek, clear).hex().upper()

    @staticmethod
    def _pin_length_limit(value: str) -> int:
        limit = int(value)
        if not 4 <= limit <= 12:
            raise PinLengthError("maximum PIN length must be 4 to 12")
        return limit

    # ------------------------------------------------------------------ key management

    def _nc(self, _: proto.Diagnostics) -> Result:
        return proto.OK, proto.DiagnosticsResult(self.lmk.check_value(8), self.firmware)

    def _a0(self, req: proto.GenerateKey) -> Result:
        if req.mode not in ("0", "1"):
            raise InvalidInputError("mode must be 0 or 1")
        if req.key_scheme == keyblock.KEY_BLOCK_SCHEME:
            attributes = self._requested_attributes(req)
            clear = keyblock.new_key(attributes.algorithm)
            key = self.blocks.wrap(attributes, clear)
            kcv = keyblock.check_value(attributes.algorithm, clear)
        else:
            if req.key_type.upper() not in KEY_TYPES:
                raise KeyTypeError("unknown key type")
            if req.key_scheme != "U":
                raise KeySchemeError("key scheme under LMK must be U or S")
            key, kcv = self.lmk.generate()
            if req.mode == "0":
                return proto.OK, proto.GeneratedKey(key, kcv, None)
            clear = self.lmk.decrypt(key)
            attributes = Attributes.for_type(req.key_type)
        under_zmk = None
        if req.mode == "1":
            # The layout makes both present in mode 1.
            assert req.zmk is not None
            assert req.zmk_scheme is not None
            under_zmk = self._export(req.zmk, req.zmk_scheme, clear, attributes)
        return proto.OK, proto.GeneratedKey(key, kcv, under_zmk)

    @staticmethod
    def _requested_attributes(req: proto.GenerateKey) -> Attributes:
        key_type = req.key_type.upper()
        if key_type != "FFF" and key_type not in KEY_TYPES:
            raise KeyTypeError("unknown key type")
        # The layout makes all present with scheme S.
        assert req.key_usage is not None
        assert req.algorithm is not None
        assert req.mode_of_use is not None
        assert req.key_version is not None
        assert req.exportability is not None
        attributes = Attributes(
            req.key_usage, req.algorithm, req.mode_of_use, req.key_version, req.exportability
        )
        if key_type != "FFF" and Attributes.for_type(key_type).usage != attributes.usage:
            raise keyblock.KeyUsageError("key usage does not match the key type")
        attributes.header(keyblock.VERSION_AES)  # refuses malformed fields (15)
        return attributes

    def _bu(self, req: proto.KeyCheckValue) -> Result:
        if keyblock.is_key_block(req.key):
            header, clear = self.blocks.unwrap(req.key)
            return proto.OK, proto.KeyCheckValueResult(
                keyblock.check_value(header.algorithm, clear)
            )
        if req.key_length_flag != "1":
            raise InvalidInputError("only double-length keys (flag 1)", error_code="05")
        return proto.OK, proto.KeyCheckValueResult(kcv_hex(self._key(req.key)))

    def _a6(self, req: proto.ImportKey) -> Result:
        key_type = req.key_type.upper()
        if key_type not in KEY_TYPES and not (
            key_type == "FFF" and keyblock.is_key_block(req.key_under_zmk)
        ):
            raise KeyTypeError("unknown key type")
        if req.key_scheme not in ("U", keyblock.KEY_BLOCK_SCHEME):
            raise KeySchemeError("key scheme under LMK must be U or S")
        variant = not keyblock.is_key_block(req.zmk) and not keyblock.is_key_block(
            req.key_under_zmk
        )
        if variant and req.key_scheme == "U":
            key = self.lmk.import_under_zmk(req.zmk, req.key_under_zmk)
            return proto.OK, proto.ImportedKey(key, self.lmk.kcv(key))
        kek, kek_algorithm = self._kek(req.zmk, export=False)
        if keyblock.is_key_block(req.key_under_zmk):
            header, clear = keyblock.unwrap(kek, req.key_under_zmk[1:])
            if header.version_id != keyblock.version_for(kek_algorithm) and not (
                kek_algorithm == keyblock.TDES and header.version_id in ("A", "C")
            ):
                raise keyblock.KeyBlockAuthError("key block version does not fit the ZMK")
            if key_type != "FFF" and Attributes.for_type(key_type).usage != header.key_usage:
                raise keyblock.KeyUsageError("key usage does not match the key type")
            attributes = keyblock.header_attributes(header)
        else:
            if len(req.key_under_zmk) != 33 or req.key_under_zmk[0] not in ZMK_SCHEMES:
                raise KeySchemeError("key under ZMK must be 'U' or 'X' and 32 hex, or 'S'")
            if kek_algorithm != keyblock.TDES:
                raise KeySchemeError("the variant form under a ZMK is for TDES ZMKs only")
            clear = tdes_ecb_decrypt(kek, parse_hex(req.key_under_zmk[1:], length=32))
            if not has_odd_parity(clear):
                raise KeyParityError("imported key parity error", error_code="11")
            attributes = Attributes.for_type(key_type)
        if req.key_scheme == "U":
            if attributes.algorithm != keyblock.TDES or len(clear) != 16:
                raise KeySchemeError("the variant form under the LMK is for TDES keys only")
            key = self.lmk.encrypt(clear)
        else:
            key = self.blocks.wrap(attributes, clear)
        return proto.OK, proto.ImportedKey(key, keyblock.check_value(attributes.algorithm, clear))

    def _a8(self, req: proto.ExportKey) -> Result:
        key_type = req.key_type.upper()
        if key_type not in KEY_TYPES and not (key_type == "FFF" and keyblock.is_key_block(req.key)):
            raise KeyTypeError("unknown key type")
        if (
            not keyblock.is_key_block(req.key)
            and not keyblock.is_key_block(req.zmk)
            and req.key_scheme in ZMK_SCHEMES
        ):
            under_zmk = self.lmk.export_under_zmk(req.zmk, req.key, req.key_scheme)
            return proto.OK, proto.ExportedKey(under_zmk, self.lmk.kcv(req.key))
        if keyblock.is_key_block(req.key):
            header, clear = self.blocks.unwrap(req.key)
            attributes = keyblock.header_attributes(header)
        else:
            clear = self._key(req.key, proto.SECOND_KEY_PARITY_ERROR)
            attributes = Attributes.for_type(key_type)
        under_zmk = self._export(req.zmk, req.key_scheme, clear, attributes)
        return proto.OK, proto.ExportedKey(
            under_zmk, keyblock.check_value(attributes.algorithm, clear)
        )

    # ------------------------------------------------------------------ PIN translation

    def _translate(
        self,
        src: bytes,
        dst: bytes,
        req: proto.TranslatePinTpkToZpk | proto.TranslatePinZpkToZpk,
    ) -> tuple[int, bytes]:
        return pinblock.translate_pin_block(
            src,
            dst,
            parse_hex(req.pin_block, what="PIN block"),
            req.account,
            req.src_format,
            req.dst_format,
            self._pin_length_limit(req.max_pin_length),
        )

    def _ca(self, req: proto.TranslatePinTpkToZpk) -> Result:
        src = self._key(req.tpk, use=keyblock.PIN_DECRYPT)
        dst = self._key(req.zpk, proto.SECOND_KEY_PARITY_ERROR, keyblock.PIN_ENCRYPT)
        n, block = self._translate(src, dst, req)
        return proto.OK, proto.PinTranslated(f"{n:02d}", req.dst_format, block.hex().upper())

    def _cc(self, req: proto.TranslatePinZpkToZpk) -> Result:
        src = self._key(req.src_zpk, use=keyblock.PIN_DECRYPT)
        dst = self._key(req.dst_zpk, proto.SECOND_KEY_PARITY_ERROR, keyblock.PIN_ENCRYPT)
        n, block = self._translate(src, dst, req)
        return proto.OK, proto.PinTranslatedZpk(f"{n:02d}", req.dst_format, block.hex().upper())

    def _g0(self, req: proto.TranslatePinDukptToZpk) -> Result:
        bdk = self._key(req.bdk, use=keyblock.TDES_BDK)
        zpk = self._key(req.zpk, proto.SECOND_KEY_PARITY_ERROR, keyblock.PIN_ENCRYPT)
        pin_key = dukpt.derive_pin_key(bdk, req.ksn)
        n, block = pinblock.translate_pin_block(
            pin_key,
            zpk,
            parse_hex(req.pin_block, what="PIN block"),
            req.account,
            pinblock.FORMAT_ISO0,
            req.dst_format,
        )
        return proto.OK, proto.PinTranslatedDukpt(f"{n:02d}", req.dst_format, block.hex().upper())

    def _z0(self, req: proto.TranslatePinAesDukptToZpk) -> Result:
        bdk_type = AES_KEY_TYPES.get(req.bdk_length)
        pin_key_type = AES_KEY_TYPES.get(req.pin_key_length)
        if bdk_type is None or pin_key_type is None:
            raise InvalidInputError("AES key length flags must be 1 or 2")
        if req.dst_format not in (proto.FORMAT_ISO0, proto.FORMAT_ISO1, proto.FORMAT_ISO3):
            # The ZPK is a TDES key: format 4 under it would be no zone format at all.
            raise PinBlockFormatError("destination format must be a TDES format")
        # AES keys carry no DES parity.
        bdk = self._key(req.bdk, parity_error_code=None, use=keyblock.AES_BDK)
        # A key block's length is inside it, and that is what counts (the flag is for the
        # variant form, whose length the field's size gives).
        if len(bdk) != bdk_type.length and not keyblock.is_key_block(req.bdk):
            raise KeyLengthError("BDK length does not match its flag")
        if len(bdk) not in (16, 32):
            raise KeyLengthError("an AES BDK is AES-128 or AES-256")
        zpk = self._key(req.zpk, proto.SECOND_KEY_PARITY_ERROR, keyblock.PIN_ENCRYPT)
        pin_key = aes_dukpt.derive_pin_key(bdk, req.ksn, pin_key_type)
        n, block = pinblock.translate_pin_block(
            pin_key,
            zpk,
            parse_hex(req.pin_block, what="PIN block"),
            req.account,
            pinblock.FORMAT_ISO4,
            req.dst_format,
        )
        return proto.OK, proto.PinTranslatedAesDukpt(
            f"{n:02d}", req.dst_format, block.hex().upper()
        )

    # ------------------------------------------------------------------ PIN verification

    def _ec(self, req: proto.VerifyPinPvv) -> Result:
        zpk = self._key(req.zpk, use=keyblock.PIN_DECRYPT)
        pvk = self._key(req.pvk, proto.SECOND_KEY_PARITY_ERROR, keyblock.PVK_VISA)
        pin = pinblock.decrypt_pin_block(
            zpk, req.pin_block_format, parse_hex(req.pin_block, what="PIN block"), req.account
        )
        ok = pinverify.verify_visa_pvv(pvk, req.account, pin, req.pvki, req.pvv)
        return (proto.OK if ok else proto.VERIFICATION_FAILURE), None

    def _ibm(self, pin_key: bytes, req: proto.VerifyPinIbmTpk | proto.VerifyPinIbmZpk) -> Result:
        pvk = self._key(req.pvk, proto.SECOND_KEY_PARITY_ERROR, keyblock.PVK_IBM)
        pin = pinblock.decrypt_pin_block(
            pin_key, req.pin_block_format, parse_hex(req.pin_block, what="PIN block"), req.account
        )
        if len(pin) > self._pin_length_limit(req.max_pin_length):
            raise PinLengthError("PIN longer than the maximum PIN length")
        check_length = int(req.check_length)
        if not 4 <= check_length <= 12:
            raise PinLengthError("check length must be 4 to 12")
        data = pinverify.ibm3624_validation_data(req.validation_data, req.account)
        ok = pinverify.verify_ibm3624_offset(
            pvk, data, req.decimalisation_table, pin, req.offset, check_length
        )
        return (proto.OK if ok else proto.VERIFICATION_FAILURE), None

    def _da(self, req: proto.VerifyPinIbmTpk) -> Result:
        return self._ibm(self._key(req.tpk, use=keyblock.PIN_DECRYPT), req)

    def _ea(self, req: proto.VerifyPinIbmZpk) -> Result:
        return self._ibm(self._key(req.zpk, use=keyblock.PIN_DECRYPT), req)

    # ------------------------------------------------------------------ card data, MAC, EMV

    def _cw(self, req: proto.GenerateCvv) -> Result:
        cvk = self._key(req.cvk, use=keyblock.CVK_GENERATE)
        value = cvv_mod.generate_cvv(cvk, req.pan, req.expiry, req.service_code)
        return proto.OK, proto.CvvResult(value)

    def _cy(self, req: proto.VerifyCvv) -> Result:
        cvk = self._key(req.cvk, use=keyblock.CVK_VERIFY)
        ok = cvv_mod.verify_cvv(cvk, req.pan, req.expiry, req.service_code, req.cvv)
        return (proto.OK if ok else proto.VERIFICATION_FAILURE), None

    def _mac(self, req: proto.GenerateMac | proto.VerifyMac) -> tuple[bytes, bytes]:
        """(key, 8-byte MAC) for M6/M8."""
        generate = isinstance(req, proto.GenerateMac)
        if req.mode_flag != "0" or req.input_format != "0":
            raise InvalidInputError("only single-block mode 0 with binary input is supported")
        if req.key_type not in MAC_KEY_TYPES:
            raise KeyTypeError("MAC key must be a TAK (003) or ZAK (008)")
        if req.algorithm == proto.MAC_RETAIL:
            use = keyblock.MAC_RETAIL_GENERATE if generate else keyblock.MAC_RETAIL_VERIFY
            key = self._key(req.key, use=use)
            if req.padding not in ("1", "2"):
                raise InvalidInputError("padding method must be 1 or 2")
            return key, mac.retail_mac(key, req.message, int(req.padding))
        if req.algorithm == proto.MAC_AES_CMAC:
            use = keyblock.MAC_CMAC_GENERATE if generate else keyblock.MAC_CMAC_VERIFY
            # AES keys carry no DES parity.
            key = self._key(req.key, parity_error_code=None, use=use)
            return key, mac.aes_cmac(key, req.message)[:8]
        raise InvalidInputError("MAC algorithm must be 3 (retail) or 6 (AES-CMAC)")

    def _m6(self, req: proto.GenerateMac) -> Result:
        _, value = self._mac(req)
        return proto.OK, proto.MacResult(value.hex().upper())

    def _m8(self, req: proto.VerifyMac) -> Result:
        _, value = self._mac(req)
        expected = parse_hex(req.mac, length=16, what="MAC")
        ok = hmac.compare_digest(value, expected)
        return (proto.OK if ok else proto.VERIFICATION_FAILURE), None

    def _kq(self, req: proto.VerifyArqc) -> Result:
        if req.scheme_id != "1":
            raise InvalidInputError("scheme 1 (EMV common session key) only")
        if req.mode_flag not in (proto.ARQC_VERIFY, proto.ARQC_VERIFY_ARPC, proto.ARPC_ONLY):
            raise InvalidInputError("mode flag must be 0, 1 or 2")
        imk = self._key(req.mk_ac, use=keyblock.MK_AC)
        sk = emv.derive_session_key(emv.icc_master_key_from_input(imk, req.pan_psn), req.atc)
        if req.mode_flag != proto.ARPC_ONLY and not hmac.compare_digest(
            emv.generate_ac(sk, req.transaction_data), req.arqc
        ):
            return proto.VERIFICATION_FAILURE, None
        if req.mode_flag == proto.ARQC_VERIFY:
            return proto.OK, proto.ArpcResult(None)
        return proto.OK, proto.ArpcResult(emv.generate_arpc_method_1(sk, req.arqc, req.arc))
