"""Streaming models: the contract, the shipped weights and their loaders, traced steps (runtime)."""
