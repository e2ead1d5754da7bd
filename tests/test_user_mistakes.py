"""User mistakes end in one line naming the file and the problem (exit 2), never in a traceback or a silent
wrong answer: empty splits, one-class labels, too little data for validation, files where directories belong
(and the reverse), normalised or boolean images, a full disk, a build of another corpus."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdigits.data.build import build_dataset, read_manifest
from mmdigits.data.challenge import load_challenge_dir
from mmdigits.errors import DataError
from mmdigits.predict import predict
from mmdigits.train import train
from mmdigits.utils.cli import clean_errors
from tests.hydra_utils import compose_cfg
from tests.synthetic import write_challenge_files
from tests.test_cli_errors import digest, error_lines
from tests.test_reliability import QUIET

FAST = ["trainer.max_epochs=1", "data.batch_size=32", "logger=csv", *QUIET]


def one_line(fn, cfg, capsys, *needles: str) -> str:
    """Run a command function under the CLI's error handling: exit 2 with one line holding ``needles``."""
    with pytest.raises(SystemExit) as info:
        clean_errors(fn)(cfg)
    lines = error_lines(capsys.readouterr().err)
    assert info.value.code == 2 and len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def challenge(tiny_dataset_dir, tmp_path) -> Path:
    return write_challenge_files(tiny_dataset_dir, tmp_path / "Dataset")


def _keep_rows(d: Path, split: str, rows: np.ndarray) -> None:
    for name in ("written", "spoken", "match"):
        p = d / f"{name}_{split}.npy"
        if p.exists():
            np.save(p, np.load(p, allow_pickle=True)[rows], allow_pickle=name == "spoken")


# ----------------------------------------------------------------------------- data
def test_empty_train_split(challenge, tmp_path, capsys):
    _keep_rows(challenge, "train", np.zeros(0, np.int64))
    cfg = compose_cfg("train", [f"data.dir={challenge}", *FAST], tmp_path / "run")
    one_line(train, cfg, capsys, str(challenge / "written_train.npy"), "no rows")


def test_empty_test_split_at_predict(challenge, tiny_dataset_dir, tmp_path, capsys):
    cfg = compose_cfg("train", [f"data.dir={challenge}", *FAST], tmp_path / "run")
    ckpt = train(cfg)["best_model_path"]
    _keep_rows(challenge, "test", np.zeros(0, np.int64))
    out = tmp_path / "result.npy"
    cfg = compose_cfg(
        "predict", [f"ckpt_path={ckpt}", f"data.dir={challenge}", f"output={out}"], tmp_path / "p"
    )
    one_line(predict, cfg, capsys, str(challenge / "written_test.npy"), "no rows")
    assert not out.exists()


@pytest.mark.parametrize("sampler", ["none", "weighted", "undersample"])
def test_one_class_match_labels(challenge, tmp_path, capsys, sampler):
    np.save(challenge / "match_train.npy", np.zeros(400, bool))
    cfg = compose_cfg("train", [f"data.dir={challenge}", f"data.sampler={sampler}", *FAST], tmp_path / "run")
    one_line(train, cfg, capsys, str(challenge / "match_train.npy"), "not a match", "needs both")


def test_a_few_rows_leave_no_positive_to_train_on(challenge, tmp_path, capsys):
    rows = np.flatnonzero(~np.load(challenge / "match_train.npy"))[:6]
    _keep_rows(challenge, "train", rows)
    cfg = compose_cfg("train", [f"data.dir={challenge}", "data.sampler=weighted", *FAST], tmp_path / "run")
    one_line(train, cfg, capsys, "match_train.npy", "needs both")


def test_too_little_data_for_a_validation_split(challenge, tmp_path, capsys):
    spoken = np.load(challenge / "spoken_train.npy", allow_pickle=True)
    spoken[:] = [spoken[0]] * len(spoken)  # one utterance: nothing to hold out without sharing it
    np.save(challenge / "spoken_train.npy", spoken, allow_pickle=True)
    cfg = compose_cfg("train", [f"data.dir={challenge}", *FAST], tmp_path / "run")
    one_line(train, cfg, capsys, "spoken_train.npy", "too few to carve a validation split")
    cfg = compose_cfg("train", [f"data.dir={challenge}", "data.val_fraction=0", *FAST], tmp_path / "run2")
    one_line(train, cfg, capsys, "data.val_fraction=0", "callbacks watch val/loss")  # the default's rule


def test_data_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "Dataset"
    f.write_text("not a directory")
    cfg = compose_cfg("train", [f"data.dir={f}", *FAST], tmp_path / "run")
    one_line(train, cfg, capsys, str(f), "is a file")


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_text("written by a text editor"), "not a .npy file"),
        (lambda p: p.unlink() or p.mkdir(), "is a directory"),
        (lambda p: np.save(p, np.ones((400, 784), bool)), "boolean pixels"),
        (lambda p: np.save(p, np.load(p) / 255.0), "expected whole numbers 0..255"),
        (lambda p: np.save(p, (np.load(p) > 127).astype(np.float32)), "every pixel is 0 or 1"),
    ],
    ids=["text", "directory", "bool", "float01", "binarised"],
)
def test_misleading_written_files_get_the_right_message(challenge, make, problem):
    make(challenge / "written_train.npy")
    with pytest.raises(DataError, match=problem) as info:
        load_challenge_dir(challenge)
    assert str(challenge / "written_train.npy") in str(info.value)


def test_full_disk_names_the_file_being_written(challenge, tmp_path, capsys, monkeypatch):
    import mmdigits.utils.io as io

    real = io.os.replace

    def full(src, dst):
        if str(dst).endswith(".ckpt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", full)
    cfg = compose_cfg("train", [f"data.dir={challenge}", *FAST], tmp_path / "run")
    line = one_line(train, cfg, capsys, "No space left on device", ".ckpt: could not be written")
    assert str(tmp_path / "run" / "checkpoints") in line


def test_predict_output_or_audio_that_is_a_directory(tiny_dataset_dir, tmp_path, capsys):
    cfg = compose_cfg("train", [f"data.dir={tiny_dataset_dir}", *FAST], tmp_path / "run")
    ckpt = train(cfg)["best_model_path"]
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    cfg = compose_cfg(
        "predict", [f"ckpt_path={ckpt}", f"data.dir={tiny_dataset_dir}", f"output={out_dir}"], tmp_path
    )
    one_line(predict, cfg, capsys, str(out_dir), "is a directory")
    from mmdigits.predict import predict_single

    cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", f"audio={out_dir}", f"image={out_dir}"], tmp_path)
    one_line(predict_single, cfg, capsys, str(out_dir), "is a directory")


# ----------------------------------------------------------------------------- builds of other corpora
@pytest.fixture(scope="module")
def fsdd_build(tmp_path_factory, tiny_raw_dir) -> Path:
    return build_dataset(
        tmp_path_factory.mktemp("fsdd") / "ds", tiny_raw_dir, verify=False, download=False, audio="fsdd",
        n_train=300, n_test=100, match_rate=0.3,
    )  # fmt: skip


def test_fsdd_build_is_used_as_what_it_is(fsdd_build, tiny_dataset_dir, tmp_path, capsys):
    """data.dir holding an FSDD build, without data=fsdd: its manifest decides; nothing is rebuilt."""
    before = digest(fsdd_build)
    cfg = compose_cfg("train", [f"data.dir={fsdd_build}", *FAST], tmp_path / "run")
    ckpt = train(cfg)["best_model_path"]
    assert digest(fsdd_build) == before and read_manifest(fsdd_build)["settings"]["audio"] == "fsdd"
    out = tmp_path / "result.npy"
    predict(
        compose_cfg(
            "predict", [f"ckpt_path={ckpt}", f"data.dir={fsdd_build}", f"output={out}"], tmp_path / "p"
        )
    )
    assert len(np.load(out)) == 100 and digest(fsdd_build) == before
    # a real conflict names both sides: an FSDD model on an Arabic build, or data=fsdd on an Arabic build
    cfg = compose_cfg(
        "predict", [f"ckpt_path={ckpt}", f"data.dir={tiny_dataset_dir}", f"output={out}"], tmp_path / "q"
    )
    one_line(predict, cfg, capsys, "trained on 'fsdd' audio", f"{tiny_dataset_dir} holds a 'arabic' build")
    arabic_before = digest(tiny_dataset_dir)
    cfg = compose_cfg("train", [f"data.dir={tiny_dataset_dir}", "data=fsdd", *FAST], tmp_path / "run2")
    cfg.data.dir = str(tiny_dataset_dir)
    one_line(train, cfg, capsys, "holds a complete 'arabic' build", "data.audio='fsdd'")
    assert digest(tiny_dataset_dir) == arabic_before


# ----------------------------------------------------------------------------- memory
MEASURE = """
import resource, sys
import numpy as np
from mmdigits.data.datamodule import MMDigitsDataModule
dm = MMDigitsDataModule(dir=sys.argv[1], batch_size=64)
dm.setup("fit")
for batch in dm.train_dataloader():
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _challenge_dir(d: Path, rows: int, long_row: int | None) -> Path:
    rng = np.random.default_rng(0)
    d.mkdir()
    for split, n in (("train", rows), ("test", 100)):
        spoken = np.empty(n, dtype=object)
        for i in range(n):
            spoken[i] = rng.normal(size=(int(rng.integers(20, 60)), 13)).astype(np.float32)
        if long_row is not None and split == "train":
            spoken[7] = rng.normal(size=(long_row, 13)).astype(np.float32)
        np.save(d / f"spoken_{split}.npy", spoken, allow_pickle=True)
        np.save(d / f"written_{split}.npy", rng.integers(0, 256, (n, 784), dtype=np.uint8))
    np.save(d / "match_train.npy", rng.random(rows) < 0.2)
    return d


@pytest.mark.slow
def test_memory_grows_with_frames_not_with_the_longest_row(tmp_path):
    """One row of 1,999 frames among 4,000 rows of 20-60 frames costs about its own frames, not a padded
    copy of every utterance (which cost 4000 x 1999 x 13 floats, twice, before)."""

    def peak_kb(d: Path) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", MEASURE, str(d)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    short = peak_kb(_challenge_dir(tmp_path / "short", 4000, None))
    long = peak_kb(_challenge_dir(tmp_path / "long", 4000, 1999))
    assert long - short < 150_000, (short, long)  # kB; the padded copies alone were > 600 MB
