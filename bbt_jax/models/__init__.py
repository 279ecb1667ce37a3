"""Backbones (one module per family) and weight readers (one module per format)."""
