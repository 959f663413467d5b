"""Limits shared by the API schemas and the data loaders (a module without heavy imports)."""

MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: beyond it a unix timestamp is not a time
