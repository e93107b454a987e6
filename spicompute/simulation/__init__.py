"""The embedded simulator: frames of cubes melting into spheres plus contaminants, with truth.

- :mod:`~spicompute.simulation.simulate`  parameters, detector, shape library, Poisson frames + background, truth

The form factors it evaluates live in :mod:`spicompute.shapes` (shared with the orientation
fit's cube reference and the validation).  May import: ``errors``, ``params``, ``geometry``,
``shapes``, ``orient.quaternions``, ``io``.
"""
