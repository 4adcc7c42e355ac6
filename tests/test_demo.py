"""The web demo, served for real on a free localhost port and driven by gradio_client and by a
headless Chromium; every answer is checked against the true label and the runtime's own."""

from __future__ import annotations

import io
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from demo.__main__ import create, launch, parse_args  # noqa: E402
from demo.examples import example_label, find_examples  # noqa: E402
from demo.screenshot import CHROMIUM, capture  # noqa: E402
from runtime.classifier import Classifier  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def examples(shared_data) -> dict[str, list[Path]]:
    found = find_examples(shared_data)
    assert all(len(found[name]) == 10 for name in ("fashion_mnist", "cifar10")), found
    return found


@pytest.fixture(scope="module")
def server(shared_data, examples):
    """The demo on the shipped models, as `python -m demo` would serve it."""
    args = parse_args(["--port", str(free_port()), "--models-dir", str(MODELS), "--data-dir", str(shared_data)])
    app, folders = create(args)
    launch(app, folders, args, block=False)
    yield f"http://127.0.0.1:{args.port}/"
    app.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, verbose=False)


def classify(client: Client, path: Path, dataset: str, precision: str = "int8") -> tuple[dict, str, str]:
    label, _, latency, card = client.predict(handle_file(str(path)), dataset, precision, api_name="/classify")
    return label, latency, card


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_real_test_images_get_the_runtimes_answer(client, examples, dataset):
    runtime = Classifier.for_dataset(dataset, "int8", MODELS)
    expected = [top[0][0] for top in runtime.classify(examples[dataset], top_k=1)]
    truth = [example_label(path, runtime.labels) for path in examples[dataset]]
    answers = []
    for path in examples[dataset]:
        label, latency, card = classify(client, path, dataset)
        answers.append(label["label"])
        assert len(label["confidences"]) == 5
        assert sum(c["confidence"] for c in label["confidences"]) <= 1.0 + 1e-5
        assert " ms** inference" in latency
        assert "model_int8.onnx" in card and "test accuracy" in card and "KiB" in card
    assert answers == expected  # exactly what `python -m runtime.classify` says
    assert sum(a == t for a, t in zip(answers, truth)) >= 8  # and right on real test images


def test_precision_and_model_choice_change_the_artifact(client, examples):
    path = examples["fashion_mnist"][0]
    label, _, card = classify(client, path, "fashion_mnist", "fp32")
    assert "model_fp32.onnx" in card
    assert label["label"] == example_label(path, Classifier.for_dataset("fashion_mnist", "fp32", MODELS).labels)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.png", b"this is not an image", "not an image"),
        ("cut.png", None, "truncated"),
    ],
)
def test_bad_upload_is_a_clear_message_and_the_server_keeps_serving(client, examples, tmp_path, name, content, reason):
    if content is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "PNG")
        content = buffer.getvalue()[:60]
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(Exception, match=f"Not a usable image: {name}: .*{reason}"):
        classify(client, bad, "fashion_mnist")
    label, _, _ = classify(client, examples["fashion_mnist"][0], "fashion_mnist")
    assert label["label"]


def test_a_drawing_is_classified_like_the_same_image_file(client, tmp_path):
    from PIL import ImageDraw

    drawing = Image.new("RGB", (280, 280), "black")
    pen = ImageDraw.Draw(drawing)
    pen.rectangle([70, 40, 210, 250], fill="white")  # a pair of trousers, light on black
    pen.rectangle([125, 130, 155, 250], fill="black")
    path = tmp_path / "drawing.png"
    drawing.save(path)
    editor_value = {"background": None, "layers": [], "composite": handle_file(str(path))}
    label, seen, _, _ = client.predict(editor_value, "fashion_mnist", "int8", api_name="/classify_sketch")
    runtime = Classifier.for_dataset("fashion_mnist", "int8", MODELS)
    assert label["label"] == runtime.classify(path, top_k=1)[0][0][0]
    with Image.open(seen) as view:  # the model's 28x28 view, enlarged by a whole factor
        assert view.size == (224, 224)


def test_too_large_upload_is_refused(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (10 * 1024 * 1024 + 1))
    with pytest.raises(Exception, match="maximum file size"):
        classify(client, big, "fashion_mnist")


def test_twenty_concurrent_requests_all_succeed(server, examples):
    paths = [*examples["fashion_mnist"], *examples["cifar10"]]
    datasets = ["fashion_mnist"] * 10 + ["cifar10"] * 10

    def one(job: tuple[Path, str]) -> str:
        path, dataset = job
        return classify(Client(server, verbose=False), path, dataset)[0]["label"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(one, zip(paths, datasets)))
    assert len(answers) == 20 and all(answers)
    runtime = {name: Classifier.for_dataset(name, "int8", MODELS) for name in ("fashion_mnist", "cifar10")}
    assert answers == [runtime[d].classify(p, top_k=1)[0][0][0] for p, d in zip(paths, datasets)]


def test_without_data_the_demo_says_where_examples_come_from():
    from demo.app import examples_note

    examples = find_examples(None)
    assert examples == {"fashion_mnist": [], "cifar10": []}
    note = examples_note(examples, None)
    assert "EDGEPACK_DATA_DIR" in note and "--data-dir" in note


@pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package (make browser) to run the browser test",
)
def test_browser_uploads_an_image_and_reads_the_prediction(server, examples, tmp_path):
    pytest.importorskip("playwright", reason="Playwright's Python package is not installed (pip install -e .[dev])")
    path = examples["cifar10"][7]  # the first horse of the test split
    runtime = Classifier.for_dataset("cifar10", "int8", MODELS)
    expected = runtime.classify(path, top_k=1)[0][0][0]
    shot = tmp_path / "demo.png"
    shown = capture(server, path, shot, model="cifar10")
    assert shown == expected == example_label(path, runtime.labels)
    with Image.open(shot) as picture:
        assert picture.format == "PNG" and picture.width == 1280 and picture.height > 600
