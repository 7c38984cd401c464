"""Benchmarks behind `denoise-sfu bench` (offline: serving code never imports this package)."""
