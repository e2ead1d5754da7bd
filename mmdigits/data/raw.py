"""Readers for the raw corpora (MNIST IDX, UCI Spoken Arabic Digit, FSDD wav) with checksums and downloads."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmdigits.data.download import download_file, sha256_file, verify_sha256
from mmdigits.data.errors import DataError

ENV_RAW_DIR = "MMDIGITS_RAW_DIR"
ENV_CACHE_DIR = "MMDIGITS_CACHE_DIR"
ENV_NO_DOWNLOAD = "MMDIGITS_NO_DOWNLOAD"
DEFAULT_RAW_DIR = Path("Dataset/raw")
N_MFCC = 13

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ARABIC_FILES = {"train": "Train_Arabic_Digit.txt", "test": "Test_Arabic_Digit.txt"}
ARABIC_TEST_SPEAKER_OFFSET = 66  # 66 train speakers: test speaker ids start at 66
ARABIC_TEST_UTTERANCE_OFFSET = 6600  # 6600 train utterances: test utterance ids start at 6600
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


# ----------------------------------------------------------------------------- MNIST


def read_idx(path: str | os.PathLike[str], expect_ndim: int | None = None) -> np.ndarray:
    """Read a (gzip-compressed) IDX file of uint8 data, validating magic number and dimensions."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: truncated or corrupt gzip file ({e}); expected a complete gzip IDX file"
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: bad IDX magic {raw[:4].hex()}; expected 0x000008NN (unsigned byte data)")
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: IDX has {ndim} dimensions; expected {expect_ndim}")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    n = int(np.prod(dims))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != n:
        raise DataError(f"{path}: IDX payload has {data.size} bytes; expected {n} for dims {dims}")
    return data.reshape(dims)


# ----------------------------------------------------------------------------- Arabic


def parse_arabic(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Parse a UCI Spoken Arabic Digit file into a list of float32 (frames, 13) arrays (vectorised)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not an ASCII text file ({e}); expected lines of 13 floats") from e
    lines = text.split("\n")
    blank = np.fromiter((not s.strip() for s in lines), bool, len(lines))
    nonblank = ~blank
    starts = nonblank & ~np.concatenate([[False], nonblank[:-1]])
    block_of_line = np.cumsum(starts)[nonblank] - 1
    counts = np.bincount(block_of_line) if block_of_line.size else np.zeros(0, np.int64)
    n_frames = int(nonblank.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(text, dtype=np.float32, sep=" ")
        except (ValueError, DeprecationWarning):
            values = None
    if values is None or values.size != n_frames * N_MFCC:
        for i in np.flatnonzero(nonblank):
            fields = lines[i].split()
            try:
                [float(x) for x in fields]
            except ValueError:
                raise DataError(
                    f"{path}: line {i + 1}: non-numeric field; expected {N_MFCC} floats"
                ) from None
            if len(fields) != N_MFCC:
                raise DataError(f"{path}: line {i + 1} has {len(fields)} fields; expected {N_MFCC} floats")
        raise DataError(f"{path}: could not parse {n_frames} frames of {N_MFCC} floats")
    if not counts.size:
        raise DataError(f"{path}: no utterance blocks found; expected blocks of {N_MFCC}-float lines")
    frames = values.reshape(n_frames, N_MFCC)
    return np.split(frames, np.cumsum(counts)[:-1])


@dataclass
class AudioCorpus:
    """Utterances of one split: float32 (T, 13) features with digit, speaker and global utterance ids."""

    feats: list[np.ndarray]
    digits: np.ndarray
    speakers: np.ndarray
    utterances: np.ndarray
    speaker_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.feats)

    def subset(self, mask: np.ndarray) -> AudioCorpus:
        idx = np.flatnonzero(mask)
        return AudioCorpus(
            [self.feats[i] for i in idx],
            self.digits[idx],
            self.speakers[idx],
            self.utterances[idx],
            self.speaker_names,
        )


def arabic_metadata(n_blocks: int, split: str, path: Path | str = "") -> tuple[np.ndarray, ...]:
    """digit, speaker, utterance ids for the blocks of an Arabic file (10 reps per speaker, speaker-major)."""
    if n_blocks % 10:
        raise DataError(
            f"{path}: {n_blocks} utterance blocks; expected a multiple of 10 (same count per digit)"
        )
    per_digit = n_blocks // 10
    b = np.arange(n_blocks, dtype=np.int64)
    test = split == "test"
    digit = b // per_digit
    speaker = (b % per_digit) // 10 + (ARABIC_TEST_SPEAKER_OFFSET if test else 0)
    utterance = b + (ARABIC_TEST_UTTERANCE_OFFSET if test else 0)
    return digit, speaker, utterance


# ----------------------------------------------------------------------------- FSDD


@dataclass(frozen=True)
class MfccSettings:
    """MFCC settings for FSDD: 13 coefficients, 10 ms hop (sr / 100)."""

    sr: int = 8000
    n_mfcc: int = N_MFCC
    n_fft: int = 256
    n_mels: int = 40

    @property
    def hop_length(self) -> int:
        return self.sr // 100

    def as_dict(self) -> dict:
        import librosa

        return {
            "sr": self.sr,
            "n_mfcc": self.n_mfcc,
            "n_fft": self.n_fft,
            "n_mels": self.n_mels,
            "hop_length": self.hop_length,
            "librosa": librosa.__version__,
        }


def read_wav(path: str | os.PathLike[str], sr: int) -> np.ndarray:
    """Read a mono WAV file as float32, resampled to ``sr``; DataError if it is not a readable WAV."""
    import soundfile as sf

    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise DataError(f"{path}: not a WAV file (header {head[:12]!r}); expected a RIFF/WAVE audio file")
    try:
        y, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile errors have several types
        raise DataError(f"{path}: unreadable WAV file ({e}); expected PCM RIFF/WAVE audio") from e
    if y.shape[0] == 0:
        raise DataError(f"{path}: WAV file has no samples; expected a non-empty recording")
    y = y.mean(axis=1)
    if file_sr != sr:
        import librosa

        y = librosa.resample(y, orig_sr=file_sr, target_sr=sr)
    return y.astype(np.float32)


def wav_mfcc(path: str | os.PathLike[str], settings: MfccSettings = MfccSettings()) -> np.ndarray:
    """MFCC of a wav file, float32 (frames, n_mfcc)."""
    import librosa

    y = read_wav(path, settings.sr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_fft > len(y) for very short clips
        m = librosa.feature.mfcc(
            y=y,
            sr=settings.sr,
            n_mfcc=settings.n_mfcc,
            n_fft=settings.n_fft,
            hop_length=settings.hop_length,
            n_mels=settings.n_mels,
        )
    return np.ascontiguousarray(m.T, dtype=np.float32)


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

    def fsdd(self, settings: MfccSettings = MfccSettings()) -> AudioCorpus:
        """All FSDD recordings as MFCC (frames, 13), cached on disk under ``cache_dir``."""
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
