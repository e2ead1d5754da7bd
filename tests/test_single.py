"""Single-pair prediction from a PNG and a wav, and the MNIST-style image conversion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdigits.data.build import build_dataset
from mmdigits.data.corpora import read_idx
from mmdigits.data.media import load_digit_image, save_png, to_mnist
from mmdigits.errors import DataError, MMDigitsError
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.predict import predict_pair, predict_single
from tests.hydra_utils import compose_cfg
from tests.trained_runs import seed_runs, trained_run

REPO = Path(__file__).resolve().parents[1]
REAL_WAV = Path(os.environ.get("MMDIGITS_RAW_DIR", "/nonexistent")) / "fsdd/recordings/3_jackson_0.wav"


@pytest.fixture(scope="module")
def fsdd_run(tmp_path_factory, tiny_raw_dir):
    data = build_dataset(
        tmp_path_factory.mktemp("fsdd") / "ds", tiny_raw_dir, verify=False, download=False,
        audio="fsdd", n_train=300, n_test=100, match_rate=0.3,
    )  # fmt: skip
    return trained_run(tmp_path_factory.getbasetemp(), "fsdd_match", data, "data=fsdd", f"data.dir={data}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_raw_dir):
    """An MNIST test image written as PNG and a spoken-digit wav (real FSDD when available)."""
    out = tmp_path_factory.mktemp("pair")
    mnist = Path(os.environ.get("MMDIGITS_RAW_DIR", "/nonexistent")) / "mnist/t10k-images-idx3-ubyte.gz"
    images = read_idx(mnist if mnist.is_file() else tiny_raw_dir / "mnist/t10k-images-idx3-ubyte.gz", 3)
    png = save_png(images[0], out / "digit.png")
    wav = REAL_WAV if REAL_WAV.is_file() else tiny_raw_dir / "fsdd/recordings/3_jackson_0.wav"
    return png, wav


def blob(h: int = 90, w: int = 60, light: bool = False) -> np.ndarray:
    """A tall filled ellipse off-centre on a 120x100 canvas (white on black, or black on white)."""
    yy, xx = np.mgrid[:120, :100]
    ink = ((yy - 30 - h / 2) / (h / 2)) ** 2 + ((xx - 10 - w / 2) / (w / 2)) ** 2 <= 1
    img = np.where(ink, 255, 0).astype(np.uint8)
    return 255 - img if light else img


def test_to_mnist_box_centring_and_auto_invert():
    dark = to_mnist(Image.fromarray(blob()))
    ys, xs = np.nonzero(dark > 25)
    assert dark.shape == (28, 28) and dark.dtype == np.uint8
    assert ys.max() - ys.min() + 1 == 20 and xs.max() - xs.min() + 1 < 20  # aspect kept
    cy = (dark.sum(1) @ np.arange(28)) / dark.sum()
    cx = (dark.sum(0) @ np.arange(28)) / dark.sum()
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert dark[0].max() == 0 and dark.max() == 255
    light = to_mnist(Image.fromarray(blob(light=True)).convert("RGB"))  # black on white, RGB
    assert np.abs(light.astype(int) - dark).max() <= 1


def test_bad_images_error_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(MMDigitsError, match="notes.png: not a readable image"):
        load_digit_image(text)
    empty = tmp_path / "empty.png"
    Image.new("L", (40, 30), 255).save(empty)
    with pytest.raises(MMDigitsError, match="empty.png: the image is empty"):
        load_digit_image(empty)
    with pytest.raises(MMDigitsError, match="missing.png: image file not found"):
        load_digit_image(tmp_path / "missing.png")


def test_checkpoint_stores_data_info(fsdd_run):
    info = torch.load(fsdd_run["ckpt"], weights_only=False)["hyper_parameters"]["data_info"]
    assert info["audio"] == "fsdd" and info["mfcc"]["sr"] == 8000 and info["mfcc"]["hop_length"] == 80


def cfg_overrides(run, pair) -> list[str]:
    return [f"ckpt_path={run['ckpt']}", f"image={pair[0]}", f"audio={pair[1]}"]


def test_predict_single_prints_match_probability_and_modality_digits(fsdd_run, pair, tmp_path, capsys):
    cfg = compose_cfg("predict", cfg_overrides(fsdd_run, pair), tmp_path)
    res = predict_single(cfg)
    out = capsys.readouterr().out
    assert 0 <= res["match_probability"] <= 1
    assert f"match probability: {res['match_probability']:.4f}" in out
    assert set(res["modalities"]) == {"image", "audio"}
    assert "image digit:" in out and "audio digit:" in out
    # test_time_shifts=true: the mean probability over the image's 1-pixel shifts, the heads unchanged
    shifted = predict_single(
        compose_cfg("predict", [*cfg_overrides(fsdd_run, pair), "test_time_shifts=true"], tmp_path)
    )
    assert shifted["match_probability"] != pytest.approx(res["match_probability"], abs=1e-7)
    assert shifted["modalities"] == res["modalities"]


def test_bad_wav_and_missing_modality(fsdd_run, pair, tmp_path):
    model = load_checkpoint_model(fsdd_run["ckpt"])
    fake = tmp_path / "voice.wav"
    fake.write_bytes(b"ID3 this is an mp3, honestly")
    with pytest.raises(DataError, match="voice.wav: not a WAV file"):
        predict_pair(model, pair[0], fake)
    with pytest.raises(MMDigitsError, match="needs image=... audio=..."):
        predict_pair(model, pair[0], None)


def test_arabic_checkpoint_refuses_raw_audio_cleanly(tmp_path_factory, tiny_dataset_dir, pair):
    ckpt = seed_runs(tmp_path_factory.getbasetemp(), tiny_dataset_dir)[0]["ckpt"]
    proc = subprocess.run(
        [sys.executable, "-m", "mmdigits.predict", f"ckpt_path={ckpt}", f"image={pair[0]}",
         f"audio={pair[1]}", f"hydra.run.dir={tmp_path_factory.mktemp('pred')}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot read raw audio" in proc.stderr and "'arabic'" in proc.stderr
    assert "Traceback" not in proc.stderr
