"""Use cases and transactions of the service; no FastAPI here, so the worker and CLI reuse them."""
