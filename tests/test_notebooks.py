"""The notebooks are stored without outputs and run top to bottom on tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from tests.trained_runs import seed_runs

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))


def test_three_notebooks_exist():
    assert NOTEBOOKS == ["01_data_tour.ipynb", "02_compare_runs.ipynb", "03_embeddings.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_tiny_data(name, tmp_path, monkeypatch, tiny_dataset_dir, tmp_path_factory):
    from nbclient import NotebookClient

    """As Jupyter runs it: the kernel starts in notebooks/, and relative paths are taken from the repository
    root, as the commands take them (here the data and the runs are given relative to the root)."""
    runs = seed_runs(tmp_path_factory.getbasetemp(), tiny_dataset_dir)
    from_root = lambda p: os.path.relpath(p, NB_DIR.parent)  # noqa: E731
    monkeypatch.setenv("MMDIGITS_DATA_DIR", from_root(tiny_dataset_dir))
    monkeypatch.setenv("MMDIGITS_RUNS", from_root(runs[0]["dir"].parent))
    monkeypatch.setenv("MMDIGITS_CKPT", from_root(runs[0]["ckpt"]))
    monkeypatch.setenv("MMDIGITS_MAX_POINTS", "100")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NB_DIR / name, as_version=4)  # executed in memory: the stored file stays as it is
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}
    ).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))
