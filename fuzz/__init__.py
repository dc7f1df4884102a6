"""Coverage-guided fuzzing of every decoder that takes a peer's bytes (``python -m fuzz``).

May import :mod:`protocols` and :mod:`gateway.qr.models` only; nothing in the project imports
it (the tests share its checks). README "Tests" says how to run it.
"""
