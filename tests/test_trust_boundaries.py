"""The fourth hostile-input sweep: the API, custom objects, the demo and benchmarks of any folder,
multi-process training. Each test failed before its fix; each case is one line and a non-zero
exit, bounded time and memory, and nothing of the user's touched."""

from __future__ import annotations

import json

import pytest

from export.publish import JOURNAL, PublishError, output_folder


def test_a_crafted_journal_cannot_move_files_through_a_link_in_the_folder(tmp_path):
    """L7: a journal whose moves pass through a symbolic link inside --out moved a file from outside
    into the folder and one out of it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("private")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"artifacts": []}')
    (out / "door").symlink_to(outside)
    moves = [{"from": "door/secret.txt", "to": "stolen.txt"}, {"from": "manifest.json", "to": "door/planted"}]
    (out / JOURNAL).write_text(json.dumps({"moves": moves}))
    with output_folder(out):
        pass
    assert (outside / "secret.txt").read_text() == "private" and not (outside / "planted").exists()
    assert not (out / "stolen.txt").exists() and (out / "manifest.json").is_file()
    assert (out / f"{JOURNAL}.broken").is_file()  # set aside, not run


@pytest.mark.parametrize("name", ["rejected", "superseded", ".edgepack.lock"])
def test_a_link_where_publishing_writes_is_refused_before_anything_is_written(tmp_path, name):
    """L7: a symlinked rejected/ overwrote the files of the folder it pointed to."""
    elsewhere = tmp_path / "other-release"
    elsewhere.mkdir()
    (elsewhere / "model_int8.onnx").write_bytes(b"the other release")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"artifacts": []}')
    (out / name).symlink_to(elsewhere if "." not in name else elsewhere / "lock")
    refused = "is a symbolic link; an export writes only inside its own folder"
    with pytest.raises(PublishError, match=refused), output_folder(out):
        pass
    assert sorted(p.name for p in elsewhere.iterdir()) == ["model_int8.onnx"]
    assert (elsewhere / "model_int8.onnx").read_bytes() == b"the other release"


def test_a_rename_that_fails_mid_publish_says_how_far_it_got(tmp_path, monkeypatch):
    """U7: a rename failing mid-publish said only 'cannot write the export there'."""
    import os

    import export.publish

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b", "c"):
        (out / f"{name}.new").write_text(name)
    moves = [{"from": f"{name}.new", "to": name} for name in ("a", "b", "c")]
    real_replace = os.replace

    def failing(source, target):
        if str(target).endswith("/b"):
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(export.publish.os, "replace", failing)
    with pytest.raises(PublishError) as caught:
        export.publish._run_moves(out, moves)
    message = str(caught.value)
    assert "publishing stopped at rename 2 of 3 (b.new -> b: Input/output error)" in message
    assert "the next export into this folder completes them" in message and "\n" not in message
