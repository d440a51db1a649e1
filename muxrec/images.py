"""Image bytes to fixed-size RGB pixels, with guards against files that are not images or too large.

Every image becomes a (size, size, 3) uint8 array: any Pillow mode is converted to RGB (transparent
pixels over white, 16-bit greys scaled down to 8 bits; 32-bit integer and float greys are clipped to
0..255, as Pillow converts them), the EXIF orientation of camera photos is applied, and the result is
resized to size x size (the aspect ratio is not kept: nothing is cropped away).

Limits are checked before any pixel is decoded: the byte count first, then the width and height that
the image header declares, so that a small file declaring a huge image (a decompression bomb) is refused
without allocating it. Each problem raises ImageError with a short, one-line message; callers add the
row or field it came from.

    >>> pixels = read_image_file("items/item_00042.png", size=64)
    >>> pixels.shape, pixels.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from muxrec.errors import ImageError

MAX_IMAGE_BYTES = 2 * 1024 * 1024  # 2 MiB: item photos, not prints
MAX_IMAGE_SIDE = 4096  # pixels, width or height
_WHITE = (255, 255, 255)


def decode_image(data: bytes, size: int, *, max_bytes: int = MAX_IMAGE_BYTES,
                 max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """The image in `data` (any format Pillow reads) as RGB pixels of size x size.

    Args:
        data: the encoded image (PNG, JPEG, WebP, GIF: the first frame, ...).
        size: the side of the output.
        max_bytes: larger data is refused unread.
        max_side: an image wider or taller than this is refused before its pixels are decoded.
    Returns:
        (size, size, 3) uint8.
    Raises:
        ImageError: not an image, corrupt, or too large.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"not an image: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("not an image: no data")
    if len(data) > max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (max_bytes {max_bytes})")
    with warnings.catch_warnings():
        # Pillow warns between its pixel limit and twice it, and raises above: both are refusals here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
        except UnidentifiedImageError:
            raise ImageError("not an image (Pillow cannot identify it)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"image too large: over {Image.MAX_IMAGE_PIXELS} pixels (decompression bomb)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"not an image: {_one_line(err)}") from None
    width, height = img.size
    if width > max_side or height > max_side:
        raise ImageError(f"image too large: {width}x{height} pixels (max_side {max_side})")
    if width < 1 or height < 1:
        raise ImageError(f"not an image: {width}x{height} pixels")
    try:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still at least size x size
        img = ImageOps.exif_transpose(img)  # decodes the pixels
        rgb = _to_rgb(img).resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"corrupt {img.format or 'image'} data: {_one_line(err)}") from None
    return np.array(rgb, dtype=np.uint8)  # (size, size, 3)


def read_image_file(path: str | os.PathLike[str], size: int, *, max_bytes: int = MAX_IMAGE_BYTES,
                    max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """The image file at `path` as RGB pixels of size x size (see `decode_image`).

    Raises:
        ImageError: the file is missing or unreadable, or its content is refused by `decode_image`.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            n_bytes = os.fstat(f.fileno()).st_size
            if n_bytes > max_bytes:  # refused unread
                raise ImageError(f"image too large: {n_bytes} bytes (max_bytes {max_bytes})")
            data = f.read(max_bytes + 1)  # the file may grow between stat and read
    except FileNotFoundError:
        raise ImageError(f"missing image file: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"not an image file: {path} is a directory") from None
    except OSError as err:
        raise ImageError(f"unreadable image file: {path} ({err.strerror or err})") from None
    return decode_image(data, size, max_bytes=max_bytes, max_side=max_side)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode as RGB: transparency composited over white, 16-bit greys scaled to 8 bits."""
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE + (255,)), rgba).convert("RGB")
    return img.convert("RGB")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
