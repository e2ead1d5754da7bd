"""Reading a file never runs code from it: crafted .npy files, checkpoints and media are refused, through the
real commands, with one line naming the file (exit status 2), and their payload never runs."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdigits.data.challenge import load_challenge_dir
from mmdigits.data.npy import load_npy
from mmdigits.errors import CheckpointError, DataError, MMDigitsError
from mmdigits.models.loading import load_checkpoint_model
from mmdigits.train import train
from tests import crafted
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
    assert not marker.exists(), "the payload ran"
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


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


class Python2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 did (BINSTRING), which Python 3 reads back as latin-1 text."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write(
            (pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))
            + obj
        )
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}


def test_legitimate_object_arrays_still_load(tmp_path):
    """The challenge's own format (float64 rows), float32, Fortran order and big-endian rows; numpy 2.x
    (numpy._core) and numpy 1.x (numpy.core) names; protocol 2 from Python 3 and Python 2's byte strings."""
    x = np.arange(26, dtype=np.float32).reshape(2, 13)
    rows = [
        np.arange(39, dtype=np.float64).reshape(3, 13),
        np.asfortranarray(np.ones((4, 13))),
        x.astype(">f8"),
    ]
    arr = object_array([x, x, x[:1], *rows])
    np.save(tmp_path / "a.npy", arr, allow_pickle=True)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (6,)})
    old = pickle.dumps(arr, protocol=2)  # numpy 2 names numpy._core, numpy 1 numpy.core
    assert b"cnumpy._core.multiarray\n" in old or b"cnumpy.core.multiarray\n" in old
    old = old.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    (tmp_path / "b.npy").write_bytes(header.getvalue() + old)
    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump(arr)
    assert b"_codecs" not in buf.getvalue() and pickle.SHORT_BINSTRING in buf.getvalue()
    (tmp_path / "c.npy").write_bytes(header.getvalue() + buf.getvalue())
    for name in ("a.npy", "b.npy", "c.npy"):
        got = load_npy(tmp_path / name, objects=True)
        assert got.dtype == object and got[0] is got[1], name
        for a, b in zip(got, arr, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        assert got[4].flags.f_contiguous and got[5].dtype.byteorder == ">"


def test_absurdly_long_row_is_refused_with_its_row(tiny_dataset_dir, tmp_path):
    d = write_challenge_files(tiny_dataset_dir, tmp_path / "Dataset")
    rows = np.load(d / "spoken_train.npy", allow_pickle=True)
    rows[5] = np.zeros((1_000_000, 13), np.float32)
    np.save(d / "spoken_train.npy", rows, allow_pickle=True)
    with pytest.raises(DataError, match=r"spoken_train\.npy: row 5: 1000000 frames; expected at most 2000"):
        load_challenge_dir(d)


def test_dtype_state_through_allowed_names_is_refused_not_a_crash(tiny_dataset_dir, tmp_path):
    """Only numpy's own names (dtype, _reconstruct, ndarray), but a dtype state declaring an object field:
    fed to numpy's __setstate__, the file's bytes become object pointers (exit 139). It is refused, with its
    exit 2: the pickle is read as data, never unpickled."""
    d = write_challenge_files(tiny_dataset_dir, tmp_path / "Dataset")
    bad = d / "spoken_train.npy"
    rows = list(np.load(bad, allow_pickle=True))  # our own synthetic file
    rows[3] = crafted.object_field_row()
    bad.write_bytes(crafted.npy_bytes(crafted.object_rows(rows), len(rows)))
    proc = run_cli(
        "mmdigits.train", f"data.dir={d}", "debug=fast_dev_run", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert_refused(proc, bad, tmp_path / "PWNED", "refuses to load")


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_dataset_dir) -> Path:
    run = tmp_path_factory.mktemp("trained")
    overrides = ["~experiment", f"data.dir={tiny_dataset_dir}", "trainer.max_epochs=1",
                 "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "test=false", "logger=csv",
                 *QUIET]  # fmt: skip
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
        MMDigitsError,
        match=rf"bad\.ckpt: refuses to load: its hyperparameter audio_encoder\._target_ asks to build "
        rf"'{target}'",
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


def _interpolated(where: str, marker: Path):
    def change(ckpt):
        hp = ckpt["hyper_parameters"]
        hp[where] = {**(hp.get(where) or {}), "hidden": crafted.interpolation(marker)}

    return change


@pytest.mark.parametrize(
    "command, args",
    [("mmdigits.evaluate", []), ("mmdigits.predict", []), ("mmdigits.embed", []), ("mmdigits.train", QUIET)],
)
def test_interpolation_in_a_checkpoint_string_never_reaches_omegaconf(
    command, args, checkpoint, tiny_dataset_dir, tmp_path
):
    """A checkpoint of plain strings only: one of them is an OmegaConf resolver that makes a _target_ the
    allowlist never saw. Every reader refuses it, naming the key, before anything is built."""
    marker = tmp_path / "PWNED"
    bad = _crafted(checkpoint, tmp_path / "last.ckpt", _interpolated("fusion", marker))
    run = [f"ckpt_path={bad}", f"data.dir={tiny_dataset_dir}", f"hydra.run.dir={tmp_path / 'run'}", *args]
    assert_refused(run_cli(command, *run), bad, marker, "fusion.hidden", "interpolation")


@pytest.mark.parametrize(
    "change, key",
    [
        (
            lambda hp, m: hp["audio_encoder"].__setitem__("hidden", crafted.interpolation(m)),
            "audio_encoder.hidden",
        ),
        (lambda hp, m: hp.__setitem__("data_info", {"audio": crafted.interpolation(m)}), "data_info.audio"),
        (lambda hp, m: hp["optimizer"].__setitem__("lr", "${oc.env:HOME}"), "optimizer.lr"),
        (lambda hp, m: hp["fusion"].__setitem__("no_such_argument", 1), "fusion.no_such_argument"),
        (lambda hp, m: hp["audio_encoder"].__setitem__("_args_", [str(m)]), "audio_encoder._args_"),
        (lambda hp, m: hp.__setitem__("no_such_hparam", 0.5), "no_such_hparam"),
        (lambda hp, m: hp.__setitem__("aux_digit_weight", torch.tensor(1.0)), "aux_digit_weight"),
        (lambda hp, m: hp.__setitem__("image_affine", {1: 2}), "image_affine"),
    ],
    ids=["encoder", "data_info", "resolver", "unknown_key", "args", "unknown_hparam", "tensor", "int_key"],
)
def test_checkpoint_hyperparameters_are_checked_as_data(change, key, checkpoint, tmp_path, monkeypatch):
    """Strings are literals, every key is a parameter of its target, every value is plain data; otherwise
    one error naming the file and the key, and nothing from the config is built or imported."""
    marker = tmp_path / "PWNED"
    bad = _crafted(checkpoint, tmp_path / "bad.ckpt", lambda c: change(c["hyper_parameters"], marker))
    built = []
    monkeypatch.setattr("mmdigits.models.module.instantiate", lambda *a, **k: built.append(a))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model(bad)
    assert str(bad) in str(err.value) and key in str(err.value) and "\n" not in str(err.value)
    assert built == [] and not marker.exists()


CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(
    "group", ["audio_encoder", "image_encoder", "fusion", "model", "module", "augment", "experiment"]
)
def test_every_config_of_conf_passes_the_checkpoint_schema(group):
    """What train stores, the loader accepts: each option of the group, as the model's hyperparameters
    (resolved, plain), passes the schema; so do the optimisers and schedulers that conf/ names."""
    from mmdigits.models.module import plain
    from mmdigits.models.safe_hparams import OPTIMISERS, check_hparams

    for option in sorted((CONF / group).glob("*.yaml")):
        cfg = compose_cfg("train", [f"{group}={option.stem}", "data.dir=unused"])
        hparams = {k: plain(v) for k, v in cfg.model.items() if k not in ("_target_", "_recursive_")}
        check_hparams(hparams, option)
    lines = [line for f in CONF.rglob("*.yaml") for line in f.read_text().splitlines()]
    named = {line.split("_target_:")[1].strip() for line in lines if "_target_: torch.optim" in line}
    assert named and named <= set(OPTIMISERS)


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


# ----------------------------------------------------------------------------- run directories
@pytest.mark.parametrize(
    "data",
    [
        lambda m: {"_target_": "numpy.savez", "_args_": [str(m)]},  # takes **kwargs: writes m
        lambda m: {
            "_target_": "mmdigits.data.datamodule.MMDigitsDataModule",
            "dir": crafted.interpolation(m),
        },
    ],
    ids=["target", "interpolation"],
)
def test_report_reads_a_shared_run_directory_as_data(data, tiny_dataset_dir, tmp_path_factory, tmp_path):
    """A run directory from someone else, whose .hydra/config.yaml names a callable: the report is written
    from metrics.json, the event files and the config as plain data; nothing in it is built."""
    import yaml

    from tests.trained_runs import seed_runs

    run = tmp_path / "shared_run"
    shutil.copytree(seed_runs(tmp_path_factory.getbasetemp(), tiny_dataset_dir)[0]["dir"], run)
    marker = tmp_path / "PWNED.npz"
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["data"] = data(marker)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("mmdigits.report", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists(), "the run directory's config was run"
    assert (run / "report.md").is_file() and (run / "confusion.png").is_file()


def test_ensemble_runs_that_name_each_other_as_members_are_read_once(tmp_path):
    """An ensemble's metrics.json names its members' checkpoints, and the report reads the first member's run
    for its names; two crafted directories that name each other must not send it round in circles."""
    for me, other in (("a", "b"), ("b", "a")):
        (tmp_path / me).mkdir()
        member = str(tmp_path / other / "checkpoints" / "x.ckpt")
        (tmp_path / me / "metrics.json").write_text(
            json.dumps({"test/acc": 0.5, "ckpt_path": [member, member]})
        )
    (tmp_path / "c").mkdir()  # and members that are not paths at all
    (tmp_path / "c" / "metrics.json").write_text(json.dumps({"test/acc": 0.5, "ckpt_path": [1, {"x": [2]}]}))
    from mmdigits.report import main as report

    assert report([str(tmp_path)]) == 0  # read, named as ensembles, written


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"', "1e999999"])
def test_a_metrics_file_that_is_not_a_json_object_is_one_clear_error(text, tmp_path, capsys):
    from mmdigits.report import main as report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(text)
    assert report([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(run / "metrics.json") in err and len(err.strip().splitlines()) == 1
