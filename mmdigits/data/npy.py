"""Read .npy files without running code from them.

Numeric arrays are read with ``allow_pickle=False``. The original challenge ships ``spoken_*.npy`` as object
arrays of (frames, 13) float arrays, which numpy stores as a pickle. A pickle is a program: unpickling calls
what it names with arguments and state from the file, and even numpy's own reconstruction hooks, fed a dtype
state of the file's choosing, copy raw file bytes into object pointers. So these pickles are never unpickled.
:func:`read_object_rows` walks the opcode stream (``pickletools.genops``) as data, accepts only the structure
that an object array of float arrays has, and builds each row itself with ``np.frombuffer``: no numpy hook and
no ``__setstate__`` is ever called with state from the file.
"""

from __future__ import annotations

import io
import math
import os
import pickletools
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmdigits.errors import DataError, first_line

N_COLUMNS = 13
# what a pickled object array of float arrays names: numpy 1.x files say numpy.core, numpy 2.x numpy._core,
# and protocol 2 spells bytes as _codecs.encode(text, 'latin1')
GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
}
OBJECT_NAMES = ("O", "O4", "O8")
FLOAT_NAMES = ("f2", "f4", "f8")
OBJECT_FLAGS = 63  # the flags numpy pickles with dtype('O'); a float dtype's are 0
CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
PUSH = {
    "BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE",
    "SHORT_BINUNICODE", "BINUNICODE8", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
    "BINBYTES8", "BYTEARRAY8", "BINFLOAT",
}  # fmt: skip


class UnsafePickle(DataError):
    """The file asks for something that is not part of a numpy array."""


class _Refused(Exception):
    """Structure that an object array of float arrays does not have (turned into a DataError)."""


@dataclass(frozen=True)
class _Global:
    name: str


@dataclass(eq=False)
class _Dtype:
    name: str
    state: tuple | None = None


@dataclass(eq=False)
class _Array:
    state: tuple | None = None


def _pop_to_mark(stack: list[Any], marks: list[int]) -> list[Any]:
    if not marks:
        raise _Refused("a pickle opcode needs a mark that is not there")
    at = marks.pop()
    items = stack[at:]
    del stack[at:]
    return items


def _is_int(x: Any) -> bool:
    return type(x) is int


def _flag(x: Any, value: int) -> bool:
    return type(x) in (bool, int) and x == value


def _reduce(fn: Any, args: Any) -> Any:
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
        raise _Refused("the pickle calls something that is not one of numpy's array names")
    n = len(args)
    if (
        fn.name == "reconstruct"
        and n == 3
        and args[0] == _Global("ndarray")
        and args[1:] in (((0,), b"b"), ((0,), "b"))
    ):
        return _Array()
    dtype_args = n == 3 and isinstance(args[0], str) and len(args[0]) <= 4 and _flag(args[1], 0)
    if fn.name == "dtype" and dtype_args and _flag(args[2], 1):
        return _Dtype(args[0])
    if fn.name == "encode" and n == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin1")
    raise _Refused(f"unexpected arguments to numpy's {fn.name}")


def _build(obj: Any, state: Any) -> None:
    if isinstance(obj, _Dtype) and obj.state is None:
        standard = (
            isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and _is_int(state[0])
            and any(state[1] == c for c in ("<", ">", "|"))
            and state[2] is None and state[3] is None and state[4] is None
            and _is_int(state[5]) and state[5] == -1 and _is_int(state[6]) and state[6] == -1
            and _is_int(state[7])
        )  # fmt: skip
        if not standard:
            raise _Refused(f"dtype {obj.name!r} with a state that no plain number type has")
        obj.state = state
    elif isinstance(obj, _Array) and obj.state is None:
        if not isinstance(state, tuple):
            raise _Refused("an array state that is not a tuple")
        obj.state = state
    else:
        raise _Refused("the pickle sets the state of something that is not a new array or dtype")


def _run(data: bytes) -> Any:
    """The value of the pickle ``data``, evaluated as data over the opcodes an array pickle uses."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1 or marks:
                raise _Refused("the pickle ends with a malformed stack")
            return stack[0]
        if name in CONSTANTS:
            stack.append(CONSTANTS[name])
        elif name in PUSH:
            stack.append(bytes(arg) if name == "BYTEARRAY8" else arg)
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise _Refused("a pickle tuple of more items than there are")
            items = tuple(stack[len(stack) - n :])
            del stack[len(stack) - n :]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(_pop_to_mark(stack, marks)))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            stack.append(_pop_to_mark(stack, marks))
        elif name in ("APPEND", "APPENDS"):
            items = _pop_to_mark(stack, marks) if name == "APPENDS" else [stack.pop()] if stack else []
            if not stack or not isinstance(stack[-1], list) or not items and name == "APPEND":
                raise _Refused("the pickle appends to something that is not a list")
            stack[-1].extend(items)
        elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack:
                raise _Refused("the pickle memoizes an empty stack")
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _Refused(f"the pickle refers to memo entry {arg}, which it never made")
            stack.append(memo[arg])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = arg.partition(" ")
            else:
                attr = stack.pop() if stack else None
                module = stack.pop() if stack else None
            # strings before the dict lookup: hashing a deeply nested tuple from the file recurses in C
            if not isinstance(module, str) or not isinstance(attr, str) or (module, attr) not in GLOBALS:
                asked = f"{reprlib.repr(module)[:80]}.{reprlib.repr(attr)[:80]}"
                if isinstance(module, str) and isinstance(attr, str):
                    asked = f"{module}.{attr}"[:200]
                raise UnsafePickle(
                    f"refuses to load: the file asks to call {asked}, which is not part of a numpy array"
                )
            stack.append(_Global(GLOBALS[(module, attr)]))
        elif name == "REDUCE":
            if len(stack) < 2:
                raise _Refused("a pickle call without its arguments")
            args = stack.pop()
            stack.append(_reduce(stack.pop(), args))
        elif name == "BUILD":
            if len(stack) < 2:
                raise _Refused("a pickle state without its object")
            state = stack.pop()
            _build(stack[-1], state)
        else:
            raise _Refused(f"the pickle uses the opcode {name}, which an array of numbers does not need")
    raise _Refused("the pickle ends without STOP")


def _array_state(arr: _Array) -> tuple[tuple, _Dtype, bool, Any]:
    """(shape, dtype, fortran, data) of a pickled array; _Refused when it is not one."""
    state = arr.state
    if state is not None and len(state) == 5 and state[0] == 1 and _is_int(state[0]):
        state = state[1:]
    if state is None or len(state) != 4:
        raise _Refused("an array without a version-1 state (shape, dtype, order, data)")
    shape, dtype, fortran, data = state
    if not isinstance(shape, tuple) or len(shape) > 8 or not all(_is_int(n) and n >= 0 for n in shape):
        raise _Refused(f"an array of shape {reprlib.repr(shape)}")
    if not isinstance(dtype, _Dtype) or dtype.state is None:
        raise _Refused("an array without a dtype")
    if type(fortran) not in (bool, int) or fortran not in (0, 1):
        raise _Refused(f"an array whose order flag is {reprlib.repr(fortran)}")
    return shape, dtype, bool(fortran), data


def _row(item: Any, row: int) -> np.ndarray:
    """The float array of one row, built from its bytes; _Refused naming what it is otherwise."""
    if not isinstance(item, _Array):
        what = "dtype" if isinstance(item, _Dtype) else type(item).__name__
        raise _Refused(f"row {row}: {what}; expected a 2-D float array (frames, {N_COLUMNS})")
    shape, dtype, fortran, data = _array_state(item)
    endian, flags = dtype.state[1], dtype.state[7]
    if dtype.name in OBJECT_NAMES:
        raise _Refused(f"row {row}: an object array; expected a 2-D float array (frames, {N_COLUMNS})")
    if dtype.name not in FLOAT_NAMES or not any(endian == c for c in ("<", ">")) or flags != 0:
        raise _Refused(f"row {row}: dtype {dtype.name!r}; expected float MFCC values")
    if len(shape) != 2:
        expected = f"expected a 2-D float array (frames, {N_COLUMNS})"
        raise _Refused(f"row {row}: {len(shape)}-D array of shape {shape}; {expected}")
    if shape[1] != N_COLUMNS:
        raise _Refused(f"row {row}: shape {shape}; expected {N_COLUMNS} columns")
    dt = np.dtype(endian + dtype.name)
    if isinstance(data, str):  # Python 2 pickles hold bytes as latin-1 text
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * dt.itemsize:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise _Refused(f"row {row}: {size} bytes of data for shape {shape} of {dt}")
    return np.frombuffer(data, dt).reshape(shape, order="F" if fortran else "C").copy(order="K")


def read_object_rows(data: bytes, n: int) -> np.ndarray:
    """The 1-D object array of ``n`` float arrays pickled in ``data``; _Refused/UnsafePickle otherwise.
    Rows that the pickle shares (one object, memoized) stay one array."""
    top = _run(data)
    if not isinstance(top, _Array):
        raise _Refused(f"the pickle holds a {type(top).__name__}, not an array")
    shape, dtype, _, rows = _array_state(top)
    if dtype.name not in OBJECT_NAMES or dtype.state[1] != "|" or dtype.state[7] != OBJECT_FLAGS:
        raise _Refused(f"the pickled array has dtype {dtype.name!r}; expected an object array")
    if shape != (n,) or not isinstance(rows, list) or len(rows) != n:
        raise _Refused(f"the pickled array does not match the header's shape ({n},)")
    out = np.empty(n, dtype=object)
    built: dict[int, np.ndarray] = {}
    for i, item in enumerate(rows):
        if id(item) not in built:
            built[id(item)] = _row(item, i)
        out[i] = built[id(item)]
    return out


def _header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    # 3.0 is written only for structured dtypes with non-latin1 field names, never for challenge arrays
    raise ValueError(f".npy format version {version[0]}.{version[1]}; expected 1.0 or 2.0")


def load_npy(path: str | os.PathLike[str], *, objects: bool = False) -> np.ndarray:
    """The array in ``path``; DataError naming the file (and row) when it is missing, not a .npy file,
    truncated, or not what it should be. Object arrays are refused unless ``objects``: then they must be
    1-D arrays of (frames, 13) float arrays, read by :func:`read_object_rows`."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a .npy file")
    if not path.is_file():
        raise DataError(f"{path}: missing file; expected a .npy array of the challenge format")
    with open(path, "rb") as fh:
        try:
            shape, _, dtype = _header(fh)
        except EOFError as e:
            raise DataError(f"{path}: truncated or corrupt .npy file (header cut short)") from e
        except Exception as e:  # numpy parses the header with ast/tokenize: many error types
            first = first_line(e, 200)
            raise DataError(
                f"{path}: not a .npy file ({first}); expected an array saved with numpy.save"
            ) from e
        if dtype.hasobject:
            if not objects:
                raise DataError(
                    f"{path}: holds an object array (pickled Python objects); expected a numeric array"
                )
            if len(shape) != 1:
                raise DataError(f"{path}: an object array of shape {shape}; expected a 1-D object array")
            return _read_objects(fh.read(), path, shape[0])
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise DataError(f"{path}: truncated or corrupt .npy file ({type(e).__name__}: {e})") from e


def _read_objects(data: bytes, path: Path, n: int) -> np.ndarray:
    try:
        return read_object_rows(data, n)
    except UnsafePickle as e:
        raise UnsafePickle(f"{path}: {e}") from None
    except _Refused as e:
        detail = str(e)
        if detail.startswith("row "):
            raise DataError(f"{path}: {detail}") from None
        raise DataError(f"{path}: refuses to load: {detail}") from None
    except MemoryError:
        raise DataError(f"{path}: refuses to load: its arrays do not fit in memory") from None
    except Exception as e:  # pickletools: a truncated or corrupt opcode stream
        first = first_line(e, 200)
        raise DataError(f"{path}: truncated or corrupt .npy file ({type(e).__name__}: {first})") from None
