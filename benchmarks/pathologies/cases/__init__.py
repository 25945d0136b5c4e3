"""Benchmark cases, one module per group of pathologies (each case registers itself)."""
