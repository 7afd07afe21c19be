"""The error analyzer's parts: reports, redaction, fingerprints, providers, history, auto-dev."""
