"""Read .npy files without running code from them.

``np.load(allow_pickle=True)`` unpickles object arrays, and unpickling calls whatever importable function the
file names, with whatever arguments. The original challenge ships ``spoken_*.npy`` as object arrays of float
arrays, so those are read with :class:`NumpyOnlyUnpickler`, which resolves only the few numpy names such an
array needs and refuses any other name *before* anything is called. Every other array is read with
``allow_pickle=False``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mmdigits.errors import DataError


class _NdarrayName:
    """Stands for ``numpy.ndarray``, which a pickle may name only as the type handed to ``_reconstruct``
    (calling the real class could allocate any amount of memory)."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by __setstate__ with the data:
    # anything else (a subclass, a large shape that would allocate memory up front) is not an array pickle
    if subtype is not _NdarrayName or not isinstance(shape, tuple) or int(np.prod(shape)) > 1:
        raise pickle.UnpicklingError("unexpected arguments to numpy's array reconstruction")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("unexpected arguments to numpy's scalar reconstruction")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    # pickle protocol 2 (numpy arrays pickled by Python 3 with protocol 2) spells bytes as _codecs.encode
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected arguments to _codecs.encode")
    return text.encode("latin1")


# (module, name) -> the object to hand the unpickler; numpy 1.x files name numpy.core, numpy 2.x numpy._core
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
}


class UnsafePickle(DataError):
    """The file asks the unpickler for something that is not part of a numpy array."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (of numbers, or of such arrays) and nothing else."""

    def __init__(self, file: Any, path: str | os.PathLike[str]) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise UnsafePickle(
                f"{self.path}: refuses to load: the file asks to call {module}.{name}, "
                "which is not part of a numpy array"
            )
        return ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(f"{self.path}: refuses to load: the file holds a persistent reference ({pid!r})")


def _header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    return np.lib.format._read_array_header(fh, version)  # 3.0: utf8 field names, no public reader


def load_npy(path: str | os.PathLike[str], *, objects: bool = False) -> np.ndarray:
    """The array in ``path``; DataError naming the file when it is missing, not a .npy file, truncated, or
    (unless ``objects``) an object array. Object arrays go through :class:`NumpyOnlyUnpickler`."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a .npy file")
    if not path.is_file():
        raise DataError(f"{path}: missing file; expected a .npy array of the challenge format")
    with open(path, "rb") as fh:
        try:
            shape, _, dtype = _header(fh)
        except ValueError as e:
            raise DataError(f"{path}: not a .npy file ({e}); expected an array saved with numpy.save") from e
        except EOFError as e:
            raise DataError(f"{path}: truncated or corrupt .npy file (header cut short)") from e
        if dtype.hasobject:
            if not objects:
                raise DataError(
                    f"{path}: holds an object array (pickled Python objects); expected a numeric array"
                )
            return _unpickle_objects(fh, path, shape)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise DataError(f"{path}: truncated or corrupt .npy file ({type(e).__name__}: {e})") from e


def _unpickle_objects(fh: Any, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = NumpyOnlyUnpickler(fh, path).load()
    except UnsafePickle:
        raise
    except MemoryError as e:
        raise DataError(f"{path}: refuses to load: its arrays do not fit in memory") from e
    except Exception as e:  # truncated or corrupt pickles raise many types
        raise DataError(f"{path}: truncated or corrupt .npy file ({type(e).__name__}: {e})") from e
    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
        raise DataError(f"{path}: corrupt .npy file (its data does not match the header's shape {shape})")
    return arr
