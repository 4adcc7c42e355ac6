"""The hostile-input sweep's cases, each as it was reported: a one-line error or the right result,
no traceback, nothing lost or published by mistake. (The demo's cases are in test_demo.py, the
smoke-run and resume cases in test_train.py, NaN thresholds in test_gate.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import onnx
import pytest
from PIL import Image

from runtime.classifier import Classifier
from runtime.errors import InputError, ModelError
from runtime.metadata import METADATA_KEY
from runtime.preprocess import read_image_bytes, to_pixels
from tests.conftest import ROOT


def run(module: str, *args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def one_line_error(stderr: bytes | str) -> str:
    """The one ``error:`` line of a command's stderr (log lines aside), with no traceback anywhere."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = [line for line in text.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert "Traceback" not in text and len(lines) == 1, text
    return lines[0]


def test_non_utf8_file_names_print_on_a_strict_utf8_terminal(int8_model, fashion, tmp_path):
    folder = os.fsencode(tmp_path)
    names = [b"caf\xe9.png", b"plain.png"]  # the first is Latin-1, not UTF-8
    for name in names:
        Image.fromarray(fashion.x_test[0][..., 0]).save(os.fsdecode(os.path.join(folder, name)))
    strict = {"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    for extra in ((), ("--json",)):
        result = run("runtime.classify", os.fsdecode(folder), "--model", str(int8_model), *extra, env=strict)
        assert result.returncode == 0, result.stderr.decode()
        out = result.stdout.decode("utf-8")  # valid UTF-8 throughout
        if extra:
            records = [json.loads(line) for line in out.splitlines()]
            assert [r["label"] for r in records] == ["Ankle boot"] * 2
            assert sorted(os.path.basename(r["file"]) for r in records) == ["caf\\xe9.png", "plain.png"]
        else:
            assert "caf\\xe9.png: Ankle boot" in out and "plain.png: Ankle boot" in out


def test_threads_are_capped_at_the_core_count(int8_model, fashion, tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(fashion.x_test[0][..., 0]).save(image)
    result = run("runtime.classify", str(image), "--model", str(int8_model), "--threads", "100000", text=True)
    assert result.returncode == 0 and "Ankle boot" in result.stdout
    assert f"100000 threads asked for, {os.cpu_count()} cores here" in result.stderr


def with_metadata(fp32_model, tmp_path, change) -> str:
    proto = onnx.load(fp32_model)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            payload = json.loads(prop.value)
            change(payload)
            prop.value = json.dumps(payload)
    path = tmp_path / "edited.onnx"
    onnx.save(proto, path)
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(labels=["a", "b", "c"]), "names 3 labels but the model outputs 10 scores"),
        (lambda m: m.update(height=28.0), "height must be a whole number"),
        (lambda m: m.update(scale="x"), "scale must be a positive number"),
        (lambda m: m.update(std=[float("nan")]), "std must be a list of finite numbers"),
        (lambda m: m.update(labels="abcdefghij"), "labels must be a list"),
        (lambda m: m.update(labels=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), "labels must be a list of strings"),
        (lambda m: m.update(dtype="float64"), "unsupported input dtype"),
        (lambda m: m.update(channels=True), "channels must be a whole number"),
        (lambda m: m.update(surprise=1), "unknown field"),
    ],
    ids=[
        "label-count",
        "float-height",
        "string-scale",
        "nan-std",
        "string-labels",
        "int-labels",
        "dtype",
        "bool",
        "unknown-field",
    ],
)
def test_wrong_typed_metadata_is_a_model_error(fp32_model, tmp_path, change, message):
    path = with_metadata(fp32_model, tmp_path, change)
    with pytest.raises(ModelError, match=message):
        Classifier(path)
    result = run("runtime.classify", "x.png", "--model", path, text=True)
    assert result.returncode == 2 and message in one_line_error(result.stderr)


@pytest.mark.parametrize(
    "entries",
    [
        ["not an object"],
        [{"path": "../../etc/passwd", "sha256": "0"}],
        [{"path": 7}],
        [{"path": "a.onnx", "passed": 1}],
    ],
    ids=["string", "traversal", "number-path", "number-passed"],
)
def test_malformed_manifest_entries_are_model_errors(exported_models, tmp_path, entries):
    folder = tmp_path / "fashion_mnist"
    shutil.copytree(exported_models / "fashion_mnist", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"artifacts": entries}))
    with pytest.raises(ModelError, match="unreadable manifest"):
        Classifier.for_dataset("fashion_mnist", models_dir=tmp_path)
    result = run("runtime.classify", "x.png", env={"EDGEPACK_MODELS_DIR": str(tmp_path)}, text=True)
    assert result.returncode == 2 and "unreadable manifest" in one_line_error(result.stderr)


def png_header(width: int, height: int) -> bytes:
    """A small PNG file whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_huge_image_header_is_called_too_large(fp32_model):
    info = Classifier(fp32_model).info
    with pytest.raises(InputError, match="image too large"):
        to_pixels(png_header(50_000, 50_000), info)


def test_a_fifo_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_image_bytes(fifo)


def test_a_directory_given_as_model_says_so(tmp_path):
    with pytest.raises(ModelError, match="is a directory"):
        Classifier(tmp_path)
    result = run("runtime.classify", "x.png", "--model", str(tmp_path), text=True)
    assert "is a directory" in one_line_error(result.stderr)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory: run as a normal user to test this")
def test_an_unreadable_subdirectory_is_reported(int8_model, fashion, tmp_path):
    Image.fromarray(fashion.x_test[0][..., 0]).save(tmp_path / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        result = run("runtime.classify", str(tmp_path), "--model", str(int8_model), text=True)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 1 and "cannot read this directory" in result.stderr and "Ankle boot" in result.stdout


def test_an_interrupted_classification_is_one_line(int8_model, fashion, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        Image.fromarray(fashion.x_test[i % 100][..., 0]).resize((1000, 1000)).save(folder / f"{i}.png")
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.classify", str(folder), "--model", str(int8_model)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the first result arrives at once, not after a pipe buffer
        # as at a terminal: a test run started in the background inherits an ignored SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while process.stdout.readline() == "" and time.monotonic() < deadline:  # wait for the first result
        pass
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and one_line_error(err) == "interrupted"


def test_sigterm_during_export_leaves_no_staging_folder(exported_models, trained_models, small_data_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_models, models)  # already exported once by the session's fixture
    folder = models / "fashion_mnist"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "export",
            "--dataset",
            "fashion_mnist",
            "--models-dir",
            str(models),
            "--data-dir",
            str(small_data_dir),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(folder.glob(".staging-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)  # well into the work
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert not list(folder.glob(".staging-*"))
    assert (folder / "manifest.json").read_bytes() == (trained_models / "fashion_mnist" / "manifest.json").read_bytes()


def export_small_model(trained_models, small_data_dir, *extra: str) -> subprocess.CompletedProcess:
    model = trained_models / "fashion_mnist" / "model.keras"
    common = ("--model", str(model), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir))
    return run("export", *common, *extra, text=True)


def test_export_into_an_unwritable_folder_fails_before_the_work(trained_models, small_data_dir, tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("a file where a folder should be")
    result = export_small_model(trained_models, small_data_dir, "--out", str(blocker / "out"))
    assert result.returncode == 2 and "cannot write the export there" in one_line_error(result.stderr)
    assert "float reference" not in result.stderr  # refused before the model was run


def test_calibration_samples_are_checked_before_the_work(trained_models, small_data_dir):
    result = export_small_model(trained_models, small_data_dir, "--calibration-samples", "999999")
    assert result.returncode == 2 and "--calibration-samples must be between 1 and" in one_line_error(result.stderr)
    assert "float reference" not in result.stderr


def make_folder(root, layout: dict[str, int]):
    for where, count in layout.items():
        folder = root / where
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 40 % 255, 0, 0)).save(folder / f"{i}.png")
    return root


def test_an_empty_class_folder_is_refused(tmp_path):
    from train.datasets import DataError, load_image_folder

    root = make_folder(tmp_path / "d", {"train/cat": 3, "train/dog": 3, "train/owl": 0, "test/cat": 2, "test/dog": 2})
    with pytest.raises(DataError, match="train/owl/ holds no images"):
        load_image_folder(root)


def test_a_class_missing_from_test_is_warned_about(tmp_path, caplog):
    from train.datasets import load_image_folder

    root = make_folder(tmp_path / "d", {"train/cat": 3, "train/dog": 3, "train/owl": 3, "test/cat": 2, "test/dog": 2})
    data = load_image_folder(root)
    assert data.labels == ("cat", "dog", "owl")
    assert "owl have no test images" in caplog.text
