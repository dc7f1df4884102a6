"""The shared process kit: what every program of the house runs on, switch or not.

Config loading and its errors (:mod:`kit.conf`), the demo dataset model and its keys under the
LMK (:mod:`kit.dataset`, :mod:`kit.keys`), structured logging with redaction (:mod:`kit.logs`),
the demo PKI (:mod:`kit.pki`), the event-loop runtime: backend choice and GC tuning
(:mod:`kit.runtime`), and the frame transports over TCP/TLS (:mod:`kit.framed`,
:mod:`kit.fastio`).

May import: ``protocols`` and third-party libraries. Never ``gateway``, the simulators or the
load kit: the issuer simulator, the HSM simulator and the load kit use this kit and
``protocols`` and share nothing else with the switch, as a bank's host shares only the wire.
"""
