"""The training and development corpus: the dev-set split, reference screening, acquisition.

Offline: serving code never imports this package.
"""
