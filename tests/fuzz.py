"""Property-based fuzzing of the readers of files from others: ``python -m tests.fuzz TARGET``.

TARGET is ``npy`` (challenge object arrays), ``checkpoint`` (hyperparameters), ``rundir`` (report readers)
or ``all``. Each property holds for every generated input:

* the reader returns legitimate data or refuses with one line naming the file (DataError/CheckpointError);
  legitimate inputs (np.save of float rows; our own checkpoint) load, and load unchanged;
* no tripwire fires: ``os.system``, ``subprocess.Popen``, ``builtins.open`` for writing outside the output
  folder, ``pickle.loads``, ``importlib.import_module`` of a module not yet imported;
* the process does not crash: run it as a subprocess and check its exit status (tests/test_fuzz.py does).

Seeded (``--seed``) and bounded (``--examples``): CI runs a few hundred examples; a long run is
``python -m tests.fuzz all --examples 20000``. The file being read is printed before each read, so a crash
names its input.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmdigits.analysis.plots import write_confusion
from mmdigits.analysis.runs import runs_frame
from mmdigits.data.challenge import check_spoken
from mmdigits.data.npy import load_npy
from mmdigits.errors import DataError, MMDigitsError
from mmdigits.models.loading import load_checkpoint_model
from tests import crafted
from tests.tripwires import Tripwires

WORK = Path(tempfile.mkdtemp(prefix="mmdigits_fuzz_"))
MARKER = WORK / "PWNED"
OUT = WORK / "out"
COUNTS = {"accepted": 0, "refused": 0}


def read_guarded(path: Path, read: Any) -> Any:
    """``read(path)`` under tripwires: the value, or the refusal (checked to be one line naming the file)."""
    print(f"reading {path}", file=sys.stderr, flush=True)
    with Tripwires(OUT) as wires:
        try:
            value, error = read(path), None
        except MMDigitsError as err:
            value, error = None, err
    assert not wires.fired, f"{path}: tripwires fired: {wires.fired}"
    assert not MARKER.exists() and not MARKER.with_suffix(".npz").exists(), f"{path}: the payload ran"
    if error is not None:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path)), (
            f"not one line naming the file: {message}"
        )
    COUNTS["refused" if error is not None else "accepted"] += 1
    return value


# ----------------------------------------------------------------------------- challenge .npy files
ROWS = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.dtype(">f8"), np.float16]),
    shape=st.tuples(st.integers(0, 4), st.just(13)),
).map(lambda a: np.asfortranarray(a) if a.shape[0] % 2 else a)
NAMES = st.sampled_from(["f8", "f4", "f2", "O8", "O", "V8", "i8", "u1", "b1", "U1", "S4", "c16"]) | st.text(
    max_size=5
)
SMALL = st.integers(-3, 70)
DTYPE_STATES = st.one_of(
    st.just(crafted.FLOAT_STATE),
    st.just(crafted.OBJECT_STATE),
    st.tuples(
        st.sampled_from([3, 3, 4, 0, -1]),
        st.sampled_from(["<", ">", "|", "=", ""]),
        st.none() | st.tuples(st.sampled_from([np.dtype("O"), np.dtype("f8")]), st.tuples(st.integers(0, 3))),
        st.none() | st.lists(st.text(max_size=3), max_size=2).map(tuple),
        st.none()
        | st.dictionaries(
            st.text(max_size=3),
            st.tuples(st.sampled_from([np.dtype("O"), np.dtype("f8"), np.dtype("V8")]), st.integers(-8, 16)),
            max_size=2,
        ),
        SMALL,
        SMALL,
        st.integers(0, 255),
    ),
)
DTYPES = st.builds(crafted.dtype, NAMES, DTYPE_STATES)
SHAPES = st.just((2, 13)) | st.lists(st.integers(-2, 14), max_size=3).map(tuple)
LEAVES = st.one_of(
    ROWS,
    st.builds(crafted.array, SHAPES, DTYPES, st.binary(max_size=240), st.sampled_from([False, True, 0, 2])),
    st.text(max_size=4),
    st.integers(),
    st.none(),
    st.floats(),
)
HOSTILE_ROWS = st.recursive(
    LEAVES,
    lambda rows: (
        st.builds(crafted.array, SHAPES, DTYPES, st.lists(rows, max_size=3))
        | st.lists(rows, max_size=3)
        | st.tuples(rows, rows)
    ),
    max_leaves=6,
)


def _legit_npy(rows: list[np.ndarray]) -> bytes:
    arr = np.empty(len(rows), dtype=object)
    arr[:] = [*rows]
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


@st.composite
def npy_files(draw: Any) -> tuple[bytes, list[np.ndarray] | None]:
    """(file bytes, the rows when the file is a legitimate np.save of float rows)."""
    kind = draw(st.sampled_from(["legit", "hostile", "mutated", "truncated"]))
    rows = draw(st.lists(ROWS, min_size=1, max_size=4))
    if kind == "legit":
        return _legit_npy(rows), rows
    if kind == "hostile":
        hostile = draw(st.lists(HOSTILE_ROWS, min_size=1, max_size=4))
        n = draw(st.sampled_from([len(hostile), len(hostile), 0, len(hostile) + 1]))
        outer = draw(
            st.sampled_from(
                [
                    crafted.object_rows(hostile),
                    hostile,
                    crafted.array((len(hostile),), crafted.dtype("O8", crafted.FLOAT_STATE), hostile),
                ]
            )
        )
        return crafted.npy_bytes(outer, n, protocol=draw(st.sampled_from([2, 3, 4, 5]))), None
    data = bytearray(_legit_npy(rows))
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data) - 1))]), None
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data), None


def fuzz_npy(examples: int, fuzz_seed: int) -> None:
    @seed(fuzz_seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(npy_files())
    def prop(case: tuple[bytes, list[np.ndarray] | None]) -> None:
        data, rows = case
        path = WORK / "spoken_train.npy"
        path.write_bytes(data)
        arr = read_guarded(path, lambda p: load_npy(p, objects=True))
        if rows is not None:
            assert arr is not None, "a legitimate file was refused"
            assert len(arr) == len(rows) and all(
                np.array_equal(a, r, equal_nan=True) and a.dtype == r.dtype
                for a, r in zip(arr, rows, strict=True)
            )
        if arr is not None and arr.dtype != object:  # numbers where objects belong: the caller refuses
            try:
                check_spoken(arr, path)
            except DataError as err:
                assert str(err).startswith(str(path)) and "\n" not in str(err)
            else:
                raise AssertionError(f"a {arr.dtype} array passed as spoken rows")
        elif arr is not None:
            assert arr.ndim == 1
            assert all(isinstance(r, np.ndarray) and r.ndim == 2 and r.shape[1] == 13 for r in arr)
            assert all(r.dtype.kind == "f" and not r.dtype.hasobject for r in arr)

    prop()


# ----------------------------------------------------------------------------- checkpoints
INTERPOLATIONS = [
    crafted.interpolation(MARKER),
    "${oc.env:HOME}",
    "${oc.decode:'[1, 2]'}",
    "${now:%Y}",
    "${mmdigits.pid:}",
    "${..task}",
    "\\${task}",
    "${oc.create:{_target_:numpy.savez,_args_:['" + str(MARKER) + "']}}",
]
TARGETS = [
    "builtins.open", "numpy.savez", "os.system", "torch.load", "mmdigits.models.module.MultimodalModule",
    "mmdigits.models.audio.CNN1dEncoder", "mmdigits.models.fusion.ConcatFusion", "torch.optim.AdamW",
    "mmdigits.models.loading.read_checkpoint", "", "mmdigits.models.audio",
]  # fmt: skip
TEXT = st.text(max_size=12) | st.sampled_from(INTERPOLATIONS) | st.sampled_from(TARGETS)
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 48) | st.floats() | TEXT,
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(["_target_", "_args_"]), c, max_size=3)
    ),
    max_leaves=6,
)
SPECIAL_KEYS = ["_target_", "_args_", "_partial_", "_recursive_", "_convert_", "hidden", "n_classes", "lr"]


def _dict_paths(tree: Any, at: tuple = ()) -> list[tuple]:
    paths = [at] if isinstance(tree, dict) else []
    children = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for k, v in children:
        paths += _dict_paths(v, (*at, k))
    return paths


def _at(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def base_checkpoint() -> dict[str, Any]:
    """Our own checkpoint of the default model (untrained: the readers check structure, not skill)."""
    from hydra.utils import instantiate

    from tests.hydra_utils import compose_cfg

    model = instantiate(compose_cfg("train", ["data.dir=unused"], WORK / "compose").model)
    return {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}


def mutate(draw: Any, hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` with 1-3 keys set to plain data: interpolations, foreign targets, unknown keys."""
    hparams = json.loads(json.dumps(hparams))
    for _ in range(draw(st.integers(1, 3))):
        paths = _dict_paths(hparams)
        node = _at(hparams, paths[draw(st.integers(0, len(paths) - 1))])
        existing = st.sampled_from(sorted(node)) if node else st.nothing()
        key = draw(existing | st.sampled_from(SPECIAL_KEYS) | st.text(max_size=6))
        node[key] = draw(st.sampled_from(TARGETS) if key == "_target_" else PLAIN)
    return hparams


def fuzz_checkpoint(examples: int, fuzz_seed: int) -> None:
    base = base_checkpoint()
    path = WORK / "epoch_000.ckpt"
    torch.save(base, path)
    assert read_guarded(path, load_checkpoint_model) is not None, "our own checkpoint was refused"

    @seed(fuzz_seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def prop(data: Any) -> None:
        torch.save({**base, "hyper_parameters": mutate(data.draw, base["hyper_parameters"])}, path)
        read_guarded(path, load_checkpoint_model)

    prop()


# ----------------------------------------------------------------------------- run directories
YAML_TEXTS = st.sampled_from(
    [
        "data: !!python/object/apply:os.system ['touch " + str(MARKER) + "']\n",
        "a: &a [1, 2]\nb: [*a, *a]\ndata: {dir: x}\n",
        "data: {_target_: numpy.savez, _args_: ['" + str(MARKER) + "']}\n",
        "data: [unclosed\n",
        "- just a list\n",
        "\x00\xff",
    ]
)


def fake_run(run: Path, base: dict[str, Any]) -> None:
    """A run directory as train leaves it: metrics, a checkpoint, Hydra's files and run.json."""
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / ".hydra").mkdir(exist_ok=True)
    torch.save(base, run / "checkpoints" / "epoch_000.ckpt")
    metrics = {"test/acc": 0.5, "val/acc_best": 0.5, "best_model_path": "epoch_000.ckpt", "run_name": "r"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / ".hydra" / "hydra.yaml").write_text("hydra: {runtime: {choices: {fusion: agreement}}}\n")
    (run / ".hydra" / "overrides.yaml").write_text("- seed=0\n")


@st.composite
def run_files(draw: Any) -> tuple[str, str | None]:
    """(.hydra/config.yaml text, run.json text or None)."""
    data = draw(
        PLAIN
        | st.fixed_dictionaries(
            {"_target_": st.sampled_from([crafted.DATAMODULE, *TARGETS])},
            optional={"dir": TEXT, "task": TEXT, "_args_": PLAIN},
        )
    )
    config = draw(YAML_TEXTS | st.just(yaml.safe_dump({"data": data, "seed": 0})))
    recorded = draw(
        st.none()
        | st.just(json.dumps({"config_hash": "x", "data": data}))
        | st.text(max_size=20)
        | st.just(json.dumps({"data": {"dir": "${oc.env:HOME}", "extra": 1}}))
    )
    return config, recorded


def fuzz_rundir(examples: int, fuzz_seed: int) -> None:
    base = base_checkpoint()
    os.chdir(WORK)  # data settings without a dir mean ./Dataset: not the one a working copy may have built
    run = WORK / "runs" / "0_run"
    fake_run(run, base)
    OUT.mkdir(parents=True, exist_ok=True)

    def report(path: Path) -> str:
        return write_confusion(runs_frame([path]).iloc[0], OUT / "confusion.png")

    (run / ".hydra" / "config.yaml").write_text("data: {dir: nowhere}\n")
    report(run)  # once unguarded: the libraries' lazy imports happen here, not under the tripwires

    @seed(fuzz_seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(run_files())
    def prop(files: tuple[str, str | None]) -> None:
        config, recorded = files
        (run / ".hydra" / "config.yaml").write_text(config)
        (run / "run.json").unlink(missing_ok=True)
        if recorded is not None:
            (run / "run.json").write_text(recorded)
        how = read_guarded(run, report)
        assert how is not None and "not available" in how, how  # no data to recompute, no logged image

    prop()


TARGETS_TO_FUZZ = {"npy": fuzz_npy, "checkpoint": fuzz_checkpoint, "rundir": fuzz_rundir}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=[*TARGETS_TO_FUZZ, "all"])
    parser.add_argument("--examples", type=int, default=200, help="examples per target")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("MMDIGITS_NO_DOWNLOAD", "1")
    for name, fuzz in TARGETS_TO_FUZZ.items():
        if args.target in (name, "all"):
            COUNTS.update(accepted=0, refused=0)
            fuzz(args.examples, args.seed)
            print(f"fuzz {name}: {args.examples} examples (seed {args.seed}), {COUNTS['accepted']} reads "
                  f"accepted, {COUNTS['refused']} refused, no tripwire, no crash", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
