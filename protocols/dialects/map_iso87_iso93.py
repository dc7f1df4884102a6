"""The translation table between the canonical message (ISO 8583:1987, SPEC's terminal form)
and ISO 8583:1993 links: data only, read by :mod:`protocols.translate`.

Sources: ISO 8583:1993 (MTIs, function codes of field 24, message reason codes of field 25,
action codes of field 39, the POS data code of field 22, original data elements of field 56)
and jPOS 2.1.10's ``ISO93BPackager`` vectors (``../shared/golden/jpos/``: 1420 with 24 ``400``
and 25 ``4021``; 1430 with 39 ``400``; 1814 with 24 ``801`` and 39 ``800``; 22
``51010151334C`` for a chip read with PIN). Where the standard offers no single code, the
choice is written next to the entry. Per-link overrides (``[links.translation]``) replace
entries of these tables; README, "Dialects and translation".
"""

from __future__ import annotations

# -- MTIs ---------------------------------------------------------------------------------
# canonical MTI -> (1993 MTI, field 24 function code, field 25 message reason code or "").
# Responses carry their request's function code (jPOS's 1430 and 1814 echo 24). A 1993 MTI
# that two canonical MTIs share is told apart by field 25 on the way back (the first row of
# that MTI with a matching 25 wins; a 1993 message without 25 takes the row marked in
# MTI_DEFAULT_FROM_LINK).
MTI_TO_LINK: dict[str, tuple[str, str, str]] = {
    "0100": ("1100", "100", ""),  # original authorisation, amount accurate
    "0110": ("1110", "100", ""),
    "0120": ("1120", "100", ""),  # the switch's stand-in advice of an authorisation
    "0130": ("1130", "100", ""),
    "0200": ("1200", "200", ""),  # original financial request
    "0210": ("1210", "200", ""),
    "0220": ("1220", "201", ""),  # completion of a previously approved authorisation
    "0230": ("1230", "201", ""),
    # 1993 reversals are advices (1420): the terminal's reversal request says "unable to
    # deliver message to point of service" (4013), the switch's own timeout advice "timeout
    # waiting for response" (4021, as jPOS's vector). A link wanting 1400 sets an override.
    "0400": ("1420", "400", "4013"),
    "0410": ("1430", "400", "4013"),
    "0420": ("1420", "400", "4021"),
    "0430": ("1430", "400", "4021"),
    "0800": ("1804", "", ""),  # function code from field 70: NETWORK_TO_LINK
    "0810": ("1814", "", ""),
}
# 1993 MTI -> canonical MTI when field 25 names none of the rows above (or is absent).
MTI_DEFAULT_FROM_LINK: dict[str, str] = {
    "1400": "0400",  # a 1993 reversal request, if a peer sends one
    "1410": "0410",
    "1420": "0420",
    "1430": "0430",
}

# -- network management: 1987 field 70 <-> 1993 field 24 ------------------------------------
NETWORK_TO_LINK: dict[str, str] = {
    "001": "801",  # sign-on
    "002": "802",  # sign-off
    "201": "821",  # cutover
    "301": "831",  # echo test
}

# -- field 39: canonical 2-character response code <-> 1993 3-digit action code -------------
# Canonical -> link. Every code of SPEC's response-code table is here, plus the ones the
# issuer simulator answers with (64) and a few common 1987 codes.
RESPONSE_TO_LINK: dict[str, str] = {
    "00": "000",  # approved (400 for reversals, 800 for network management: APPROVED_BY_CLASS)
    "01": "107",  # refer to card issuer
    "03": "109",  # invalid merchant
    "04": "200",  # pick up card
    "05": "100",  # do not honour
    "12": "902",  # invalid transaction
    "13": "110",  # invalid amount
    "14": "111",  # invalid card number
    "15": "908",  # no such issuer: transaction destination cannot be found for routing
    "25": "914",  # original not found: not able to trace back to original transaction
    "30": "904",  # format error
    "41": "208",  # lost card, pick up
    "43": "209",  # stolen card, pick up
    "51": "116",  # not sufficient funds
    "54": "101",  # expired card
    "55": "117",  # incorrect PIN
    "57": "119",  # transaction not permitted to cardholder
    "58": "120",  # transaction not permitted to terminal
    "59": "102",  # suspected fraud
    "61": "121",  # exceeds withdrawal amount limit
    "62": "104",  # restricted card
    "63": "916",  # security violation: SPEC's is the MAC, 1993's "MAC incorrect"
    "64": "110",  # original amount incorrect: 1993 has only "invalid amount" (one way)
    "65": "123",  # exceeds withdrawal frequency limit
    "75": "106",  # allowable PIN tries exceeded
    "91": "911",  # issuer unavailable or timed out: card issuer timed out
    "94": "913",  # duplicate transmission
    "96": "909",  # system malfunction
}
# An approval's action code depends on the message class (second MTI digit).
APPROVED_BY_CLASS: dict[str, str] = {"4": "400", "8": "800"}

# Link -> canonical: the reverse of RESPONSE_TO_LINK (except one-way entries), plus the
# 1993 codes that have no code of their own in 1987. A code in neither is the link's
# fallback (05 unless configured), logged and counted: never a silent approval. 002 and
# 006 (approved for a partial amount) are deliberately absent: the switch answers full
# amounts only, so a partial approval must not read as 00.
RESPONSE_FROM_LINK: dict[str, str] = {
    **{link: canonical for canonical, link in RESPONSE_TO_LINK.items() if canonical != "64"},
    "001": "00",  # honour with identification
    "003": "00",  # approved (VIP)
    "004": "00",  # approved, update track 3
    "005": "00",  # approved, account type specified by card issuer
    "007": "00",  # approved, update ICC
    "103": "05",  # card acceptor contact acquirer
    "118": "14",  # no card record
    "122": "63",  # security violation
    "125": "05",  # card not effective
    "129": "59",  # suspected counterfeit card
    "201": "54",  # expired card, pick up
    "202": "59",  # suspected fraud, pick up
    "400": "00",  # accepted (reversal)
    "800": "00",  # accepted (network management)
    "900": "00",  # advice acknowledged, no financial liability accepted
    "901": "00",  # advice acknowledged, financial liability accepted
    "907": "91",  # card issuer or switch inoperative
    "909": "96",
    "910": "91",  # card issuer signed off
    "912": "91",  # card issuer unavailable
}

# -- field 22: 1987 POS entry mode (3 digits) <-> 1993 POS data code (12 characters) ---------
# 1987 digits 1-2 (PAN entry mode) -> 1993 position 1 (card data input capability), 7 (card
# data input mode) and 10 (card data output capability: 3 ICC, 1 none; jPOS's vectors).
# 07 (contactless chip) has no 1993 value: "A", the value the 2003 edition gives it, so the
# code reads back to 07.
ENTRY_MODE_TO_LINK: dict[str, tuple[str, str, str]] = {
    "00": ("0", "0", "1"),  # unknown
    "01": ("6", "6", "1"),  # manual: key entry
    "02": ("2", "2", "1"),  # magnetic stripe
    "03": ("3", "3", "1"),  # bar code (QR)
    "05": ("5", "5", "3"),  # integrated circuit card
    "07": ("5", "A", "3"),  # contactless chip
}
ENTRY_MODE_FROM_LINK: dict[str, str] = {mode[1]: pan for pan, mode in ENTRY_MODE_TO_LINK.items()}
# 1987 digit 3 (PIN entry capability) -> 1993 positions 2 (cardholder authentication
# capability) and 12 (PIN capture capability: 0 none, 1 unknown, C twelve characters).
PIN_CAPABILITY_TO_LINK: dict[str, tuple[str, str]] = {
    "0": ("0", "1"),  # unknown
    "1": ("1", "C"),  # can accept PINs
    "2": ("0", "0"),  # cannot accept PINs
}
PIN_CAPABILITY_FROM_LINK: dict[str, str] = {
    "0": "2",
    "1": "0",
    **dict.fromkeys("456789ABC", "1"),  # PIN capture, 4 to 12 characters
}
# Positions 3-6 (no card capture, on premises attended, cardholder present, card present)
# and 11 (terminal output: print and display): fixed for the switch's terminals.
POS_FIXED = {"3": "0", "4": "1", "5": "0", "6": "1", "11": "4"}
