"""Hostile inputs built only from names that the readers allow: pickles of numpy's own reconstruction hooks
with state of our choosing, checkpoint hyperparameters with interpolations, run configs that name callables.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

DATAMODULE = "mmdigits.data.datamodule.MMDigitsDataModule"
_reconstruct = np.empty(0).__reduce__()[0]  # numpy's array reconstructor, under numpy 1.x and 2.x names
OBJECT_STATE = (3, "|", None, None, None, -1, -1, 63)  # numpy's own state of dtype('O')
FLOAT_STATE = (3, "<", None, None, None, -1, -1, 0)  # ... and of dtype('<f8'), dtype('<f4')


class Reduce:
    """Pickles as ``fn(*args)``, then ``BUILD(state)`` when a state is given: the pickle names ``fn`` and
    whatever globals ``args`` and ``state`` hold, nothing else."""

    def __init__(self, fn: Any, args: tuple, state: Any = None) -> None:
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self) -> tuple:
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def dtype(name: str, state: Any) -> Reduce:
    return Reduce(np.dtype, (name, False, True), state)


def array(shape: Any, dt: Any, data: Any, fortran: Any = False, version: Any = 1) -> Reduce:
    """numpy's pickle of an array: ``_reconstruct(ndarray, (0,), b'b')`` then ``__setstate__`` with this."""
    return Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (version, shape, dt, fortran, data))


def object_rows(rows: list[Any]) -> Reduce:
    return array((len(rows),), dtype("O8", OBJECT_STATE), rows)


def npy_bytes(obj: Any, n: int, protocol: int = 3) -> bytes:
    """A .npy file whose header promises a 1-D object array of ``n`` rows, followed by ``obj``'s pickle."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (n,)})
    return header.getvalue() + pickle.dumps(obj, protocol=protocol)


def object_field_row() -> Reduce:
    """A one-element array whose dtype state declares an object field, with numpy's object flags but not its
    list-pickle flag (63 & ~2): numpy's ``__setstate__`` copies raw file bytes into an object slot, and
    releasing the array dereferences them (a segfault)."""
    evil = dtype("V8", (3, "|", None, ("f0",), {"f0": (np.dtype("O"), 0)}, 8, 1, 61))
    return array((1,), evil, b"\x41" * 8)


def dtype_state_npy(path: Path, good: np.ndarray) -> Path:
    path.write_bytes(npy_bytes(object_rows([good, object_field_row(), good]), 3))
    return path


def interpolation(marker: Path) -> str:
    """A plain string that OmegaConf resolves into a config node that opens ``marker`` for writing
    (``builtins.open`` passes Hydra's own blocklist of targets)."""
    return "${oc.create:{_target_:builtins.open,_args_:['" + str(marker) + "',w]}}"
