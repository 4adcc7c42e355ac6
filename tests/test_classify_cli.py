"""`python -m runtime.classify` as users run it: real images, output formats, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT


def run_cli(*args: str, models_dir=None) -> subprocess.CompletedProcess:
    env = None
    if models_dir is not None:
        import os

        env = {**os.environ, "EDGEPACK_MODELS_DIR": str(models_dir)}
    return subprocess.run(
        [sys.executable, "-m", "runtime.classify", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory, fashion):
    """Real test images saved as PNG, JPEG and WebP, in other sizes and modes, with their labels."""
    folder = tmp_path_factory.mktemp("images")
    picks = [int(np.flatnonzero(fashion.y_test == c)[0]) for c in (9, 1, 8)]  # ankle boot, trouser, bag
    files = []
    for i, (fmt, mode, size) in zip(picks, [("png", "L", 28), ("jpg", "RGB", 84), ("webp", "RGBA", 56)]):
        image = Image.fromarray(fashion.x_test[i][..., 0]).convert(mode).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"img{i}.{fmt}"
        image.save(path, **({"quality": 95} if fmt == "jpg" else {"lossless": True} if fmt == "webp" else {}))
        files.append((path, fashion.labels[fashion.y_test[i]]))
    return files


def test_human_output_one_line_per_image(images, int8_model):
    result = run_cli(*[str(p) for p, _ in images], "--model", str(int8_model))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, (path, label) in zip(lines, images):
        assert line.startswith(f"{path}: {label} ") and line.count("%") == 3


def test_json_output_parses(images, int8_model):
    result = run_cli(str(images[0][0]), "--model", str(int8_model), "--json", "--top-k", "2")
    record = json.loads(result.stdout)
    assert record["file"] == str(images[0][0]) and record["label"] == images[0][1]
    assert record["index"] == 9 and 0 < record["probability"] <= 1 and len(record["top_k"]) == 2


def test_directories_and_globs_are_expanded(images, int8_model):
    folder = images[0][0].parent
    assert len(run_cli(str(folder), "--model", str(int8_model)).stdout.splitlines()) == 3
    assert len(run_cli(str(folder / "*.png"), "--model", str(int8_model)).stdout.splitlines()) == 1


def test_bad_inputs_exit_1_and_the_rest_still_classified(images, int8_model, tmp_path):
    empty, text, truncated = tmp_path / "empty.png", tmp_path / "notes.png", tmp_path / "cut.png"
    empty.write_bytes(b"")
    text.write_text("not an image")
    truncated.write_bytes(images[0][0].read_bytes()[:60])
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    args = [str(empty), str(images[0][0]), str(text), str(truncated), str(tmp_path / "missing.png"), str(empty_dir)]
    result = run_cli(*args, "--model", str(int8_model))
    assert result.returncode == 1
    assert result.stdout.strip().startswith(f"{images[0][0]}: Ankle boot")
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"error: {empty}: empty file",
        f"error: {text}: not an image in a supported format (PNG, JPEG, WEBP, BMP, GIF, TIFF, PPM, ICO)",
        f"error: {truncated}: cannot decode image (image file is truncated)",
        f"error: {tmp_path / 'missing.png'}: no such file",
        f"error: {empty_dir}: directory contains no images",
    ]
    assert "Traceback" not in result.stderr


def test_model_errors_exit_2(images, tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_text("nope")
    result = run_cli(str(images[0][0]), "--model", str(bogus))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {bogus}: not a loadable ONNX model")
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(images):
    assert run_cli(str(images[0][0]), "--top-k", "0").returncode == 2
    assert run_cli().returncode == 2


def test_default_model_is_the_shipped_int8_of_the_dataset(images, exported_models):
    result = run_cli(str(images[0][0]), models_dir=exported_models)
    assert result.returncode == 0 and result.stdout.startswith(f"{images[0][0]}: Ankle boot")
    missing = run_cli(str(images[0][0]), "--dataset", "cifar10", models_dir=exported_models)
    assert missing.returncode == 2 and "no manifest" in missing.stderr


def test_help():
    result = run_cli("--help")
    assert result.returncode == 0 and "Exit codes" in result.stdout


def test_parallel_decoding_keeps_the_input_order(fashion, int8_model, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(150):
        Image.fromarray(fashion.x_test[i][..., 0]).save(folder / f"{i:03d}.png")
    (folder / "100.png").write_bytes(b"not an image")  # one failure in the middle stays in place
    outputs = [run_cli(str(folder), "--model", str(int8_model), "--workers", w) for w in ("1", "2")]
    assert outputs[0].stdout == outputs[1].stdout and outputs[0].stderr == outputs[1].stderr
    assert outputs[1].returncode == 1 and len(outputs[1].stdout.splitlines()) == 149
