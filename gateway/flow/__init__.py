"""The flow: what runs per transaction, between the edge and the issuer.

The switch core and its pipeline (:mod:`.switch`, :mod:`.pipeline`) and the participants in
their order: journal stages (:mod:`.journal_stage`), field checks, duplicates, originals,
routing and the issuer query (:mod:`.participants`, :mod:`.routing`), EMV data
(:mod:`.emv_check`), MAC and PIN through the HSM (:mod:`.security`), tokens
(:mod:`.tokens`), risk (:mod:`.risk_stage`), stand-in (:mod:`.standin`); with the
recent-transaction window (:mod:`.recent`) and the RRN generator (:mod:`.rrn`).

May import: ``gateway.upstream`` (issuer links, HSM client, breaker), ``gateway.journal``,
``gateway.risk``, ``gateway.config``, ``gateway.metrics``, ``kit``, ``protocols``. Never
``gateway.edge`` or ``gateway.ops``: a participant does not know how a request arrived or who
watches; it is tested on a bare context with no network.
"""
