"""Image decoding: any format and mode to (size, size, 3) uint8, and one-line errors for what cannot be used."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from muxrec.errors import DataError, ImageError
from muxrec.images import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, decode_image, read_image_file


def _encoded(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _declared_png(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header declares a width x height grey image (no pixel data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_a_png_at_the_output_size_round_trips_exactly(tmp_path):
    pixels = _pixels(16, 16)
    data = _encoded(Image.fromarray(pixels))
    out = decode_image(data, 16)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    assert np.array_equal(out, pixels)
    (tmp_path / "a.png").write_bytes(data)
    assert np.array_equal(read_image_file(tmp_path / "a.png", 16), pixels)
    assert MAX_IMAGE_BYTES == 2 * 1024 * 1024 and MAX_IMAGE_SIDE == 4096


def test_any_size_is_resized_to_size_x_size_keeping_its_content():
    left_red_right_blue = np.zeros((30, 40, 3), np.uint8)
    left_red_right_blue[:, :20, 0] = 200
    left_red_right_blue[:, 20:, 2] = 200
    out = decode_image(_encoded(Image.fromarray(left_red_right_blue)), 8)
    assert out.shape == (8, 8, 3)
    assert (out[:, :3, 0] == 200).all() and (out[:, 5:, 2] == 200).all() and (out[..., 1] == 0).all()


@pytest.mark.parametrize("mode, fmt, fill, rgb", [
    ("L", "PNG", 77, (77, 77, 77)),
    ("1", "PNG", 1, (255, 255, 255)),
    ("P", "GIF", 0, (0, 0, 0)),
    ("RGBA", "PNG", (10, 20, 30, 255), (10, 20, 30)),
    ("RGBA", "PNG", (10, 20, 30, 0), (255, 255, 255)),  # transparent: over white
    ("LA", "PNG", (0, 0), (255, 255, 255)),
    ("I;16", "PNG", 65535, (255, 255, 255)),  # 16 bits scaled down, not clipped
    ("I;16", "PNG", 256 * 100, (100, 100, 100)),
    ("CMYK", "TIFF", (0, 0, 0, 0), (255, 255, 255)),
    ("RGB", "WEBP", (0, 128, 255), None),
    ("RGB", "JPEG", (0, 128, 255), None),
    ("RGB", "BMP", (0, 128, 255), (0, 128, 255)),
])
def test_every_mode_and_format_becomes_rgb(mode, fmt, fill, rgb):
    out = decode_image(_encoded(Image.new(mode, (12, 10), fill), fmt), 6)
    assert out.shape == (6, 6, 3) and out.dtype == np.uint8
    expected = (0, 128, 255) if rgb is None else rgb  # lossy formats: close, not equal
    assert np.abs(out.astype(int) - expected).max() <= (0 if rgb is not None else 6)


def test_camera_orientation_is_applied():
    top_red = np.zeros((10, 20, 3), np.uint8)  # wide: red on top, blue below
    top_red[:5, :, 0] = 255
    top_red[5:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    out = decode_image(_encoded(Image.fromarray(top_red), "JPEG", exif=exif, quality=95), 8)
    # displayed tall, red now on the right
    assert out[:, 6:, 0].min() > 200 and out[:, 6:, 2].max() < 60
    assert out[:, :2, 2].min() > 200 and out[:, :2, 0].max() < 60


def test_a_large_jpeg_decodes_at_a_reduced_scale_to_the_right_size():
    out = decode_image(_encoded(Image.new("RGB", (2000, 1000), (0, 128, 255)), "JPEG"), 64)
    assert out.shape == (64, 64, 3) and np.abs(out.astype(int) - (0, 128, 255)).max() <= 6


@pytest.mark.parametrize("data, message", [
    (b"hello, this is text", r"^not an image \(Pillow cannot identify it\)$"),
    (b"", "^not an image: no data$"),
    ("a string", "^not an image: expected bytes, got str$"),
])
def test_what_is_not_an_image_is_refused(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data, 8)


def test_a_truncated_image_is_named_corrupt():
    data = _encoded(Image.fromarray(_pixels(64, 64)))
    with pytest.raises(ImageError, match="^corrupt PNG data: image file is truncated"):
        decode_image(data[: len(data) // 2], 8)


def test_too_many_bytes_are_refused_unread(tmp_path):
    data = _encoded(Image.fromarray(_pixels(32, 32)))
    with pytest.raises(ImageError, match=rf"^image too large: {len(data)} bytes \(max_bytes 1000\)$"):
        decode_image(data, 8, max_bytes=1000)
    (tmp_path / "big.png").write_bytes(data)
    with pytest.raises(ImageError, match=rf"^image too large: {len(data)} bytes \(max_bytes 1000\)$"):
        read_image_file(tmp_path / "big.png", 8, max_bytes=1000)
    assert decode_image(data, 8, max_bytes=len(data)).shape == (8, 8, 3)  # the limit itself is allowed


@pytest.mark.parametrize("width, height, message", [
    (5000, 10, r"^image too large: 5000x10 pixels \(max_side 4096\)$"),
    (10, 4097, r"^image too large: 10x4097 pixels \(max_side 4096\)$"),
    (20_000, 20_000, r"^image too large: over \d+ pixels \(decompression bomb\)$"),  # Pillow's own limit
    (10_000, 10_000, r"^image too large: over \d+ pixels \(decompression bomb\)$"),  # Pillow only warns here
])
def test_huge_sides_are_refused_from_the_header_before_decoding(width, height, message, monkeypatch):
    data = _declared_png(width, height)  # 57 bytes declaring up to 400M pixels
    assert Image.open(io.BytesIO(_declared_png(30, 20))).size == (30, 20)  # what Pillow reads of such a header

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=message):
        decode_image(data, 8)


def test_a_lower_max_side_is_honoured():
    data = _encoded(Image.new("RGB", (300, 200)))
    with pytest.raises(ImageError, match=r"300x200 pixels \(max_side 256\)"):
        decode_image(data, 8, max_side=256)
    assert decode_image(data, 8, max_side=300).shape == (8, 8, 3)


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(ImageError, match=rf"^missing image file: {tmp_path / 'nope.png'}$"):
        read_image_file(tmp_path / "nope.png", 8)
    with pytest.raises(ImageError, match=rf"^not an image file: {tmp_path} is a directory$"):
        read_image_file(tmp_path, 8)
    (tmp_path / "notes.png").write_text("not really a png")
    with pytest.raises(ImageError, match=r"^not an image \(Pillow cannot identify it\)$"):
        read_image_file(str(tmp_path / "notes.png"), 8)


def test_image_errors_are_data_errors_with_one_line_messages():
    with pytest.raises(DataError) as err:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 8)
    assert isinstance(err.value, ImageError) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="size must be >= 1"):
        decode_image(b"x", 0)
