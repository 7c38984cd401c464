"""Shared test doubles and helpers."""
