"""Upstream: the switch's own connections to the hosts it depends on.

Issuer links with sign-on, echo and request matching (:mod:`.links`), store-and-forward of
advices and reversals (:mod:`.saf`), the per-issuer circuit breaker (:mod:`.breaker`), and
the HSM client with its transport (:mod:`.hsm_client`, :mod:`.hsm_transport`).

May import: ``gateway.journal``, ``gateway.config``, ``gateway.metrics``, ``kit``,
``protocols``; store-and-forward also the journal stage and pipeline types of
``gateway.flow`` whose records it sends. Never ``gateway.edge`` or ``gateway.ops``.
"""
