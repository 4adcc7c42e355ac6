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
