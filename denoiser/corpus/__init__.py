"""Offline data acquisition and dev-set building (never imported by serving code)."""
