"""HEAN: the library behind the integration backend (state bus, health, analyzer, engine, CLI)."""

__version__ = "0.1.0"
