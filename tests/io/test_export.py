"""spicompute export: MRC round trip (voxel size, origin, axis order, values), the ChimeraX
script, the animation, and bad inputs (unwritable folder, corrupt inputs, a corrupt MRC)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from spicompute.cli import main
from spicompute.errors import InputError
from spicompute.io.mrc import read_mrc, write_mrc
from tests.dashboard.volume_workspace import L, P, make_volume_workspace


def test_mrc_round_trip_keeps_axes_voxel_size_and_origin(tmp_path, rng):
    vol = rng.random((9, 9, 9)).astype(np.float32)
    vol[7, 1, 2] = 5.0  # x = 7, y = 1, z = 2: an asymmetric marker
    write_mrc(tmp_path / "a.mrc", vol, 28.5, label="test")
    back, voxel, origin = read_mrc(tmp_path / "a.mrc")
    np.testing.assert_array_equal(back, vol)
    assert voxel == pytest.approx(28.5)
    assert origin == pytest.approx((-4 * 28.5,) * 3)  # voxel L // 2 at the coordinate origin
    import mrcfile

    with mrcfile.open(tmp_path / "a.mrc") as mrc:  # MRC's own order is [z, y, x]
        assert mrc.data[2, 1, 7] == 5.0
        assert mrc.header.nx == 9 and float(mrc.voxel_size.x) == pytest.approx(28.5)


def test_corrupt_mrc_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"MAP " * 100)
    with pytest.raises(InputError, match="bad.mrc: not a readable MRC file"):
        read_mrc(bad)


def test_export_writes_mrc_series_script_and_animation(tmp_path):
    ws = make_volume_workspace(tmp_path)
    out = tmp_path / "exports" / "run1"
    (out.parent).mkdir()
    assert main(["export", "--volumes", str(ws / "data/volumes.h5"), "--phased", str(ws / "data/phased.h5"),
                 "--out", str(out), "-q"]) == 0
    with h5py.File(ws / "data/volumes.h5") as h5:
        dq = float(h5.attrs["dq_nm"])
        inten = h5["volumes/intensity"][()]
    dens, voxel, origin = read_mrc(out / "density_003.mrc")
    with h5py.File(ws / "data/phased.h5") as h5:
        np.testing.assert_array_equal(dens, h5["phased/density"][3])
    logi, dvox, _ = read_mrc(out / "log10_intensity_001.mrc")
    assert dvox == pytest.approx(dq / 10)  # rad/Å
    with h5py.File(ws / "data/volumes.h5") as h5:
        observed = h5["volumes/observed"][()] > 0
    expected = np.where(observed, np.log10(np.maximum(inten[1] / inten[1][observed].max(), 1e-5)), -5.0)
    np.testing.assert_allclose(logi, expected, atol=1e-5)
    assert logi[L // 2, L // 2, L // 2] == -5.0  # the unobserved centre sits at the floor
    script = (out / "series.cxc").read_text()
    assert f"open {' '.join(f'density_{k:03d}.mrc' for k in range(P))} vseries true" in script
    assert "vseries play #1" in script
    from PIL import Image

    with Image.open(out / "series.gif") as gif:
        assert gif.n_frames == P
    index = (out / "index.csv").read_text().splitlines()
    assert index[0].startswith("index,source,z_1") and len(index) == P + 1


def test_export_without_phasing_writes_intensities_only(tmp_path):
    ws = make_volume_workspace(tmp_path)
    (ws / "data/phased.h5").unlink()
    out = tmp_path / "only_i"
    assert main(["export", "--volumes", str(ws / "data/volumes.h5"), "--phased", str(ws / "data/phased.h5"),
                 "--out", str(out), "--no-gif", "-q"]) == 0
    assert not list(out.glob("density_*")) and len(list(out.glob("log10_intensity_*.mrc"))) == P
    assert "vseries play #1" in (out / "series.cxc").read_text()


def test_export_refuses_an_unwritable_folder_and_bad_inputs(tmp_path, capsys):
    ws = make_volume_workspace(tmp_path)
    target = tmp_path / "file_not_folder"
    target.write_text("x")
    rc = main(["export", "--volumes", str(ws / "data/volumes.h5"), "--phased", "", "--out", str(target), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "file_not_folder" in err[0]
    with h5py.File(ws / "data/phased.h5", "a") as h5:
        h5["phased/density"][0, 0, 0, 0] = np.nan
    rc = main(["export", "--volumes", str(ws / "data/volumes.h5"), "--phased", str(ws / "data/phased.h5"),
               "--out", str(tmp_path / "x"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "phased/density" in err[0] and "NaN" in err[0]
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())
