"""Thin CLI layer, one module per pipeline stage (discovered by :mod:`spicompute.cli`).

A stage parses its arguments, reads its inputs, calls the science packages and writes
its outputs and metrics; it holds no science.  Heavy packages (torch) are imported
inside ``run`` so that the CLI starts fast.
"""
