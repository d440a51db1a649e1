"""Fetch a dataset archive, verify its checksum, unpack it atomically."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from muxrec.errors import DataError

_CHUNK = 1 << 16


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def parse_checksum(checksum: str) -> tuple[str, str]:
    """"md5:abc..." -> ("md5", "abc..."); the algorithm must be one hashlib knows."""
    algorithm, sep, expected = checksum.partition(":")
    if not sep or algorithm not in hashlib.algorithms_available or not expected:
        raise DataError(f"checksum {checksum!r} is not of the form ALGORITHM:HEX (e.g. sha256:...)")
    return algorithm, expected.lower()


def download_zip(url: str, checksum: str, dest: Path, members: tuple[str, ...], timeout: float = 30.0) -> Path:
    """Download url, check it against checksum, extract `members` into dest (replacing it).

    The archive's top-level folder is stripped, so dest ends up holding the files themselves.
    Nothing is written to dest unless the checksum matches and every member is present.
    """
    algorithm, expected = parse_checksum(checksum)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        archive = Path(tmp) / "archive.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                    for block in iter(lambda: resp.read(_CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise DataError(f"could not download {url}: {getattr(err, 'reason', err)}") from None
        actual = _digest(archive, algorithm)
        if actual != expected:
            raise DataError(f"checksum mismatch for {url}: expected {algorithm}:{expected}, got {algorithm}:{actual}")
        staged = Path(tmp) / "unpacked"
        staged.mkdir()
        try:
            with zipfile.ZipFile(archive) as zf:
                by_basename = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
                missing = [m for m in members if m not in by_basename]
                if missing:
                    raise DataError(f"{url}: archive lacks {missing}")
                for m in members:
                    # Copy by base name only: a crafted path ("../x") cannot escape dest.
                    with zf.open(by_basename[m]) as src, open(staged / m, "wb") as out:
                        shutil.copyfileobj(src, out)
        except zipfile.BadZipFile:
            raise DataError(f"{url}: not a zip archive") from None
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
    return dest
