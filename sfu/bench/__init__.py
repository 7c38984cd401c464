"""Benchmarks behind `denoise-sfu bench sfu|e2e` and the peer harness they share with the tests.

Offline: serving code never imports this package.
"""
