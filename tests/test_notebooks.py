"""The notebooks are stored without outputs and run top to bottom on tiny data."""

from __future__ import annotations

import shutil
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

    runs = seed_runs(tmp_path_factory.getbasetemp(), tiny_dataset_dir)
    monkeypatch.setenv("MMDIGITS_DATA_DIR", str(tiny_dataset_dir))
    monkeypatch.setenv("MMDIGITS_RUNS", str(runs[0]["dir"].parent))
    monkeypatch.setenv("MMDIGITS_CKPT", str(runs[0]["ckpt"]))
    monkeypatch.setenv("MMDIGITS_MAX_POINTS", "100")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    copy = tmp_path / name
    shutil.copy(NB_DIR / name, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))
