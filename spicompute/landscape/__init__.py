"""The landscape: from class averages to the CLPCA space and back to frames (paper section 2.2).

- :mod:`~spicompute.landscape.polar`        polar resampling of averages
- :mod:`~spicompute.landscape.commonlines`  common lines and the blocked CC-matrix kernel (numpy, torch, Dask)
- :mod:`~spicompute.landscape.ccmatrix`     the CC matrix of an average set (usable averages, q range, lines)
- :mod:`~spicompute.landscape.embedding`    PCA (CLPCA), Isomap, spectral, t-SNE, clustering, Procrustes
- :mod:`~spicompute.landscape.nuisance`     per-average nuisances (members, photons, run) and their correlations
- :mod:`~spicompute.landscape.features`     rotation-invariant features of an average
- :mod:`~spicompute.landscape.regressor`    the MLP that places new averages in the CLPCA space
- :mod:`~spicompute.landscape.family`       the melt family found without truth (shared nearest neighbours)
- :mod:`~spicompute.landscape.training_set` which averages train the VAE (modes, rules, scores against truth)
- :mod:`~spicompute.landscape.selections`   named selections (files written by the dashboard)
- :mod:`~spicompute.landscape.trajectory`   paths through the latent space
- :mod:`~spicompute.landscape.frame_export` a selection's member frames back to CXI / Dragonfly / CSV

May import: ``errors``, ``params``, ``qrange``, ``execution``, ``io``, ``validation`` (truth scores).
"""
