"""Tripwires: record (and block) every call that reading a file from someone else must never make."""

from __future__ import annotations

import builtins
import importlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any


class Tripwires:
    """``os.system``, ``subprocess.Popen``, ``pickle.loads``; ``open`` for writing outside ``writable``;
    ``importlib.import_module`` of a module not imported yet. Each call is recorded in ``fired`` and fails."""

    def __init__(self, writable: Path) -> None:
        self.writable = writable
        self.fired: list[str] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def _patch(self, owner: Any, name: str, make: Any) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def _blocked(self, what: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.fired.append(f"{what}{args[:2]!r}")
            raise PermissionError(f"tripwire: {what}")

        return call

    def __enter__(self) -> Tripwires:
        def guarded_open(original: Any) -> Any:
            def call(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
                writes = isinstance(mode, str) and any(c in mode for c in "wax+")
                inside = isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(
                    self.writable
                )
                if writes and not inside:
                    self.fired.append(f"open({file!r}, {mode!r})")
                    raise PermissionError("tripwire: open for writing")
                return original(file, mode, *args, **kwargs)

            return call

        def guarded_import(original: Any) -> Any:
            def call(name: str, package: Any = None) -> Any:
                if name not in sys.modules:
                    self.fired.append(f"import_module({name!r})")
                    raise ImportError("tripwire: import_module")
                return original(name, package)

            return call

        self._patch(os, "system", lambda _: self._blocked("os.system"))
        self._patch(subprocess, "Popen", lambda _: self._blocked("subprocess.Popen"))
        self._patch(pickle, "loads", lambda _: self._blocked("pickle.loads"))
        self._patch(builtins, "open", guarded_open)
        self._patch(io, "open", guarded_open)  # the same function, bound again (zipfile calls io.open)
        self._patch(importlib, "import_module", guarded_import)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
