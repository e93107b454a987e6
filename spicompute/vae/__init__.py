"""The VAE of the paper (section 2.3, appendix B): 2D class averages plus their
orientations and gains -> a latent coordinate -> Oh-symmetric 3D intensity volumes.

Modules, one concept each:

- :mod:`spicompute.vae.data`    preprocessing (crop, resample, radial normalisation, masks)
- :mod:`spicompute.vae.orientations` which averages hold an orientation; random ones for round averages
- :mod:`spicompute.vae.slicer`  differentiable Ewald-sphere slicing of volume batches
- :mod:`spicompute.vae.model`   encoder, decoder, presets
- :mod:`spicompute.vae.train`   training loop, checkpoints/resume, DDP, encoding
"""
