"""Denoising models behind the `StreamingModel` contract."""
