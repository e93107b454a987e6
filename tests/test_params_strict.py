"""Parameters are never accepted silently: typos in sections and keys, strings for booleans."""

import pytest

from spicompute.cli import main
from spicompute.emc2d.run import EMCConfig
from spicompute.errors import ParameterError


@pytest.mark.parametrize("text,needle", [
    ("simulat:\n  n_frames: 10\n", "simulat: unknown section"),
    ("data:\n  inptu: frames.cxi\nsimulate: {}\n", "parameter data.inptu: unknown parameter"),
])
def test_typos_are_errors_naming_the_key(tmp_path, capsys, text, needle):
    (tmp_path / "params.yaml").write_text(text)
    rc = main(["frames", "--params", str(tmp_path / "params.yaml"), "-q", "--out", str(tmp_path / "f.h5"),
               "--truth", str(tmp_path / "t.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize("key", ["update_scale", "use_correction", "reseed_empty"])
def test_quoted_booleans_are_rejected(key):
    with pytest.raises(ParameterError, match=f"classify2d.{key}"):
        EMCConfig.from_params({key: "false"})
