from __future__ import annotations

import gzip
import hashlib
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mmdigits.data.corpora import arabic_metadata, parse_arabic, read_idx
from mmdigits.data.download import download_file
from mmdigits.data.media import wav_mfcc
from mmdigits.data.raw import ENV_RAW_DIR, RawCorpora, fsdd_mfcc_cached, resolve_raw_dir
from mmdigits.errors import DataError
from tests.synthetic import write_idx_gz


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_read_mnist_tiny(tiny_raw_dir: Path) -> None:
    raw = RawCorpora(tiny_raw_dir, verify=False, download=False)
    x, y = raw.mnist("train")
    assert x.shape == (300, 784) and x.dtype == np.uint8
    assert y.shape == (300,) and y.dtype == np.int64 and set(y.tolist()) == set(range(10))
    assert raw.mnist("test")[0].shape == (100, 784)


def test_idx_bad_magic_and_dims(tmp_path: Path) -> None:
    p = write_idx_gz(tmp_path / "x-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="3"):
        read_idx(p, expect_ndim=3)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x0d\x01" + np.array([5], ">i4").tobytes() + bytes(5))
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + np.array([9], ">i4").tobytes() + bytes(5))
    with pytest.raises(DataError, match="expected 9"):
        read_idx(short)


def test_truncated_gz_names_file(tiny_raw_dir: Path, tmp_path: Path) -> None:
    src = tiny_raw_dir / "mnist" / "train-images-idx3-ubyte.gz"
    p = tmp_path / "mnist" / src.name
    p.parent.mkdir()
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        read_idx(p)


def test_checksum_mismatch(tiny_raw_dir: Path) -> None:
    raw = RawCorpora(tiny_raw_dir, download=False)  # known real checksums: tiny files mismatch
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch: expected sha256 440f"
    ):
        raw.mnist("train")
    good = {
        f"mnist/{n}": sha(tiny_raw_dir / "mnist" / n)
        for n in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    }
    raw = RawCorpora(tiny_raw_dir, checksums=good, download=False)
    assert raw.mnist("train")[0].shape == (300, 784)
    assert raw.used_files["mnist/train-images-idx3-ubyte.gz"] == good["mnist/train-images-idx3-ubyte.gz"]
    with pytest.raises(DataError, match="checksum mismatch of the FSDD recordings"):
        RawCorpora(tiny_raw_dir, download=False).fsdd_files()


def test_resolve_raw_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_RAW_DIR, str(tmp_path / "env"))
    assert resolve_raw_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_raw_dir(None) == tmp_path / "env"
    monkeypatch.delenv(ENV_RAW_DIR)
    assert resolve_raw_dir(None) == Path("Dataset/raw")


def test_missing_file_offline_message(tmp_path: Path) -> None:
    raw = RawCorpora(tmp_path, download=False)
    with pytest.raises(DataError) as e:
        raw.arabic("train")
    msg = str(e.value)
    assert "Train_Arabic_Digit.txt" in msg and str(tmp_path / "arabic_digits") in msg and "cecd3ee9" in msg


def test_arabic_parse_and_metadata(tiny_raw_dir: Path) -> None:
    raw = RawCorpora(tiny_raw_dir, verify=False, download=False)
    tr, te = raw.arabic("train"), raw.arabic("test")
    assert len(tr) == 1000 and len(te) == 300
    assert all(f.dtype == np.float32 and f.shape[1] == 13 and 5 <= len(f) <= 30 for f in tr.feats)
    assert np.bincount(tr.digits).tolist() == [100] * 10
    assert sorted(set(tr.speakers.tolist())) == list(range(10))
    assert sorted(set(te.speakers.tolist())) == [66, 67, 68]
    assert te.utterances.min() == 6600 and len(set(tr.utterances) & set(te.utterances)) == 0
    d, s, u = arabic_metadata(6600, "train")
    assert d[659] == 0 and d[660] == 1 and s[0] == 0 and s[9] == 0 and s[10] == 1 and s[659] == 65
    d, s, u = arabic_metadata(2200, "test")
    assert d[219] == 0 and d[220] == 1 and s[0] == 66 and s[219] == 87 and u[0] == 6600


def test_arabic_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "Train_Arabic_Digit.txt"
    p.write_text("   \n" + " ".join(["1.0"] * 13) + "\n" + " ".join(["1.0"] * 12) + "\n")
    with pytest.raises(DataError, match=r"Train_Arabic_Digit\.txt: line 3 has 12 fields; expected 13"):
        parse_arabic(p)
    p.write_text("   \n" + " ".join(["1.0"] * 12 + ["abc"]) + "\n")
    with pytest.raises(DataError, match="line 2: non-numeric"):
        parse_arabic(p)


def test_fsdd_mfcc_shape_and_cache(
    tiny_raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = RawCorpora(tiny_raw_dir, verify=False, download=False, cache_dir=tmp_path / "cache")
    c = raw.fsdd()
    assert len(c) == 60 and c.speaker_names == ["george", "jackson", "yweweler"]
    assert all(f.ndim == 2 and f.shape[1] == 13 and f.dtype == np.float32 for f in c.feats)
    f0 = tiny_raw_dir / "fsdd" / "recordings" / "0_george_0.wav"
    import soundfile as sf

    n = sf.info(str(f0)).frames
    assert c.feats[0].shape[0] == n // 80 + 1  # 10 ms hop at 8 kHz, centred frames
    assert len(list((tmp_path / "cache").glob("fsdd_mfcc_*.npz"))) == 1
    import mmdigits.data.raw as S

    def no_compute(*a: object, **k: object) -> None:
        raise AssertionError("cache not used")

    monkeypatch.setattr(S, "wav_mfcc", no_compute)
    again = fsdd_mfcc_cached(raw.fsdd_files(), S.MfccSettings(), tmp_path / "cache")
    assert all(np.array_equal(a, b) for a, b in zip(c.feats, again))
    with pytest.raises(AssertionError, match="cache not used"):  # other settings -> other key
        fsdd_mfcc_cached(raw.fsdd_files(), S.MfccSettings(n_fft=512), tmp_path / "cache")


def test_not_a_wav(tmp_path: Path) -> None:
    p = tmp_path / "3_bob_0.wav"
    p.write_bytes(b"this is not audio at all")
    with pytest.raises(DataError, match=r"3_bob_0\.wav: not a WAV file.*RIFF/WAVE"):
        wav_mfcc(p)
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(DataError, match=r"3_bob_0\.wav: unreadable WAV"):
        wav_mfcc(p)


# ----------------------------------------------------------------------------- loopback downloads


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single-range support (bytes=N-)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data) and rng:
            self.send_error(416)
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        self.server.requests.append((self.path, rng))  # type: ignore[attr-defined]


@pytest.fixture
def server(tiny_raw_dir: Path, tmp_path: Path) -> Iterator[tuple[str, list]]:
    root = tmp_path / "www"
    shutil.copytree(tiny_raw_dir / "mnist", root / "mnist")
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/mnist/", httpd.requests  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_full_and_resume(server: tuple[str, list], tiny_raw_dir: Path, tmp_path: Path) -> None:
    base, requests = server
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    sums = {f"mnist/{n}": sha(tiny_raw_dir / "mnist" / n) for n in names}
    dest = tmp_path / "raw"
    # resume: a partial .part holding the first 1000 bytes
    src = (tiny_raw_dir / "mnist" / names[0]).read_bytes()
    (dest / "mnist").mkdir(parents=True)
    (dest / "mnist" / (names[0] + ".part")).write_bytes(src[:1000])
    raw = RawCorpora(dest, checksums=sums, download=True, urls={"mnist": base})
    x, y = raw.mnist("train")
    assert x.shape == (300, 784) and len(y) == 300
    assert (dest / "mnist" / names[0]).read_bytes() == src
    assert not list((dest / "mnist").glob("*.part"))
    assert ("/mnist/" + names[0], "bytes=1000-") in requests  # resumed with a Range request
    assert ("/mnist/" + names[1], None) in requests  # full download


def test_download_checksum_mismatch(server: tuple[str, list], tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "f.gz"
    with pytest.raises(DataError, match="checksum mismatch: expected sha256 0000"):
        download_file(base + "train-labels-idx1-ubyte.gz", dest, "0" * 64)
    assert not dest.exists() and not dest.with_name("f.gz.part").exists()
    with pytest.raises(DataError, match="could not download .*place the file manually at"):
        download_file(base + "nope.gz", dest, None)
