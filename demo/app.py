"""The demo page: pick a shipped model, give it an image, see what it answers and how fast.

Every image, whatever its source (upload, paste, webcam, sketch, example), reaches the model
through the runtime's own decoding and preprocessing: the event handlers take Gradio's raw file
payloads (``preprocess=False``) instead of letting Gradio decode images its own way. So the
page shows exactly what ``python -m runtime.classify`` would answer, and a bad file gets the
runtime's one-line reason.
"""

from __future__ import annotations

import functools
import html
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from demo.examples import DATASETS, ExampleLoader, example_label
from demo.uploads import BAD_REQUEST, UploadPolicy
from runtime.artifacts import MANIFEST, manifest_entry, read_manifest
from runtime.classifier import Classifier
from runtime.errors import InferenceStopped, InputError, ModelError
from runtime.preprocess import decode_image, fit_image
from train.datasets import DATA_DIR_ENV

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp32")
TOP_K = 5
VIEW_SIZE = 224  # the preprocessed image is enlarged with nearest-neighbour, so pixels stay exact
SKETCH_SIZE = 280
INPUT_ERROR = "Not a usable image"


@dataclass(frozen=True)
class LoadedModel:
    classifier: Classifier
    card: str


_MARKDOWN_SIGNS = re.compile(r"([\\`*\[\]!|~])")


def as_text(name: str) -> str:
    """A name from the file system (a served folder's, a file's) for Markdown, shown as the
    characters it is: HTML escaped (a folder named ``<img src=x onerror=...>`` showed an image
    element) and the Markdown signs that could start a link, an image or code, or end the bold around
    it, backslashed (``_``, ``-`` and ``.`` stay: file names read as they are)."""
    return _MARKDOWN_SIGNS.sub(r"\\\1", html.escape(name, quote=False))


def model_card(dataset: str, precision: str, path: Path, float_accuracy: float | None) -> str:
    """Size and accuracy of the artifact as its manifest states them."""
    entry = manifest_entry(path) or {}
    lines = [f"**{as_text(dataset)} / {precision}**: {as_text(path.name)}, {path.stat().st_size / 1024:,.0f} KiB"]
    if "accuracy" in entry:
        delta = f", {entry['delta_pp']:+.2f} pp vs float" if "delta_pp" in entry else ""
        reference = f" (float model {100 * float_accuracy:.2f}%{delta})" if float_accuracy is not None else ""
        lines.append(f"test accuracy {100 * entry['accuracy']:.2f}%{reference}")
    if "sha256" in entry:
        lines.append(f"sha256 `{entry['sha256'][:16]}...`")
    return " · ".join(lines)


def release_folders(models_dir: Path) -> list[Path]:
    """The shipped release's folders, one per dataset."""
    return [models_dir / dataset for dataset in DATASETS]


def load_models(folders: list[Path], run_timeout_s: float | None = None) -> dict[tuple[str, str], LoadedModel]:
    """Every published fp32 and int8 ONNX artifact of each export folder, loaded once (sessions are
    thread-safe), under the folder's name: a release's ``models/<dataset>`` or any ``--out`` folder."""
    found = {}
    for folder in folders:
        manifest = folder / MANIFEST
        if not manifest.is_file():
            continue
        try:
            float_accuracy = read_manifest(manifest).get("float_accuracy")
        except ModelError as exc:
            log.warning("%s", exc)
            continue
        for precision in PRECISIONS:
            try:
                classifier = Classifier.for_dataset(
                    folder.name, precision, folder.parent, threads=1, run_timeout_s=run_timeout_s
                )
            except ModelError as exc:
                log.warning("%s", exc)
                continue
            card = model_card(folder.name, precision, classifier.path, float_accuracy)
            found[(folder.name, precision)] = LoadedModel(classifier, card)
    if not found:
        where = ", ".join(str(folder) for folder in folders)
        raise ModelError(f"{where}: no exported models; run make train export, or python -m export --out DIR")
    return found


def enlarge(pixels: np.ndarray) -> np.ndarray:
    """HxWxC uint8 -> a bigger copy in which every model pixel is a visible square."""
    factor = max(1, VIEW_SIZE // max(pixels.shape[:2]))
    view = pixels.repeat(factor, axis=0).repeat(factor, axis=1)
    return view[..., 0] if view.shape[-1] == 1 else view


def one_line_errors(handler):
    """Any failure but the handler's own messages becomes the same one line for the client, and a
    logged traceback for the operator: a crafted request never sees Python's exception text."""

    @functools.wraps(handler)
    def guarded(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception:
            log.exception("request refused by %s", handler.__name__)
            message = f"{BAD_REQUEST}: the request does not have the expected form"
            raise gr.Error(message, print_exception=False) from None

    return guarded


class Demo:
    """The handlers behind the page, kept apart from the layout so they can be tested directly."""

    def __init__(self, models: dict[tuple[str, str], LoadedModel], uploads: UploadPolicy) -> None:
        self.models = models
        self.uploads = uploads

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(dataset for dataset, _ in self.models))

    @property
    def precisions(self) -> list[str]:
        """The precisions served for at least one model, int8 first."""
        served = {precision for _, precision in self.models}
        return [precision for precision in PRECISIONS if precision in served]

    @property
    def first(self) -> tuple[str, str]:
        """What the page shows first: the first model at its first served precision (int8 where
        there is one; an export without a usable int8 serves its fp32)."""
        return next(iter(self.models))

    def model(self, dataset: str, precision: str) -> LoadedModel:
        if not (isinstance(dataset, str) and isinstance(precision, str)):
            raise gr.Error(f"{BAD_REQUEST}: no such model", print_exception=False)
        if (dataset, precision) not in self.models:
            if dataset in self.datasets and precision in PRECISIONS:
                message = f"{as_text(dataset)} has no published {precision} artifact: choose another precision"
                raise gr.Error(message, print_exception=False)
            raise gr.Error(f"{BAD_REQUEST}: no such model", print_exception=False)
        return self.models[(dataset, precision)]

    def labels(self, dataset: str) -> tuple[str, ...]:
        return next(m.classifier.labels for (name, _), m in self.models.items() if name == dataset)

    def card(self, dataset: str, precision: str) -> str:
        return self.model(dataset, precision).card

    @one_line_errors
    def classify(self, image: dict | str | None, dataset: str, precision: str):
        """Top classes, the model's-eye view, the latency line and the model card."""
        loaded = self.model(dataset, precision)
        try:
            file = self.uploads.read(image)
            if file is None:
                return None, None, "", loaded.card
            name, data = file
            info = loaded.classifier.info
            started = time.perf_counter()
            pixels = fit_image(decode_image(data, name), info.height, info.width, info.channels, name)[None]
            ready = time.perf_counter()
            probabilities = loaded.classifier.run(pixels)[0]
            done = time.perf_counter()
        except InputError as exc:
            raise gr.Error(f"{INPUT_ERROR}: {exc}", print_exception=False) from None
        except ModelError as exc:  # the model's own failure: the client gets no server path
            log.warning("%s", exc)
            stopped = loaded.classifier.run_timeout_s if isinstance(exc, InferenceStopped) else None
            why = f"did not answer within {stopped:g} s and was stopped" if stopped else "failed on this image"
            raise gr.Error(f"The model {why}; the server's log says more", print_exception=False) from None
        order = np.argsort(-probabilities)[:TOP_K]
        labels = {loaded.classifier.labels[i]: float(probabilities[i]) for i in order}
        latency = (
            f"**{1e3 * (done - ready):.2f} ms** inference ({precision}, ONNX Runtime, 1 thread), "
            f"{1e3 * (ready - started):.2f} ms decoding and preprocessing"
        )
        return labels, enlarge(pixels[0]), latency, loaded.card


EXAMPLES_WAIT_S = 120.0  # a page load waits this long for examples still being found, then goes without
EXAMPLES_LOADING = "Loading the example images..."
EXAMPLES_LATE = "The example images are still being prepared: reload the page in a moment."


def examples_note(examples: dict[str, list[Path]], data_dir: Path | None, held: list[str] | None = None) -> str:
    """The line above the examples. The page is served to every client, so it never shows a server path.
    ``held``: the datasets the data directory holds, which may not be those of the served models."""
    if any(examples.values()):
        return "Examples: the first image of each class in the official test splits."
    if data_dir and held:
        return (
            f"No examples: the served models were not gated on a dataset of the data directory (it holds "
            f"{' and '.join(held)}); examples come from the test split of the dataset each export names."
        )
    if data_dir:
        log.warning("no examples: %s holds neither dataset", data_dir)
    where = "the data directory holds neither dataset" if data_dir else f"no data directory is set ({DATA_DIR_ENV})"
    return (
        f"No examples: {where}. Point `--data-dir` or `{DATA_DIR_ENV}` at a folder holding `fashion-mnist/` "
        "and `cifar10-jpeg.tar.gz` to get one real test image per class."
    )


def black_canvas() -> dict:
    """A black sketch background with nothing drawn: Fashion-MNIST items are light on black."""
    return {"background": np.zeros((SKETCH_SIZE, SKETCH_SIZE, 3), np.uint8), "layers": [], "composite": None}


@dataclass
class Inputs:
    """The page's input components: the model and precision choices and the three image sources."""

    dataset: gr.Radio
    precision: gr.Radio
    upload: gr.Image
    webcam: gr.Image
    sketch: gr.Sketchpad
    classify_sketch: gr.Button


def build_app(demo: Demo, examples: ExampleLoader) -> gr.Blocks:
    """The page. It is served before the examples are found; each page load fills them in."""
    with gr.Blocks(title="edgepack: edge image classifiers", analytics_enabled=False) as app:
        gr.Markdown(
            "# edgepack demo\nClassify an image with a shipped artifact, run by ONNX Runtime through "
            "`runtime` (the same code as `python -m runtime.classify`)."
        )
        with gr.Row():
            with gr.Column():
                inputs = _input_panel(demo)
                note = gr.Markdown(EXAMPLES_LOADING, elem_id="examples-note")
                galleries = _galleries(demo)
            with gr.Column():
                outputs = _output_panel(demo)
        _wire(demo, inputs, outputs, galleries, examples)
        app.load(
            example_filler(demo, examples, list(galleries)),
            None,
            [note, *galleries.values()],
            api_name=False,
            concurrency_limit=None,
        )
    return app


def example_filler(demo: Demo, examples: ExampleLoader, names: list[str]) -> Callable[[], list]:
    """The page-load handler: the examples note and each gallery's images (hidden if it has none)."""

    def fill() -> list:
        found = examples.wait(EXAMPLES_WAIT_S)
        if found is None:
            return [EXAMPLES_LATE, *(gr.Gallery(visible=False) for _ in names)]
        shown = [
            [(str(path), example_label(path, demo.labels(name))) for path in found.get(name, [])] for name in names
        ]
        note = examples_note(found, examples.data_dir, examples.held)
        return [note, *(gr.Gallery(value=v, visible=bool(v)) for v in shown)]

    return fill


def _input_panel(demo: Demo) -> Inputs:
    with gr.Row():
        dataset = gr.Radio(demo.datasets, value=demo.datasets[0], label="Model")
        precision = gr.Radio(demo.precisions, value=demo.first[1], label="Precision")
    with gr.Tabs():
        with gr.Tab("Upload"):
            upload = gr.Image(
                type="filepath", sources=["upload", "clipboard"], label="Image (drop, paste or pick)", height=260
            )
        with gr.Tab("Webcam"):
            webcam = gr.Image(type="filepath", sources=["webcam"], label="Webcam")
        with gr.Tab("Draw"):
            sketch = gr.Sketchpad(
                value=black_canvas(),
                type="filepath",
                label="Draw a Fashion-MNIST item (light on black)",
                brush=gr.Brush(colors=["#ffffff", "#a0a0a0"], default_size=18),
                canvas_size=(SKETCH_SIZE, SKETCH_SIZE),
            )
            classify_sketch = gr.Button("Classify the drawing", variant="primary")
    return Inputs(dataset, precision, upload, webcam, sketch, classify_sketch)


def _galleries(demo: Demo) -> dict[str, gr.Gallery]:
    """One gallery of test images per served model, hidden until its examples are found."""
    return {
        name: gr.Gallery(
            None,
            visible=False,
            label=f"{name}: click a test image",
            columns=5,
            rows=2,
            height=330,
            object_fit="contain",
            allow_preview=False,
        )
        for name in demo.datasets
    }


def _output_panel(demo: Demo) -> list:
    """The prediction, the image as the model sees it, the latency and the artifact's card."""
    label = gr.Label(num_top_classes=TOP_K, label="Prediction")
    seen = gr.Image(label="What the model sees (after preprocessing)", interactive=False, height=240)
    latency = gr.Markdown(elem_id="latency")
    card = gr.Markdown(demo.card(*demo.first), elem_id="model-card")
    return [label, seen, latency, card]


def _wire(demo: Demo, inputs: Inputs, outputs: list, galleries: dict[str, gr.Gallery], examples: ExampleLoader) -> None:
    """Every input classifies (raw payloads: the runtime does all decoding); a gallery click loads its image."""
    choices = [inputs.dataset, inputs.precision]
    raw = {"preprocess": False, "concurrency_id": "model"}
    inputs.upload.change(demo.classify, [inputs.upload, *choices], outputs, api_name="classify", **raw)
    inputs.webcam.change(demo.classify, [inputs.webcam, *choices], outputs, api_name="classify_webcam", **raw)
    # Gradio's editor does not report every stroke as a change, hence the button as well.
    for event in (inputs.sketch.change, inputs.classify_sketch.click):
        event(demo.classify, [inputs.sketch, *choices], outputs, api_name="classify_sketch", **raw)
    for choice in choices:
        choice.change(demo.classify, [inputs.upload, *choices], outputs, api_name=False, **raw)
    for name, gallery in galleries.items():
        picker = example_picker(name, functools.partial(examples.paths, name))
        gallery.select(picker, None, [inputs.upload, inputs.dataset], api_name=False)


def example_picker(dataset: str, examples: Callable[[], list[Path]]):
    """A gallery click handler: put the example in the Upload box and switch to its model."""

    @one_line_errors
    def pick(event: gr.SelectData) -> tuple[str, str]:
        index, paths = event.index, examples()
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(paths):
            raise gr.Error(f"{BAD_REQUEST}: no such example", print_exception=False)
        return str(paths[index]), dataset

    return pick
