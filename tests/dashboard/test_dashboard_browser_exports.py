"""The exports, driven in headless Chromium as a reviewer does them, checked on the files.

* Selections page: the saved selection's frames exported as CXI with the page's button; the
  ``frames`` stage ingests that file and gets exactly the selected frames back, photon for
  photon, on the same detector q.
* Volumes page: "Export MRC + ChimeraX + GIF"; the MRC files read back with the voxel size
  in Å (phased density) or rad/Å (intensity), the volume's shape, and its values.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

from spicompute.io.frames import read_frames
from spicompute.io.mrc import read_mrc
from tests.conftest import REPO, run_stages
from tests.dashboard.browser_util import chromium, need_chromium, open_page, streamlit_server
from tests.dashboard.export_workspace import make_selection_workspace, make_vae_workspace

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_selection_exported_as_cxi_from_the_page_ingests_to_exactly_its_frames(
        tmp_path, small_simulation):
    need_chromium()
    frames = small_simulation[0]
    root = tmp_path / "ws"
    expected = make_selection_workspace(root, frames)
    with streamlit_server(root) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        open_page(page, f"{url}/Selections", "Selections")
        page.get_by_text("CXI (spicompute frames reads it)").first.click()
        page.get_by_role("button", name="Export frames").click()
        page.get_by_text("Wrote", exact=False).first.wait_for(timeout=90_000)
        assert page.locator("[data-testid='stException']").count() == 0
    exported = root / "exports" / "pick.cxi"
    assert exported.exists()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(input=str(exported))
    back_dir = tmp_path / "ingest"
    back_dir.mkdir()
    run_stages(back_dir, params, ("frames",))
    back = read_frames(back_dir / "data" / "frames.h5")
    assert back.n_frames == len(expected)
    row = {int(f): i for i, f in enumerate(frames.frame_id)}
    np.testing.assert_array_equal(back.dense(), frames.dense([row[int(f)] for f in expected]))
    np.testing.assert_allclose(back.detector.q, frames.detector.q, rtol=1e-5, atol=1e-6)


def test_volumes_exported_from_the_page_read_back_as_mrc(tmp_path):
    need_chromium()
    root = tmp_path / "ws"
    make_vae_workspace(root)
    with streamlit_server(root) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        open_page(page, f"{url}/Volumes", "VAE latent and volumes")
        page.get_by_role("button", name="Export MRC + ChimeraX + GIF").click()
        page.get_by_text("series.cxc", exact=False).first.wait_for(timeout=90_000)
        assert page.locator("[data-testid='stException']").count() == 0
    out = root / "exports" / "volumes"
    with h5py.File(root / "data" / "phased.h5", "r") as h5:
        density = h5["phased/density"][()]
        dx_nm = float(h5.attrs["dx_nm"])
    with h5py.File(root / "data" / "volumes.h5", "r") as h5:
        n_volumes, edge = h5["volumes/intensity"].shape[:2]
        dq_nm = float(h5.attrs["dq_nm"])
    mrcs = sorted(out.glob("density_*.mrc"))
    assert len(mrcs) == len(density)
    for k, path in enumerate(mrcs):
        values, voxel, origin = read_mrc(path)
        assert values.shape == density[k].shape
        assert voxel == pytest.approx(10 * dx_nm)        # nm -> Å, as ChimeraX reads it
        np.testing.assert_array_equal(values, density[k])
    intensities = sorted(out.glob("log10_intensity_*.mrc"))
    assert len(intensities) == n_volumes
    values, voxel, _ = read_mrc(intensities[0])
    assert values.shape == (edge,) * 3 and voxel == pytest.approx(dq_nm / 10)   # rad/nm -> rad/Å
    assert "vseries true" in (out / "series.cxc").read_text()
