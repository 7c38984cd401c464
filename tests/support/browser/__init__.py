"""Helpers for the demo-page tests: an aiortc client of the WebSocket room protocol, the
headless Chromium launcher, and audio analysis."""
