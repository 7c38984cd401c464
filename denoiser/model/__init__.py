"""Streaming models the engine can batch: the contract, the shipped weights and their loaders,
traced steps (runtime). Each model rung has its own package here (dfn3/, gtcrn/)."""
