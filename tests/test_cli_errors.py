"""Bad input end to end: one clear line naming the file and the problem, exit status 2, no traceback
(``HYDRA_FULL_ERROR=1`` shows it), and the input files, run directory and data directory left as they were.

Most corruptions are checked in-process (``load_challenge_dir`` / ``clean_errors``); a handful go through
real ``python -m ...`` subprocesses.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdigits.data.challenge import load_challenge_dir
from mmdigits.errors import CheckpointError, DataError, MMDigitsError
from mmdigits.models.loading import check_resume_checkpoint, load_checkpoint_model
from mmdigits.train import train
from mmdigits.utils.cli import clean_errors
from tests.hydra_utils import compose_cfg
from tests.synthetic import write_challenge_files
from tests.test_reliability import QUIET, run_cli

Mutation = Callable[[Path], None]


# ----------------------------------------------------------------------------- helpers
def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative names)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def user_copy(src: Path, dst: Path) -> Path:
    """A built dataset as user-owned challenge files with labels (object arrays, no manifest)."""
    return write_challenge_files(src, dst, labels=True)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_clean_line(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def _load(d: Path, name: str) -> np.ndarray:
    return np.load(d / name, allow_pickle=True)


def _save(d: Path, name: str, arr: np.ndarray) -> None:
    np.save(d / name, arr, allow_pickle=arr.dtype == object)


def spoken_row(change: Callable[[np.ndarray], np.ndarray], row: int = 3) -> Mutation:
    def mutate(d: Path) -> None:
        arr = _load(d, "spoken_train.npy").copy()
        arr[row] = change(np.array(arr[row]))
        _save(d, "spoken_train.npy", arr)

    return mutate


def set_value(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(x: np.ndarray) -> np.ndarray:
        x[1, 2] = value
        return x

    return change


def truncate(name: str) -> Mutation:
    def mutate(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])

    return mutate


def pixels_out_of_range(d: Path) -> None:
    arr = _load(d, "written_train.npy").astype(np.int16)
    arr[5, 100] = 300
    _save(d, "written_train.npy", arr)


# id -> (mutation, file named in the message, problem named in the message)
CORRUPTIONS: dict[str, tuple[Mutation, str, str]] = {
    "missing_file": (lambda d: (d / "written_test.npy").unlink(), "written_test.npy", "missing file"),
    "truncated_npy": (truncate("written_train.npy"), "written_train.npy", "truncated or corrupt"),
    "row_not_2d": (spoken_row(lambda x: x[:, 0]), "spoken_train.npy", "row 3: 1-D array"),
    "nan_mfcc": (spoken_row(set_value(np.nan)), "spoken_train.npy", "row 3, frame 1: non-finite"),
    "inf_mfcc": (spoken_row(set_value(np.inf)), "spoken_train.npy", "row 3, frame 1: non-finite"),
    "zero_frames": (spoken_row(lambda x: x[:0]), "spoken_train.npy", "row 3: shape (0, 13) has no frames"),
    "12_columns": (spoken_row(lambda x: x[:, :12]), "spoken_train.npy", "expected 13 columns"),
    "783_pixels": (
        lambda d: _save(d, "written_train.npy", _load(d, "written_train.npy")[:, :783]),
        "written_train.npy",
        "(400, 783)",
    ),
    "pixels_out_of_range": (pixels_out_of_range, "written_train.npy", "row 5, column 100: pixel value 300"),
    "mismatched_rows": (
        lambda d: _save(d, "match_train.npy", _load(d, "match_train.npy")[:-1]),
        "match_train.npy",
        "399 rows; expected 400",
    ),
}


@pytest.fixture
def corrupt_dataset(request, tiny_dataset_dir, tmp_path) -> tuple[Path, str, str]:
    mutate, name, problem = CORRUPTIONS[request.param]
    d = user_copy(tiny_dataset_dir, tmp_path / "Dataset")
    mutate(d)
    return d, str(d / name), problem


@pytest.mark.parametrize("corrupt_dataset", list(CORRUPTIONS), indirect=True)
def test_corrupt_dataset_raises_one_line_naming_file_and_problem(corrupt_dataset, tmp_path, capsys):
    d, path, problem = corrupt_dataset
    before = digest(d)
    if Path(path).exists():  # the loader itself (a missing file is caught earlier, by prepare_data)
        with pytest.raises(DataError) as info:
            load_challenge_dir(d)
        assert path in str(info.value) and problem in str(info.value)
    # through the training entry point's error handling: exit 2, one line
    cfg = compose_cfg("train", [f"data.dir={d}", "logger=csv", *QUIET], tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        clean_errors(train)(cfg)
    assert exit_info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and path in lines[0] and problem in lines[0], lines
    assert (tmp_path / "run" / "error.txt").read_text().startswith(lines[0])
    assert digest(d) == before  # nothing rebuilt or rewritten in the data dir


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, tiny_dataset_dir) -> Path:
    run = tmp_path_factory.mktemp("trained")
    overrides = [
        f"data.dir={tiny_dataset_dir}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "test=false",
        "logger=csv",
        *QUIET,
    ]
    train(compose_cfg("train", overrides, run))
    return run / "checkpoints" / "last.ckpt"


def other_config_ckpt(src: Path, dst: Path) -> Path:
    """Same weights, but hyperparameters of another audio encoder: weights and config disagree."""
    ckpt = torch.load(src, weights_only=False)
    ckpt["hyper_parameters"]["audio_encoder"] = {
        "_target_": "mmdigits.models.audio.LSTMEncoder",
        "hidden": 64,
    }
    torch.save(ckpt, dst)
    return dst


CKPT_CORRUPTIONS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "random_bytes": (
        lambda src, dst: dst.write_bytes(np.random.default_rng(0).bytes(5000)) and dst,
        "not a readable checkpoint",
    ),
    "truncated": (
        lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]) and dst,
        "not a readable checkpoint",
    ),
    "other_model_config": (other_config_ckpt, "weights do not fit"),
    "missing": (lambda src, dst: dst, "checkpoint not found"),
}


@pytest.mark.parametrize("kind", list(CKPT_CORRUPTIONS))
def test_bad_checkpoint_raises_checkpoint_error_naming_it(kind, trained_ckpt, tmp_path):
    make, problem = CKPT_CORRUPTIONS[kind]
    bad = make(trained_ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_model(bad)
    assert str(bad) in str(info.value) and problem in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_resume_from_checkpoint_of_another_model_config_is_refused(trained_ckpt):
    from hydra.utils import instantiate

    lstm = instantiate(compose_cfg("train", ["model=lstm_cnn"], None).model)
    with pytest.raises(CheckpointError, match="weights do not fit this run's model config"):
        check_resume_checkpoint(trained_ckpt, lstm)


@pytest.mark.slow
def test_evaluate_corrupt_checkpoint_cli_leaves_run_dir_intact(trained_ckpt, tiny_dataset_dir, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"test/acc": 0.75}\n')
    bad = run / "checkpoints" / "best.ckpt"
    bad.write_bytes(trained_ckpt.read_bytes()[:1000])
    before = digest(run)
    out = tmp_path / "eval"
    proc = run_cli(
        "mmdigits.evaluate", f"ckpt_path={bad}", f"data.dir={tiny_dataset_dir}", f"hydra.run.dir={out}"
    )
    assert_one_clean_line(proc, str(bad), "not a readable checkpoint")
    assert digest(run) == before  # the run that holds the checkpoint is untouched
    assert (out / "error.txt").read_text().startswith(f"error: {bad}: not a readable checkpoint")

    full = run_cli(
        "mmdigits.evaluate",
        f"ckpt_path={bad}",
        f"data.dir={tiny_dataset_dir}",
        f"hydra.run.dir={tmp_path / 'eval_full'}",
        HYDRA_FULL_ERROR="1",
    )
    assert full.returncode != 0 and "Traceback" in full.stderr and "CheckpointError" in full.stderr


@pytest.mark.slow
def test_predict_other_config_checkpoint_cli_keeps_previous_result(trained_ckpt, tiny_dataset_dir, tmp_path):
    bad = other_config_ckpt(trained_ckpt, tmp_path / "other.ckpt")
    out = tmp_path / "result.npy"
    np.save(out, np.ones(200, bool))
    before = digest(tmp_path)
    proc = run_cli(
        "mmdigits.predict",
        f"ckpt_path={bad}",
        f"data.dir={tiny_dataset_dir}",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_clean_line(proc, str(bad), "weights do not fit")
    assert {k: v for k, v in digest(tmp_path).items() if not k.startswith("run/")} == before


@pytest.mark.slow
def test_train_cli_bad_data_and_bad_resume_checkpoint(tiny_dataset_dir, tmp_path):
    d = user_copy(tiny_dataset_dir, tmp_path / "Dataset")
    spoken_row(set_value(np.nan))(d)
    before = digest(d)
    proc = run_cli("mmdigits.train", f"data.dir={d}", f"hydra.run.dir={tmp_path / 'run1'}", *QUIET)
    assert_one_clean_line(proc, str(d / "spoken_train.npy"), "non-finite")
    assert digest(d) == before
    assert (tmp_path / "run1" / "error.txt").read_text().startswith(error_lines(proc.stderr)[0])

    run = tmp_path / "run2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    before = digest(run / "checkpoints")
    args = [f"data.dir={tiny_dataset_dir}", f"hydra.run.dir={run}", "ckpt_path=last", *QUIET]
    proc = run_cli("mmdigits.train", *args)
    assert_one_clean_line(proc, str(run / "checkpoints" / "last.ckpt"), "not a readable checkpoint")
    assert digest(run / "checkpoints") == before


# ----------------------------------------------------------------------------- raw inputs
@pytest.mark.slow
def test_build_cli_broken_wav_names_it(tiny_raw_dir, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw_dir, raw)
    wav = sorted((raw / "fsdd" / "recordings").glob("*.wav"))[4]
    wav.write_bytes(b"this is not a wav file at all")
    before = digest(raw)
    out = tmp_path / "out"
    args = ["--raw-dir", str(raw), "--out", str(out), "--audio", "fsdd", "--n-train", "40", "--n-test", "20"]
    proc = run_cli("mmdigits.data.build", *args, "--no-verify", "--no-download")
    assert_one_clean_line(proc, str(wav), "not a WAV file")
    assert digest(raw) == before
    assert not out.exists() or not any(out.glob("*.npy"))


def test_bad_png_for_single_pair_prediction(trained_ckpt, tmp_path, capsys):
    from PIL import Image

    from mmdigits.data.media import load_digit_image
    from mmdigits.predict import predict_single

    not_png = tmp_path / "digit.png"
    not_png.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    cfg = compose_cfg("predict", [f"ckpt_path={trained_ckpt}", f"image={not_png}", "audio=x.wav"], tmp_path)
    with pytest.raises(SystemExit) as info:
        clean_errors(predict_single)(cfg)
    assert info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(not_png) in lines[0] and "not a readable image" in lines[0]

    # a PNG of the wrong size is either rescaled to 28x28 or refused with a message naming it
    wrong = tmp_path / "big.png"
    pixels = np.zeros((60, 40), np.uint8)
    pixels[10:50, 15:25] = 255
    Image.fromarray(pixels).save(wrong)
    try:
        assert load_digit_image(wrong).reshape(-1).shape == (784,)
    except MMDigitsError as err:
        assert str(wrong) in str(err)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(blank)
    with pytest.raises(MMDigitsError, match=str(blank)):
        load_digit_image(blank)
