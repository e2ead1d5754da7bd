"""Regenerate the notebooks (stored without outputs): ``python notebooks/build_notebooks.py``."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
HEAD = "%matplotlib inline\nimport os\nfrom pathlib import Path\n\n"
# relative paths are taken from the repository root, as the commands take them
ROOT = (
    "\n# relative paths are taken from the repository root, as the commands take them, wherever Jupyter\n"
    "# started this kernel (notebooks/ by default)\n"
    "ROOT = Path(mmdigits.__file__).resolve().parents[1]\n\n\n"
    "def path_from(variable: str, default: str) -> Path:\n"
    "    return ROOT / os.environ.get(variable, default)\n\n\n"
)
VARIABLES = (
    "Settings, all optional, as environment variables of the Jupyter server; relative paths are taken from "
    "the repository root:"
)

DATA_TOUR = [
    "# Data tour\nImages, MFCC maps, utterance lengths, match rate and speakers of a challenge directory.\n\n"
    f"{VARIABLES}\n- `MMDIGITS_DATA_DIR`: the challenge directory (default `Dataset`).",
    HEAD + "import matplotlib.pyplot as plt\nimport numpy as np\n\nimport mmdigits\n"
    "from mmdigits.data.challenge import load_challenge_dir\n"
    + ROOT
    + 'data = load_challenge_dir(path_from("MMDIGITS_DATA_DIR", "Dataset"))\n'
    "train = data.train\nlen(data.train), len(data.test), data.has_digit_labels",
    "fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))\n"
    "for i, ax in enumerate(axes.flat):\n"
    '    ax.imshow(train.written[i].reshape(28, 28), cmap="gray")\n'
    '    title = f"{train.digit_written[i]}" if train.digit_written is not None else ""\n'
    "    ax.set(title=title, xticks=[], yticks=[])",
    "fig, axes = plt.subplots(1, 4, figsize=(13, 3))\n"
    "for i, ax in enumerate(axes):\n"
    '    ax.imshow(train.spoken(i).T, aspect="auto", origin="lower", cmap="magma")\n'
    '    label = train.digit_spoken[i] if train.digit_spoken is not None else "?"\n'
    '    ax.set(title=f"spoken {label}", xlabel="frame", ylabel="MFCC")',
    "lengths = train.row_lengths\n"
    'plt.hist(lengths, bins=30)\nplt.xlabel("frames per utterance")\n'
    'print(f"frames: min {lengths.min()}, median {np.median(lengths):.0f}, max {lengths.max()}")',
    "if train.match is not None:\n"
    '    print(f"match rate (train): {train.match.mean():.3f}")\n'
    "if data.test.match is not None:\n"
    '    print(f"match rate (test): {data.test.match.mean():.3f}")',
    "if train.speaker is not None:\n"
    "    speakers, counts = np.unique(train.speaker, return_counts=True)\n"
    '    plt.bar(speakers.astype(str), counts)\n    plt.xlabel("speaker")\n    plt.ylabel("pairs")\n'
    "else:\n"
    '    print("no speaker ids in this directory")',
]

COMPARE = [
    "# Compare runs\nAll runs under a folder, read as `mmdigits.report` reads them.\n\n"
    f"{VARIABLES}\n- `MMDIGITS_RUNS`: the folders of runs, separated by `{os.pathsep}` "
    "(default `logs/train`);\n"
    "- `MMDIGITS_METRIC`: the metric that sorts them (default `test/acc`).",
    HEAD + "import matplotlib.pyplot as plt\n\nimport mmdigits\n"
    "from mmdigits.analysis.runs import read_scalars, runs_frame, seed_groups, sort_runs\n"
    + ROOT
    + 'runs = [ROOT / p for p in os.environ.get("MMDIGITS_RUNS", "logs/train").split(os.pathsep)]\n'
    'metric = os.environ.get("MMDIGITS_METRIC", "test/acc")\n'
    "df = sort_runs(runs_frame(runs), metric)\n"
    'df[["run", "model", "fusion", "seed", "params", "epochs", "val/acc_best", metric]]',
    "seed_groups(df)",
    'ax = df.plot.barh(x="run", y=metric, legend=False, figsize=(7, 0.4 * len(df) + 1))\n'
    "ax.set_xlabel(metric)\nax.invert_yaxis()",
    "fig, axes = plt.subplots(1, 2, figsize=(12, 4))\n"
    "for _, r in df.iterrows():\n"
    '    curves = read_scalars(r["dir"], ["val/acc", "val/loss"])\n'
    '    for ax, tag in zip(axes, ["val/acc", "val/loss"]):\n'
    "        if tag in curves:\n"
    '            ax.plot(*curves[tag], marker=".", label=r["run"])\n'
    '            ax.set(xlabel="step", title=tag)\n'
    "axes[0].legend(fontsize=7)",
]

EMBEDDINGS = [
    "# Embeddings\nt-SNE and KMeans(10) of the test-set embeddings of a checkpoint (the same functions as "
    "`python -m mmdigits.embed`).\n\n"
    f"{VARIABLES}\n- `MMDIGITS_CKPT`: the checkpoint (default: the newest best checkpoint under "
    "`logs/train`);\n- `MMDIGITS_DATA_DIR`: its challenge directory (default `Dataset`);\n"
    "- `MMDIGITS_MAX_POINTS`: the test pairs projected (default 1000).",
    HEAD + "import mmdigits\n"
    "from mmdigits.analysis.embeddings import analyse, collect_embeddings, plot_embeddings\n"
    "from mmdigits.data.datamodule import MMDigitsDataModule\n"
    "from mmdigits.models.loading import load_checkpoint_model\n"
    + ROOT
    + 'ckpt = os.environ.get("MMDIGITS_CKPT")\n'
    "if ckpt is None:  # the newest best checkpoint under logs/train\n"
    '    best = [p for p in (ROOT / "logs/train").rglob("*.ckpt") if p.name != "last.ckpt"]\n'
    "    ckpt = max(best, key=os.path.getmtime)\n"
    "model = load_checkpoint_model(ROOT / ckpt)\n"
    'dm = MMDigitsDataModule(dir=str(path_from("MMDIGITS_DATA_DIR", "Dataset")), task=model.task.name)\n'
    'dm.setup("predict")\n'
    "emb = collect_embeddings(model, dm.predict_dataloader())\n"
    "{k: v.shape for k, v in emb.items()}",
    'max_points = int(os.environ.get("MMDIGITS_MAX_POINTS", 1000))\n'
    "metrics, points = analyse(emb, max_points=max_points)\n"
    '{k: v for k, v in metrics.items() if k != "latent"}',
    'for m, r in metrics.get("latent", {}).items():\n'
    "    print(f\"{m}: latent classes as digits (Hungarian) acc {r['acc']:.3f}, map {r['mapping']}\")",
    "import tempfile\n\nfrom IPython.display import Image\n\n"
    'Image(plot_embeddings(points, Path(tempfile.mkdtemp()) / "embeddings.png"))',
]

NOTEBOOKS = {
    "01_data_tour.ipynb": DATA_TOUR,
    "02_compare_runs.ipynb": COMPARE,
    "03_embeddings.ipynb": EMBEDDINGS,
}


def build(cells: list[str]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(cells[0])] + [new_code_cell(c) for c in cells[1:]])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)


if __name__ == "__main__":
    main()
