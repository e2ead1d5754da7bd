"""Pictures and recordings for single pairs are bounded before they are decoded: a decompression bomb or a
recording that lies about its length is refused with one line naming the file."""

from __future__ import annotations

import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdigits.data.media import MAX_RECORDING_SECONDS, load_digit_image, read_wav
from mmdigits.errors import DataError, MMDigitsError


def test_decompression_bomb_png_is_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 48 KB on disk, 400 megapixels decoded
    assert bomb.stat().st_size < 100_000
    with pytest.raises(MMDigitsError, match="bomb.png: .*(decompression bomb|at most)"):
        load_digit_image(bomb)
    big = tmp_path / "big.png"
    Image.new("L", (8000, 6000)).save(big)  # 48 megapixels: under PIL's own limit, over ours
    with pytest.raises(MMDigitsError, match=r"big\.png: 8000x6000 pixels; expected a picture of at most"):
        load_digit_image(big)


def _wav(path: Path, seconds: float, sr: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.zeros(int(seconds * sr), "<i2").tobytes())
    return path


def test_long_recordings_and_lying_headers_are_bounded(tmp_path):
    with pytest.raises(
        DataError, match=r"long\.wav: a recording of 600 s; expected a spoken digit of at most 30 s"
    ):
        read_wav(_wav(tmp_path / "long.wav", 600), 8000)
    liar = bytearray(_wav(tmp_path / "liar.wav", 1.0).read_bytes())
    liar[4:8] = struct.pack("<I", 0xFFFFFFF0)  # RIFF size: 4 GB
    liar[40:44] = struct.pack("<I", 0xFFFFFF00)  # data chunk: 4 GB
    (tmp_path / "liar.wav").write_bytes(bytes(liar))
    y = read_wav(tmp_path / "liar.wav", 8000)  # read what is there, never what the header claims
    assert len(y) <= MAX_RECORDING_SECONDS * 8000 and len(y) == 8000
    with pytest.raises(MMDigitsError, match="is a directory; expected a WAV file"):
        read_wav(tmp_path, 8000)


@pytest.mark.parametrize("missing", ["librosa", "soundfile"])
def test_recordings_without_the_audio_extra_say_what_to_install(missing, tmp_path, monkeypatch):
    """librosa and soundfile come with the audio extra: without them a recording is refused with one line
    that names the extra, not a traceback."""
    from mmdigits.data.media import wav_mfcc

    wav = _wav(tmp_path / "seven.wav", 0.5)
    monkeypatch.setitem(sys.modules, missing, None)  # what an absent package looks like to import
    with pytest.raises(MMDigitsError, match=r"pip install 'mmdigits\[audio\]'"):
        wav_mfcc(wav)
