"""EMV tag dictionary: names for logs, how much of each value may be shown, expected lengths.

Sources: EMV 4.4 Book 3 Annex A (data elements dictionary), EMV Contactless Book C-2/C-3 for
the kernel tags, EMVCo QRCPS for the consumer-presented QR templates. Lengths are in bytes.

``mask`` says what a log may show: ``"clear"`` the value as hex, ``"pan"`` first 6 / last 4
digits only, ``"hide"`` nothing but the length. Tags that are not in this dictionary are
treated as ``"hide"``: a proprietary tag may carry anything.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

__all__ = ["TAGS", "Mask", "TagInfo", "tag_info"]

Mask = Literal["clear", "pan", "hide"]


class TagInfo(NamedTuple):
    name: str
    mask: Mask = "clear"
    min_len: int = 0
    max_len: int = 0xFFFF

    @property
    def sensitive(self) -> bool:
        """True when a log must not show the value in clear."""
        return self.mask != "clear"


UNKNOWN: Final = TagInfo("unknown", "hide")

TAGS: Final[dict[str, TagInfo]] = {
    # Card data that logs must never show in clear (PCI DSS: PAN, track data, name, expiry).
    "56": TagInfo("Track 1 Data", "hide", 0, 76),
    "57": TagInfo("Track 2 Equivalent Data", "hide", 0, 19),
    "5A": TagInfo("Application Primary Account Number (PAN)", "pan", 0, 10),
    "5F20": TagInfo("Cardholder Name", "hide", 2, 26),
    "5F24": TagInfo("Application Expiration Date", "hide", 3, 3),
    "5F30": TagInfo("Service Code", "hide", 2, 2),
    "5F53": TagInfo("International Bank Account Number (IBAN)", "hide", 0, 34),
    "99": TagInfo("Transaction PIN Data", "hide"),
    "9F0B": TagInfo("Cardholder Name Extended", "hide", 27, 45),
    "9F1F": TagInfo("Track 1 Discretionary Data", "hide"),
    "9F20": TagInfo("Track 2 Discretionary Data", "hide"),
    "9F6B": TagInfo("Track 2 Data", "hide", 0, 19),
    # Templates (constructed).
    "61": TagInfo("Application Template"),
    "62": TagInfo("Common Data Template (QRCPS)"),
    "63": TagInfo("Application Specific Transparent Template (QRCPS)"),
    "64": TagInfo("Common Data Transparent Template (QRCPS)"),
    "6F": TagInfo("File Control Information (FCI) Template"),
    "70": TagInfo("READ RECORD Response Message Template"),
    "71": TagInfo("Issuer Script Template 1"),
    "72": TagInfo("Issuer Script Template 2"),
    "73": TagInfo("Directory Discretionary Template"),
    "77": TagInfo("Response Message Template Format 2"),
    "A5": TagInfo("FCI Proprietary Template"),
    "BF0C": TagInfo("FCI Issuer Discretionary Data"),
    # Primitive data elements.
    "4F": TagInfo("Application Identifier (ADF Name)", "clear", 5, 16),
    "50": TagInfo("Application Label", "clear", 1, 16),
    "5F25": TagInfo("Application Effective Date", "clear", 3, 3),
    "5F28": TagInfo("Issuer Country Code", "clear", 2, 2),
    "5F2A": TagInfo("Transaction Currency Code", "clear", 2, 2),
    "5F2D": TagInfo("Language Preference", "clear", 2, 8),
    "5F34": TagInfo("Application PAN Sequence Number", "clear", 1, 1),
    "5F36": TagInfo("Transaction Currency Exponent", "clear", 1, 1),
    "5F50": TagInfo("Issuer URL"),
    "5F54": TagInfo("Bank Identifier Code (BIC)", "clear", 8, 11),
    "5F55": TagInfo("Issuer Country Code (alpha2 format)", "clear", 2, 2),
    "5F56": TagInfo("Issuer Country Code (alpha3 format)", "clear", 3, 3),
    "5F57": TagInfo("Account Type", "clear", 1, 1),
    "80": TagInfo("Response Message Template Format 1"),
    "81": TagInfo("Amount, Authorised (Binary)", "clear", 4, 4),
    "82": TagInfo("Application Interchange Profile", "clear", 2, 2),
    "83": TagInfo("Command Template"),
    "84": TagInfo("Dedicated File (DF) Name", "clear", 5, 16),
    "85": TagInfo("Payload Format Indicator (QRCPS)"),
    "86": TagInfo("Issuer Script Command", "clear", 0, 261),
    "87": TagInfo("Application Priority Indicator", "clear", 1, 1),
    "88": TagInfo("Short File Identifier (SFI)", "clear", 1, 1),
    "89": TagInfo("Authorisation Code", "clear", 6, 6),
    "8A": TagInfo("Authorisation Response Code", "clear", 2, 2),
    "8C": TagInfo("Card Risk Management Data Object List 1 (CDOL1)", "clear", 0, 252),
    "8D": TagInfo("Card Risk Management Data Object List 2 (CDOL2)", "clear", 0, 252),
    "8E": TagInfo("Cardholder Verification Method (CVM) List", "clear", 10, 252),
    "8F": TagInfo("Certification Authority Public Key Index", "clear", 1, 1),
    "90": TagInfo("Issuer Public Key Certificate"),
    "91": TagInfo("Issuer Authentication Data", "clear", 8, 16),
    "92": TagInfo("Issuer Public Key Remainder"),
    "93": TagInfo("Signed Static Application Data"),
    "94": TagInfo("Application File Locator (AFL)", "clear", 0, 252),
    "95": TagInfo("Terminal Verification Results", "clear", 5, 5),
    "97": TagInfo("Transaction Certificate Data Object List (TDOL)", "clear", 0, 252),
    "98": TagInfo("Transaction Certificate (TC) Hash Value", "clear", 20, 20),
    "9A": TagInfo("Transaction Date", "clear", 3, 3),
    "9B": TagInfo("Transaction Status Information", "clear", 2, 2),
    "9C": TagInfo("Transaction Type", "clear", 1, 1),
    "9D": TagInfo("Directory Definition File (DDF) Name", "clear", 5, 16),
    "9F01": TagInfo("Acquirer Identifier", "clear", 6, 6),
    "9F02": TagInfo("Amount, Authorised (Numeric)", "clear", 6, 6),
    "9F03": TagInfo("Amount, Other (Numeric)", "clear", 6, 6),
    "9F04": TagInfo("Amount, Other (Binary)", "clear", 4, 4),
    "9F05": TagInfo("Application Discretionary Data", "clear", 1, 32),
    "9F06": TagInfo("Application Identifier (AID) - terminal", "clear", 5, 16),
    "9F07": TagInfo("Application Usage Control", "clear", 2, 2),
    "9F08": TagInfo("Application Version Number (card)", "clear", 2, 2),
    "9F09": TagInfo("Application Version Number (terminal)", "clear", 2, 2),
    "9F0D": TagInfo("Issuer Action Code - Default", "clear", 5, 5),
    "9F0E": TagInfo("Issuer Action Code - Denial", "clear", 5, 5),
    "9F0F": TagInfo("Issuer Action Code - Online", "clear", 5, 5),
    "9F10": TagInfo("Issuer Application Data", "clear", 0, 32),
    "9F11": TagInfo("Issuer Code Table Index", "clear", 1, 1),
    "9F12": TagInfo("Application Preferred Name", "clear", 1, 16),
    "9F13": TagInfo("Last Online ATC Register", "clear", 2, 2),
    "9F14": TagInfo("Lower Consecutive Offline Limit", "clear", 1, 1),
    "9F15": TagInfo("Merchant Category Code", "clear", 2, 2),
    "9F16": TagInfo("Merchant Identifier", "clear", 15, 15),
    "9F17": TagInfo("PIN Try Counter", "clear", 1, 1),
    "9F18": TagInfo("Issuer Script Identifier", "clear", 4, 4),
    "9F19": TagInfo("Token Requestor ID", "clear", 6, 6),
    "9F1A": TagInfo("Terminal Country Code", "clear", 2, 2),
    "9F1B": TagInfo("Terminal Floor Limit", "clear", 4, 4),
    "9F1C": TagInfo("Terminal Identification", "clear", 8, 8),
    "9F1D": TagInfo("Terminal Risk Management Data", "clear", 1, 8),
    "9F1E": TagInfo("Interface Device (IFD) Serial Number", "clear", 8, 8),
    "9F21": TagInfo("Transaction Time", "clear", 3, 3),
    "9F22": TagInfo("Certification Authority Public Key Index (terminal)", "clear", 1, 1),
    "9F23": TagInfo("Upper Consecutive Offline Limit", "clear", 1, 1),
    "9F24": TagInfo("Payment Account Reference (PAR)", "clear", 29, 29),
    "9F25": TagInfo("Last 4 Digits of PAN", "clear", 2, 2),
    "9F26": TagInfo("Application Cryptogram", "clear", 8, 8),
    "9F27": TagInfo("Cryptogram Information Data", "clear", 1, 1),
    "9F2D": TagInfo("ICC PIN Encipherment Public Key Certificate"),
    "9F32": TagInfo("Issuer Public Key Exponent", "clear", 1, 3),
    "9F33": TagInfo("Terminal Capabilities", "clear", 3, 3),
    "9F34": TagInfo("Cardholder Verification Method (CVM) Results", "clear", 3, 3),
    "9F35": TagInfo("Terminal Type", "clear", 1, 1),
    "9F36": TagInfo("Application Transaction Counter (ATC)", "clear", 2, 2),
    "9F37": TagInfo("Unpredictable Number", "clear", 4, 4),
    "9F38": TagInfo("Processing Options Data Object List (PDOL)"),
    "9F39": TagInfo("Point-of-Service (POS) Entry Mode", "clear", 1, 1),
    "9F3A": TagInfo("Amount, Reference Currency", "clear", 4, 4),
    "9F3B": TagInfo("Application Reference Currency", "clear", 2, 8),
    "9F3C": TagInfo("Transaction Reference Currency Code", "clear", 2, 2),
    "9F3D": TagInfo("Transaction Reference Currency Exponent", "clear", 1, 1),
    "9F40": TagInfo("Additional Terminal Capabilities", "clear", 5, 5),
    "9F41": TagInfo("Transaction Sequence Counter", "clear", 2, 4),
    "9F42": TagInfo("Application Currency Code", "clear", 2, 2),
    "9F43": TagInfo("Application Reference Currency Exponent", "clear", 1, 4),
    "9F44": TagInfo("Application Currency Exponent", "clear", 1, 1),
    "9F45": TagInfo("Data Authentication Code", "clear", 2, 2),
    "9F46": TagInfo("ICC Public Key Certificate"),
    "9F47": TagInfo("ICC Public Key Exponent", "clear", 1, 3),
    "9F48": TagInfo("ICC Public Key Remainder"),
    "9F49": TagInfo("Dynamic Data Authentication Data Object List (DDOL)", "clear", 0, 252),
    "9F4A": TagInfo("Static Data Authentication Tag List"),
    "9F4B": TagInfo("Signed Dynamic Application Data"),
    "9F4C": TagInfo("ICC Dynamic Number", "clear", 2, 8),
    "9F4D": TagInfo("Log Entry", "clear", 2, 2),
    "9F4E": TagInfo("Merchant Name and Location"),
    "9F4F": TagInfo("Log Format"),
    "9F53": TagInfo("Transaction Category Code", "clear", 1, 1),
    "9F5B": TagInfo("Issuer Script Results"),
    "9F66": TagInfo("Terminal Transaction Qualifiers (TTQ)", "clear", 4, 4),
    "9F6C": TagInfo("Card Transaction Qualifiers (CTQ)", "clear", 2, 2),
    "9F6E": TagInfo("Form Factor Indicator / Third Party Data"),
    "9F7C": TagInfo("Customer Exclusive Data", "clear", 0, 32),
}


def tag_info(tag: str) -> TagInfo:
    """Dictionary entry of ``tag`` (uppercase hex); unknown tags are named and hidden."""
    return TAGS.get(tag, UNKNOWN)
