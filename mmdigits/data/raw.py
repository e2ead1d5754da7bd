"""The raw corpora on disk (MNIST, UCI Spoken Arabic Digit, FSDD): where they live, checksums, downloads, and
the cached MFCC of the FSDD recordings."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmdigits.data.corpora import AudioCorpus, arabic_metadata, parse_arabic, read_idx
from mmdigits.data.download import download_file, sha256_file, verify_sha256
from mmdigits.data.media import MfccSettings, wav_mfcc
from mmdigits.errors import DataError

ENV_RAW_DIR = "MMDIGITS_RAW_DIR"
ENV_CACHE_DIR = "MMDIGITS_CACHE_DIR"
ENV_NO_DOWNLOAD = "MMDIGITS_NO_DOWNLOAD"
DEFAULT_RAW_DIR = Path("Dataset/raw")

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ARABIC_FILES = {"train": "Train_Arabic_Digit.txt", "test": "Test_Arabic_Digit.txt"}
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")

# Known SHA-256 of every raw file (keys are paths relative to the raw dir).
KNOWN_SHA256: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "arabic_digits/Train_Arabic_Digit.txt": (
        "cecd3ee9951658e5391f0342e9b6467ba7c0e7ecff5c9012b9c1ed9f81b97bc6"
    ),
    "arabic_digits/Test_Arabic_Digit.txt": "de40eac66ce18fca8924bad592002ee7ef646fc84d48b065ce21ac9f88946922",
    # sha256 of the `sha256sum`-style list "<sha256>  recordings/<name>\n" sorted by path (= fsdd/SHA256SUMS)
    "fsdd/SHA256SUMS": "04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b",
}
DEFAULT_URLS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "arabic_digits": "https://archive.ics.uci.edu/ml/machine-learning-databases/00195/",
    "fsdd": f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.tar.gz",
}
URL_ENV = {"mnist": "MMDIGITS_MNIST_URL", "arabic_digits": "MMDIGITS_ARABIC_URL", "fsdd": "MMDIGITS_FSDD_URL"}


def resolve_raw_dir(raw_dir: str | os.PathLike[str] | None = None) -> Path:
    """Explicit argument -> env ``MMDIGITS_RAW_DIR`` -> ``Dataset/raw``."""
    if raw_dir:
        return Path(raw_dir).expanduser()
    if os.environ.get(ENV_RAW_DIR):
        return Path(os.environ[ENV_RAW_DIR]).expanduser()
    return DEFAULT_RAW_DIR


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "mmdigits")


def _sums_text(hashes: Mapping[str, str]) -> str:
    return "".join(f"{hashes[name]}  recordings/{name}\n" for name in sorted(hashes))


# ----------------------------------------------------------------------------- RawCorpora


@dataclass
class RawCorpora:
    """Access to the raw corpora under ``root`` with checksum verification and optional download.

    ``checksums`` overrides entries of :data:`KNOWN_SHA256` (keys relative to ``root``); ``verify=False``
    skips checksums (tiny test corpora). ``download=None`` downloads unless ``MMDIGITS_NO_DOWNLOAD`` is set.
    ``urls`` overrides the base URLs (keys ``mnist``, ``arabic_digits``, ``fsdd``; env ``MMDIGITS_*_URL``).
    """

    root: Path
    verify: bool = True
    checksums: Mapping[str, str] = field(default_factory=dict)
    download: bool | None = None
    urls: Mapping[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        self.root = resolve_raw_dir(self.root)
        self._used: dict[str, str] = {}

    @property
    def used_files(self) -> dict[str, str]:
        """sha256 of every raw file read so far (relative path -> hex digest)."""
        return dict(sorted(self._used.items()))

    def expected(self, rel: str) -> str | None:
        return self.checksums.get(rel, KNOWN_SHA256.get(rel)) if self.verify else None

    def url(self, corpus: str) -> str:
        return self.urls.get(corpus) or os.environ.get(URL_ENV[corpus]) or DEFAULT_URLS[corpus]

    def _may_download(self) -> bool:
        return self.download if self.download is not None else not os.environ.get(ENV_NO_DOWNLOAD)

    def file(self, corpus: str, name: str) -> Path:
        """Path of a verified raw file, downloading it when missing."""
        rel = f"{corpus}/{name}"
        path = self.root / rel
        expected = self.expected(rel)
        if not path.exists():
            url = self.url(corpus).rstrip("/") + "/" + name
            if not self._may_download():
                raise DataError(
                    f"raw file {path} is missing and downloads are disabled; download {url} "
                    f"and place it at {path}" + (f" (sha256 {expected})" if expected else "")
                )
            download_file(url, path, expected)
        else:
            verify_sha256(path, expected)
        self._used[rel] = expected or sha256_file(path)
        return path

    # -- MNIST
    def mnist(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (n, 784) and int64 labels (n,) of an MNIST split."""
        img_name, lab_name = MNIST_FILES[split]
        img_path, lab_path = self.file("mnist", img_name), self.file("mnist", lab_name)
        images = read_idx(img_path, 3)
        labels = read_idx(lab_path, 1)
        if images.shape[1:] != (28, 28):
            raise DataError(f"{img_path}: images are {images.shape[1:]}; expected 28x28")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path}"
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"{lab_path}: label {labels.max()} at row {int(labels.argmax())}; expected 0..9")
        return images.reshape(len(images), 784).copy(), labels.astype(np.int64)

    # -- Arabic
    def arabic(self, split: str) -> AudioCorpus:
        """Utterances of the Spoken Arabic Digit train or test file."""
        path = self.file("arabic_digits", ARABIC_FILES[split])
        feats = parse_arabic(path)
        digit, speaker, utt = arabic_metadata(len(feats), split, path)
        return AudioCorpus(feats, digit, speaker, utt)

    # -- FSDD
    def fsdd_files(self) -> list[Path]:
        rec = self.root / "fsdd" / "recordings"
        if not rec.is_dir() or not any(rec.glob("*.wav")):
            self._download_fsdd(rec)
        files = sorted(rec.glob("*.wav"), key=lambda p: p.name)
        for p in files:
            if not FSDD_NAME.match(p.name):
                raise DataError(
                    f"{p}: unexpected FSDD file name; expected {{digit}}_{{speaker}}_{{index}}.wav"
                )
        if self.verify:
            self._verify_fsdd(files)
        return files

    def _verify_fsdd(self, files: list[Path]) -> None:
        hashes = {p.name: sha256_file(p) for p in files}
        text = _sums_text(hashes)
        import hashlib

        digest = hashlib.sha256(text.encode()).hexdigest()
        expected = self.expected("fsdd/SHA256SUMS")
        if expected and digest != expected:
            listed: dict[str, str] = {}
            sums = self.root / "fsdd" / "SHA256SUMS"
            if sums.exists():
                for line in sums.read_text().splitlines():
                    h, _, name = line.partition("  ")
                    listed[Path(name).name] = h
            bad = [n for n, h in hashes.items() if listed.get(n) != h] if listed else []
            missing = sorted(set(listed) - set(hashes))
            detail = f"; mismatching files: {bad[:5]}" if bad else ""
            detail += f"; missing files: {missing[:5]}" if missing else ""
            raise DataError(
                f"{self.root / 'fsdd' / 'recordings'}: checksum mismatch of the FSDD recordings list: "
                f"expected sha256 {expected}, got {digest}{detail}"
            )
        self._used["fsdd/SHA256SUMS"] = digest

    def _download_fsdd(self, rec: Path) -> None:
        url = self.url("fsdd")
        if not self._may_download():
            raise DataError(
                f"FSDD recordings missing at {rec} and downloads are disabled; download {url} and "
                f"extract its recordings/*.wav into {rec}"
            )
        archive = self.root / "fsdd" / "fsdd.tar.gz"
        download_file(url, archive, self.checksums.get("fsdd/archive"))
        tmp = Path(tempfile.mkdtemp(dir=archive.parent, prefix=".recordings-"))
        try:
            with tarfile.open(archive) as tar:
                for m in tar.getmembers():
                    parts = Path(m.name).parts
                    if (
                        m.isfile()
                        and len(parts) >= 2
                        and parts[-2] == "recordings"
                        and FSDD_NAME.match(parts[-1])
                    ):
                        src = tar.extractfile(m)
                        assert src is not None
                        (tmp / parts[-1]).write_bytes(src.read())
            rec.parent.mkdir(parents=True, exist_ok=True)
            if rec.exists():
                shutil.rmtree(rec)
            os.replace(tmp, rec)
        except (tarfile.TarError, OSError) as e:
            raise DataError(
                f"{archive}: corrupt FSDD archive ({e}); expected a tar.gz with recordings/*.wav"
            ) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)

    def fsdd(self, settings: MfccSettings | None = None) -> AudioCorpus:
        """All FSDD recordings as MFCC (frames, 13), cached on disk under ``cache_dir``."""
        settings = settings or MfccSettings()
        files = self.fsdd_files()
        names = [p.name for p in files]
        feats = fsdd_mfcc_cached(files, settings, self.cache_dir or default_cache_dir())
        meta = [FSDD_NAME.match(n).groups() for n in names]  # type: ignore[union-attr]
        speaker_names = sorted({m[1] for m in meta})
        digits = np.array([int(m[0]) for m in meta], np.int64)
        speakers = np.array([speaker_names.index(m[1]) for m in meta], np.int64)
        return AudioCorpus(feats, digits, speakers, np.arange(len(files), dtype=np.int64), speaker_names)


def mfcc_cache_key(files: list[Path], settings: MfccSettings) -> str:
    """Hash of the feature settings (incl. librosa version) and the file list (names + content hashes)."""
    import hashlib
    import json

    payload = {"settings": settings.as_dict(), "files": [[p.name, sha256_file(p)] for p in files]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def fsdd_mfcc_cached(files: list[Path], settings: MfccSettings, cache_dir: Path) -> list[np.ndarray]:
    """MFCC of every file, read from / written to ``cache_dir/fsdd_mfcc_<key>.npz``."""
    from mmdigits.utils.io import atomic_path

    key = mfcc_cache_key(files, settings)
    cache = Path(cache_dir) / f"fsdd_mfcc_{key[:24]}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                frames, lengths, names = z["frames"], z["lengths"], z["names"]
            if list(names) == [p.name for p in files]:
                return np.split(frames, np.cumsum(lengths)[:-1])
        except Exception:  # corrupt cache: recompute
            pass
    feats = [wav_mfcc(p, settings) for p in files]
    lengths = np.array([len(f) for f in feats], np.int64)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, frames=np.concatenate(feats), lengths=lengths, names=np.array([p.name for p in files]))
    return feats
