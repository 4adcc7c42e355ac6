"""The one preprocessing path, from whatever a user hands over to the model's input tensor.

Export's parity gate, the benchmarks, the demo and the training data loader for image folders all
call these functions, so that what is measured is exactly what users run.

Documented behaviour:

* Sources: a file path, raw bytes, a PIL image, or a uint8 numpy array. A 2-D array is one
  grayscale image; a 3-D array whose last axis is 1, 3 or 4 is one HxWxC image, any other 3-D
  array a batch of grayscale images (NxHxW); a 4-D array is a batch NxHxWxC.
* Files: PNG, JPEG (phones' MPO included), WebP, BMP, GIF and TIFF (first frame), PPM/PGM/PBM and ICO
  (``IMAGE_FORMATS``), EXIF orientation applied. Every other format Pillow knows (EPS, which would
  reach Ghostscript, PSD, FITS and some forty more) is refused before its decoder runs.
* Modes: transparency (RGBA, LA, P with a transparent colour) is composited on white; 16-bit and
  32-bit integer images are scaled to 8 bits; CMYK and other colour modes are converted by Pillow.
  The result is converted to L (ITU-R 601-2 luma) or RGB, whichever the model takes.
* Size: resized to the model's input with Pillow's bilinear filter (antialiased when shrinking),
  ignoring the aspect ratio, as the datasets' images are square.
* Limits: files over ``MAX_FILE_BYTES`` and images over ``MAX_PIXELS`` pixels are refused before
  decoding, so a decompression bomb costs neither time nor memory.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from runtime.errors import InputError
from runtime.limits import MAX_FILE_BYTES, MAX_PIXELS
from runtime.metadata import ModelInfo

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "ICO")
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".ico"}
)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_WHITE = (255, 255, 255, 255)


def source_name(source: ImageSource, index: int = 0) -> str:
    """How error messages name a source: its path, or its position in the call."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__} #{index}>"


def read_image_bytes(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read an image file, refusing what cannot be an image before reading it whole."""
    name = os.fspath(path)
    try:
        status = os.stat(name)
        size = status.st_size
        if stat.S_ISDIR(status.st_mode):
            raise InputError(f"{name}: is a directory, not an image")
        if not stat.S_ISREG(status.st_mode):
            raise InputError(f"{name}: not a regular file (a pipe, device or socket)")
        if size == 0:
            raise InputError(f"{name}: empty file")
        if size > max_bytes:
            raise InputError(f"{name}: file too large ({size} bytes, limit {max_bytes})")
        with open(name, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode bytes into a fully loaded, upright PIL image (first frame)."""
    if not data:
        raise InputError(f"{name}: empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # a header claiming far more pixels than MAX_PIXELS
        raise InputError(f"{name}: image too large ({exc}; limit {MAX_PIXELS} pixels)") from None
    except Exception:  # Pillow signals unknown formats with several exception types
        raise InputError(f"{name}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
    pixels = image.size[0] * image.size[1]
    if pixels > MAX_PIXELS:
        raise InputError(f"{name}: image too large ({image.size[0]}x{image.size[1]} pixels, limit {MAX_PIXELS})")
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # truncated or malformed data raises anything from OSError to SyntaxError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{name}: cannot decode image ({reason})") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16-bit, 32-bit and float images down to 8-bit grayscale."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        values = np.nan_to_num(values) * (255.0 / top)
    elif image.mode != "I" or (values.size and values.max() > 255):
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite anything with transparency onto white, as a viewer would show it."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image
    background = Image.new("RGBA", image.size, _WHITE)
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def fit_image(image: Image.Image, height: int, width: int, channels: int, name: str) -> np.ndarray:
    """Convert a decoded image to the model's mode and size, as an HxWxC uint8 array."""
    try:
        if image.mode in _WIDE_MODES:
            image = _to_8bit(image)
        image = _flatten_alpha(image)
        image = image.convert("L" if channels == 1 else "RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"{name}: unsupported image mode {image.mode!r} ({exc})") from None
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels.reshape(height, width, channels)


def _array_images(array: np.ndarray, name: str) -> list[np.ndarray]:
    """Split a uint8 array into HxWxC images following the documented shape rules."""
    if array.dtype != np.uint8:
        raise InputError(f"{name}: expected a uint8 array, got {array.dtype}")
    if array.ndim == 2:
        images = [array[:, :, None]]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        images = [array]
    elif array.ndim == 3:
        images = list(array[..., None])
    elif array.ndim == 4:
        images = list(array)
    else:
        raise InputError(f"{name}: expected an array of 2 to 4 dimensions, got shape {array.shape}")
    if not images:
        raise InputError(f"{name}: empty batch (shape {array.shape})")
    for image in images:
        height, width, channels = image.shape
        if height == 0 or width == 0 or height * width > MAX_PIXELS:
            raise InputError(f"{name}: unusable image size {height}x{width}")
        if channels not in (1, 3, 4):
            raise InputError(f"{name}: expected 1, 3 or 4 channels, got {channels}")
    return images


def _array_to_pil(image: np.ndarray) -> Image.Image:
    channels = image.shape[-1]
    if channels == 1:
        return Image.fromarray(np.ascontiguousarray(image[:, :, 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(image), mode="RGB" if channels == 3 else "RGBA")


def to_pixels(source: ImageSource, info: ModelInfo, index: int = 0) -> np.ndarray:
    """One source (possibly a batch array) as an NxHxWxC uint8 array sized for the model."""
    name = source_name(source, index)
    target = (info.height, info.width, info.channels)
    if isinstance(source, np.ndarray):
        if source.dtype == np.uint8 and source.ndim == 4 and source.shape[1:] == target:
            return source
        if source.dtype == np.uint8 and source.ndim == 3 and source.shape == target:
            return source[None]
        # one full-size image at a time: a batch of large arrays made into images all at once took
        # gigabytes before the first was resized
        images = (_array_to_pil(image) for image in _array_images(source, name))
    elif isinstance(source, Image.Image):
        images = [source]
    elif isinstance(source, (bytes, bytearray, memoryview)):
        images = [decode_image(bytes(source), name)]
    elif isinstance(source, (str, os.PathLike)):
        images = [decode_image(read_image_bytes(source), name)]
    else:
        raise InputError(f"{name}: unsupported input type {type(source).__name__}")
    return np.stack([fit_image(image, *target, name) for image in images])


def normalize(pixels: np.ndarray, info: ModelInfo) -> np.ndarray:
    """Scale an NxHxWxC uint8 batch and lay it out as the model's input tensor.

    The layout change happens on the uint8 data and the arithmetic in place, so a batch is
    copied once: this runs on every call, and at batch 1 it is a visible share of the latency.
    """
    batch = pixels.transpose(0, 3, 1, 2) if info.layout == "NCHW" else pixels
    if info.dtype == "uint8":
        return np.ascontiguousarray(batch)
    out = batch.astype(np.float32, order="C")
    out *= np.float32(info.scale)
    if any(info.mean) or any(s != 1 for s in info.std):
        shape = (1, -1, 1, 1) if info.layout == "NCHW" else (1, 1, 1, -1)
        out -= np.asarray(info.mean, dtype=np.float32).reshape(shape)
        out *= (1.0 / np.asarray(info.std, dtype=np.float32)).reshape(shape)
    return out


def as_sources(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """Accept one image or a list of them, without mistaking a batch array for a list."""
    if isinstance(images, (np.ndarray, Image.Image, bytes, bytearray, memoryview, str, os.PathLike)):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise InputError(f"unsupported input type {type(images).__name__}")


def find_images(path: Path) -> tuple[list[Path], list[InputError]]:
    """The image files below a directory, in a stable order, by suffix; and one error for each
    subdirectory that could not be read (so that nothing is skipped in silence)."""
    found: list[Path] = []
    problems: list[InputError] = []

    def unreadable(error: OSError) -> None:
        problems.append(InputError(f"{error.filename}: cannot read this directory ({error.strerror or error})"))

    for folder, _, files in os.walk(path, onerror=unreadable):
        found += [Path(folder, f) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in found if p.is_file()), problems
