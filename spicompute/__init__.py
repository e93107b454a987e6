"""SPI Landscape compute package.

Maps the structural heterogeneity of X-ray single particle imaging (SPI)
datasets: 2D EMC class averages -> common-line CC matrix -> CLPCA embedding
-> regressor / orientation fit -> VAE volumes -> phase retrieval.

Conventions used everywhere in the package:

* q is the angular scattering vector, ``|q| = 4 pi sin(theta) / lambda`` in
  rad/nm (written "nm^-1").  The beam travels along +z, ``q = k_out - k_in``,
  so pixels on the Ewald sphere have ``q_z <= 0``.
* Orientations are unit quaternions ``(w, x, y, z)``, scalar first, rotating
  model coordinates into the lab: a frame samples ``I_model(R^T q)``.
* Detector pixels are stored as a flat list of ``P`` pixels; ``shape``
  (rows, cols) is kept when the detector is a regular image.
"""

__version__ = "0.1.0"
