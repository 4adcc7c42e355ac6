"""What a figure was measured on: CPU, cores, OS and library versions.

Training metrics, export manifests and benchmark reports all record it, so a number can be
traced to the machine and the stack that produced it. Versions come from package metadata,
which never imports the (possibly heavy) package itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from collections.abc import Iterable
from pathlib import Path

STACK = (
    "tensorflow",
    "keras",
    "tf-keras",
    "tensorflow-model-optimization",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "ai-edge-litert",
    "numpy",
    "pillow",
)


def cpu_name() -> str:
    """The CPU model as the OS names it (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(names: Iterable[str] = STACK) -> dict[str, str]:
    """Python's version and each installed package's; packages not installed are left out."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def machine_info() -> dict[str, object]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "machine": platform.machine(),
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a local server or job to take)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
