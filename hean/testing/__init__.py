"""Aids for testing HEAN (reference models for tests and benchmarks); nothing here is used at run time."""
