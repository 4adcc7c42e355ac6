"""python -m demo: serve the Gradio demo of the shipped models (ONNX Runtime only)."""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio asks matplotlib for its backend around every event; with none set, matplotlib resolves it by
# importing pyplot, which made the first answer wait 1-4 s (measured). The server draws no windows.
os.environ.setdefault("MPLBACKEND", "agg")

from demo.uploads import parse_size  # noqa: E402

DEFAULT_MAX_FILE_SIZE = "10mb"
DEFAULT_UPLOAD_STORAGE = "256mb"
UPLOAD_MAX_AGE_S = 600
DEFAULT_RUN_TIMEOUT_S = 30.0
UPLOADS_PREFIX = "edgepack-demo-uploads-"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Serve a web page that classifies uploaded, pasted, webcam or drawn images with the shipped "
        "ONNX models, showing top classes, the preprocessed image, latency, size and accuracy.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    parser.add_argument("--models-dir", type=Path, help="release folder (default: $EDGEPACK_MODELS_DIR or models/)")
    parser.add_argument(
        "--model",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="export folders (python -m export --out DIR) to serve instead of the release; labels, preprocessing "
        "and figures come from each folder's manifest and metadata, examples from its dataset when it is a known one",
    )
    parser.add_argument("--data-dir", help="datasets folder for the examples (default: $EDGEPACK_DATA_DIR)")
    parser.add_argument(
        "--max-file-size",
        default=DEFAULT_MAX_FILE_SIZE,
        help=f"largest image accepted on any route, uploads and inline data alike (default: {DEFAULT_MAX_FILE_SIZE})",
    )
    parser.add_argument(
        "--max-upload-storage",
        default=DEFAULT_UPLOAD_STORAGE,
        help=f"most bytes kept in the upload folder; the oldest uploads go first, and any older than "
        f"{UPLOAD_MAX_AGE_S // 60} minutes (default: {DEFAULT_UPLOAD_STORAGE})",
    )
    parser.add_argument(
        "--auth-file",
        type=Path,
        help="ask for a login: a file of USER:PASSWORD lines (keep it private; use it whenever --host is not local). "
        "Failed logins are logged and throttled: 5 in a row for one user (20 for any) lock the client out, "
        "30 s doubling up to 15 minutes",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="address (or network, e.g. 10.0.0.0/24) of a reverse proxy in front of the demo whose "
        "X-Forwarded-For header names the real client, for login throttling and logs; repeatable. Default: none, "
        "every client is its connection's own address and forwarding headers are ignored",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=DEFAULT_RUN_TIMEOUT_S,
        metavar="S",
        help=f"stop a model that has not answered a request after S seconds (default: {DEFAULT_RUN_TIMEOUT_S:g}); "
        "the models' memory is bounded by $EDGEPACK_MAX_INFERENCE_BYTES (default: 2 GiB)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests run at once (default: 4)")
    parser.add_argument("--queue-size", type=int, default=64, help="requests waiting at most (default: 64)")
    args = parser.parse_args(argv)
    for flag in ("max_file_size", "max_upload_storage"):
        try:
            setattr(args, flag, parse_size(getattr(args, flag)))
        except ValueError as exc:
            parser.error(f"--{flag.replace('_', '-')}: {exc}")
    if args.max_upload_storage < args.max_file_size:
        parser.error("--max-upload-storage must be at least --max-file-size")
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    for proxy in args.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            parser.error(f"--trusted-proxy: not an IP address or network: {proxy!r}")
    if not 0 < args.run_timeout < float("inf"):
        parser.error("--run-timeout must be a positive number of seconds")
    if args.concurrency < 1 or args.queue_size < 1:
        parser.error("--concurrency and --queue-size must be at least 1")
    return args


_MADE: set[str] = set()  # the upload folders this process made


def own_upload_folder() -> Path:
    """Give this server an upload folder of its own, removed at exit: uploads then never outlive
    the server, nor mix with another Gradio app's. It is made inside ``$GRADIO_TEMP_DIR`` when the
    user set one (else in the system's temporary folder), never *as* that folder: the sweeper
    deletes what it finds in the folder, and the user's own files there must not be among them.
    A second app in the same process keeps the folder the first one made (Gradio reads the
    variable on every request: changing it would strand the first app's uploads)."""
    current = os.environ.get("GRADIO_TEMP_DIR") or None
    if current in _MADE:
        return Path(current)
    if current:
        os.makedirs(current, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=UPLOADS_PREFIX, dir=current)
    _MADE.add(folder)
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def create(args: argparse.Namespace):
    """The app, queued and ready to launch, plus the folders it may serve files from."""
    own_upload_folder()
    from demo.examples import ExampleLoader, data_dir_from, example_folders, start_writing

    data_dir = data_dir_from(args.data_dir)
    writer = start_writing(data_dir)  # on the other core while Gradio imports
    from demo.app import Demo, build_app, load_models, release_folders
    from demo.uploads import UploadPolicy, UploadSweeper
    from runtime.artifacts import default_models_dir
    from runtime.classifier import cap_inference_memory

    cap_inference_memory()
    folders = args.model or release_folders(args.models_dir or default_models_dir())
    demo = Demo(load_models(folders, args.run_timeout), UploadPolicy.for_gradio(args.max_file_size))
    sweeper = UploadSweeper(demo.uploads.folder, args.max_upload_storage, UPLOAD_MAX_AGE_S).start()
    atexit.register(sweeper.stop)
    app = build_app(demo, ExampleLoader(folders, data_dir, writer).start())
    app.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    return app, [str(folder) for folder in example_folders(data_dir)]


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """``USER:PASSWORD`` lines (blank lines and ``#`` comments skipped) for Gradio's login page."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the auth file ({exc})") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{path}:{number}: expected USER:PASSWORD")
        pairs.append((user, password))
    if not pairs:
        raise ValueError(f"{path}: no USER:PASSWORD line")
    return pairs


def trust_forwarding_from(proxies: list[str]) -> None:
    """Believe ``X-Forwarded-For`` only from the named proxies. Gradio's uvicorn takes it by default
    from 127.0.0.1 (``FORWARDED_ALLOW_IPS``), so any local client, or anything relayed through a
    local process, could name itself a new address per request and escape the login throttling
    (60 guesses in 2.4 s, never locked out). The setting is the demo's own: always written here."""
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)


def launch(app, folders: list[str], args: argparse.Namespace, block: bool = True):
    from starlette.middleware import Middleware

    from demo.login import ClientAddress, LoginGuard
    from demo.uploads import RefuseNulRequests

    trust_forwarding_from(args.trusted_proxy)
    auth = LoginGuard(read_auth_file(args.auth_file)).check if args.auth_file else None
    if auth is None and (args.share or args.host not in LOCAL_HOSTS):
        logging.getLogger("demo").warning(
            "serving beyond this machine without a login: anyone who reaches %s can use the demo (see --auth-file)",
            "the public link" if args.share else f"{args.host}:{args.port}",
        )
    return app.launch(
        auth=auth,
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=args.max_file_size,
        allowed_paths=folders,
        show_error=True,
        ssr_mode=False,
        prevent_thread_lock=not block,
        quiet=not block,
        app_kwargs={"middleware": [Middleware(ClientAddress), Middleware(RefuseNulRequests)]},
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (a service manager's stop) ends like Ctrl-C, so the upload folder is removed at exit
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    from demo.starting import StartingPage
    from runtime.cli import fail
    from runtime.errors import ModelError

    try:  # answer at once while Gradio imports; a taken port fails now, not after the import
        starting = StartingPage.open(args.host, args.port)
    except OSError as exc:
        return fail(f"cannot serve on {args.host}:{args.port} ({exc})")
    try:
        app, folders = create(args)
    except ModelError as exc:
        return fail(str(exc))
    finally:
        starting.close()
    try:
        launch(app, folders, args)
    except ValueError as exc:  # a bad auth file
        return fail(str(exc))
    except OSError as exc:  # port taken, address not available
        return fail(f"cannot serve on {args.host}:{args.port} ({exc})")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
