"""Sans-IO protocol layer: bytes (and, where time matters, ``now``) in, objects or bytes out.

Nothing here imports an event loop, a socket, a logger or the clock.
"""
