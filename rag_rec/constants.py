"""Constants shared across layers: the API schemas, the data loaders, the stores and the settings (a module without
heavy imports)."""

MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: beyond it a unix timestamp is not a time

# Qdrant's default RRF constant (server, edge and qdrant-client): score = sum 1 / (k + rank), rank from 0.
RRF_K = 2
