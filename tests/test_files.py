"""The one write-then-rename helper every stage uses for the files a user keeps."""

from __future__ import annotations

import json

import pytest

from runtime.files import atomic_path, atomic_write


def test_a_writer_that_fails_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "history.json"
    atomic_write(target, json.dumps({"epochs": 3}))
    with pytest.raises(RuntimeError), atomic_path(target, ".keras") as partial:
        partial.write_text("half a mod")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"epochs": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_a_library_writer_gets_a_path_with_its_suffix_and_the_result_replaces_the_target(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    with atomic_path(target, ".png") as partial:
        assert partial.parent == tmp_path and partial.name.endswith(".png") and partial.name.startswith(".")
        partial.write_bytes(b"new picture")
    assert target.read_bytes() == b"new picture" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_umask_s_permissions_so_other_accounts_can_read_a_release(tmp_path, umask, mode):
    """mkstemp's 0600 made a shared release unreadable to every other account ('Permission denied'
    on the manifest): a new file is created as ``open`` would create it."""
    import os

    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "manifest.json", "{}")
        with atomic_path(tmp_path / "model.keras", ".keras") as partial:
            partial.write_bytes(b"weights")
    finally:
        os.umask(previous)
    for name in ("manifest.json", "model.keras"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_a_replaced_file_keeps_its_own_permissions(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    target.chmod(0o640)
    atomic_write(target, '{"epochs": 1}')
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_text() == '{"epochs": 1}'
