"""``edgepack STAGE [options]``: one command for every stage, each the same as its ``python -m``
form (``edgepack export --help`` is ``python -m export --help``).

A stage's module is imported only when it runs, so ``edgepack classify`` starts as fast as
``python -m runtime.classify`` and never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version

STAGES = {
    "train": ("train.__main__", "train a Keras CNN on Fashion-MNIST, CIFAR-10 or your image folders"),
    "export": ("export.__main__", "export ONNX and TFLite artifacts, gate each on parity, publish those that pass"),
    "classify": ("runtime.classify", "classify images with ONNX Runtime (no TensorFlow)"),
    "bench": ("benchmarks.__main__", "CPU latency, throughput, memory and cold start of every artifact"),
    "demo": ("demo.__main__", "serve the Gradio web demo"),
}
# The extra that installs a stage's libraries (pyproject.toml), and the modules that tell it is there;
# classify needs none.
EXTRAS = {
    "train": ("train", ("tensorflow", "keras", "tqdm", "matplotlib")),
    "export": ("train", ("tensorflow", "keras", "tf2onnx", "onnx", "tqdm")),
    "bench": ("train", ("tensorflow", "keras", "tqdm")),
    "demo": ("demo", ("gradio",)),
}


def installed_version() -> str:
    try:
        return version("edgepack")
    except PackageNotFoundError:  # run from a clone that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    stages = "\n".join(f"  {name:<9} {help}" for name, (_, help) in STAGES.items())
    result = argparse.ArgumentParser(
        prog="edgepack",
        description="Train, export with an accuracy-parity gate, classify, benchmark and demo Keras image classifiers.",
        epilog=f"stages:\n{stages}\n\n'edgepack STAGE --help' lists a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument("--version", action="version", version=f"edgepack {installed_version()}")
    result.add_argument("stage", choices=tuple(STAGES), metavar="STAGE", help=", ".join(STAGES))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage_at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    args = parser().parse_args(argv[: stage_at + 1])
    extra, modules = EXTRAS.get(args.stage, (None, ()))
    missing = next((name for name in modules if not _installed(name)), None)
    try:
        if missing is None:
            module = importlib.import_module(STAGES[args.stage][0])
            return module.main(argv[stage_at + 1 :])
    except ModuleNotFoundError as exc:  # a library the check above does not name
        if extra is None or not exc.name:
            raise
        missing = exc.name.split(".")[0]
    # the device install (no extras) lists every stage; a stage without its libraries says which to add
    print(
        f"edgepack {args.stage}: error: needs the '{extra}' extra (missing module {missing!r}): "
        f"pip install 'edgepack[{extra}]'",
        file=sys.stderr,
    )
    return 2


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (TensorFlow takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
