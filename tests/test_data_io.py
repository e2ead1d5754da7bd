from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mmdigits.errors import MMDigitsError
from mmdigits.utils import io


def test_atomic_helpers_write(tmp_path: Path) -> None:
    io.atomic_write_bytes(tmp_path / "a.bin", b"xyz")
    io.atomic_write_json(tmp_path / "sub" / "m.json", {"b": np.int64(2), "a": np.array([1.5])})
    arr = np.empty(2, object)
    arr[0], arr[1] = np.zeros((2, 13), np.float32), np.ones((3, 13), np.float32)
    io.atomic_save_npy(tmp_path / "o.npy", arr)
    io.atomic_save_npy(tmp_path / "u.npy", np.arange(5, dtype=np.uint8))
    assert (tmp_path / "a.bin").read_bytes() == b"xyz"
    assert json.loads((tmp_path / "sub" / "m.json").read_text()) == {"a": [1.5], "b": 2}
    assert np.load(tmp_path / "o.npy", allow_pickle=True)[1].shape == (3, 13)
    assert np.load(tmp_path / "u.npy").tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "m.json", "o.npy", "sub", "u.npy"]


def test_atomic_path_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "result.npy"
    with pytest.raises(RuntimeError), io.atomic_path(final) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not final.exists() and list(tmp_path.iterdir()) == []

    def failing_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError):
        io.atomic_save_npy(final, np.zeros(3))
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_atomic_overwrite_keeps_old_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "metrics.json"
    io.atomic_write_json(final, {"v": 1})
    with pytest.raises(TypeError):
        io.atomic_write_json(final, {"v": object()})
    assert json.loads(final.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_is_sorted_indented_and_ends_with_a_newline(tmp_path: Path) -> None:
    out = io.atomic_write_json(tmp_path / "m.json", {"b": 1, "a": {"d": Path("x/y"), "c": np.float32(0.5)}})
    assert out == tmp_path / "m.json"
    assert out.read_text() == '{\n  "a": {\n    "c": 0.5,\n    "d": "x/y"\n  },\n  "b": 1\n}\n'
    io.atomic_write_json(out, [np.arange(2)], indent=0)
    assert out.read_text() == "[\n[\n0,\n1\n]\n]\n"
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        io.atomic_write_json(out, {"v": object()})


def test_written_files_get_the_umask_mode_and_the_helpers_return_the_path(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    assert io.atomic_write_bytes(tmp_path / "a.bin", b"1") == tmp_path / "a.bin"
    assert io.atomic_save_npy(tmp_path / "a.npy", np.zeros(2)) == tmp_path / "a.npy"
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == 0o666 & ~mask


def test_numeric_arrays_load_without_pickle(tmp_path: Path) -> None:
    io.atomic_save_npy(tmp_path / "f.npy", np.array([[1.5, 2.0]], np.float32))
    loaded = np.load(tmp_path / "f.npy", allow_pickle=False)
    assert loaded.dtype == np.float32 and loaded.tolist() == [[1.5, 2.0]]


def test_the_file_and_its_directory_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    io.atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert synced == [False, True]  # the file's bytes, then the directory entry


def test_a_directory_that_cannot_be_synced_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def failing_open(path, flags, *args):  # type: ignore[no-untyped-def]
        if os.path.isdir(path):
            raise PermissionError(13, "no")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", failing_open)
    io.atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert (tmp_path / "a.bin").read_bytes() == b"data"


@pytest.mark.parametrize(
    ("code", "fixable"), [(errno.ENOSPC, True), (errno.EACCES, True), (errno.EIO, False)]
)
def test_only_causes_the_user_can_fix_become_one_line(tmp_path: Path, code: int, fixable: bool) -> None:
    err = OSError(code, os.strerror(code))
    if fixable:
        with pytest.raises(
            MMDigitsError, match=rf"m.json: could not be written \({os.strerror(code)}\); nothing"
        ):
            io.raise_if_user_fixable(tmp_path / "m.json", err)
    else:
        assert io.raise_if_user_fixable(tmp_path / "m.json", err) is None


def test_a_full_disk_while_writing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(MMDigitsError, match=r"f.npy: could not be written \(No space left on device\)"):
        io.atomic_save_npy(tmp_path / "f.npy", np.zeros(2))
    assert list(tmp_path.iterdir()) == []


def test_figures_take_their_format_from_the_suffix(tmp_path: Path) -> None:
    saved: list[tuple[Path, str, dict[str, object]]] = []

    class Figure:
        def savefig(self, path: Path, format: str, **kwargs: object) -> None:
            saved.append((Path(path).parent, format, kwargs))
            Path(path).write_bytes(b"img")

    assert io.atomic_savefig(Figure(), tmp_path / "a.svg", dpi=50) == tmp_path / "a.svg"
    io.atomic_savefig(Figure(), tmp_path / "plain")
    assert saved == [(tmp_path, "svg", {"dpi": 50}), (tmp_path, "png", {})]
    assert (tmp_path / "plain").read_bytes() == b"img"


def test_the_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert io._current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still in force afterwards
    finally:
        os.umask(old)
