"""The intact inputs, written once for the whole corpus."""

from __future__ import annotations

import pytest

from .corpus import write_intact_inputs


@pytest.fixture(scope="package")
def base(tmp_path_factory):
    """Folder of small valid inputs shared by every case (cases copy what they break)."""
    return write_intact_inputs(tmp_path_factory.mktemp("bad_inputs_base"))
