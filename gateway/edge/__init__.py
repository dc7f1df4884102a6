"""The edge: where the switch meets its peers' sockets.

Terminal listeners and each connection's driver loop (:mod:`.terminals`, the only code that
awaits a terminal's bytes), the HTTP server runner for the QR and admin APIs (:mod:`.http`),
graceful draining (:mod:`.draining`) and worker processes (:mod:`.workers`).

May import: ``gateway.flow`` (it hands decoded requests to the switch), ``gateway.config``,
``gateway.metrics``, ``kit``, ``protocols``.
"""
