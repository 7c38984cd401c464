"""Benchmarks (offline: never imported by serving code)."""
