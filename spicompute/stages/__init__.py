"""Thin CLI layer: one module per pipeline stage (see :mod:`spicompute.cli`)."""
