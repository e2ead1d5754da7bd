"""Resumable HTTP(S) download with checksum verification (stdlib only)."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from mmdigits.errors import DataError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Raise DataError when ``path`` does not hash to ``expected`` (no-op when expected is None)."""
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected.lower():
        raise DataError(
            f"{path}: checksum mismatch: expected sha256 {expected}, got {got} "
            "(file corrupt or a different version; delete it and re-download or replace it)"
        )


def download_file(
    url: str, dest: str | os.PathLike[str], expected_sha256: str | None, timeout: float = 60
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed with an HTTP Range request), verify, rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "mmdigits", "Range": f"bytes={start}-"} if start else {"User-Agent": "mmdigits"}
    req = urllib.request.Request(url, headers=headers)
    try:
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not start:
                raise
            resp = None  # range not satisfiable: .part already holds the whole file
        if resp is not None:
            with resp:
                mode = "ab" if start and resp.status == 206 else "wb"
                with open(part, mode) as fh:
                    shutil.copyfileobj(resp, fh, CHUNK)
                    fh.flush()
                    os.fsync(fh.fileno())
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(
            f"could not download {url} ({e}); place the file manually at {dest}"
            + (f" (sha256 {expected_sha256})" if expected_sha256 else "")
        ) from e
    try:
        verify_sha256(part, expected_sha256)
    except DataError as e:
        part.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed verification: {e}") from None
    os.replace(part, dest)
    return dest
