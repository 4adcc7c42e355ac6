"""The third hostile-input sweep, file side: untrusted .keras archives and datasets with bounded
cost, export folders where nothing of the user's is lost, publishing that survives a crash, a full
disk or a second export, training that never lands in a release folder, a decode cache that sees
every change, and clear one-line messages. Each test failed before its fix."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import export.pipeline
import export.publish
import export.source
from export.__main__ import main as export_main
from export.publish import JOURNAL, LOCK, PublishError, output_folder
from runtime.artifacts import read_manifest, sha256_of
from tests.conftest import ROOT
from tests.test_hardening import make_folder, run
from train.datasets import DataError, dataset_name, load_dataset, load_image_folder


def export_small(trained_models, small_data_dir, out: Path, *extra: str) -> int:
    model = trained_models / "fashion_mnist" / "model.keras"
    common = ["--model", str(model), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir), "--out", str(out)]
    return export_main([*common, "--formats", "onnx_fp32", *extra])


def keras_zip(path: Path, members: dict[str, bytes | int]) -> Path:
    """A zip named .keras; an int member is that many zero bytes, deflated (a bomb)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            if isinstance(content, int):
                with archive.open(name, "w", force_zip64=True) as member:
                    for _ in range(content // (1 << 22)):
                        member.write(bytes(1 << 22))
            else:
                archive.writestr(name, content)
    return path


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"config.json": b"{}", "model.weights.h5": 256 << 20}, "model.weights.h5 inflates 10"),
        ({"config.json": 32 << 20}, "config.json inflates to 33554432 bytes, over the limit of 16777216"),
        ({f"assets/{i}": b"x" for i in range(10_001)}, "10001 archive members, over the limit of 10000"),
    ],
    ids=["weights-bomb", "config-bomb", "member-count"],
)
def test_a_keras_archive_over_its_limits_is_refused_before_loading(tmp_path, small_data_dir, capsys, members, message):
    path = keras_zip(tmp_path / "hostile.keras", members)
    out = tmp_path / "out"
    args = ["--model", str(path), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir), "--out", str(out)]
    assert export_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before anything was written


def test_the_archive_total_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.setattr(export.source, "MAX_ARCHIVE_BYTES", 1000)
    path = keras_zip(tmp_path / "big.keras", {"config.json": b"{}", "assets/a": os.urandom(1500)})
    with pytest.raises(export.source.ExportError, match="inflates to 1502 bytes, over the limit of 1000 bytes"):
        export.source.check_keras_archive(path)


def test_a_keras_file_that_is_not_a_zip_says_so(tmp_path, small_data_dir, capsys):
    path = tmp_path / "model.keras"
    path.write_text("not a zip")
    assert export_main(["--model", str(path), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir)]) == 2
    assert "not a .keras model (a .keras file is a zip archive; this one is not)" in capsys.readouterr().err


def test_keras_messages_are_kept_whole(tmp_path, small_data_dir, capsys):
    import keras

    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Flatten()(keras.layers.Lambda(lambda x: x)(inputs))
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    assert export_main(["--model", str(path), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "safe_mode=False" in err  # the reason, past Keras' first line


def test_dataset_files_over_the_runtimes_limit_are_refused_unread(tmp_path):
    root = make_folder(tmp_path / "sparse", {"train/cat": 2, "train/dog": 2, "test/cat": 1, "test/dog": 1})
    with open(root / "train" / "cat" / "huge.png", "wb") as handle:
        handle.truncate(3 << 30)  # a 3 GiB sparse file: nothing on disk, 3 GiB if read
    with pytest.raises(DataError, match=r"huge.png: file too large \(3221225472 bytes, limit 67108864\)"):
        load_image_folder(root)


def test_archive_members_over_the_limit_are_refused_unread(tmp_path):
    archive = tmp_path / "data.tar"
    member = tarfile.TarInfo("data/train/cat/huge.png")
    member.size = 2 << 30  # declared in the header; the archive holds only the header
    archive.write_bytes(member.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    with pytest.raises(DataError, match=r"huge.png: file too large \(2147483648 bytes"):
        load_image_folder(archive)


def test_a_one_class_folder_says_what_is_missing(tmp_path):
    root = make_folder(tmp_path / "one", {"train/only": 2, "test/only": 1})
    with pytest.raises(DataError, match=r"needs at least two class folders under train/, found \['only'\]"):
        load_image_folder(root)


def test_the_decode_cache_sees_a_changed_image_and_an_added_class(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "d", {"train/cat": 2, "train/dog": 2, "test/cat": 1, "test/dog": 1})
    first = load_image_folder(root)
    changed = root / "train" / "cat" / "0.png"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(changed)
    os.utime(changed, ns=(1, 1))  # an old mtime: only the file's own stat tells it changed
    second = load_image_folder(root)
    assert not np.array_equal(first.x_train, second.x_train)
    assert second.x_train[0, 0, 0].tolist() == [0, 0, 255]
    make_folder(root, {"train/owl": 2, "test/owl": 1})
    assert load_image_folder(root).labels == ("cat", "dog", "owl")


def image_folder(root: Path, size: int) -> Path:
    """Two classes of four size x size training images and two test images each."""
    for where, count in (("train/cat", 4), ("train/dog", 4), ("test/cat", 2), ("test/dog", 2)):
        (root / where).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (size, size), (i * 60, 0 if "cat" in where else 200, 0)).save(root / where / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("folder", "name"),
    [("fashion_mnist.v2", "fashion_mnist.v2"), (".hidden", "hidden"), ("shapes.tar.gz", "shapes"), ("a.b", "a.b")],
)
def test_user_dataset_names_keep_their_dots(tmp_path, folder, name):
    assert dataset_name(tmp_path / folder) == name


def test_a_user_folder_named_like_a_release_does_not_train_into_it(tmp_path, capsys):
    from train.__main__ import main as train_main

    root = make_folder(tmp_path / "fashion_mnist", {"train/cat": 4, "train/dog": 4, "test/cat": 2, "test/dog": 2})
    models = tmp_path / "models"
    models.mkdir()
    assert train_main(["--dataset", str(root), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "named like the registered dataset 'fashion_mnist'" in err and "give --out" in err
    assert train_main(["--dataset", str(root), "--epochs", "1", "--data-dir", str(tmp_path)]) == 2  # nor a release
    dotted = make_folder(tmp_path / "fashion_mnist.v2", {"train/cat": 4, "train/dog": 4, "test/cat": 2, "test/dog": 2})
    assert load_dataset(str(dotted)).name == "fashion_mnist.v2"
    hidden = image_folder(tmp_path / ".hidden", size=32)
    args = ["--dataset", str(hidden), "--out", str(models), "--epochs", "1", "--batch-size", "4", "--arch", "baseline"]
    assert train_main(args) == 0
    assert sorted(p.name for p in models.iterdir()) == ["hidden"]  # its own folder, not the output root


def test_images_too_small_for_the_architecture_are_one_line(tmp_path, capsys):
    from train.__main__ import main as train_main

    root = image_folder(tmp_path / "tiny", size=1)
    args = ["--dataset", str(root), "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "2"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot take 1x1 images" in errors[0] and "Traceback" not in err


def test_the_samples_preview_draws_at_most_twenty_classes(tmp_path):
    from train.plots import MAX_PREVIEW_CLASSES, plot_samples

    images = np.zeros((10_000, 8, 8, 1), np.uint8)
    plot_samples(images, np.arange(10_000), tuple(f"class {i}" for i in range(10_000)), tmp_path / "samples.png")
    with Image.open(tmp_path / "samples.png") as picture:
        assert picture.width < MAX_PREVIEW_CLASSES * 1.3 * 110 + 200


def test_labels_must_be_distinct_and_named(trained_models, small_data_dir, tmp_path, capsys):
    for labels, message in (("red,red,blue" + ",x" * 7, "'red' is given more than once"), ("a,,c", "is empty")):
        assert export_small(trained_models, small_data_dir, tmp_path / "out", "--labels", labels) == 2
        assert message in capsys.readouterr().err


def test_an_out_folder_of_the_users_is_refused_and_forced_without_loss(
    trained_models, small_data_dir, tmp_path, capsys
):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("four years of work")
    (out / "model_fp32.onnx").write_bytes(b"the user's own model")
    assert export_small(trained_models, small_data_dir, out) == 2
    err = capsys.readouterr().err.strip()
    assert "holds files edgepack did not write" in err and "--force" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["model_fp32.onnx", "thesis.txt"]  # untouched, no lock left
    assert export_small(trained_models, small_data_dir, out, "--force") == 0
    assert (out / "thesis.txt").read_text() == "four years of work"
    assert (out / "superseded" / "model_fp32.onnx").read_bytes() == b"the user's own model"
    assert read_manifest(out / "manifest.json")["artifacts"][0]["sha256"] == sha256_of(out / "model_fp32.onnx")


def test_rejected_keeps_the_users_files(trained_models, small_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert export_small(trained_models, small_data_dir, out) == 0
    (out / "rejected").mkdir()
    (out / "rejected" / "thesis.txt").write_text("mine")
    strict = ("--formats", "onnx_int8", "--no-accuracy-control", "--thresholds", "int8=0:1:0")
    assert export_small(trained_models, small_data_dir, out, *strict) == 1
    assert (out / "rejected" / "thesis.txt").read_text() == "mine"
    assert (out / "rejected" / "model_int8.onnx").is_file()


def test_a_second_export_into_a_locked_folder_exits_with_one_line(trained_models, small_data_dir, tmp_path, capsys):
    out = tmp_path / "shared"
    out.mkdir()
    with (out / LOCK).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another export, in this or any other PID namespace
        assert export_small(trained_models, small_data_dir, out) == 2
    err = capsys.readouterr().err.strip()
    assert "another export is writing there" in err and len(err.splitlines()) == 1
    assert export_small(trained_models, small_data_dir, out) == 0  # free again


def test_staging_folders_are_unique_and_a_killed_runs_one_is_removed(tmp_path):
    folder = tmp_path / "out"
    (folder / ".staging-4242").mkdir(parents=True)  # left by a run killed with SIGKILL
    (folder / ".staging-4242" / "model_int8.onnx").write_bytes(b"half")
    with output_folder(folder) as first:
        assert not (folder / ".staging-4242").exists()
        assert first.staging.name.startswith(".staging-") and first.staging.name != f".staging-{os.getpid()}"
        with pytest.raises(PublishError, match="another export is writing there"), output_folder(folder):
            pass
    assert not first.staging.exists()


CRASHING_EXPORT = """
import os, sys
import export.publish
run_moves = export.publish._run_moves
def killed_midway(folder, moves):
    run_moves(folder, moves[: int(sys.argv[1])])
    os._exit(9)  # SIGKILL-like: no cleanup runs
export.publish._run_moves = killed_midway
from export.__main__ import main
main(sys.argv[2:])
"""


def test_a_publish_killed_midway_is_completed_by_the_next_run(trained_models, small_data_dir, tmp_path):
    out = tmp_path / "release"
    args = ["--formats", "onnx_fp32,tflite_fp32"]
    assert export_small(trained_models, small_data_dir, out, *args) == 0
    old = (out / "manifest.json").read_bytes()
    model = trained_models / "fashion_mnist" / "model.keras"
    command = [sys.executable, "-c", CRASHING_EXPORT, "2"]  # two files moved, then killed
    command += ["--model", str(model), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir)]
    command += ["--out", str(out), "--formats", "onnx_fp32,tflite_fp32,tflite_fp16"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 9, result.stderr[-2000:]
    assert (out / JOURNAL).exists() and (out / "manifest.json").read_bytes() == old  # mid-way: old manifest
    with output_folder(out):  # what the next export does first
        pass
    assert not (out / JOURNAL).exists() and not list(out.glob(".staging-*"))
    manifest = read_manifest(out / "manifest.json")
    assert [e["path"] for e in manifest["artifacts"]] == ["model_fp32.onnx", "model_fp32.tflite", "model_fp16.tflite"]
    assert all(sha256_of(out / e["path"]) == e["sha256"] for e in manifest["artifacts"])


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (root only: CI runs as root; elsewhere the test skips)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    """Fill a file system to the last byte."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(4096))
        except OSError:
            pass


def test_a_full_disk_while_publishing_leaves_the_old_release(
    trained_models, small_data_dir, small_disk, capsys, monkeypatch
):
    out = small_disk / "release"
    assert export_small(trained_models, small_data_dir, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    atomic_write = export.publish.atomic_write

    def disk_fills_now(path, data):  # the disk fills up after the artifacts are staged
        fill(small_disk)
        atomic_write(path, data)

    monkeypatch.setattr(export.publish, "atomic_write", disk_fills_now)
    monkeypatch.setattr(export.pipeline, "LOW_DISK_BYTES", 0)  # the artifacts still convert on this tiny disk
    code = export_small(trained_models, small_data_dir, out, "--formats", "onnx_fp32,tflite_fp32")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and "cannot write the new manifest (No space left on device)" in last, err[-999:]
    assert "the published release is unchanged" in last
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # the old release, whole
    manifest = json.loads(after["manifest.json"])
    assert all(sha256_of(out / e["path"]) == e["sha256"] for e in manifest["artifacts"])


def test_a_full_disk_during_conversion_is_named(trained_models, small_data_dir, small_disk):
    out = small_disk / "fresh"
    out.mkdir()
    fill(small_disk)
    model = trained_models / "fashion_mnist" / "model.keras"
    args = ["--model", str(model), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir), "--out", str(out)]
    result = run("export", *args, "--formats", "onnx_int8", text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model_int8.onnx: conversion failed: no space left on the device" in result.stderr
    assert lines[-1].startswith("error: ") and "No space left on device" in lines[-1], lines[-5:]
