"""Reading a file never runs code from it: crafted .npy files, checkpoints and media are refused, through the
real commands, with one line naming the file (exit status 2), and their payload never runs."""

from __future__ import annotations

import io
import os
import pickle
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdigits.data.challenge import load_challenge_dir
from mmdigits.data.media import MAX_RECORDING_SECONDS, load_digit_image, read_wav
from mmdigits.data.npy import load_npy
from mmdigits.errors import DataError, MMDigitsError
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.train import train
from tests.hydra_utils import compose_cfg
from tests.synthetic import write_challenge_files
from tests.test_reliability import QUIET, run_cli


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def assert_refused(proc, path: Path, marker: Path, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not marker.exists(), "the payload ran"


def object_array(rows: list) -> np.ndarray:
    arr = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        arr[i] = r
    return arr


# ----------------------------------------------------------------------------- challenge files
def _top_level(rows: np.ndarray, marker: Path) -> bytes:
    """A .npy header promising an object array, followed by a pickle of something else entirely."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (len(rows),)})
    return buf.getvalue() + pickle.dumps(Payload(marker), protocol=3)


def _in_a_row(rows: np.ndarray, marker: Path) -> bytes:
    rows = rows.copy()
    rows[3] = Payload(marker)
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=True)
    return buf.getvalue()


def _nested_in_a_row(rows: np.ndarray, marker: Path) -> bytes:
    """Row 3 looks like a (1, 13) array, but of objects, one of which is the payload."""
    rows = rows.copy()
    inner = np.empty((1, 13), dtype=object)
    inner[0, :] = 0.5
    inner[0, 7] = Payload(marker)
    rows[3] = inner
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("craft", [_top_level, _in_a_row, _nested_in_a_row])
def test_crafted_spoken_npy_is_refused_before_its_payload_runs(craft, tiny_dataset_dir, tmp_path):
    d = write_challenge_files(tiny_dataset_dir, tmp_path / "Dataset")
    marker = tmp_path / "PWNED"
    bad = d / "spoken_train.npy"
    bad.write_bytes(craft(np.load(bad, allow_pickle=True), marker))
    proc = run_cli(
        "mmdigits.train", f"data.dir={d}", "debug=fast_dev_run", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert_refused(proc, bad, marker)
    assert "refuses to load" in proc.stderr or "corrupt" in proc.stderr
    if craft is not _top_level:  # names what it asked for
        assert "posix.system" in proc.stderr and "not part of a numpy array" in proc.stderr


def test_object_array_where_numbers_belong_is_refused_unread(tiny_dataset_dir, tmp_path):
    d = write_challenge_files(tiny_dataset_dir, tmp_path / "Dataset")
    marker = tmp_path / "PWNED"
    np.save(d / "match_train.npy", object_array([Payload(marker)] * 400), allow_pickle=True)
    with pytest.raises(DataError, match=r"match_train\.npy: holds an object array"):
        load_challenge_dir(d)
    assert not marker.exists()


def test_legitimate_object_arrays_still_load(tmp_path):
    """numpy 1.x files name numpy.core.multiarray, numpy 2.x numpy._core.multiarray: both load."""
    x = np.arange(26, dtype=np.float32).reshape(2, 13)
    arr = object_array([x, x, x[:1]])
    np.save(tmp_path / "a.npy", arr, allow_pickle=True)
    # the same array as numpy 1.x pickled it (protocol 2 names globals as text lines)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (3,)})
    old = pickle.dumps(arr, protocol=2)
    assert b"cnumpy._core.multiarray\n" in old
    old = old.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    (tmp_path / "b.npy").write_bytes(header.getvalue() + old)
    for name in ("a.npy", "b.npy"):
        arr = load_npy(tmp_path / name, objects=True)
        assert arr.dtype == object and np.array_equal(arr[0], x) and arr[0] is arr[1]


def test_absurdly_long_row_is_refused_with_its_row(tiny_dataset_dir, tmp_path):
    d = write_challenge_files(tiny_dataset_dir, tmp_path / "Dataset")
    rows = np.load(d / "spoken_train.npy", allow_pickle=True)
    rows[5] = np.zeros((1_000_000, 13), np.float32)
    np.save(d / "spoken_train.npy", rows, allow_pickle=True)
    with pytest.raises(DataError, match=r"spoken_train\.npy: row 5: 1000000 frames; expected at most 2000"):
        load_challenge_dir(d)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_dataset_dir) -> Path:
    run = tmp_path_factory.mktemp("trained")
    overrides = [f"data.dir={tiny_dataset_dir}", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                 "+trainer.limit_val_batches=1", "test=false", "logger=csv", *QUIET]  # fmt: skip
    train(compose_cfg("train", overrides, run))
    return run / "checkpoints" / "last.ckpt"


def _crafted(checkpoint: Path, out: Path, change) -> Path:
    ckpt = torch.load(checkpoint, weights_only=True)
    change(ckpt)
    torch.save(ckpt, out)
    return out


def _in_hparams(marker):
    return lambda ckpt: ckpt["hyper_parameters"].__setitem__("aux_digit_weight", Payload(marker))


def _in_callback_state(marker):
    return lambda ckpt: ckpt["callbacks"].__setitem__("EarlyStopping{}", {"wait_count": Payload(marker)})


@pytest.mark.parametrize("where", [_in_hparams, _in_callback_state], ids=["hparams", "callback_state"])
@pytest.mark.parametrize("command", ["mmdigits.evaluate", "mmdigits.predict"])
def test_crafted_checkpoint_is_refused_before_its_payload_runs(
    where, command, checkpoint, tiny_dataset_dir, tmp_path
):
    marker = tmp_path / "PWNED"
    bad = _crafted(checkpoint, tmp_path / "epoch_012.ckpt", where(marker))
    args = [f"ckpt_path={bad}", f"data.dir={tiny_dataset_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    assert_refused(run_cli(command, *args), bad, marker, "refuses to load", "posix.system")


def test_crafted_checkpoint_cannot_resume_a_run(checkpoint, tiny_dataset_dir, tmp_path):
    marker = tmp_path / "PWNED"
    bad = _crafted(checkpoint, tmp_path / "last.ckpt", _in_callback_state(marker))
    args = [f"data.dir={tiny_dataset_dir}", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'run'}", *QUIET]
    assert_refused(run_cli("mmdigits.train", *args), bad, marker, "refuses to load")


@pytest.mark.parametrize(
    "target",
    ["builtins.open", "numpy.load", "torch.load", "os.system", "mmdigits.models.loading.read_checkpoint"],
)
def test_checkpoint_config_may_only_name_the_zoo(target, checkpoint, tmp_path):
    """A plain-data checkpoint whose config names another callable is refused before anything is called."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")

    def change(ckpt):
        ckpt["hyper_parameters"]["audio_encoder"] = {"_target_": target, "_args_": [str(victim), "w"]}

    bad = _crafted(checkpoint, tmp_path / "bad.ckpt", change)
    with pytest.raises(
        MMDigitsError, match=rf"bad\.ckpt: refuses to load: its model config asks to build {target}"
    ):
        load_checkpoint_model(bad)
    hidden = {"_target_": target, "_args_": [str(victim), "w"]}
    nested = _crafted(
        checkpoint,
        tmp_path / "nested.ckpt",
        lambda c: c["hyper_parameters"]["fusion"].__setitem__("hidden", hidden),
    )
    with pytest.raises(MMDigitsError, match="refuses to load"):
        load_checkpoint_model(nested)
    assert victim.read_text() == "keep me"


def test_legacy_checkpoint_needs_explicit_trust(checkpoint, tiny_dataset_dir, tmp_path):
    """A checkpoint of an older mmdigits (OmegaConf hparams, old class names) is refused by default, and
    loads, with the same predictions, under +trust_checkpoint=true."""
    from omegaconf import OmegaConf

    def legacy(ckpt):
        hp = ckpt["hyper_parameters"]
        hp["image_encoder"] = {**hp["image_encoder"], "_target_": "mmdigits.models.image.LeNet"}
        ckpt["hyper_parameters"] = OmegaConf.create(hp)

    old = _crafted(checkpoint, tmp_path / "old.ckpt", legacy)
    proc = run_cli(
        "mmdigits.evaluate",
        f"ckpt_path={old}",
        f"data.dir={tiny_dataset_dir}",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert (
        proc.returncode == 2
        and "omegaconf.dictconfig.DictConfig" in proc.stderr
        and "+trust_checkpoint=true" in proc.stderr
    )
    model, now = load_checkpoint_model(old, trust=True), load_checkpoint_model(checkpoint)
    batch = {
        "image": torch.rand(4, 1, 28, 28) * 255,
        "audio": torch.randn(4, 20, 13),
        "lengths": torch.tensor([20, 5, 9, 1]),
    }
    with torch.no_grad():
        torch.testing.assert_close(model(batch), now(batch))


# ----------------------------------------------------------------------------- media for single-pair predict
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
