from __future__ import annotations

import dataclasses

import pytest

from gateway.config import AdminConfig, GatewayConfig
from gateway.edge.workers import worker_config


def test_worker_config_offsets_node_and_admin_port() -> None:
    cfg = GatewayConfig(workers=3, node=4, admin=AdminConfig(port=19090))
    assert [(w.node, w.admin.port) for w in (worker_config(cfg, i) for i in range(3))] == [
        (4, 19090),
        (5, 19091),
        (6, 19092),
    ]
    # The terminal ports stay shared (SO_REUSEPORT); worker 0 alone serves the QR API.
    assert worker_config(cfg, 2).terminal == cfg.terminal
    assert worker_config(cfg, 0).qr_api == cfg.qr_api
    assert worker_config(cfg, 1).qr_api.port == -1


def test_worker_config_bounds() -> None:
    cfg = GatewayConfig(workers=2, node=34)
    worker_config(cfg, 1)
    with pytest.raises(ValueError, match="out of range"):
        worker_config(cfg, 2)
    with pytest.raises(ValueError, match="exceeds"):
        worker_config(dataclasses.replace(cfg, node=35), 1)
