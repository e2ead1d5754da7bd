"""load_npy on small files: object arrays of float rows over every pickle protocol, and each refusal with its
one-line message (the hostile inputs themselves are in tests/test_security.py)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from mmdigits.data.npy import UnsafePickle, load_npy
from mmdigits.errors import DataError
from tests.crafted import FLOAT_STATE, OBJECT_STATE, Reduce, array, dtype, npy_bytes, object_rows

F8 = dtype("f8", FLOAT_STATE)


def rows_array(*rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), object)
    for i, r in enumerate(rows):
        out[i] = r
    return out


def write(tmp_path: Path, obj: object, n: int, protocol: int = 3) -> Path:
    path = tmp_path / "spoken.npy"
    path.write_bytes(npy_bytes(obj, n, protocol))
    return path


def refused(tmp_path: Path, obj: object, n: int = 1, protocol: int = 3) -> str:
    with pytest.raises(DataError) as err:
        load_npy(write(tmp_path, obj, n, protocol), objects=True)
    return str(err.value).removeprefix(f"{tmp_path / 'spoken.npy'}: ")


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_object_arrays_of_float_rows_load_over_every_protocol(tmp_path, protocol):
    a = np.arange(39, dtype=np.float32).reshape(3, 13)
    b = np.linspace(0, 1, 26).reshape(2, 13)
    out = load_npy(write(tmp_path, rows_array(a, b, a), 3, protocol), objects=True)
    assert out.dtype == object and out.shape == (3,)
    assert out[0].dtype == np.float32 and np.array_equal(out[0], a)
    assert out[1].dtype == np.float64 and np.array_equal(out[1], b)
    assert out[2] is out[0]  # one pickled object stays one array
    assert out[1].flags.writeable


def test_numpy_save_files_load(tmp_path):
    arr = rows_array(np.ones((1, 13), np.float16), np.zeros((4, 13), ">f8"))
    np.save(tmp_path / "s.npy", arr, allow_pickle=True)
    out = load_npy(tmp_path / "s.npy", objects=True)
    assert out[0].dtype == np.float16 and out[1].dtype == np.dtype(">f8") and out[1].shape == (4, 13)


def test_fortran_order_and_big_endian_rows_keep_their_values(tmp_path):
    values = np.arange(26, dtype=">f4")
    big = dtype("f4", (3, ">", None, None, None, -1, -1, 0))
    rows = [
        array((2, 13), big, values.tobytes(), fortran=True),
        array((2, 13), big, values.tobytes(), fortran=0),
    ]
    out = load_npy(write(tmp_path, object_rows(rows), 2), objects=True)
    assert np.array_equal(out[0], values.reshape((2, 13), order="F"))
    assert np.array_equal(out[1], values.reshape((2, 13)))
    assert out[0].dtype == np.dtype(">f4")
    text = array((1, 13), F8, np.ones(13).tobytes().decode("latin1"))  # Python 2 pickles: bytes as text
    assert load_npy(write(tmp_path, object_rows([text]), 1), objects=True)[0].tolist() == [[1.0] * 13]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (array((2, 12), F8, bytes(192)), r"row 0: shape \(2, 12\); expected 13 columns"),
        (
            array((26,), F8, bytes(208)),
            r"row 0: 1-D array of shape \(26,\); expected a 2-D float array \(frames, 13\)",
        ),
        (
            array((1, 13), dtype("i4", FLOAT_STATE), bytes(52)),
            r"row 0: dtype 'i4'; expected float MFCC values",
        ),
        (
            array((1, 13), dtype("f8", (3, "|", None, None, None, -1, -1, 0)), bytes(104)),
            r"row 0: dtype 'f8'; expected float MFCC values",
        ),
        (array((1, 13), dtype("O8", OBJECT_STATE), [1.0] * 13), r"row 0: an object array; expected a 2-D"),
        (array((1, 13), F8, b"x" * 5), r"row 0: 5 bytes of data for shape \(1, 13\) of float64"),
        (array((1, 13), F8, 7), r"row 0: int bytes of data for shape \(1, 13\) of float64"),
        (1.5, r"row 0: float; expected a 2-D float array \(frames, 13\)"),
        (F8, r"row 0: dtype; expected a 2-D float array"),
    ],
)
def test_rows_that_are_not_float_frames_are_refused_naming_the_row(tmp_path, row, message):
    assert re.fullmatch(message + ".*", refused(tmp_path, object_rows([row])))


@pytest.mark.parametrize(
    ("obj", "n", "message"),
    [
        ([1, 2], 2, "refuses to load: the pickle holds a list, not an array"),
        (
            object_rows([array((1, 13), F8, bytes(104))]),
            2,
            "refuses to load: the pickled array does not match ",
        ),
        (
            array((1,), F8, [1.0]),
            1,
            "refuses to load: the pickled array has dtype 'f8'; expected an object array",
        ),
        (
            array((1,), dtype("O8", (3, "<", None, None, None, -1, -1, 63)), [1.0]),
            1,
            "refuses to load: the pickled array has dtype 'O8'",
        ),
        (
            array((1,), dtype("O8", FLOAT_STATE), [1.0]),
            1,
            "refuses to load: the pickled array has dtype 'O8'",
        ),
        (
            array((1,), dtype("O8", OBJECT_STATE), (1.0,)),
            1,
            "refuses to load: the pickled array does not match",
        ),
        (array((-1, 13), F8, b""), 1, r"refuses to load: an array of shape (-1, 13)"),
        (array((1,) * 9, F8, b""), 1, "refuses to load: an array of shape"),
        (array([1], F8, b""), 1, "refuses to load: an array of shape [1]"),
        (array((1, 13), F8, b"", fortran=2), 1, "refuses to load: an array whose order flag is 2"),
        (array((1, 13), F8, b"", fortran=1.0), 1, "refuses to load: an array whose order flag is 1.0"),
        (array((1, 13), F8, b"", version=2), 1, "refuses to load: an array without a version-1 state"),
        (array((1, 13), 5, b""), 1, "refuses to load: an array without a dtype"),
        (
            dtype("f8", (3, "<", None, None, None, -1, -1, 0, "x")),
            1,
            "refuses to load: dtype 'f8' with a state that no plain number type has",
        ),
        (dtype("f8", (3, "=", None, None, None, -1, -1, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (3, "<", None, None, None, -1, 0, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (3, "<", None, None, None, 0, -1, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (3, "<", None, None, 1, -1, -1, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (3, "<", None, 1, None, -1, -1, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (3, "<", 1, None, None, -1, -1, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (3.0, "<", None, None, None, -1, -1, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (3, "<", None, None, None, -1, -1, 0.0)), 1, "refuses to load: dtype 'f8' with a state"),
        (dtype("f8", (4, "<", None, None, None, -1, -1, 0)), 1, "refuses to load: dtype 'f8' with a state"),
        (Reduce(np.dtype, ("f8", False, False)), 1, "refuses to load: unexpected arguments to numpy's dtype"),
        (
            Reduce(np.dtype, ("float64", False, True)),
            1,
            "refuses to load: unexpected arguments to numpy's dtype",
        ),
        (Reduce(np.dtype, ("f8", 0.0, True)), 1, "refuses to load: unexpected arguments to numpy's dtype"),
        (Reduce(np.dtype, ("f8", False)), 1, "refuses to load: unexpected arguments to numpy's dtype"),
        (Reduce(np.ndarray, ((1,),)), 1, "refuses to load: unexpected arguments to numpy's ndarray"),
    ],
)
def test_pickles_that_are_not_an_object_array_of_rows_are_refused(tmp_path, obj, n, message):
    assert refused(tmp_path, obj, n).startswith(message)


def test_unsafe_globals_name_what_the_file_asks_for(tmp_path):
    with pytest.raises(
        UnsafePickle, match=r"spoken.npy: refuses to load: the file asks to call posix.system"
    ):
        load_npy(write(tmp_path, Reduce(os.system, ("true",)), 1), objects=True)


def test_opcode_streams_that_no_array_pickle_has(tmp_path):
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    cases = {
        b"\x80\x03K\x01K\x02.": "refuses to load: the pickle ends with a malformed stack",
        b"\x80\x03(K\x01.": "refuses to load: the pickle ends with a malformed stack",
        b"\x80\x03K\x01": "truncated or corrupt .npy file",
        b"\x80\x03}.": "refuses to load: the pickle uses the opcode EMPTY_DICT, which an array",
        b"\x80\x03K\x01\x85K\x02\x86.": "refuses to load: the pickle holds a tuple, not an array",
        b"\x80\x03\x86.": "refuses to load: a pickle tuple of more items than there are",
        b"\x80\x03t.": "refuses to load: a pickle opcode needs a mark that is not there",
        b"\x80\x03K\x01a.": "refuses to load: the pickle appends to something that is not a list",
        b"\x80\x03]a.": "refuses to load: the pickle appends to something that is not a list",
        b"\x80\x03](e.": "refuses to load: the pickle holds a list, not an array",
        b"\x80\x03q\x00.": "refuses to load: the pickle memoizes an empty stack",
        b"\x80\x03h\x05.": "refuses to load: the pickle refers to memo entry 5, which it never made",
        b"\x80\x03K\x01R.": "refuses to load: a pickle call without its arguments",
        b"\x80\x03K\x01b.": "refuses to load: a pickle state without its object",
        b"\x80\x03K\x01)b.": "refuses to load: the pickle sets the state of something that is not a new",
        b"\x80\x03K\x01)R.": "refuses to load: the pickle calls something that is not one of numpy's",
        b"\x80\x04\x93.": "refuses to load: the file asks to call None.None, which is not part of",
        b"\x80\x03cos\nsystem\n.": "refuses to load: the file asks to call os.system, which is not part of",
        b"\x80\x03N\x88\x89\x87.": "refuses to load: the pickle holds a tuple, not an array",
        b"\x80\x03(K\x01K\x02l.": "refuses to load: the pickle holds a list, not an array",
    }
    for stream, message in cases.items():
        path = tmp_path / "s.npy"
        path.write_bytes(head.getvalue() + stream)
        with pytest.raises(DataError) as err:
            load_npy(path, objects=True)
        assert str(err.value).removeprefix(f"{path}: ").startswith(message), (stream, str(err.value))


def test_files_that_are_not_npy_or_not_numbers(tmp_path):
    with pytest.raises(DataError, match=r": is a directory; expected a .npy file"):
        load_npy(tmp_path)
    with pytest.raises(
        DataError, match=r"nope.npy: missing file; expected a .npy array of the challenge format"
    ):
        load_npy(tmp_path / "nope.npy")
    np.save(tmp_path / "t.npy", np.arange(3))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:12])
    with pytest.raises(DataError, match=r"t.npy: not a .npy file \(EOF: reading array header, expected"):
        load_npy(tmp_path / "t.npy")
    (tmp_path / "t.npy").write_bytes(b"not a numpy file at all, long enough")
    with pytest.raises(
        DataError, match=r"t.npy: not a .npy file \(.*\); expected an array saved with numpy.save"
    ):
        load_npy(tmp_path / "t.npy")
    np.save(tmp_path / "n.npy", np.arange(10))
    (tmp_path / "n.npy").write_bytes((tmp_path / "n.npy").read_bytes()[:-8])
    with pytest.raises(DataError, match=r"n.npy: truncated or corrupt .npy file \(ValueError: "):
        load_npy(tmp_path / "n.npy")
    np.save(tmp_path / "o.npy", rows_array(np.ones((1, 13))), allow_pickle=True)
    with pytest.raises(
        DataError, match=r"o.npy: holds an object array \(pickled Python objects\); expected a numeric"
    ):
        load_npy(tmp_path / "o.npy")
    two = np.empty((2, 1), object)
    two[0, 0], two[1, 0] = np.ones((1, 13)), np.ones((1, 13))
    np.save(tmp_path / "2.npy", two, allow_pickle=True)
    with pytest.raises(
        DataError, match=r"2.npy: an object array of shape \(2, 1\); expected a 1-D object array"
    ):
        load_npy(tmp_path / "2.npy", objects=True)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_numeric_files_of_both_header_versions_load(tmp_path, version):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(6, dtype=np.int16).reshape(2, 3), version=version)
    (tmp_path / "v.npy").write_bytes(buf.getvalue())
    out = load_npy(tmp_path / "v.npy")
    assert out.dtype == np.int16 and out.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_header_version_3_is_refused(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(3), version=(3, 0))
    (tmp_path / "v.npy").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"not a .npy file \(.npy format version 3.0; expected 1.0 or 2.0\)"):
        load_npy(tmp_path / "v.npy")
