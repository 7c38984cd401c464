"""Streaming models the engine can batch (a new model rung goes in model/<name>/)."""
