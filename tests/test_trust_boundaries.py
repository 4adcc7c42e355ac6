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


def test_a_hundred_thousand_labels_are_checked_in_linear_time():
    """S9: the repeated-label check was quadratic (49.6 s for 40k labels); 100,000 hung classify, the
    demo and the benchmarks. Run where a hang shows: in a child with a time limit far above the
    linear check's cost and far below the quadratic one's (minutes)."""
    import subprocess
    import sys

    probe = (
        "from runtime.metadata import ModelInfo\n"
        "from runtime.errors import ModelError\n"
        "from runtime.limits import MAX_LABELS\n"
        "labels = tuple(f'class {i}' for i in range(MAX_LABELS))\n"
        "assert ModelInfo(labels, 28, 28, 1).num_classes == MAX_LABELS\n"
        "try:\n"
        "    ModelInfo(labels[:-1] + ('class 7',), 28, 28, 1)\n"
        "except ModelError as exc:\n"
        "    print(exc)\n"
        "try:\n"
        "    ModelInfo(labels + ('one more',), 28, 28, 1)\n"
        "except ModelError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == [
        "metadata labels repeat 'class 7': each class needs its own name",
        "the model metadata lists 100001 labels, over the limit of 100000",
    ]


def test_a_huge_manifest_is_refused_by_its_size_before_reading(tmp_path):
    """S10: every command read manifest.json whole: a 12 KB sparse file of 1 GiB cost 2.1 GB."""
    import subprocess
    import sys

    from runtime.artifacts import read_manifest
    from runtime.errors import ModelError
    from tests.conftest import ROOT
    from tests.test_untrusted_models import PEAK_OF_CLASSIFY

    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    (folder / "model_int8.onnx").write_bytes((ROOT / "models" / "fashion_mnist" / "model_int8.onnx").read_bytes())
    with (folder / "manifest.json").open("wb") as handle:
        handle.write(b'{"artifacts": [')
        handle.truncate(1 << 30)  # sparse: no disk used
    with pytest.raises(ModelError, match=r"unreadable manifest \(1073741824 bytes, over the limit of 16777216\)"):
        read_manifest(folder / "manifest.json")
    image = ROOT / "docs" / "demo.png"
    command = [sys.executable, "-c", PEAK_OF_CLASSIFY, str(image), "--model", str(folder / "model_int8.onnx")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    *lines, peak = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "over the limit of 16777216" in lines[0]
    assert int(peak.split()[1]) < 512 * 1024  # KiB: the command's own peak; reading the file took 2.1 GB


def release_copy(tmp_path, names=("manifest.json", "model_int8.onnx")):
    """A folder holding some files of the shipped Fashion-MNIST release."""
    import shutil

    from tests.conftest import ROOT

    folder = tmp_path / "my-export"
    folder.mkdir()
    for name in names:
        shutil.copy2(ROOT / "models" / "fashion_mnist" / name, folder / name)
    return folder


def test_the_benchmarks_refuse_a_tampered_artifact_for_every_runner(tmp_path, capsys):
    """S11: the bare ONNX Runtime and LiteRT contenders skipped the sha256 check and timed tampered
    artifacts, exit 0."""
    from benchmarks.__main__ import main

    folder = release_copy(tmp_path, ("manifest.json", "model_int8.onnx", "model_int8.tflite"))
    with (folder / "model_int8.tflite").open("ab") as handle:
        handle.write(b"\0")
    out = tmp_path / "reports"
    assert main(["--model", str(folder), "--quick", "--out", str(out), "--folder-images", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model_int8.tflite: sha256" in err and "the file was changed after export" in err
    assert len(err.splitlines()) == 1 and not list(out.glob("bench-*"))


@pytest.mark.parametrize("dataset", ["/", "/etc", "../../shared/data"])
def test_a_manifest_names_a_dataset_never_a_path_to_load(tmp_path, monkeypatch, dataset):
    """S12: the benchmarks loaded the manifest's "dataset" as a path, even with --folder-images 0:
    / and /etc were walked, a 2.3 MB folder cost 3.9 GB."""
    import train.datasets
    from benchmarks.__main__ import folder_dataset, test_images
    from benchmarks.bench import BenchConfig

    folder = release_copy(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["dataset"] = dataset
    (folder / "manifest.json").write_text(json.dumps(manifest))

    def no_loading(*args, **kwargs):
        raise AssertionError(f"loaded a dataset: {args}")

    monkeypatch.setattr(train.datasets, "load_dataset", no_loading)
    assert folder_dataset(folder) is None
    assert test_images(folder, BenchConfig(), None) is None
    assert test_images(folder, BenchConfig(folder_images=0), None) is None
    manifest["dataset"] = "fashion_mnist"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert folder_dataset(folder) == "fashion_mnist"
    assert test_images(folder, BenchConfig(folder_images=0), None) is None  # off: nothing is loaded


def test_the_benchmarks_load_a_keras_model_within_the_archive_limits(tmp_path):
    """S13: the benchmarks' Keras contenders opened model.keras without the export's archive limits
    (a 0.5 MB bomb took 2.4 GB)."""
    from benchmarks.contenders import BY_KEY, load
    from export.errors import ExportError
    from tests.test_untrusted_files import keras_zip

    bomb = keras_zip(tmp_path / "model.keras", {"config.json": b"{}", "model.weights.h5": 256 << 20})
    assert bomb.stat().st_size < 1 << 20
    for key in ("keras_predict", "keras_call"):
        with pytest.raises(ExportError, match="model.weights.h5 inflates"):  # refused before Keras opens it
            load(BY_KEY[key], bomb, threads=1)


@pytest.mark.parametrize("address", ["127.0.0.1", "garbage", "127.0.0.1:99999", "[::1]", ":8476", "h:port"])
def test_a_malformed_coordinator_is_a_usage_error(address, capsys):
    """H8: --coordinator 127.0.0.1 (no port) or garbage ended in an IndexError traceback; port 99999
    was not checked."""
    from tests.test_distributed import QUICK
    from train.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main([*QUICK, "--num-processes", "2", "--process-id", "1", "--coordinator", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and err[-1].startswith("python -m train: error: --coordinator: expected HOST:PORT")


def test_an_unreachable_coordinator_is_one_line_after_the_wait():
    """H9: a process whose coordinator never answered aborted natively after 310 s (rc 134, "another
    task died"). It now checks the address itself and says what it waited for."""
    import socket
    import time

    from train.distributed import wait_for_coordinator
    from train.errors import TrainError

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TrainError, match=rf"cannot reach the coordinator at 127.0.0.1:{port} within 1 s"):
            wait_for_coordinator(f"127.0.0.1:{port}", 1.0)  # bound, not listening: refused
        assert time.monotonic() - started < 30
        listening.listen()
        wait_for_coordinator(f"127.0.0.1:{port}", 1.0)  # answers now


def test_local_processes_are_bounded_by_the_cores(capsys):
    """M3: --local-processes 100 started 100 processes on 2 cores."""
    from tests.test_distributed import QUICK
    from train.__main__ import main
    from train.launch import max_local_processes

    with pytest.raises(SystemExit) as exited:
        main([*QUICK, "--local-processes", "100"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"--local-processes 100: at most {max_local_processes()} on this machine" in err


class FakeProcess:
    """A child that ends with ``code`` once the launcher has slept ``at`` times (``TICKS``)."""

    def __init__(self, at: int, code: int) -> None:
        self.at, self.code, self.returncode = at, code, None

    def poll(self):
        if TICKS[0] >= self.at:
            self.returncode = self.code
        return self.returncode

    def kill(self) -> None:
        self.returncode = self.code

    def wait(self) -> int:
        return self.returncode


TICKS = [0]


def test_the_launcher_blames_the_process_that_failed_first(monkeypatch):
    """H10: process 1 was killed (SIGKILL); process 0's collectives broke and JAX aborted it seconds
    later (SIGABRT); the launcher said "process 0 of 2 was killed by SIGABRT"."""
    import signal

    import train.launch
    from train.errors import TrainError

    def sleep(seconds: float) -> None:
        TICKS[0] += 1

    monkeypatch.setattr(train.launch.time, "sleep", sleep)

    def watch(children: list[FakeProcess]) -> int:
        TICKS[0] = 0
        return train.launch._watch(children)

    with pytest.raises(TrainError, match="^process 1 of 2 was killed by SIGKILL"):
        watch([FakeProcess(at=6, code=-signal.SIGABRT), FakeProcess(at=2, code=-signal.SIGKILL)])
    same_poll = [FakeProcess(at=2, code=-signal.SIGABRT), FakeProcess(at=2, code=1), FakeProcess(at=5, code=0)]
    with pytest.raises(TrainError, match="^process 1 of 3 exited with code 1"):
        watch(same_poll)
    assert watch([FakeProcess(at=1, code=0), FakeProcess(at=3, code=0)]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is a directory; --custom-objects takes one Python file"),  # U10: said "no such file"
        ("import sys\nsys.exit(0)\n", "the module called sys.exit(0) while being imported"),  # U11: rc 0, silent
        ("raise SystemExit('bye')\n", "the module called sys.exit('bye') while being imported"),
    ],
)
def test_custom_objects_that_are_no_module_or_exit_are_one_line(tmp_path, small_data_dir, capsys, content, message):
    from export.__main__ import main as export_main
    from tests.conftest import ROOT

    path = tmp_path / "layers"
    if content is None:
        path.mkdir()
    else:
        path = path.with_suffix(".py")
        path.write_text(content)
    model = ROOT / "models" / "fashion_mnist" / "model.keras"
    args = ["--model", str(model), "--dataset", "fashion_mnist", "--data-dir", str(small_data_dir)]
    assert export_main([*args, "--out", str(tmp_path / "out"), "--custom-objects", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_folder_that_decodes_beyond_the_bound_is_one_line(tmp_path, monkeypatch):
    """S5b: nothing bounded a dataset's decoded size: a 3.4 MB folder (a large first image, every
    other image resized to it) took 2.9 GB of decode cache before it was killed."""
    import numpy as np
    from PIL import Image

    from train.datasets import MAX_DECODED_ENV, load_image_folder
    from train.errors import DataError

    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
    Image.fromarray(np.zeros((1000, 1000), np.uint8)).save(tmp_path / "data" / "test" / "a" / "0.png")  # 1 MB decoded
    for number in range(8):
        for split in ("train", "test"):
            for label in ("a", "b"):
                Image.fromarray(np.full((8, 8), number, np.uint8)).save(
                    tmp_path / "data" / split / label / f"{number}x.png"
                )
    monkeypatch.setenv(MAX_DECODED_ENV, str(5 * 1000 * 1000))
    with pytest.raises(DataError, match=r"the decoded images pass 5000000 bytes at .*first one's size, 1000x1000"):
        load_image_folder(tmp_path / "data")
    assert not list((tmp_path / "cache").rglob("*.npz"))  # no decode cache written
    monkeypatch.setenv(MAX_DECODED_ENV, "lots")
    with pytest.raises(DataError, match=r"\$EDGEPACK_MAX_DATASET_BYTES: expected a number of bytes"):
        load_image_folder(tmp_path / "data")


def test_image_arrays_are_resized_one_at_a_time(monkeypatch):
    """M2: a batch array became full-size PIL images all at once before any was resized."""
    import numpy as np

    import runtime.preprocess
    from runtime.metadata import ModelInfo

    made, fitted, outstanding = [0], [0], []
    to_pil, fit = runtime.preprocess._array_to_pil, runtime.preprocess.fit_image

    def counting_to_pil(array):
        made[0] += 1
        return to_pil(array)

    def counting_fit(*args):
        outstanding.append(made[0] - fitted[0])
        fitted[0] += 1
        return fit(*args)

    monkeypatch.setattr(runtime.preprocess, "_array_to_pil", counting_to_pil)
    monkeypatch.setattr(runtime.preprocess, "fit_image", counting_fit)
    pixels = runtime.preprocess.to_pixels(np.zeros((10, 300, 300, 3), np.uint8), ModelInfo(("a", "b"), 28, 28, 1))
    assert pixels.shape == (10, 28, 28, 1) and made[0] == 10 and max(outstanding) == 1


def test_the_probability_probe_runs_within_the_activation_budget():
    """M1: export ran the model on 64 training images in one batch, outside the activation budget: a
    1024x1024 model reached 20.9 GB and was killed."""
    import keras
    import numpy as np

    from export.source import PROBE_IMAGES, Preprocessing, describe, inference_batch, with_probabilities
    from train.datasets import Dataset

    seen = []

    class Recorder(keras.layers.Layer):
        def call(self, x):
            if x.shape[0] is not None:  # an eager call, not Keras tracing the graph
                seen.append(int(x.shape[0]))
            return x

    inputs = keras.Input((512, 512, 1))
    hidden = keras.layers.Conv2D(64, 3, padding="same")(Recorder()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(hidden)))
    images = np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(PROBE_IMAGES) % 2
    data = Dataset("arrays", ("a", "b"), images, labels, images[:8], labels[:8])
    info = describe(model, data, ("a", "b"), Preprocessing(), None)
    seen.clear()
    with_probabilities(model, info, data)  # logits: a softmax is appended
    assert seen and sum(seen) == PROBE_IMAGES and max(seen) <= inference_batch(model) < PROBE_IMAGES


def test_the_security_page_lists_every_runtime_limit_and_variable():
    """The trust boundaries are written down once (docs/security.md), with every bound the runtime
    keeps in runtime/limits.py and every environment variable that raises one."""
    import runtime.limits
    from tests.conftest import ROOT

    page = (ROOT / "docs" / "security.md").read_text()
    names = [name for name in vars(runtime.limits) if name.startswith("MAX_") and not name.endswith("_ENV")]
    assert names and [name for name in names if f"`{name}`" not in page and f"{name}`" not in page] == []
    variables = [getattr(runtime.limits, n) for n in vars(runtime.limits) if n.endswith("_ENV")]
    variables += ["EDGEPACK_MAX_DATASET_BYTES"]
    assert [variable for variable in variables if f"${variable}" not in page] == []
    assert "--trusted-proxy" in page and "--run-timeout" in page


def test_a_huge_journal_in_the_export_folder_is_set_aside_unread(tmp_path, caplog):
    """S10, export --out: the publish journal (and metrics.json) were read whole as well."""
    out = tmp_path / "out"
    out.mkdir()
    with (out / JOURNAL).open("wb") as handle:
        handle.truncate(1 << 30)  # sparse
    with caplog.at_level("WARNING"), output_folder(out):
        pass
    assert "over the limit of 16777216" in caplog.text and (out / f"{JOURNAL}.broken").is_file()
