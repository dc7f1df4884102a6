"""Operations: what operators see and do. The admin API with its token roles and throttling
(:mod:`.admin`), the live dashboard (:mod:`.dashboard`) and the hash-chained audit log
(:mod:`.audit`). Metrics are counted everywhere, so their registry stays at
:mod:`gateway.metrics`.

May import anything of the switch but ``gateway.app`` (which wires operations to the rest);
nothing on the transaction path imports this room.
"""
