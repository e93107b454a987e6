"""Trajectories through the latent space: path geometry (pure functions) and the CLI
(volumes-file layout, export round trip, bad end points)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from spicompute.cli import main
from spicompute.landscape.trajectory import graph_path, resample_polyline, straight_path


def u_shaped_cloud(rng, n=300):
    """Averages on a U: two vertical arms joined at the bottom; the top between the arms is empty."""
    s = rng.uniform(0, 3, n)
    x = np.where(s < 1, -1.0, np.where(s < 2, -1.0 + 2 * (s - 1), 1.0))
    y = np.where(s < 1, 1 - s, np.where(s < 2, 0.0, s - 2))
    return np.stack([x, y], 1) + rng.normal(0, 0.02, (n, 2))


def test_resample_polyline_is_even_in_arc_length():
    pts = resample_polyline(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 3.0]]), 5)
    np.testing.assert_allclose(pts, [[0, 0], [1, 0], [1, 1], [1, 2], [1, 3]], atol=1e-12)
    np.testing.assert_allclose(straight_path([0, 0], [2, 2], 3), [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(ValueError, match="zero length"):
        straight_path([1.0], [1.0], 4)


def test_graph_path_stays_on_the_data_where_a_straight_line_does_not(rng):
    z = u_shaped_cloud(rng)
    start, end = np.array([-1.0, 1.0]), np.array([1.0, 1.0])
    path, visited = graph_path(z, start, end, 25)
    near = lambda p: np.linalg.norm(z[None] - p[:, None], axis=2).min(1)  # noqa: E731
    assert near(path).max() < 0.15                       # every point close to some average
    assert near(straight_path(start, end, 25)).max() > 0.8  # the segment crosses the empty top
    np.testing.assert_allclose(path[[0, -1]], [start, end])
    assert path[:, 1].min() < 0.1 and len(visited) > 10   # it went down and round the bottom


def test_graph_path_crosses_a_gap_by_its_shortest_link(rng):
    """Two clumps: the path joins them by the closest pair of points, not through empty space."""
    a = rng.normal(0, 0.05, (30, 2))
    b = rng.normal(0, 0.05, (30, 2)) + [10.0, 0.0]
    z = np.concatenate([a, b])
    path, visited = graph_path(z, a[0], b[0], 50, neighbours=3)
    np.testing.assert_allclose(path[[0, -1]], [a[0], b[0]])
    jump = np.linalg.norm(np.diff(z[visited], axis=0), axis=1).argmax()
    i, j = visited[jump], visited[jump + 1]
    gaps = np.linalg.norm(a[:, None] - b[None], axis=2)
    assert np.linalg.norm(z[i] - z[j]) == pytest.approx(gaps.min())


@pytest.fixture()
def untrained_model(tmp_path):
    """A demo-preset VAE with its description, and encoded averages on a 2-D latent."""
    import torch

    from spicompute.vae.data import Preprocessing
    from spicompute.vae.model import VAE, architecture

    arch = architecture("demo", 2)
    torch.manual_seed(0)
    model = VAE(arch)
    models = tmp_path / "models"
    models.mkdir()
    torch.save(model.state_dict(), models / "vae.pt")
    q = np.linspace(0.0, 0.6, 30)
    prep = Preprocessing(input_size=27, volume_size=27, q_max_nm=0.5, q_min_nm=0.04, dq2_nm=0.5 / 13,
                         dq3_nm=0.5 / 13, wavelength_nm=0.2066, profile_q_nm=q.tolist(),
                         profile=(1.0 / (1 + (q / 0.1) ** 4)).tolist(), particle_size_nm=50.0, log_floor=0.1,
                         q_max_limits={})
    (models / "vae.json").write_text(json.dumps({"architecture": arch.to_dict(),
                                                 "preprocessing": prep.to_dict()}))
    rng = np.random.default_rng(3)
    z = u_shaped_cloud(rng, 120)
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame({"average_id": np.arange(120), "z_1": z[:, 0], "z_2": z[:, 1],
                  "vae_trained": True}).to_parquet(parts / "vae.parquet")
    return tmp_path


def test_trajectory_cli_writes_a_volumes_file_that_export_reads(untrained_model, capsys):
    root = untrained_model
    out = root / "trajectories" / "u.h5"
    assert main(["trajectory", "--model", str(root / "models/vae.pt"), "--latents",
                 str(root / "results/parts/vae.parquet"), "--start-average", "0", "--end", "1.0,1.0",
                 "--path", "graph", "--n-points", "6", "--out", str(out), "-q"]) == 0
    with h5py.File(out) as h5:
        assert h5["volumes/intensity"].shape == (6, 27, 27, 27)
        z = h5["volumes/z"][()]
        assert [s.decode() for s in h5["volumes/source"][()]] == ["trajectory"] * 6
        assert h5.attrs["dq_nm"] == pytest.approx(0.5 / 13) and len(h5["volumes/path_average_id"]) > 2
    table = pd.read_parquet(root / "results/parts/vae.parquet")
    np.testing.assert_allclose(z[0], table.loc[0, ["z_1", "z_2"]].to_numpy(float), atol=1e-6)
    np.testing.assert_allclose(z[-1], [1.0, 1.0], atol=1e-6)
    assert main(["export", "--volumes", str(out), "--phased", "", "--out", str(root / "exp"), "--no-gif",
                 "-q"]) == 0
    assert len(list((root / "exp").glob("log10_intensity_*.mrc"))) == 6


@pytest.mark.parametrize("args,needle", [
    (["--start", "0.5,0.5", "--end", "0.5,0.5"], "--end: the path has zero length"),
    (["--start-average", "3", "--end-average", "3"], "--end: the path has zero length"),
    (["--start-average", "999", "--end", "0,0"], "average_id: average 999 is not in the table"),
    (["--start", "0.1", "--end", "0,0"], "--start: needs 2 values"),
    (["--start", "a,b", "--end", "0,0"], "--start: must be numbers"),
    (["--start", "nan,0", "--end", "0,0"], "--start: must be finite"),
    (["--end", "0,0"], "--start: give exactly one"),
    (["--start", "0,0", "--end", "1,1", "--n-points", "1"], "--n-points: must be 2..200"),
])
def test_trajectory_bad_end_points_are_one_line_errors(untrained_model, capsys, args, needle):
    root = untrained_model
    out = root / "t.h5"
    rc = main(["trajectory", "--model", str(root / "models/vae.pt"), "--latents",
               str(root / "results/parts/vae.parquet"), "--out", str(out), "-q"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()
