"""How a QR acquirer appears to the pipeline: one virtual terminal per (acquirer, merchant).

``CheckFields`` accepts only configured terminals (unknown: 58) and takes the merchant (MCC for
the issuer and the risk rules, country for impossible travel) from the terminal, so a QR payment
arrives from a terminal bound to the paying merchant: ``Q`` + the acquirer's position in the
dataset (2 digits) + the merchant's position in that acquirer's list (5 digits). QRACQ01's
first merchant is ``Q0100001``. The ids are derived from the dataset order, so they are stable
as long as the dataset is; a clash with a real terminal id is refused at start.
"""

from __future__ import annotations

import dataclasses

from kit.dataset import Dataset, Terminal


def virtual_terminal_id(acquirer_index: int, merchant_index: int) -> str:
    if not (1 <= acquirer_index <= 99 and 1 <= merchant_index <= 99_999):
        raise ValueError("too many QR acquirers or merchants for 8-character terminal ids")
    return f"Q{acquirer_index:02d}{merchant_index:05d}"


def virtual_terminals(dataset: Dataset) -> dict[tuple[str, str], Terminal]:
    """(acquirer id, merchant id) -> its virtual terminal, for merchants the dataset knows."""
    known = {m.id for m in dataset.merchants}
    out: dict[tuple[str, str], Terminal] = {}
    for a, acquirer in enumerate(dataset.qr_acquirers, start=1):
        for m, merchant in enumerate(acquirer.merchants, start=1):
            if merchant in known:
                out[(acquirer.id, merchant)] = Terminal(
                    id=virtual_terminal_id(a, m), merchant=merchant, kind="pos"
                )
    return out


def with_virtual_terminals(dataset: Dataset) -> Dataset:
    """The dataset with the QR acquirers' virtual terminals added (idempotent)."""
    real = {t.id: t for t in dataset.terminals}
    added: list[Terminal] = []
    for terminal in virtual_terminals(dataset).values():
        existing = real.get(terminal.id)
        if existing is None:
            added.append(terminal)
        elif existing != terminal:
            raise ValueError(f"terminal id {terminal.id} is reserved for a QR acquirer")
    if not added:
        return dataset
    return dataclasses.replace(dataset, terminals=(*dataset.terminals, *added))
