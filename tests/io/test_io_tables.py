"""Results tables: provenance metadata and joining of stage parts."""

import json

import pandas as pd
import pytest

from spicompute.io.tables import merge_parts, read_provenance, read_table, write_table


def test_tables_carry_provenance_and_round_trip(tmp_path):
    table = pd.DataFrame({"average_id": [0, 1, 2], "pc_1": [0.1, -0.2, 0.3]})
    write_table(tmp_path / "t.parquet", table, stage="embed", params={"seed": 3})
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), table)
    meta = read_provenance(tmp_path / "t.parquet")
    assert meta["spicompute_stage"] == "embed"
    assert json.loads(meta["spicompute_params"]) == {"seed": 3}
    assert meta["spicompute_version"].startswith("0.")


def test_merge_parts_joins_on_average_id_and_refuses_duplicate_columns():
    base = pd.DataFrame({"average_id": [0, 1, 2], "n_frames": [5.0, 6.0, 7.0]})
    embed = pd.DataFrame({"average_id": [2, 0, 1], "pc_1": [3.0, 1.0, 2.0]})
    joined = merge_parts(base, [embed])
    assert joined["pc_1"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="pc_1"):
        merge_parts(base, [embed, embed])


def test_atomic_outputs_are_readable_by_colleagues_and_clean_up_killed_temporaries(tmp_path):
    import os
    import stat

    from spicompute.io.provenance import atomic_path, provenance

    dead = tmp_path / ".out.h5.999999999.abcd.tmp"  # a temporary of a process that is gone
    dead.write_text("half")
    mine = tmp_path / f".out.h5.{os.getpid()}.live.tmp"  # one of a living process stays
    mine.write_text("busy")
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.h5") as tmp:
            tmp.write_text("done")
    finally:
        os.umask(old)
    assert (tmp_path / "out.h5").read_text() == "done"
    assert stat.S_IMODE((tmp_path / "out.h5").stat().st_mode) == 0o644
    assert not dead.exists() and mine.exists()
    # no timestamp: identical science must hash identically
    assert provenance("x", {"a": 1}) == provenance("x", {"a": 1})
    assert not any("utc" in k for k in provenance("x"))
