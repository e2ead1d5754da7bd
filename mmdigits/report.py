"""Compare runs: ``python -m mmdigits.report logs/train/multiruns/<sweep> [more runs] [--metric test/acc]``.

Writes ``report.md`` (mean ± std over seeds per group of runs; 95 % confidence intervals over seeds and over
test pairs; paired tests of every group against the best, Holm-corrected; one row per run; the machines and
versions the runs recorded), ``curves.png`` (validation accuracy and loss per epoch: one line per group with a
min-max band) and ``confusion.png`` (best run, recomputed on the test split) into the first PATH.

``--search <sweep dir> ...`` reports Optuna studies instead (their trials and best trial).
``--record experiments/<name>`` writes the same into that experiment record's README.md (below its marker
line) and summary.json instead; ``--index experiments`` rebuilds experiments/README.md from the records.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mmdigits.analysis import index, records
from mmdigits.analysis.plots import plot_curves, write_confusion
from mmdigits.analysis.runs import COLUMNS, markdown_table, runs_frame, seed_groups, sort_runs
from mmdigits.analysis.speakers import speaker_section
from mmdigits.errors import USER_ERROR_EXIT_CODE, MMDigitsError, first_line
from mmdigits.utils.io import atomic_write_bytes

# ----------------------------------------------------------------------------- report
GROUP_COLUMNS = {"test/acc": "test acc", "test/f1": "test F1", "test/auroc": "test AUROC",
                 "val/acc": "val acc", "val/acc_best": "best val acc", "params": "parameters",
                 "train/pairs_per_s": "train pairs/s",
                 "test/pairs_per_s": "inference pairs/s", "test/acc_image_missing": "acc, image missing",
                 "test/acc_audio_missing": "acc, audio missing"}  # fmt: skip


def write_report(
    paths: Sequence[str | Path],
    metric: str = "test/acc",
    out_dir: str | Path | None = None,
    record: str | Path | None = None,
) -> Path:
    """Write report.md, curves.png and confusion.png into ``out_dir`` (default: the first path), or the
    generated part of the experiment record ``record`` (a directory) with its summary.json."""
    out = Path(record or out_dir or paths[0])
    df = runs_frame(paths)
    if df.empty:
        raise FileNotFoundError(f"no runs (metrics.json) under {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    df = sort_runs(df, metric)
    cols = [
        c
        for c in ["group", *COLUMNS]
        if c in df and df[c].notna().any() and (c != "seed" or df[c].nunique() > 1)
    ]
    cols += [metric] if metric not in cols else []
    groups = seed_groups(df, metric=metric).rename(columns=GROUP_COLUMNS)
    plot_curves(df, out / "curves.png")
    tested = "test/acc" in df and df["test/acc"].notna().any()  # a search on validation never looks at test
    how = write_confusion(df.iloc[0], out / "confusion.png") if tested else None
    cut = df[df["stopped_by"].isin(["max_time", "interrupted"])] if "stopped_by" in df else df.iloc[:0]
    predictions = records.group_predictions(df) if tested else {}
    stats = records.group_statistics(df, predictions) if tested else []
    text = [
        f"# Run report: {len(df)} runs, {df['group'].nunique()} groups",
        "",
        *(records.statistics_section(stats) if stats else []),
        *records.significance_section(stats, predictions),
        *(speaker_section(df, stats) if stats else []),
        *records.composition_section(df),
        "## Mean ± std over seeds",
        "",
        "Groups are the runs that differ only by their seed, named by the choices that set them apart;",
        f"sorted by mean `{metric}`. Throughput is pairs per second of the training and test steps on the",
        "machine that ran them; the last two columns score the test pairs with one modality zeroed.",
        "",
        markdown_table(groups) if len(groups) else "No runs differ only by their seed.",
        "",
        "![validation curves: mean over seeds, min-max band](curves.png)",
        "",
        *(
            ["**Cut short** (not the recipe's result): " + ", ".join(f"`{r}`" for r in cut["run"]), ""]
            if len(cut)
            else []
        ),  # fmt: skip
        f"## Every run (sorted by `{metric}`)",
        "",
        markdown_table(df, cols),
        "",
        *records.environment_section(df),
    ]
    if how:
        text += [f"## Best run: {df.iloc[0]['run']}", "", f"Confusion matrix ({how}):", "",
                 "![confusion matrix](confusion.png)", ""]  # fmt: skip
    if record is not None:
        return records.write_record(out, text[2:], records.summary(out.name, stats, df, metric))
    atomic_write_bytes(out / "report.md", "\n".join(text).encode())
    return out / "report.md"


def write_search_report(
    sweep_dirs: Sequence[str | Path], out_dir: str | Path | None = None, record: str | Path | None = None
) -> Path:
    """A search's studies, trials and best trial (:mod:`mmdigits.analysis.search`): ``report.md`` in
    ``out_dir`` (default: the first sweep directory), or the generated part of the record ``record``."""
    from mmdigits.analysis.search import search_section

    text, groups = search_section([Path(d) for d in sweep_dirs])
    df = runs_frame(sweep_dirs)
    text += records.environment_section(df) if len(df) else []
    out = Path(record or out_dir or sweep_dirs[0])
    if record is not None:
        out.mkdir(parents=True, exist_ok=True)
        return records.write_record(out, text, records.summary(out.name, groups, df))
    atomic_write_bytes(
        out / "report.md", "\n".join([f"# Search report: {len(sweep_dirs)} studies", "", *text]).encode()
    )
    return out / "report.md"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmdigits.report", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", help="run directories or multirun directories")
    p.add_argument("--metric", default="test/acc", help="sort by this metric (default test/acc)")
    p.add_argument("--out", default=None, help="output directory (default: the first PATH)")
    p.add_argument(
        "--record", default=None, help="an experiment record's directory: write its generated part"
    )
    p.add_argument(
        "--search", nargs="+", default=None, help="sweep directories of Optuna studies: their record"
    )
    p.add_argument("--index", default=None, help="rebuild DIR/README.md from the records' summary.json files")
    a = p.parse_args(argv)
    if not a.paths and not a.index and not a.search:
        p.error("give run directories, --search SWEEP_DIR ..., or --index DIR")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    try:
        path = write_report(a.paths, a.metric, a.out, a.record) if a.paths else None
        if a.search:
            path = write_search_report(a.search, a.out, a.record)
        if a.index:
            path = index.write_index(Path(a.index))
    except (FileNotFoundError, KeyError, ValueError, MMDigitsError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
