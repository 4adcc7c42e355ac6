"""The Classifier: an ONNX Runtime session plus the metadata that says how to feed it."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.artifacts import find_artifact, verify_artifact
from runtime.errors import InferenceStopped, ModelError
from runtime.limits import (
    MAX_BATCH_BYTES,
    MAX_INFERENCE_BYTES,
    MAX_INFERENCE_BYTES_ENV,
    MAX_RUN_SECONDS,
    MAX_RUN_SECONDS_ENV,
    from_environment,
)
from runtime.metadata import METADATA_KEY, ModelInfo
from runtime.preprocess import ImageSource, as_sources, normalize, to_pixels
from runtime.text import first_line

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}


def bounded_threads(threads: int | None) -> int | None:
    """``threads`` capped at the machine's cores: more only adds threads that wait (and memory)."""
    cores = os.cpu_count() or 1
    if threads is None:
        return None
    if threads < 1:
        raise ModelError(f"threads must be at least 1, not {threads}")
    if threads > cores:
        log.warning("%d threads asked for, %d cores here: using %d", threads, cores, cores)
        return cores
    return threads


def session_options(threads: int | None, spinning: bool = False) -> ort.SessionOptions:
    """All graph optimizations, one inter-op thread, ``threads`` intra-op threads (None: all cores).

    The intra-op threads sleep rather than spin between operators unless ``spinning``: on a device
    that runs anything else, spinning threads fight it for the cores. Measured on 2 cores beside one
    busy process (docs/runtime.md): batch-1 p90 latency 4.8 ms spinning against 1.1 ms not, while on
    an idle machine not spinning costs 3-13% at batch 1 and nothing at batch 32.
    """
    threads = bounded_threads(threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or 0
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


def open_session(path: Path, threads: int | None = None, spinning: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime CPU session, with a one-line error for anything that is not a usable model."""
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX model file")
    if path.exists() and not path.is_file():
        raise ModelError(f"{path}: not a regular file")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty model file")
    try:
        options = session_options(threads, spinning)
        if _memory_capped:
            options.add_session_config_entry("session.use_env_allocators", "1")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelError(f"{path}: not a loadable ONNX model ({first_line(exc)})") from None


_MEMORY_CAP_LOCK = threading.Lock()
_memory_capped = False


def cap_inference_memory() -> None:
    """Make every session this process opens from now on allocate from one CPU memory arena capped at
    ``MAX_INFERENCE_BYTES`` (``$EDGEPACK_MAX_INFERENCE_BYTES``): a run that needs more fails in one
    line instead of taking the machine's memory. The commands that run models from files a user was
    given call it (classify, the demo); a library user chooses. The arena keeps what it allocated
    for the life of the process (sessions share and reuse it), so a long-lived process that opens
    many models one after another, such as an export, is better off without it."""
    global _memory_capped
    with _MEMORY_CAP_LOCK:
        if _memory_capped:
            return
        try:
            cap = int(from_environment(MAX_INFERENCE_BYTES_ENV, MAX_INFERENCE_BYTES))
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(cap, -1, -1, -1))
        _memory_capped = True


class _Watchdog:
    """Stops ONNX Runtime calls that outlive their deadline (``RunOptions.terminate``, which ONNX
    Runtime checks between operators and loop iterations). One thread for the process, started on
    first use; a call costs two dictionary updates, not a timer thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self._runs: dict[int, tuple[float, ort.RunOptions]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, options: ort.RunOptions, seconds: float) -> None:
        with self._lock:
            self._runs[id(options)] = (time.monotonic() + seconds, options)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="onnx-run-watchdog", daemon=True)
                self._thread.start()

    def done(self, options: ort.RunOptions) -> None:
        with self._lock:
            self._runs.pop(id(options), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval_s)
            now = time.monotonic()
            with self._lock:
                for deadline, options in self._runs.values():
                    if now > deadline:
                        options.terminate = True

    def stop_all(self) -> None:
        """Stop every call in flight (at exit: a thread left inside ONNX Runtime aborted the process)."""
        with self._lock:
            for _, options in self._runs.values():
                options.terminate = True


_WATCHDOG = _Watchdog()
atexit.register(_WATCHDOG.stop_all)


def run_seconds() -> float:
    """The longest one ONNX Runtime call may run: ``$EDGEPACK_MAX_RUN_SECONDS``, else ``MAX_RUN_SECONDS``."""
    try:
        return from_environment(MAX_RUN_SECONDS_ENV, MAX_RUN_SECONDS)
    except ValueError as exc:
        raise ModelError(str(exc)) from None


def read_model_info(session: ort.InferenceSession, path: Path) -> ModelInfo:
    """The model's self-description, checked against the graph's actual input."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ModelError(f"{path}: no {METADATA_KEY!r} metadata (labels, input layout, scaling); re-export it")
    info = ModelInfo.from_json(props[METADATA_KEY], str(path))
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one input, found {len(inputs)}")
    shape, dtype = inputs[0].shape, _ORT_TYPES.get(inputs[0].type)
    fixed = [d if isinstance(d, int) else None for d in shape[1:]]
    if len(shape) != 4 or any(d is not None and d != want for d, want in zip(fixed, info.input_shape)):
        raise ModelError(f"{path}: input shape {shape} cannot take {info.layout} images of {info.input_shape}")
    if dtype != info.dtype:
        raise ModelError(f"{path}: input type {inputs[0].type} does not match metadata dtype {info.dtype}")
    outputs = session.get_outputs()
    if len(outputs) != 1 or len(outputs[0].shape or ()) != 2:
        shapes = [output.shape for output in outputs]
        raise ModelError(f"{path}: expected one output of shape [batch, classes], found {shapes}")
    classes = outputs[0].shape[-1]
    if isinstance(classes, int) and classes != info.num_classes:
        raise ModelError(f"{path}: the metadata names {info.num_classes} labels but the model outputs {classes} scores")
    return info


def batch_limit(info: ModelInfo, batch_size: int) -> int:
    """``batch_size`` lowered until one batch's input tensor fits ``MAX_BATCH_BYTES``."""
    per_image = info.height * info.width * info.channels * (4 if info.dtype == "float32" else 1)
    return max(1, min(batch_size, MAX_BATCH_BYTES // per_image))


class Classifier:
    """Classify images with one ONNX model; safe to share between threads.

    ``predict`` accepts one image or a sequence of them (paths, bytes, PIL images, uint8 arrays,
    batch arrays) and returns an (N, num_classes) array of probabilities.

    Defaults that hold on a busy device: ``threads`` None uses every core, and the threads sleep
    between operators (``spinning=True`` lets them spin: slightly faster on an idle machine only).
    Each ONNX Runtime call is stopped after ``run_timeout_s`` seconds (None: ``MAX_RUN_SECONDS``, or
    ``$EDGEPACK_MAX_RUN_SECONDS``), raising :class:`runtime.errors.InferenceStopped`.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        threads: int | None = None,
        batch_size: int = 32,
        spinning: bool = False,
        run_timeout_s: float | None = None,
    ) -> None:
        self.path = Path(model)
        self.run_timeout_s = run_timeout_s if run_timeout_s is not None else run_seconds()
        self.session = open_session(self.path, threads, spinning)
        verify_artifact(self.path)
        self.info = read_model_info(self.session, self.path)
        self.input_name = self.session.get_inputs()[0].name
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.batch_size = 1 if batch_dim == 1 else batch_limit(self.info, max(1, batch_size))

    @classmethod
    def for_dataset(
        cls, dataset: str, precision: str = "int8", models_dir: str | os.PathLike | None = None, **kwargs
    ) -> Classifier:
        """The shipped artifact of ``dataset`` at ``precision``, as listed in its manifest."""
        return cls(find_artifact(dataset, precision, "onnx", Path(models_dir) if models_dir else None), **kwargs)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    def pixels(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """The images as the model sees them: NxHxWxC uint8, resized and colour-converted."""
        batches = [to_pixels(source, self.info, i) for i, source in enumerate(as_sources(images))]
        if not batches:
            return np.zeros((0, self.info.height, self.info.width, self.info.channels), np.uint8)
        return batches[0] if len(batches) == 1 else np.concatenate(batches)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for an NxHxWxC uint8 batch, fed to the session in chunks."""
        outputs = [self._run_batch(pixels[i : i + self.batch_size]) for i in range(0, len(pixels), self.batch_size)]
        if not outputs:
            return np.zeros((0, self.info.num_classes), np.float32)
        merged = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        return merged.astype(np.float32, copy=False)

    def _run_batch(self, pixels: np.ndarray) -> np.ndarray:
        options = ort.RunOptions()
        options.log_severity_level = 4  # the stop and a refused allocation are reported here, in one line
        _WATCHDOG.watch(options, self.run_timeout_s)
        try:
            return self.session.run(None, {self.input_name: normalize(pixels, self.info)}, options)[0]
        except Exception as exc:  # onnxruntime's own exception types: bad shapes, failed allocations
            if options.terminate:
                raise InferenceStopped(
                    f"{self.path}: inference stopped after {self.run_timeout_s:g} s, the limit per run "
                    f"(${MAX_RUN_SECONDS_ENV}): the model did not finish"
                ) from None
            raise ModelError(f"{self.path}: inference failed ({first_line(exc)})") from None
        finally:
            _WATCHDOG.done(options)

    def predict(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """The (N, num_classes) probabilities of one image or a sequence of them, decoded and
        preprocessed by the runtime's own code."""
        return self.run(self.pixels(images))

    def top_k(self, probabilities: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per row, the ``k`` most probable labels with their probabilities, best first."""
        k = max(1, min(k, self.info.num_classes))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probabilities, order)]

    def classify(self, images: ImageSource | Sequence[ImageSource], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``top_k`` labels of each image; a ModelError if the model's scores are not finite."""
        probabilities = self.predict(images)
        if not np.isfinite(probabilities).all():
            raise ModelError(f"{self.path}: the model's scores are not finite numbers (NaN or infinity); it is broken")
        return self.top_k(probabilities, top_k)
