"""Build a challenge-format dataset (MNIST images paired with spoken-digit MFCC) from the raw corpora.

python -m mmdigits.data.build --out Dataset [--raw-dir DIR] [--audio arabic|fsdd]
    [--n-train 45000] [--n-test 15000] [--match-rate 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmdigits.data import folds
from mmdigits.data.corpora import AudioCorpus
from mmdigits.data.download import sha256_file
from mmdigits.data.media import MfccSettings
from mmdigits.data.raw import RawCorpora
from mmdigits.errors import DataError
from mmdigits.utils.io import atomic_write_json, raise_if_user_fixable

FORMAT_VERSION = 2  # 2: utterances stored without pickle (spoken_<split>_{frames,lengths,index}.npy)
MANIFEST = "manifest.json"
BUILDING_MARKER = ".mmdigits-building"
CHALLENGE_FILES = (
    "written_train.npy",
    "spoken_train.npy",
    "match_train.npy",
    "written_test.npy",
    "spoken_test.npy",
)
DEFAULTS: dict[str, Any] = {
    "audio": "arabic",
    "n_train": 45_000,
    "n_test": 15_000,
    "match_rate": 0.1,
    "seed": 0,
    "fsdd_test_speakers": ["yweweler"],
    "split": "corpus",  # or speaker_folds (mmdigits.data.folds)
    "folds": 4,
    "fold": 0,
    "image_split": "mnist",  # or seeded
}


def build_settings(**overrides: Any) -> dict[str, Any]:
    """Full, normalised build settings (defaults + overrides; None values ignored)."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise DataError(f"unknown build settings {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    s["audio"] = str(s["audio"])
    if s["audio"] not in ("arabic", "fsdd"):
        raise DataError(f"audio={s['audio']!r}; expected 'arabic' or 'fsdd'")
    s["n_train"], s["n_test"], s["seed"] = int(s["n_train"]), int(s["n_test"]), int(s["seed"])
    s["match_rate"] = float(s["match_rate"])
    if not 0.0 <= s["match_rate"] <= 1.0:
        raise DataError(f"match_rate={s['match_rate']}; expected a value in [0, 1]")
    folds.normalise(s)
    if s["audio"] == "fsdd" and s.get("split") != "speaker_folds":
        s["fsdd_test_speakers"] = sorted(str(x) for x in s["fsdd_test_speakers"])
    else:
        s.pop("fsdd_test_speakers")
    if s["audio"] == "fsdd":
        s["mfcc"] = MfccSettings().as_dict()
    return s


def make_pairs(
    rng: np.random.Generator, img_digits: np.ndarray, aud_digits: np.ndarray, n: int, match_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image indices (each used once while possible), audio indices and match labels for ``n`` pairs.

    Exactly ``round(match_rate * n)`` positives (same digit); negatives use an audio of another digit.
    """
    n_img = len(img_digits)
    reps = max(1, math.ceil(n / n_img))
    img_idx = np.concatenate([rng.permutation(n_img) for _ in range(reps)])[:n].astype(np.int64)
    match = np.zeros(n, bool)
    match[rng.permutation(n)[: int(round(match_rate * n))]] = True
    d_img = img_digits[img_idx]
    d_aud = np.where(match, d_img, (d_img + rng.integers(1, 10, n)) % 10)
    counts = np.bincount(aud_digits, minlength=10)
    if (counts == 0).any():
        raise DataError(f"audio corpus has no utterance of digit(s) {np.flatnonzero(counts == 0).tolist()}")
    order = np.argsort(aud_digits, kind="stable")
    starts = np.cumsum(counts) - counts
    pick = np.minimum((rng.random(n) * counts[d_aud]).astype(np.int64), counts[d_aud] - 1)
    return img_idx, order[starts[d_aud] + pick].astype(np.int64), match


def _audio_splits(raw: RawCorpora, s: Mapping[str, Any]) -> dict[str, AudioCorpus]:
    if s["audio"] == "arabic":
        own = {"train": raw.arabic("train"), "test": raw.arabic("test")}
        if s.get("split") == "speaker_folds":
            return folds.fold_corpora(folds.concat(own["train"], own["test"]), s, arabic=True)
        return own
    corpus = raw.fsdd(MfccSettings())
    if s.get("split") == "speaker_folds":
        return folds.fold_corpora(corpus, s, arabic=False)
    unknown = set(s["fsdd_test_speakers"]) - set(corpus.speaker_names)
    if unknown:
        raise DataError(
            f"fsdd_test_speakers {sorted(unknown)} not in the corpus speakers {corpus.speaker_names}"
        )
    test_ids = [corpus.speaker_names.index(x) for x in s["fsdd_test_speakers"]]
    is_test = np.isin(corpus.speakers, test_ids)
    if is_test.all() or not is_test.any():
        raise DataError(f"fsdd_test_speakers {s['fsdd_test_speakers']} must leave speakers for both splits")
    return {"train": corpus.subset(~is_test), "test": corpus.subset(is_test)}


def build_arrays(raw: RawCorpora, settings: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """All arrays of a built dataset, keyed by file name (deterministic for a given seed)."""
    rng = np.random.default_rng(settings["seed"])
    audio = _audio_splits(raw, settings)
    mnist = folds.image_splits(raw, settings)
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images, img_digits = mnist[split]
        corpus = audio[split]
        n = settings[f"n_{split}"]
        img_idx, aud_idx, match = make_pairs(rng, img_digits, corpus.digits, n, settings["match_rate"])
        out[f"written_{split}.npy"] = images[img_idx]
        out[f"spoken_{split}_frames.npy"] = np.concatenate(corpus.feats).astype(np.float32)
        out[f"spoken_{split}_lengths.npy"] = np.array([len(f) for f in corpus.feats], np.int64)
        out[f"spoken_{split}_index.npy"] = aud_idx
        out[f"match_{split}.npy"] = match
        out[f"digit_written_{split}.npy"] = img_digits[img_idx]
        out[f"digit_spoken_{split}.npy"] = corpus.digits[aud_idx]
        out[f"speaker_spoken_{split}.npy"] = corpus.speakers[aud_idx]
        out[f"utterance_spoken_{split}.npy"] = corpus.utterances[aud_idx]
        out[f"source_written_{split}.npy"] = img_idx
    return out


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed manifest.json of ``directory`` or None when absent/unreadable."""
    try:
        m = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def is_complete(directory: str | os.PathLike[str], check_hashes: bool = True) -> bool:
    """True when the manifest exists and every listed file has the recorded size (and sha256)."""
    d = Path(directory)
    m = read_manifest(d)
    if m is None or (d / BUILDING_MARKER).exists():
        return False
    for name, info in m["files"].items():
        p = d / name
        if not p.is_file() or p.stat().st_size != info.get("bytes"):
            return False
        if check_hashes and sha256_file(p) != info.get("sha256"):
            return False
    return True


def is_user_owned(directory: str | os.PathLike[str]) -> bool:
    """Original challenge files without a manifest (and not a half-finished build of ours)."""
    d = Path(directory)
    if (d / MANIFEST).exists() or (d / BUILDING_MARKER).exists():
        return False
    if any((d / f"source_written_{s}.npy").exists() for s in ("train", "test")):
        return False  # our own partial build
    return all((d / f).exists() for f in CHALLENGE_FILES)


def missing_user_files(directory: str | os.PathLike[str]) -> list[str]:
    """Challenge files missing from a directory of user files (some present, no manifest, not our build)."""
    d = Path(directory)
    if (d / MANIFEST).exists() or (d / BUILDING_MARKER).exists():
        return []
    if any((d / f"source_written_{s}.npy").exists() for s in ("train", "test")):
        return []
    present = [f for f in CHALLENGE_FILES if (d / f).exists()]
    return [f for f in CHALLENGE_FILES if f not in present] if present else []


def _refuse_partial_user_dir(d: Path) -> None:
    missing = missing_user_files(d)
    if missing:
        raise DataError(
            f"{d / missing[0]}: missing file; {d} holds other challenge files without a {MANIFEST} "
            "(user-owned), so it is not rebuilt over them: restore the file(s) "
            f"{missing} or point data.dir at another directory"
        )


def _refuse_other_build(d: Path, wanted: Mapping[str, Any]) -> None:
    """A complete build is never rebuilt into a different one without ``force``."""
    m = read_manifest(d)
    have = (m or {}).get("settings")
    if have is None or have == wanted or not is_complete(d, check_hashes=False):
        return
    diff = sorted(k for k in set(wanted) | set(have) if wanted.get(k) != have.get(k))
    raise DataError(
        f"{d}: holds a complete build with "
        + ", ".join(f"{k}={have.get(k)!r}" for k in diff)
        + f" ({MANIFEST}), but this asks for "
        + ", ".join(f"{k}={wanted.get(k)!r}" for k in diff)
        + "; point data.dir at another directory (a build is never rebuilt into a different one; "
        "`python -m mmdigits.data.build --force` replaces it)"
    )


def build_dataset(
    out: str | os.PathLike[str],
    raw_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    checksums: Mapping[str, str] | None = None,
    download: bool | None = None,
    urls: Mapping[str, str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    **settings: Any,
) -> Path:
    """Build the dataset into ``out`` atomically (temp dir, move files in, manifest last)."""
    out = Path(out)
    s = build_settings(**settings)
    if is_user_owned(out) and not force:
        raise DataError(
            f"{out} holds challenge files without a {MANIFEST} (user-owned); refusing to overwrite"
        )
    if not force:
        _refuse_partial_user_dir(out)
        _refuse_other_build(out, s)
    raw = RawCorpora(
        raw_dir,  # type: ignore[arg-type]
        verify=verify,
        checksums=dict(checksums or {}),
        download=download,
        urls=dict(urls or {}),
        cache_dir=Path(cache_dir) if cache_dir else None,
    )
    arrays = build_arrays(raw, s)
    writing = out  # named in the error when the disk is full or the place read-only
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.build-"))
    except OSError as err:
        raise_if_user_fixable(out, err)
        raise
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, arr in arrays.items():
            writing = out / name
            _save_npy(tmp / name, arr)
            files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest = {
            "format": "mmdigits-challenge",
            "version": FORMAT_VERSION,
            "settings": s,
            "files": files,
            "raw_sha256": raw.used_files if verify else {},
            "counts": {sp: int(len(arrays[f"match_{sp}.npy"])) for sp in ("train", "test")},
            "positives": {sp: int(arrays[f"match_{sp}.npy"].sum()) for sp in ("train", "test")},
            # which speakers each part holds (for split=speaker_folds: the fold's assignment)
            "speakers": {
                sp: np.unique(arrays[f"speaker_spoken_{sp}.npy"]).tolist() for sp in ("train", "test")
            },
        }
        (out / MANIFEST).unlink(missing_ok=True)
        (out / BUILDING_MARKER).touch()
        for name in arrays:
            os.replace(tmp / name, out / name)
        atomic_write_json(out / MANIFEST, manifest)
        (out / BUILDING_MARKER).unlink()
    except OSError as err:
        raise_if_user_fixable(writing, err)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_dataset(
    directory: str | os.PathLike[str], raw_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Path:
    """Return ``directory`` when it holds a complete build with the same settings or user-owned challenge
    files (never touched); build it from the raw corpora when it holds no complete build; refuse (DataError
    naming both) when it holds a complete build with other settings."""
    d = Path(directory)
    if is_user_owned(d):
        return d
    _refuse_partial_user_dir(d)
    setting_keys = {k: kwargs.pop(k) for k in list(kwargs) if k in DEFAULTS}
    wanted = build_settings(**setting_keys)
    m = read_manifest(d)
    if m is not None and m.get("settings") == wanted and is_complete(d):
        return d
    return build_dataset(d, raw_dir, **kwargs, **setting_keys)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmdigits.data.build", description=__doc__.splitlines()[0])
    p.add_argument("--raw-dir", default=None, help="raw corpora (default: $MMDIGITS_RAW_DIR or Dataset/raw)")
    p.add_argument("--out", default="Dataset", help="output directory (default: Dataset)")
    p.add_argument("--audio", choices=["arabic", "fsdd"], default=DEFAULTS["audio"])
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    p.add_argument("--n-test", type=int, default=DEFAULTS["n_test"])
    p.add_argument("--match-rate", type=float, default=DEFAULTS["match_rate"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--fsdd-test-speakers", nargs="+", default=DEFAULTS["fsdd_test_speakers"])
    p.add_argument("--no-verify", action="store_true", help="skip raw-file checksums")
    p.add_argument("--no-download", action="store_true", help="never download missing corpora")
    p.add_argument("--force", action="store_true", help="rebuild even if complete / overwrite user files")
    a = p.parse_args(argv)
    settings = {
        "audio": a.audio,
        "n_train": a.n_train,
        "n_test": a.n_test,
        "match_rate": a.match_rate,
        "seed": a.seed,
        "fsdd_test_speakers": a.fsdd_test_speakers,
    }
    common = {"verify": not a.no_verify, "download": False if a.no_download else None}
    try:
        if a.force:
            out = build_dataset(a.out, a.raw_dir, force=True, **common, **settings)
        else:
            out = ensure_dataset(a.out, a.raw_dir, **common, **settings)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = read_manifest(out)
    print(
        f"dataset ready in {out}"
        + (f": {m['counts']} pairs, {m['positives']} positives" if m else " (user-owned)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
