"""2D EMC: frames -> class averages, bootstrapped (paper section 2.1).

- :mod:`~spicompute.emc2d.steps`          the rotation grid and the E/M-step kernels (sparse frames x dense models)
- :mod:`~spicompute.emc2d.run`            one EMC run (iterations, beta schedule, checkpoints) and the bootstrap of runs
- :mod:`~spicompute.emc2d.stream`         frames streamed from disk when they do not fit in memory
- :mod:`~spicompute.emc2d.background`     the fluence-independent background per pixel
- :mod:`~spicompute.emc2d.baseline`       the naive (no-rotation) classification, the negative control
- :mod:`~spicompute.emc2d.particle_size`  particle size from the data and the in-plane rotation count it implies
- :mod:`~spicompute.emc2d.sorting`        how well classes sort frames (photons, truth), purity against the baseline

May import: ``errors``, ``params``, ``geometry``, ``execution``, ``io``.  Nothing here
imports another science package or a stage.
"""
