"""Drive the demo in a real headless Chromium: upload an image, read the answer, take a picture.

Used by the browser test, and by ``python -m demo.screenshot`` to make the docs' screenshot,
so the picture in the docs is produced by the code the tests run. Needs Playwright's Python
package and a Chromium binary (Debian's ``chromium`` package at /usr/bin/chromium); Playwright's
own browser downloads are not used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.cli import fail

CHROMIUM = "/usr/bin/chromium"
LABEL = '[data-testid="label-output-value"]'
EXAMPLES_NOTE = "#examples-note"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


def capture(
    url: str, image: Path, out: Path, model: str | None = None, chromium: str = CHROMIUM, timeout_s: float = 60
) -> str:
    """Open ``url``, wait for the page load to fill in the examples, pick ``model`` (a served folder's
    name) if given, upload ``image``, wait for the prediction, screenshot the page to ``out``, and
    return the predicted label as shown."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            page.wait_for_function(
                "selector => !(document.querySelector(selector)?.textContent || 'Loading').includes('Loading')",
                arg=EXAMPLES_NOTE,
            )
            if model:
                page.get_by_label(model, exact=True).check()
            page.locator("input[type=file]").first.set_input_files(str(image))
            label = page.locator(LABEL).first
            label.wait_for(state="visible")
            page.wait_for_function(
                "selector => (document.querySelector(selector)?.textContent || '').trim().length > 0", arg=LABEL
            )
            page.locator("#latency").filter(has_text="ms").wait_for()
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return label.inner_text().strip()
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.screenshot",
        description="Upload an image to a running demo in headless Chromium and save a screenshot of the page.",
    )
    parser.add_argument("image", type=Path, help="image to upload")
    parser.add_argument("--model", help="the dataset model to pick first (default: the page's default)")
    parser.add_argument("--url", default="http://127.0.0.1:7860/", help="the demo's address")
    parser.add_argument("--out", type=Path, default=Path("docs/demo.png"), help="default: docs/demo.png")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"Chromium binary (default: {CHROMIUM})")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        return fail(f"{args.chromium}: no Chromium binary (Debian: apt-get install chromium)")
    if not args.image.is_file():
        return fail(f"{args.image}: no such image")
    try:
        label = capture(args.url, args.image, args.out, args.model, args.chromium)
    except Exception as exc:  # Playwright's errors: browser launch, navigation, timeouts
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"{args.image.name}: the page says {label!r}; screenshot {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
