"""The denoising model, its streaming state, the batching engine, training and evaluation.

`denoiser` never imports `sfu`.
"""
