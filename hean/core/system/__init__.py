"""System services with the original docs' import paths (``redis_state``, health, analyzer)."""
