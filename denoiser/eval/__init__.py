"""Offline evaluation: the harness, the quality metrics and the anchors we are compared with."""
