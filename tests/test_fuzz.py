"""The fuzzers of tests/fuzz.py, seeded and bounded for CI, each in its own process: a crash (a signal) on
any generated input fails the test through the exit status. A longer run: python -m tests.fuzz all
--examples 20000."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"npy": 400, "checkpoint": 300, "rundir": 80}


@pytest.mark.parametrize("target", sorted(EXAMPLES))
def test_fuzzed_inputs_are_read_as_data_or_refused_in_one_line(target):
    n = EXAMPLES[target]
    cmd = [sys.executable, "-m", "tests.fuzz", target, "--examples", str(n), "--seed", "0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = f"fuzz {target}: {n} examples (seed 0)"
    assert summary in proc.stdout and "no tripwire, no crash" in proc.stdout, proc.stdout


def test_tripwires_fire_on_each_forbidden_call(tmp_path):
    """The fuzzers' 'no tripwire fired' means something only if each wire fires when crossed."""
    import importlib
    import io
    import os
    import pickle

    from tests.tripwires import Tripwires

    calls = [
        lambda: os.system("true"),
        lambda: subprocess.Popen(["true"]),
        lambda: pickle.loads(pickle.dumps(1)),
        lambda: open(tmp_path / "outside.txt", "w"),  # noqa: SIM115
        lambda: io.open(tmp_path / "outside.txt", "a"),  # noqa: SIM115, UP020
        lambda: importlib.import_module("this_module_was_never_imported"),
    ]
    for call in calls:
        with Tripwires(tmp_path / "out") as wires, pytest.raises((PermissionError, ImportError)):
            call()
        assert len(wires.fired) == 1
    assert not (tmp_path / "outside.txt").exists()  # the blocked opens created nothing
    outside = tmp_path / "readable.txt"
    outside.write_text("x")
    (tmp_path / "out").mkdir()
    with Tripwires(tmp_path / "out") as wires:  # reading anywhere and writing inside the output folder pass
        (tmp_path / "out" / "report.md").write_text("inside the output folder")
        assert outside.read_text() == "x"
    assert wires.fired == []
