"""Streaming a mock EuXFEL proc run (extra-data's make_examples) to photons and hits."""

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from extra_data.tests.make_examples import make_modern_spb_proc_run  # noqa: E402

from spicompute.ingest.euxfel_run import iter_run_photons
from spicompute.ingest.hitfinding import lit_pixels, resolve_threshold  # noqa: E402
from spicompute.io.euxfel import static_mask

pytestmark = pytest.mark.slow  # whole-stage or whole-pipeline runs: `make test-fast` skips them

pytest.importorskip("extra_data")

E_KEV = 6.0


def test_injected_photons_recovered(tmp_path):
    make_modern_spb_proc_run(str(tmp_path))
    rng = np.random.default_rng(3)
    good = static_mask(1)
    n_trains, n_pulse = 2, 32
    truth = np.zeros((n_trains * n_pulse, 16, 512, 128), np.int32)
    hits = rng.choice(n_trains * n_pulse, 5, replace=False)
    for m in range(16):
        path = tmp_path / f"CORR-R0142-AGIPD{m:02d}-S00000.h5"
        with h5py.File(path, "r+") as f:
            ds = f[f"INSTRUMENT/SPB_DET_AGIPD1M-1/CORR/{m}CH0:output/image/data"]
            mk = f[f"INSTRUMENT/SPB_DET_AGIPD1M-1/CORR/{m}CH0:output/image/mask"]
            block = rng.poisson(1e-4, size=(n_trains * n_pulse, 512, 128)).astype(np.int32)
            for h in hits:
                block[h] += rng.poisson(0.02, size=(512, 128)).astype(np.int32)
            mk[: n_trains * n_pulse] = 0
            noise = rng.normal(0, 0.05 * E_KEV, size=block.shape).astype(np.float32)
            ds[: n_trains * n_pulse] = block * np.float32(E_KEV) + noise
            truth[:, m] = block
    truth *= good[None]
    chunks = list(iter_run_photons(tmp_path, E_KEV, 0.5, trains_per_chunk=1,
                                   train_slice=slice(0, n_trains), good=good))
    assert len(chunks) == 2
    tid = np.concatenate([c[0] for c in chunks])
    pid = np.concatenate([c[1] for c in chunks])
    counts = sp.vstack([c[2] for c in chunks]).tocsr()
    assert counts.shape == (n_trains * n_pulse, 16 * 512 * 128)
    np.testing.assert_array_equal(tid, 10000 + np.repeat(np.arange(n_trains), n_pulse))
    np.testing.assert_array_equal(pid, np.tile(np.arange(n_pulse), n_trains))
    # photons conserved for integer-photon input (noise well below the 0.5 threshold)
    np.testing.assert_array_equal(counts.toarray(), truth.reshape(len(truth), -1))
    lit = np.diff((counts > 0).tocsr().indptr)
    np.testing.assert_array_equal(lit, lit_pixels(truth))
    found = np.flatnonzero(lit > resolve_threshold(lit, "auto"))
    np.testing.assert_array_equal(np.sort(found), np.sort(hits))
