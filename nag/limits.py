"""Limits of a request that the client checks before it calls and the server enforces (no heavy imports)."""

MAX_CANDIDATES = 4096
MAX_SEED = 2**64 - 1  # the proto's uint64
