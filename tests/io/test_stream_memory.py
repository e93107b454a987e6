"""Streamed classify2d: peak memory grows with the number of frames only by the per-frame quantities.

Two photon-sparse files (30,000 and 120,000 frames, ~140 stored non-zeros each, written block by block)
each get ONE classify2d iteration in a fresh child process that reports its own peak RSS.  Holding the
photons once as CSR would cost 8 bytes a non-zero (~1,100 bytes a frame; the in-memory EMC holds them
about three times: the file's CSR, the cropped float32 CSR, the shard's two gather layouts); the
per-frame quantities (ids, photon totals, scales, beta, best class and rotation, posterior maximum, the
frames table and its parquet encoding) plus allocator slack measured ~250-300 bytes a frame here
(benchmarks/bench_stream.py: 183 bytes/frame between 250,000 and 1,000,000 frames).  The bound: growth
< 600 bytes/frame, about half of one copy of the photons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]
BOUND_BYTES_PER_FRAME = 600

pytestmark = pytest.mark.slow  # whole-stage or whole-pipeline runs: `make test-fast` skips them

CHILD = r"""
import json, sys
from spicompute.cli import main
w = sys.argv[1]
rc = main(["classify2d", "--params", f"{w}/params.yaml", "-q", "--frames", f"{w}/frames.h5",
           "--out", f"{w}/averages.h5", "--frames-table", f"{w}/frames.parquet", "--part", f"{w}/part.parquet",
           "--checkpoints", "", "--metrics", f"{w}/m.json", "--live", ""])
# VmHWM, not ru_maxrss: Linux carries the high-water mark of the image replaced by exec into ru_maxrss,
# so a child of this (big) test process would report at least the parent's size
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "rss_mb": hwm / 1024}))
"""


def write_file(path: Path, n_frames: int, photons: float, seed: int) -> float:
    """Photons drawn from a 45 nm sphere's pattern flattened to its 4th root (so that they land on distinct
    pixels: a memory test needs many non-zeros, not a realistic fall-off), random fluences, 48 x 48
    detector; returns stored non-zeros per frame."""
    from spicompute.geometry import regular_detector, standard_mask
    from spicompute.io.stream import write_sparse_frames_stream
    from spicompute.shapes import sphere_intensity

    side = 48
    c = (side - 1) / 2
    det = regular_detector((side, side), wavelength_nm=0.2, distance_mm=500.0, pixel_size_mm=0.6,
                           mask=standard_mask((side, side), (c, c), beamstop_radius_px=2, gap_width_px=2))
    pattern = (sphere_intensity(det.q, 45.0) * det.solid_angle) ** 0.25 * det.mask
    cdf = np.cumsum(pattern) / pattern.sum()
    rng = np.random.default_rng(seed)
    block, nnz = 20_000, 0

    def blocks():
        nonlocal nnz
        for lo in range(0, n_frames, block):
            n = min(block, n_frames - lo)
            n_ph = np.maximum(rng.poisson(photons * rng.uniform(0.5, 1.5, n)), 1)
            row = np.repeat(np.arange(n), n_ph)
            pix = np.searchsorted(cdf, rng.random(row.size))
            m = sp.csr_matrix((np.ones(row.size, np.int32), (row, pix)), shape=(n, det.n_pixels))
            m.sum_duplicates()
            nnz += m.nnz
            yield m

    write_sparse_frames_stream(path, blocks(), det, n_frames=n_frames)
    return nnz / n_frames


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM")
def test_streamed_classify2d_peak_memory_is_bounded(tmp_path):
    rss, per_frame = {}, []
    for n in (30_000, 120_000):
        w = tmp_path / f"n{n}"
        w.mkdir()
        per_frame.append(write_file(w / "frames.h5", n, 150.0, seed=n))
        (w / "params.yaml").write_text(
            "classify2d:\n  n_models: 2\n  n_rot: 4\n  n_runs: 1\n  subset_fraction: 1.0\n  max_iter: 1\n"
            "  min_iter: 1\n  device: cpu\n  q_max_nm: 0.2\n  stream: true\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SPICOMPUTE_NO_PROGRESS": "1"}
        out = subprocess.run([sys.executable, "-c", CHILD, str(w)], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        row = json.loads(out.stdout.strip().splitlines()[-1])
        assert row["rc"] == 0
        assert json.loads((w / "m.json").read_text())["streamed"] is True
        rss[n] = row["rss_mb"]
    growth = (rss[120_000] - rss[30_000]) * 2**20 / 90_000
    csr = 8 * float(np.mean(per_frame))
    print(f"peak RSS {rss} MB: {growth:.0f} bytes/frame (one CSR copy of the photons: {csr:.0f} bytes/frame)")
    assert csr > 1.5 * BOUND_BYTES_PER_FRAME          # the bound does discriminate against holding photons
    assert growth < BOUND_BYTES_PER_FRAME, (rss, growth)
