from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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
