"""The third hostile-input sweep, runtime side: forged output lines, untrusted ONNX models (endless
loops, oversized inputs, NaN scores, odd output shapes), degenerate preprocessing, and the image
formats the runtime agrees to decode. Each test failed before its fix."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from runtime.classifier import MAX_BATCH_BYTES, Classifier, batch_limit
from runtime.errors import InputError, ModelError
from runtime.metadata import METADATA_KEY, ModelInfo
from runtime.preprocess import IMAGE_FORMATS, decode_image
from runtime.text import printable
from tests.conftest import ROOT
from tests.test_hardening import one_line_error, run, with_metadata

LABELS = ["a", "b", "c", "d"]


def tiny_model(tmp_path, body: str = "plain", labels=LABELS, batch: int | str = "N") -> str:
    """A 2x2 grayscale classifier built with onnx.helper: Softmax(Flatten(x) + extra), where
    ``extra`` is 0 ("plain"), NaN ("nan") or the result of a Loop that never ends ("loop");
    "rank3" outputs [N, 1, 4] instead of [N, 4]."""
    nodes = [helper.make_node("Flatten", ["image"], ["flat"])]
    inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    if body == "nan":
        nodes.append(helper.make_node("Div", ["zero", "zero"], ["extra"]))  # 0/0
    elif body == "huge":  # a 3 GiB tensor inside the graph, summed away
        fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [0.0])
        inits.append(helper.make_tensor("huge_shape", TensorProto.INT64, [1], [3 * 2**28]))
        nodes.append(helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], value=fill))
        nodes.append(helper.make_node("ReduceSum", ["huge"], ["extra"], keepdims=0))
    elif body == "loop":
        loop_body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                helper.make_node("Add", ["v_in", "one"], ["v_out"]),
            ],
            "forever",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
            ],
            [helper.make_tensor("one", TensorProto.FLOAT, [], [0.0])],
        )
        inits += [
            helper.make_tensor("trips", TensorProto.INT64, [], [2**62]),
            helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        ]
        nodes.append(helper.make_node("Loop", ["trips", "true", "zero"], ["extra"], body=loop_body))
    else:
        nodes.append(helper.make_node("Identity", ["zero"], ["extra"]))
    nodes.append(helper.make_node("Add", ["flat", "extra"], ["logits"]))
    shape = [batch, 4]
    if body == "rank3":
        inits.append(helper.make_tensor("shape3", TensorProto.INT64, [3], [-1, 1, 4]))
        nodes += [helper.make_node("Reshape", ["logits", "shape3"], ["logits3"])]
        nodes.append(helper.make_node("Softmax", ["logits3"], ["probabilities"], axis=-1))
        shape = [batch, 1, 4]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, 2, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = {"labels": list(labels), "height": 2, "width": 2, "channels": 1, "layout": "NCHW"}
    helper.set_model_props(model, {METADATA_KEY: json.dumps(info)})
    path = tmp_path / f"tiny-{body}-{batch}.onnx"
    onnx.save(model, path)
    return str(path)


def png(tmp_path, name: str, value: int = 0) -> str:
    path = tmp_path / name
    Image.new("L", (2, 2), value).save(path, "PNG")
    return str(path)


def test_file_names_cannot_forge_result_lines_or_drive_the_terminal(tmp_path):
    model = tiny_model(tmp_path)
    forged = png(tmp_path, "evil\nFAKE.png: Trouser 99.9% (forged).png")
    clear = png(tmp_path, "\x1b[2J.png")
    result = run("runtime.classify", forged, clear, "--model", model, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "\x1b" not in result.stdout  # one line per image, no escape sequence
    assert lines[0].startswith(str(tmp_path) + "/evil\\nFAKE.png: Trouser 99.9% (forged).png: ")
    assert lines[1].startswith(str(tmp_path) + "/\\x1b[2J.png: ")
    bad = tmp_path / "bad\nerror: forged.png"
    bad.write_bytes(b"not an image")
    result = run("runtime.classify", str(bad), "--model", model, text=True)
    assert result.returncode == 1 and one_line_error(result.stderr).startswith(f"error: {tmp_path}/bad\\nerror: forged")


def test_an_untrusted_models_labels_are_escaped_too(tmp_path):
    model = tiny_model(tmp_path, labels=["cat\nforged.png: dog 100.0%", "\x1b[31mred", "\u202eevil", "d"])
    result = run("runtime.classify", png(tmp_path, "x.png"), "--model", model, "--top-k", "4", text=True)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1
    assert "cat\\nforged.png" in result.stdout and "\\x1b[31mred" in result.stdout and "\\u202eevil" in result.stdout
    record = json.loads(run("runtime.classify", png(tmp_path, "y.png"), "--model", model, "--json", text=True).stdout)
    assert {entry["label"] for entry in record["top_k"]} == {"cat\nforged.png: dog 100.0%", "\x1b[31mred", "\u202eevil"}


def test_printable_escapes_controls_and_keeps_ordinary_text():
    assert printable("T-shirt/top café 猫") == "T-shirt/top café 猫"
    assert printable("a\nb\rc\td\x00e\x7f\x9b") == "a\\nb\\rc\\td\\x00e\\x7f\\x9b"
    assert printable("\u2028\u200d") == "\\u2028\\u200d"
    assert printable("x" * 50, limit=10) == "xxxxxxx..."


def test_an_endless_model_is_stopped_by_timeout(tmp_path):
    model = tiny_model(tmp_path, "loop")
    started = time.monotonic()
    result = run("runtime.classify", png(tmp_path, "x.png"), "--model", model, "--timeout", "3", text=True)
    assert result.returncode == 2 and time.monotonic() - started < 60
    assert "stopped after 3 s (--timeout)" in one_line_error(result.stderr)
    plain = run("runtime.classify", png(tmp_path, "y.png"), "--model", tiny_model(tmp_path), "--timeout=30", text=True)
    assert plain.returncode == 0 and plain.stdout.count("\n") == 1  # the worker's output comes through


LIMIT = "EDGEPACK_MAX_RUN_SECONDS"
# The command's own peak (VmHWM, in KiB: ru_maxrss would carry over the parent test process's peak)
PEAK_OF_CLASSIFY = """
import re, runpy, sys
sys.argv = ["classify", *sys.argv[1:]]
try:
    runpy.run_module("runtime.classify", run_name="__main__")
except SystemExit as exc:
    status = open("/proc/self/status").read()
    print("peak", re.search(r"VmHWM:\\s+(\\d+)", status).group(1), file=sys.stderr)
    raise
"""


def test_an_endless_model_is_stopped_without_timeout_too(tmp_path):
    """S6: without --timeout an endless model had no bound: each ONNX Runtime call now has one."""
    model = tiny_model(tmp_path, "loop")
    started = time.monotonic()
    result = run("runtime.classify", png(tmp_path, "x.png"), "--model", model, text=True, env={LIMIT: "2"})
    assert result.returncode == 2 and time.monotonic() - started < 60
    message = one_line_error(result.stderr)
    assert "inference stopped after 2 s, the limit per run ($EDGEPACK_MAX_RUN_SECONDS)" in message
    bad = run("runtime.classify", png(tmp_path, "y.png"), "--model", model, text=True, env={LIMIT: "soon"})
    assert bad.returncode == 2 and "$EDGEPACK_MAX_RUN_SECONDS: expected a positive number" in one_line_error(bad.stderr)


def test_a_model_that_allocates_gigabytes_inside_is_refused_in_bounded_memory(tmp_path):
    """S6: a model with a 3 GiB internal tensor allocated it; classify caps the sessions' memory."""
    import subprocess
    import sys

    model = tiny_model(tmp_path, "huge")
    command = [sys.executable, "-c", PEAK_OF_CLASSIFY, png(tmp_path, "x.png"), "--model", model]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "inference failed" in one_line_error("\n".join(lines[:-1]))
    assert int(lines[-1].split()[1]) < 1024 * 1024  # KiB: the child's peak stayed well under 1 GiB
    roomy = run(
        "runtime.classify",
        png(tmp_path, "y.png"),
        "--model",
        model,
        text=True,
        env={"EDGEPACK_MAX_INFERENCE_BYTES": str(4 * 2**30)},
    )
    assert roomy.returncode == 0, roomy.stderr  # the user can raise the bound


def test_non_finite_scores_are_refused_per_image(tmp_path):
    model = tiny_model(tmp_path, "nan")
    images = [png(tmp_path, f"{i}.png") for i in range(3)]
    for extra in ((), ("--json",)):
        result = run("runtime.classify", *images, "--model", model, *extra, text=True)
        assert result.returncode == 1 and result.stdout == ""
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 3 and all("not finite numbers (NaN or infinity)" in line for line in errors)
    with pytest.raises(ModelError, match="not finite"):
        Classifier(model).classify(images)


def test_an_output_of_rank_3_is_a_model_error(tmp_path):
    model = tiny_model(tmp_path, "rank3")
    with pytest.raises(ModelError, match=r"expected one output of shape \[batch, classes\]"):
        Classifier(model)
    result = run("runtime.classify", png(tmp_path, "x.png"), "--model", model, text=True)
    assert result.returncode == 2 and "expected one output of shape" in one_line_error(result.stderr)


def test_a_failing_inference_is_one_line(tmp_path):
    model = tiny_model(tmp_path, batch=2)  # a fixed batch of two: one image cannot be fed
    result = run("runtime.classify", png(tmp_path, "x.png"), "--model", model, text=True)
    assert result.returncode == 2 and "inference failed" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(height=8192, width=8192), "height must be a whole number from 1 to 4096"),
        (lambda m: m.update(std=[1e-45]), "degenerate preprocessing"),
        (lambda m: m.update(scale=1e308), "degenerate preprocessing"),
        (lambda m: m.update(labels=["red", "red"] + [str(i) for i in range(8)]), "labels repeat 'red'"),
        (lambda m: m.update(labels=["a", ""] + [str(i) for i in range(8)]), "labels include an empty one"),
    ],
    ids=["8192-side", "tiny-std", "huge-scale", "repeated-label", "empty-label"],
)
def test_hostile_metadata_is_refused(fp32_model, tmp_path, change, message):
    path = with_metadata(fp32_model, tmp_path, change)
    result = run("runtime.classify", "x.png", "--model", path, text=True)
    assert result.returncode == 2 and message in one_line_error(result.stderr)


def test_a_large_declared_input_runs_in_small_batches():
    big = ModelInfo(labels=("a", "b"), height=4096, width=4096, channels=3)
    assert batch_limit(big, 32) == 1  # 201 MB an image: one at a time, not 6.4 GB at once
    small = ModelInfo(labels=("a", "b"), height=28, width=28, channels=1)
    assert batch_limit(small, 32) == 32 and batch_limit(small, 10**6) == MAX_BATCH_BYTES // (28 * 28 * 4)


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    image.save(buffer, fmt, **({"sizes": [(16, 16)]} if fmt == "ICO" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_documented_formats_decode(fmt):
    assert decode_image(encoded(fmt), f"x.{fmt.lower()}").size == (16, 16)


@pytest.mark.parametrize("fmt", ["EPS", "PDF", "TGA", "PCX", "SGI", "DDS"])
def test_other_pillow_formats_are_refused_before_decoding(fmt):
    with pytest.raises(InputError, match="not an image in a supported format"):
        decode_image(encoded(fmt), f"x.{fmt.lower()}")


def test_fits_and_psd_headers_are_refused():
    fits = b"SIMPLE  =                    T" + b" " * 50 + b"BITPIX  =                    8" + b" " * 2800
    psd = b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + b"\x00\x00\x00\x10" * 2 + b"\x00\x08\x00\x03" + b"\x00" * 64
    for data, name in ((fits, "x.fits"), (psd, "x.psd")):
        with pytest.raises(InputError, match="not an image in a supported format"):
            decode_image(data, name)
    assert np.asarray(decode_image(encoded("PNG"), "x.png")).shape == (16, 16, 3)
