"""HEAN core services shared by every process: the state bus, health and error analysis."""
