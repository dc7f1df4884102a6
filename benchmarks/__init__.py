"""Benchmarks that print figures, one module each, run as ``python -m benchmarks.NAME``.

Components alone: ``codec`` (the ISO 8583 codecs), ``recent`` (the recent-transaction
window), ``risk`` and ``risk_memory`` (the risk engine's stores), ``journal`` (journal
writes), ``group_commit`` (durable commits shared between writers), ``hsm`` (the HSM
simulator through the switch's HSM client). Processes: ``spine`` (gateway + issuer simulator,
plain purchases per in-flight level), ``idle_connections`` (RSS per idle terminal connection).
The whole stack is measured by ``loadtest bench``.

May import anything of the project: a benchmark looks inside what it measures. Nothing
imports a benchmark.
"""
