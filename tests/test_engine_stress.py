"""Collects the engine stress tests of tests/stress_test_all.py in the default pytest run
(pytest only collects test_*.py files by default)."""

from stress_test_all import test_stress_memory_leak_detection

__all__ = ["test_stress_memory_leak_detection"]
