"""Demo start-up: seconds from ``python -m demo`` to its first response (the starting page that
answers while Gradio imports), its first page and its first answer, from an
empty cache (a fresh machine: no example images written yet), as ``make demo`` starts it.

``python -m benchmarks.demo_start`` runs the demo a few times on a free port, each time with a new
empty cache folder, and writes ``reports/demo-start.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from runtime.environment import free_port, library_versions, machine_info
from runtime.files import atomic_write
from train.datasets import CACHE_DIR_ENV

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "reports"
GOAL_S = 5.0  # the demo's first answer, from an empty cache


def wait_for_page(url: str, process: subprocess.Popen, start: float, timeout_s: float) -> dict[str, float]:
    """Poll ``url`` until it answers 200; seconds from ``start`` to its first answer of any kind (the
    starting page's 503) and to the page. The demo exiting first is an error."""
    seconds: dict[str, float] = {}
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=1) as page:
                if page.status == 200:
                    now = time.perf_counter() - start
                    return {"response_s": seconds.get("response_s", now), "page_s": now}
        except urllib.error.HTTPError:  # an answer, not yet the page
            seconds.setdefault("response_s", time.perf_counter() - start)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"no page at {url} within {timeout_s:.0f} s")


def one_start(argv: list[str], image: Path, dataset: str) -> dict[str, float]:
    """One start from an empty cache: seconds to the first response, the page and the first classification."""
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, CACHE_DIR_ENV: cache, "GRADIO_ANALYTICS_ENABLED": "False"}
        start = time.perf_counter()
        process = subprocess.Popen(
            [*argv, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            seconds = wait_for_page(url, process, start, 120)
            Client(url, verbose=False).predict(handle_file(str(image)), dataset, "int8", api_name="/classify")
            return seconds | {"answer_s": time.perf_counter() - start}
        finally:
            process.terminate()
            process.wait()


def sample_image(folder: Path) -> Path:
    from PIL import Image

    path = folder / "sample.png"
    Image.new("RGB", (32, 32), (120, 80, 40)).save(path)
    return path


def measure(runs: int, dataset: str, extra: list[str]) -> dict:
    argv = [sys.executable, "-m", "demo", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        image = sample_image(Path(tmp))
        starts = [one_start(argv, image, dataset) for _ in range(runs)]
    figures = {
        key: {"runs_s": [s[key] for s in starts], "median_s": statistics.median(s[key] for s in starts)}
        for key in ("response_s", "page_s", "answer_s")
    }
    return {
        "command": "python -m demo " + " ".join(extra),
        "dataset": dataset,
        "machine": machine_info(),
        "versions": library_versions(),
        "goal_s": GOAL_S,
        **figures,
    }


def markdown(result: dict) -> str:
    machine, goal = result["machine"], result["goal_s"]

    def row(step: str, key: str, verdict: str) -> str:
        runs = ", ".join(f"{s:.2f}" for s in result[key]["runs_s"])
        return f"| {step} | {result[key]['median_s']:.2f} | {runs} | {verdict} |"

    met = "met" if result["answer_s"]["median_s"] <= goal else "**missed**"
    lines = [
        "# Demo start from an empty cache",
        "",
        f"`{result['command']}` on {machine['cpu']} ({machine['cores']} cores), {machine['os']}; a new empty "
        f"cache folder each run; the first answer is a {result['dataset']} classification through gradio_client.",
        "",
        "| step | median s | runs s | goal |",
        "|---|---:|---:|---|",
        row("first response (starting page, 503)", "response_s", ""),
        row("first page", "page_s", ""),
        row("first answer", "answer_s", f"<= {goal:.0f} s: {met}"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demo_start",
        description="Time python -m demo from an empty cache to its first page and its first answer; writes "
        "demo-start.json and .md to --out. Arguments after -- go to the demo (e.g. -- --model DIR).",
    )
    parser.add_argument("--runs", type=int, default=3, help="starts to time (default: 3)")
    parser.add_argument("--dataset", default="cifar10", help="the served model to classify with (default: cifar10)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default: reports/)")
    parser.add_argument("demo_args", nargs="*", help="arguments for python -m demo")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = measure(args.runs, args.dataset, args.demo_args)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "demo-start.json", json.dumps(result, indent=1) + "\n")
    atomic_write(args.out / "demo-start.md", markdown(result))
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
