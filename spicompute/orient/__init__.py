"""Orientations: quaternions, the cube's symmetry, sampling SO(3), slicing volumes, fitting averages.

- :mod:`~spicompute.orient.quaternions`  quaternion <-> rotation, products, canonical sign, random draws
- :mod:`~spicompute.orient.symmetry`     the octahedral group Oh (matrices, quaternions) and exact symmetrisation
- :mod:`~spicompute.orient.sampling`     orientation grids of the fundamental zone, misorientation, local grids
- :mod:`~spicompute.orient.slicing`      central/Ewald sections of a 3D intensity at given orientations
- :mod:`~spicompute.orient.fit`          fit of each average against a reference (cube or volume): best CC and gain

May import: ``errors``, ``geometry``, ``shapes``, ``execution``, ``io``.
"""
