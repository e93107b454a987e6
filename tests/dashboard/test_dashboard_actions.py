"""Dashboard actions that write (AppTest): the project's own errors and file races become a
message that says what to do, never Streamlit's generic error box."""

from __future__ import annotations

import errno
import json

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO
from tests.dashboard.volume_workspace import make_volume_workspace

VOLUMES = str(REPO / "dashboard" / "pages" / "8_Volumes.py")
SELECTIONS = str(REPO / "dashboard" / "pages" / "6_Selections.py")


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    make_volume_workspace(tmp_path)
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def _errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def _messages(at) -> str:
    return " | ".join(e.value for e in [*at.error, *at.warning])


def _button(at, label):
    return next(b for b in at.button if b.label == label)


@pytest.mark.parametrize("z", ["nan", "inf", "1e999", "abc", ""])
def test_a_non_finite_latent_point_is_refused_with_a_message(workspace, z):
    at = AppTest.from_file(VOLUMES, default_timeout=60).run()
    at.text_input(key="latent_name").input("probe")
    at.text_input(key="latent_z").input(z)
    next(b for b in at.button if b.label == "Save selection").click().run()
    assert not at.exception, at.exception
    assert "Cannot save the latent point" in _errors(at) and "Correct it" in _errors(at)
    assert not (workspace / "selections" / "probe.json").exists()


def test_saving_into_a_read_only_selections_folder_says_what_to_do(workspace, monkeypatch):
    import spicompute.io.provenance as provenance

    def refuse(*args, **kwargs):  # what a read-only folder answers (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    at = AppTest.from_file(VOLUMES, default_timeout=60).run()
    monkeypatch.setattr(provenance.tempfile, "mkstemp", refuse)
    at.text_input(key="latent_name").input("probe")
    at.text_input(key="latent_z").input("0.5")
    next(b for b in at.button if b.label == "Save selection").click().run()
    assert not at.exception, at.exception
    message = _errors(at)
    assert "cannot write" in message and "probe" in message and "not writable" in message
    assert not (workspace / "selections" / "probe.json").exists()


def _selection(workspace, name):
    folder = workspace / "selections"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "kind": "averages", "average_ids": [1, 2]}))


def test_deleting_a_selection_another_tab_already_deleted(workspace):
    _selection(workspace, "gone")
    _selection(workspace, "kept")
    at = AppTest.from_file(SELECTIONS, default_timeout=60).run()
    assert not at.exception, at.exception
    at.selectbox(key="selection").set_value("gone").run()
    (workspace / "selections" / "gone.json").unlink()  # the other tab
    at.checkbox(key="confirm_delete").check()
    _button(at, "Delete").click().run()
    assert not at.exception, at.exception
    assert "no longer exists" in _messages(at) and "nothing was changed" in _messages(at)
    assert (workspace / "selections" / "kept.json").exists()  # the confirmation never moves to another one


def test_renaming_a_selection_another_tab_already_deleted(workspace):
    _selection(workspace, "gone")
    _selection(workspace, "kept")
    at = AppTest.from_file(SELECTIONS, default_timeout=60).run()
    at.selectbox(key="selection").set_value("gone").run()
    (workspace / "selections" / "gone.json").unlink()
    at.text_input(key="new_name").input("other")
    _button(at, "Rename").click().run()
    assert not at.exception, at.exception
    assert "no longer exists" in _messages(at)
    assert not (workspace / "selections" / "other.json").exists()
    assert (workspace / "selections" / "kept.json").exists()
    # and a name that is taken says so
    at.selectbox(key="selection").set_value("kept").run()
    assert "no longer exists" not in _messages(at)
    _selection(workspace, "taken")
    at.text_input(key="new_name").input("taken")
    _button(at, "Rename").click().run()
    assert not at.exception and "Choose another name" in _errors(at)


def test_a_file_deleted_during_the_action_is_a_message(workspace, monkeypatch):
    """The narrow race inside one run: the file goes between the listing and the delete."""
    from dashboard.data import selections

    _selection(workspace, "gone")
    at = AppTest.from_file(SELECTIONS, default_timeout=60).run()
    real = selections.delete

    def racing(root, name):
        (workspace / "selections" / f"{name}.json").unlink()
        real(root, name)

    monkeypatch.setattr(selections, "delete", racing)
    at.checkbox(key="confirm_delete").check()
    _button(at, "Delete").click().run()
    assert not at.exception, at.exception
    assert "no longer exists" in _errors(at) and "Reload" in _errors(at)
