"""The switch. All its I/O lives here, in rooms by stage:

- :mod:`gateway.edge`: listeners and connection drivers, HTTP serving, draining, workers;
- :mod:`gateway.flow`: the per-transaction pipeline, its participants, routing, RRN;
- :mod:`gateway.upstream`: issuer links, store-and-forward, breaker, HSM client;
- :mod:`gateway.ops`: admin API, dashboard, audit;
- :mod:`gateway.journal`, :mod:`gateway.risk`, :mod:`gateway.qr`: storage, the risk engine,
  the QR acquirer API;
- at the top: :mod:`gateway.app` (the one module that wires every room), :mod:`gateway.cli`,
  :mod:`gateway.demo`, :mod:`gateway.config` (the gateway's config) and
  :mod:`gateway.metrics` (the registry every room counts into).

The rules are written down as a test: ``tests/test_architecture.py``.
"""
