"""Quality evaluation: the harness, metrics, anchors and the bypass suite (offline)."""
