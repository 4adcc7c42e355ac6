"""The runtime's image loading and preprocessing: every format and mode, and every bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, scalar_dtypes
from PIL import Image

from runtime.errors import InputError
from runtime.metadata import ModelInfo
from runtime.preprocess import MAX_PIXELS, normalize, to_pixels

GRAY = ModelInfo(labels=tuple("abcdefghij"), height=28, width=28, channels=1)
COLOR = ModelInfo(labels=tuple("abcdefghij"), height=32, width=32, channels=3, layout="NHWC")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_format_decodes_to_the_model_size(fmt, tmp_path):
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(encoded(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    pixels = to_pixels(path, COLOR)
    assert pixels.shape == (1, 32, 32, 3) and pixels.dtype == np.uint8
    assert np.allclose(pixels[0, 16, 16], (200, 30, 30), atol=12 if fmt in ("JPEG", "GIF") else 0)


@pytest.mark.parametrize(
    ("image", "expected_gray"),
    [
        (Image.new("L", (28, 28), 77), 77),
        (Image.new("RGB", (28, 28), (77, 77, 77)), 77),
        (Image.new("LA", (28, 28), (0, 0)), 255),  # fully transparent: white shows through
        (Image.new("RGBA", (28, 28), (0, 0, 0, 255)), 0),
        (Image.new("RGBA", (28, 28), (0, 0, 0, 0)), 255),
        (Image.new("CMYK", (28, 28), (0, 0, 0, 255)), 0),
        (Image.new("I;16", (28, 28), 65535), 255),
        (Image.new("I;16", (28, 28), 257 * 100), 100),
        (Image.new("1", (28, 28), 1), 255),
        (Image.new("F", (28, 28), 0.5), 128),
    ],
    ids=lambda v: v.mode if isinstance(v, Image.Image) else str(v),
)
def test_every_mode_converts_to_grayscale(image, expected_gray):
    assert int(to_pixels(image, GRAY)[0, 14, 14, 0]) == pytest.approx(expected_gray, abs=1)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (28, 28), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert to_pixels(encoded(image, "PNG"), GRAY)[0, 0, 0, 0] == 255


def test_gray_is_replicated_for_colour_models():
    assert to_pixels(Image.new("L", (32, 32), 90), COLOR)[0, 5, 5].tolist() == [90, 90, 90]


def test_gif_first_frame_is_used():
    frames = [Image.new("L", (28, 28), v) for v in (10, 250)]
    data = io.BytesIO()
    frames[0].save(data, "GIF", save_all=True, append_images=frames[1:])
    assert abs(int(to_pixels(data.getvalue(), GRAY)[0, 3, 3, 0]) - 10) <= 2


def test_exif_orientation_is_applied():
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    upright = to_pixels(encoded(image, "JPEG", exif=exif.tobytes(), quality=95), GRAY)[0, ..., 0]
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the white half is now on top


def test_arrays_of_every_documented_shape():
    assert to_pixels(np.full((28, 28), 9, np.uint8), GRAY).shape == (1, 28, 28, 1)
    assert to_pixels(np.zeros((5, 28, 28), np.uint8), GRAY).shape == (5, 28, 28, 1)
    assert to_pixels(np.zeros((56, 56, 3), np.uint8), GRAY).shape == (1, 28, 28, 1)
    assert to_pixels(np.zeros((2, 10, 10, 4), np.uint8), COLOR).shape == (2, 32, 32, 3)


def test_normalize_layouts_and_scaling():
    pixels = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28, 1).astype(np.uint8)
    batch = normalize(pixels, GRAY)
    assert batch.shape == (2, 1, 28, 28) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert batch[1, 0, 3, 4] == pytest.approx(pixels[1, 3, 4, 0] / 255.0)
    assert normalize(np.zeros((1, 32, 32, 3), np.uint8), COLOR).shape == (1, 32, 32, 3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"hello, I am text"), "not an image"),
        (lambda p: p.write_bytes(encoded(Image.new("RGB", (300, 300), 9), "PNG")[:400]), "cannot decode image"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "no such file"),
    ],
    ids=["empty", "text", "truncated", "directory", "missing"],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, make, message):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(InputError, match=message) as error:
        to_pixels(path, GRAY)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_decompression_bomb_is_refused_before_decoding():
    side = int(MAX_PIXELS**0.5) + 100
    bomb = encoded(Image.new("1", (side, side)), "PNG")  # a few KiB that would decode to >40M pixels
    assert len(bomb) < 100_000
    with pytest.raises(InputError, match="image too large"):
        to_pixels(bomb, GRAY)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((28, 28), np.float64),
        np.zeros((2, 3, 4, 5, 6), np.uint8),
        np.zeros((0, 28), np.uint8),
        np.zeros((1, 28, 28, 2), np.uint8),
    ],
)
def test_unusable_arrays(array):
    with pytest.raises(InputError):
        to_pixels(array, GRAY)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_give_only_the_documented_error(data):
    try:
        assert to_pixels(data, GRAY).shape[1:] == (28, 28, 1)
    except InputError:
        pass


HEADERS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(HEADERS), st.binary(max_size=512))
def test_random_image_headers_give_only_the_documented_error(header, tail):
    try:
        to_pixels(header + tail, COLOR)
    except InputError:
        pass


@settings(max_examples=150, deadline=None)
@given(arrays(scalar_dtypes(), array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=40)))
def test_random_arrays_give_only_the_documented_error(array):
    try:
        pixels = to_pixels(array, COLOR)
        assert pixels.shape[1:] == (32, 32, 3) and pixels.dtype == np.uint8
    except InputError:
        pass
