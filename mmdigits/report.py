"""Compare runs: ``python -m mmdigits.report logs/train/multiruns/<sweep> [more runs] [--metric test/acc]``.

Writes ``report.md`` (one row per run, plus mean ± std over seeds), ``curves.png`` (val accuracy/loss per
step) and ``confusion.png`` (best run, recomputed on the test split) into the first PATH.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mmdigits.analysis.plots import plot_curves, write_confusion
from mmdigits.analysis.runs import COLUMNS, markdown_table, runs_frame, seed_groups, sort_runs


# ----------------------------------------------------------------------------- report
def write_report(
    paths: Sequence[str | Path], metric: str = "test/acc", out_dir: str | Path | None = None
) -> Path:
    """Write report.md, curves.png and confusion.png into ``out_dir`` (default: the first path)."""
    out = Path(out_dir or paths[0])
    df = runs_frame(paths)
    if df.empty:
        raise FileNotFoundError(f"no runs (metrics.json) under {', '.join(map(str, paths))}")
    df = sort_runs(df, metric)
    cols = [c for c in COLUMNS if c != "seed" or df["seed"].nunique() > 1]
    if df.get("test/auroc") is None or df["test/auroc"].isna().all():
        cols.remove("test/auroc")
    if metric not in cols:
        cols.append(metric)
    groups = seed_groups(df)
    plot_curves(df, out / "curves.png")
    how = write_confusion(df.iloc[0], out / "confusion.png")
    text = [
        f"# Run report ({len(df)} runs, sorted by `{metric}`)",
        "",
        markdown_table(df, cols),
        "",
        "## Mean ± std over seeds",
        "",
        markdown_table(groups) if len(groups) else "No runs differ only by their seed.",
        "",
        "![validation curves](curves.png)",
        "",
        f"## Best run: {df.iloc[0]['run']}",
        "",
        f"Confusion matrix ({how}):",
        "",
        "![confusion matrix](confusion.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
    return out / "report.md"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmdigits.report", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="run directories or multirun directories")
    p.add_argument("--metric", default="test/acc", help="sort by this metric (default test/acc)")
    p.add_argument("--out", default=None, help="output directory (default: the first PATH)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    try:
        path = write_report(a.paths, a.metric, a.out)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
